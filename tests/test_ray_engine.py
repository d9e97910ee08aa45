"""The Ray Data extraction engine against the local engine, on a local Ray instance with 2 CPUs:
same videos, same features (within float16 storage tolerance), same statuses, same failures;
resumable; shards an actor wrote but the driver never committed are garbage that the next run
removes, and their videos are redone."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[scale]' (ray[data])")
pytest.importorskip("ray.data", reason="ray is installed without Ray Data: pip install 'ray[data]'")

from pipeline.catalog import Catalog  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.demo import make_bad_inputs, make_demo_dataset  # noqa: E402
from pipeline.ray_engine import ExtractActor, plan_resources, run_extract_ray  # noqa: E402
from pipeline.config import to_dict  # noqa: E402
from pipeline.extract import run_extract, videos_to_extract  # noqa: E402
from pipeline.output import open_output  # noqa: E402
from pipeline.scan import run_scan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))   # as in conftest.py

# Cheap but real: ResNet-18 (random weights), VGGish (random), MiniLM titles, 4 frames at 64 px.
# Two actors of one CPU each, three videos per actor call (so several shards per actor).
FAST = ["extract.modalities=[visual,audio,text]", "extractors.visual.weights=random", "extractors.visual.depth=18",
        "extractors.audio.weights=random", "decode.short_side=64", "decode.num_frames=4", "decode.workers=1",
        "extract.batch_videos=2", "extract.ray.actors=2", "extract.ray.cpus_per_actor=1",
        "extract.ray.decode_workers=1", "extract.ray.batch_videos=3"]

# Real clips from ../shared/data/fight: two with sound and one silent per class.
REAL = ["fight/fi001.mp4", "fight/fi002.mp4", "fight/fi075.mp4",
        "noFight/nofi001.mp4", "noFight/nofi002.mp4", "noFight/nofi009.mp4"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, Path]:
    """A videos folder (real clips when ../shared is here, else the synthetic demo set) plus the
    bad inputs every run must survive (zero-byte, truncated, text as .mp4, audio only, silent),
    and a titles sidecar that titles some videos and not others."""
    root = tmp_path_factory.mktemp("ray-videos")
    folder = root / "videos"
    if SHARED_DATA.is_dir():
        for rel in REAL:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SHARED_DATA / "fight" / rel, folder / rel)
        titles = {rel: f"clip {i} from a street camera" for i, rel in enumerate(REAL) if i % 3 != 2}
    else:
        make_demo_dataset(root, per_class=1)
        titles = {}
    make_bad_inputs(folder / "bad")
    sidecar = root / "titles.jsonl"
    sidecar.write_text("".join(json.dumps({"file": rel, "title": t}) + "\n" for rel, t in titles.items()))
    return folder, (sidecar if titles else root / "labels.tsv")


@pytest.fixture(scope="module")
def local_ray():
    # PYTHONPATH: the actors import `pipeline` and `extractors` from this checkout.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _scanned(cfg, out: Path, videos) -> Path:
    run_scan(cfg, out, *videos)
    return out


def _count_videos(out: Path) -> int:
    catalog = Catalog(out / "catalog.sqlite")
    try:
        return len(catalog.videos())
    finally:
        catalog.close()


def _snapshot(out: Path, modalities: list[str]) -> dict:
    """Everything the two engines must agree on, read back through the catalog and the store."""
    catalog, store = open_output(load_config(None, FAST), out)
    try:
        snap = {"status": {s: catalog.stage_status(s) for s in ["decode"] + [f"extract:{m}" for m in modalities]},
                "failures": catalog.failures(),
                "facts": {v["video_id"]: (v["duration"], v["fps"], v["width"], v["height"], v["has_audio"])
                          for v in catalog.videos()},
                "layouts": {m: info.layouts for m, info in store.modalities().items()},
                "pooled": {}, "sequence": {}}
        for m in modalities:
            ids, arrays, present = store.read_pooled(m)
            snap["pooled"][m] = dict(zip(ids, arrays.astype(np.float32)))
            if "sequence" in snap["layouts"][m]:
                snap["sequence"][m] = dict(zip(ids, store.read_sequences(m, ids)))
        snap["garbage"] = store.collect_garbage()
        snap["meta"] = {m: info.meta for m, info in store.modalities().items()}
        return snap
    finally:
        catalog.close()


def _assert_same_features(a: dict, b: dict) -> None:
    assert a["status"] == b["status"]
    assert a["failures"] == b["failures"]
    assert a["facts"] == b["facts"]
    assert a["layouts"] == b["layouts"]
    for kind in ("pooled", "sequence"):
        for m in a[kind]:
            assert sorted(a[kind][m]) == sorted(b[kind][m]), (kind, m)
            for vid, x in a[kind][m].items():
                y = b[kind][m][vid]
                assert x.shape == y.shape, (kind, m, vid)
                # Both are stored as float16 (bit-identical here); other batch splits may move the last bits.
                np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                           rtol=1e-2, atol=1e-4, err_msg=f"{kind}/{m}/{vid}")


def _orphan_shards(cfg, out: Path) -> list[Path]:
    """What a killed driver leaves behind: an actor wrote shards for the last three videos but
    the driver never applied its records, so the catalog knows nothing of them."""
    catalog = Catalog(out / "catalog.sqlite")
    todo = videos_to_extract(catalog, list(cfg.extract.modalities), False)[-3:]   # good clips (bad/ sorts first)
    catalog.close()
    actor = ExtractActor(to_dict(cfg), str(out.resolve()), use_gpu=False, decode_workers=1)
    batch = {k: np.array([v[k] for v in todo], dtype=object) for k in ("video_id", "path", "title", "need")}
    actor({**batch, "subtitles": np.array([json.dumps(v.get("subtitles")) for v in todo], dtype=object)})
    return sorted((out / "store").rglob("shard-*.npy"))


def test_ray_engine_matches_local_engine_and_resumes(videos, tmp_path, local_ray):
    cfg = load_config(None, FAST)
    modalities = list(cfg.extract.modalities)
    out_local = _scanned(cfg, tmp_path / "local", videos)
    out_ray = _scanned(cfg, tmp_path / "ray", videos)
    total = _count_videos(out_ray)

    local = run_extract(cfg, out_local, progress=False)
    orphans = _orphan_shards(cfg, out_ray)
    assert orphans, "the actor wrote no shard files"
    first = run_extract_ray(cfg, out_ray, limit=4)           # part of the set, like a killed run
    assert first.videos_todo == 4 and first.decoded + first.decode_failed == 4
    assert not any(p.exists() for p in orphans)               # uncommitted shards were garbage
    rest = run_extract_ray(cfg, out_ray)                      # resumes with the others only
    assert rest.videos_todo == total - 4
    again = run_extract_ray(cfg, out_ray)                     # nothing left
    assert again.videos_todo == 0

    assert first.decoded + rest.decoded == local.decoded
    assert first.decode_failed + rest.decode_failed == local.decode_failed
    for m in modalities:
        assert {k: first.per_modality[m][k] + rest.per_modality[m][k] for k in ("done", "missing", "failed")} \
            == local.per_modality[m]

    a, b = _snapshot(out_local, modalities), _snapshot(out_ray, modalities)
    _assert_same_features(a, b)
    # The set really exercises every outcome: decoded, decode failures, missing audio and titles.
    assert "failed" in a["status"]["decode"].values() and "done" in a["status"]["decode"].values()
    assert a["status"]["decode"]["bad/zero_byte.mp4"] == "failed"
    assert "missing" in a["status"]["extract:audio"].values()
    assert "missing" in a["status"]["extract:text"].values() and "done" in a["status"]["extract:text"].values()
    # Every shard file the actors wrote was committed (nothing left for the garbage collector),
    # and the features say which engine and weights made them.
    assert b["garbage"] == []
    assert b["meta"]["visual"]["engine"] == "ray" and b["meta"]["visual"]["extractor"]["config"]["weights"] == "random"
    summaries = sorted((out_ray / "summaries").glob("extract-ray-*.json"))
    assert summaries and json.loads(summaries[-1].read_text())["ray"]["plan"]["actors"] == 2


def test_resource_plan():
    ray_cfg = {"actors": "auto", "cpus_per_actor": 4, "gpus_per_actor": "auto", "decode_workers": None,
               "batch_videos": 32}
    gpu_cluster = {"CPU": 32.0, "GPU": 4.0}
    plan = plan_resources(ray_cfg, "auto", gpu_cluster)
    assert (plan["actors"], plan["num_gpus"], plan["num_cpus"], plan["decode_workers"]) == (4, 1.0, 4.0, 4)
    assert plan_resources({**ray_cfg, "gpus_per_actor": 0.5}, "cuda", gpu_cluster)["actors"] == 8
    cpu_plan = plan_resources(ray_cfg, "cpu", gpu_cluster)              # device=cpu: no GPUs asked
    assert (cpu_plan["actors"], cpu_plan["num_gpus"]) == (8, 0.0)
    assert plan_resources(ray_cfg, "auto", {"CPU": 2.0})["num_gpus"] == 0.0
    with pytest.raises(RuntimeError, match="GPUs"):
        plan_resources(ray_cfg, "cuda", {"CPU": 8.0})
    with pytest.raises(ValueError, match="gpus_per_actor=0"):
        plan_resources({**ray_cfg, "gpus_per_actor": 0}, "cuda", gpu_cluster)
