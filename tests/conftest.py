"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))

# Two cores on CI: keep torch from oversubscribing them in the test process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`run_pipeline.py ARGS...` as a user runs it (its own process, wide console, unbuffered)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (it ships beside the repo as ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A small labeled synthetic micro-video set (real mp4 files); returns its root with
    videos/ and labels.tsv."""
    from pipeline.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, per_class=3)
    return root


@pytest.fixture()
def one_thread():
    """Tiny models run faster on one thread than on two fighting over a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mark_presence(item: dict, modalities, is_missing, seq_dims: dict) -> dict:
    """Fill a dataset item's `present`/`observed` and blank the features of modalities for
    which `is_missing(m)` is true, exactly as the store does (zeros, empty sequence)."""
    for m in modalities:
        missing = bool(is_missing(m))
        item["present"][m] = not missing
        if missing:
            if m in item["pooled"]:
                item["pooled"][m] = torch.zeros_like(item["pooled"][m])
            if m in item["sequence"]:
                item["sequence"][m] = torch.zeros(0, seq_dims[m])
    item["observed"] = dict(item["present"])
    return item


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    """A fresh, empty torch hub cache: weight-loading tests put their own files in it."""
    # torch.hub.set_dir() would leave a global override behind that hides $TORCH_HOME from later
    # tests; patching the setting it writes restores the unset state afterwards.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv("MICROVIDEO_OFFLINE", "1")  # never try the network in tests
    yield tmp_path / "hub"


# Cheap extraction + training settings for tests that need a trained run (predict, serve).
FAST = ["extract.modalities=[visual,audio]", "extractors.visual.weights=random", "extractors.visual.depth=18",
        "extractors.audio.weights=random", "decode.short_side=64", "decode.num_frames=4", "decode.workers=0",
        "train.epochs=3", "train.batch_size=4"]


def fingerprint(out: Path) -> dict:
    """sha256 of every file of a training folder but its prediction folders and sqlite's
    transient -wal/-shm files, plus a logical dump of the catalog (which covers the WAL)."""
    import hashlib
    import sqlite3

    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
             if p.is_file() and "predict" not in p.relative_to(out).parts[:1] and not p.name.endswith(("-wal", "-shm"))}
    conn = sqlite3.connect(f"file:{out / 'catalog.sqlite'}?mode=ro", uri=True)
    files["catalog dump"] = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    conn.close()
    return files


@pytest.fixture(scope="session")
def trained_run(demo_dataset, tmp_path_factory):
    """The demo set scanned, extracted (FAST) and an Early Fusion run "ef" trained on it:
    (cfg, out, video ids). Shared by the predict-isolation and serve tests; they only read it."""
    from pipeline.catalog import Catalog
    from pipeline.config import load_config
    from pipeline.extract import run_extract
    from pipeline.scan import run_scan
    from pipeline.train import run_train

    out = tmp_path_factory.mktemp("train_out")
    cfg = load_config(None, FAST)
    run_scan(cfg, out, demo_dataset / "videos", demo_dataset / "labels.tsv")
    run_extract(cfg, out, progress=False)
    run_train(cfg, out, "early_fusion", run_name="ef")
    cat = Catalog(out / "catalog.sqlite")
    ids = [v["video_id"] for v in cat.videos()]
    cat.close()
    return cfg, out, ids
