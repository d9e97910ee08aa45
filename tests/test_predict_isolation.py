"""`predict --videos NEW` never changes the training folder; new videos are scored with the run's
recorded settings, apart from the training set, even when their relative paths collide."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, fingerprint
from pipeline.catalog import Catalog

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # trains a small model first (~20 s on a quiet 2-core machine)


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def colliding(trained, demo_dataset, tmp_path_factory):
    """NEW/<id> holds the bytes of training video ids[i + 1]: every relative path collides with
    a training id, every content is another one. Plus one file that cannot be decoded."""
    _, _, ids = trained
    new = tmp_path_factory.mktemp("new_videos")
    source = {vid: ids[(i + 1) % len(ids)] for i, vid in enumerate(ids)}
    for vid, src in source.items():
        (new / vid).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_dataset / "videos" / src, new / vid)
    (new / ids[0]).parent.joinpath("broken.mp4").write_text("this is not a video")
    return new, source


def test_predict_new_videos_leaves_training_untouched(trained, colliding, tmp_path):
    from pipeline.evaluate import run_predict
    from pipeline.predict import predict_videos, prediction_dir

    cfg, out, ids = trained
    new, source = colliding
    before = fingerprint(out)
    path = predict_videos(cfg, out, [out / "runs" / "ef"], new, top_k=None, progress=False)
    assert fingerprint(out) == before                  # every training row, label, split and feature
    from pipeline.verify import verify_output
    assert verify_output(out).ok and verify_output(path.parent).ok   # both folders whole, no orphans
    assert path.parent == prediction_dir(out, new) and path.parent.parent == out / "predict"
    records = {r["video_id"]: r for r in map(json.loads, path.read_text().splitlines())}
    broken = f"{Path(ids[0]).parent}/broken.mp4"
    assert set(records) == set(ids) | {broken}
    assert records[broken]["labels"] == [] and records[broken]["error"].startswith("cannot be decoded")
    assert all(Path(r["path"]).is_relative_to(new) for r in records.values())
    # the predictions are for the new files: NEW/<id> scores as the training video it copies
    stored = tmp_path / "stored.jsonl"
    run_predict(cfg, out, [out / "runs" / "ef"], stored, top_k=None)
    train_scores = {r["video_id"]: dict(r["labels"]) for r in map(json.loads, stored.read_text().splitlines())}
    for vid, src in source.items():
        got = dict(records[vid]["labels"])
        assert got.keys() == train_scores[src].keys()
        np.testing.assert_allclose([got[k] for k in got], [train_scores[src][k] for k in got], atol=1e-4)
    assert any(records[v]["labels"][0][0] != train_scores[v] and
               dict(records[v]["labels"]) != train_scores[v] for v in ids)
    # new videos carry no labels: they can never join a training pool
    pred = Catalog(path.parent / "catalog.sqlite", readonly=True)
    assert all(v["labels"] == [] for v in pred.videos())
    pred.close()


def test_recorded_settings_win_over_todays_config_and_rerun_resumes(trained, colliding):
    from pipeline.config import load_config
    from pipeline.predict import predict_videos

    _, out, ids = trained
    new, _ = colliding
    # Today's config asks for other features: ResNet-50 (2048-d, the model needs 512) and 8 frames.
    today = load_config(None, FAST + ["extractors.visual.depth=50", "decode.num_frames=8"])
    first = predict_videos(today, out, [out / "runs" / "ef"], new, top_k=2, progress=False)
    shards = sorted(p.name for p in (first.parent / "store").rglob("*.npy"))
    again = predict_videos(today, out, [out / "runs" / "ef"], new, top_k=2, progress=False)
    assert sorted(p.name for p in (first.parent / "store").rglob("*.npy")) == shards  # nothing re-extracted
    assert again.read_text() == first.read_text()
    pred = Catalog(first.parent / "catalog.sqlite", readonly=True)
    meta = {m: info for m, _, _, info in pred.modality_rows()}
    assert meta["visual"]["config"]["depth"] == 18 and meta["visual"]["decode"]["num_frames"] == 4
    pred.close()


def test_in_memory_clips_score_like_the_folder(trained, colliding):
    from pipeline.decode import decode_video
    from pipeline.predict import Predictor, predict_videos

    cfg, out, ids = trained
    new, _ = colliding
    predictor = Predictor(cfg, out, [out / "runs" / "ef"])
    (options, names), = predictor.decode_groups()
    assert sorted(names) == ["audio", "visual"] and options.num_frames == 4
    clips = [decode_video(new / vid, options, video_id=vid) for vid in ids[:3]]
    got = predictor.predict_clips(clips, top_k=None)
    folder = predict_videos(cfg, out, [out / "runs" / "ef"], new, top_k=None, progress=False)
    want = {r["video_id"]: r for r in map(json.loads, folder.read_text().splitlines())}
    for rec in got:
        np.testing.assert_allclose([p for _, p in rec["labels"]], [p for _, p in want[rec["video_id"]]["labels"]],
                                   atol=1e-5)


def test_inputs_of_several_decode_groups_read_their_own_clip(trained, colliding):
    """A run whose modalities were extracted with different decode settings: each video comes as
    one Clip per decode group (the service decodes once per group), each modality reads its own."""
    import dataclasses

    from pipeline.decode import decode_video
    from pipeline.predict import Predictor

    cfg, out, ids = trained
    new, _ = colliding
    predictor = Predictor(cfg, out, [out / "runs" / "ef"])
    (options, names), = predictor.decode_groups()
    single = [decode_video(new / vid, options, video_id=vid) for vid in ids[:2]]
    want = predictor.predict_clips(single, top_k=None)
    predictor._groups = [(options, ["visual"]), (options, ["audio"])]   # as if decoded apart
    got = predictor.predict_clips([[c, c] for c in single], top_k=None)
    for a, b in zip(got, want):
        np.testing.assert_allclose([p for _, p in a["labels"]], [p for _, p in b["labels"]], atol=1e-6)
    silent = [[c, dataclasses.replace(c, audio=None)] for c in single]   # audio from the second clip
    assert all(r["missing"] == ["audio"] for r in predictor.predict_clips(silent, top_k=None))


def test_a_video_with_no_usable_input_gets_no_prediction(trained):
    from pipeline.decode import Clip
    from pipeline.predict import Predictor

    cfg, out, _ = trained
    predictor = Predictor(cfg, out, [out / "runs" / "ef"])
    blank = Clip(video_id="blank", frames=np.zeros((0, 64, 64, 3), np.uint8), frame_times=np.zeros(0),
                 frame_indices=np.zeros(0, np.int64), audio=None, sample_rate=16000, title=None, duration=0.0,
                 fps=25.0)
    rec, = predictor.predict_clips([blank])
    assert rec["labels"] == [] and "none of the model's inputs" in rec["error"]


def test_cli_predict_videos(trained, colliding):
    _, out, ids = trained
    new, _ = colliding
    proc = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "predict", "--out", str(out), "--run", "ef",
                           "--videos", str(new), "--no-progress", *FAST], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "predictions written to" in proc.stdout and "predict" in proc.stdout
