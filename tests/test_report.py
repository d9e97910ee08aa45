"""The HTML report: every section on a small real folder (synthetic clips, a trained run), no
external resource, and checked as a person would look at it: rendered by headless Chromium,
no console errors, a screenshot that is not blank."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.catalog import Catalog
from pipeline.config import load_config
from pipeline.store import FeatureStore


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Demo clips scanned; decode facts and two pooled modalities written directly (the
    extractors are tested elsewhere; here they would only cost minutes); one decode failure
    with its reason; an early-fusion run trained and evaluated."""
    from pipeline.demo import make_demo_dataset
    from pipeline.evaluate import run_evaluate
    from pipeline.scan import run_scan
    from pipeline.train import run_train

    root = tmp_path_factory.mktemp("report")
    labels = make_demo_dataset(root / "demo", per_class=4, num_frames=12)
    (root / "demo" / "videos" / "broken.mp4").write_bytes(b"\x00" * 2048)
    cfg = load_config(None, ["train.epochs=3", "train.batch_size=8", "train.val_fraction=0.34", "device=cpu"])
    out = root / "out"
    run_scan(cfg, out, root / "demo" / "videos", labels)
    cat = Catalog(out / "catalog.sqlite")
    videos = [v for v in cat.videos() if v["video_id"] != "broken.mp4"]
    rng = np.random.default_rng(0)
    warn = {"lost_packets": 3, "lost_frames": 2}  # a salvaged clip, as decode records one
    cat.record_decodes([(v["video_id"], 2.0 + i % 3, 25.0, 160, 120, i % 5 != 0, warn if i == 1 else None)
                        for i, v in enumerate(videos)],
                       failed=[("broken.mp4", "DecodeError: no video stream (moov atom not found)")])
    store = FeatureStore(out, cat)
    classes = sorted({v["labels"][0] for v in videos})
    with store.writer("visual", "pooled", 8, {"model": "synthetic", "random_weights": True}) as w:
        for v in videos:
            w.add(v["video_id"], rng.normal(size=8) + 2 * classes.index(v["labels"][0]))
    with store.writer("audio", "pooled", 4, {"model": "synthetic"}) as w:
        for i, v in enumerate(videos):
            if i % 5:
                w.add(v["video_id"], rng.normal(size=4))
    cat.close()
    run_train(cfg, out, "early_fusion", run_name="ef")
    run_evaluate(cfg, out, out / "runs" / "ef", split="val", show=False)
    return out, cfg


def test_report_has_every_section_and_is_self_contained(folder):
    from pipeline.report import write_report

    out, cfg = folder
    path = write_report(out, cfg=cfg)
    assert path == out / "report.html"
    text = path.read_text()
    for heading in ("Catalog", "Data", "Features", "Missing-modality pattern", "Completion", "Run ef",
                    "Per-class average precision", "Confusion matrix", "Precision-recall",
                    "Most confident errors", "Configuration and versions"):
        assert heading in text, heading
    assert "moov atom not found" in text and "nothing decodes" in text  # the failure, its reason, no frame
    assert "1 salvaged on decode" in text and "lost_packets" in text
    assert "not run on this folder" in text  # completion section says why it is empty
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # nothing loaded from outside the file
    assert "<script" not in text
    from PIL import Image

    images = re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) >= 8
    for _, data in images:  # every inline image decodes
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        write_report(out, run="nope", cfg=cfg)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(folder, tmp_path):
    from PIL import Image

    from pipeline.report import write_report

    exe = chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run does it)")
    out, cfg = folder
    page = write_report(out, output=tmp_path / "report.html", cfg=cfg)
    shot = tmp_path / "shot.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
           "--v=0", "--window-size=1280,1600", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    errors = [line for line in console if "ERROR" in line.upper() or "Uncaught" in line]
    assert errors == [], errors
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape[0] >= 1000 and img.std() > 10  # text, tables and plots, not a blank page
    assert (img < 128).mean() > 0.01


def test_cli_report(folder, tmp_path, capsys):
    from pipeline.cli import main

    out, _ = folder
    with pytest.raises(SystemExit) as e:
        main(["report", "--out", str(out), "--run", "ef", "--output", str(tmp_path / "r.html"), "device=cpu"])
    assert (e.value.code or 0) == 0 and (tmp_path / "r.html").stat().st_size > 10_000
    with pytest.raises(SystemExit) as e:
        main(["report", "--out", str(tmp_path / "nothing-here")])
    assert e.value.code == 2 and "no catalog.sqlite" in capsys.readouterr().err
