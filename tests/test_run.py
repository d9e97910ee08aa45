"""`run` / `demo` end to end through the CLI on a tiny synthetic set: every stage in one
process, and the headline score on videos training never saw (#12.2): a held-out
`run.test_fraction` when the labels give no test split, the labels' test split when they do,
and the K-fold mean +- std on held-out folds with run.folds=K."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

TINY = ["--no-progress", "extract.modalities=[visual,audio]", "extractors.visual.depth=18", "decode.short_side=64",
        "decode.num_frames=4", "decode.workers=0", "train.epochs=2", "train.batch_size=8", "run.model=early_fusion",
        "run.test_fraction=0.25", "complete.max_iters=5", "device=cpu"]


def cli(*args):
    proc = run_cli(*args, env={"MICROVIDEO_OFFLINE": "1"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def summary(out: Path) -> dict:
    return json.loads(sorted((out / "summaries").glob("run-*.json"))[-1].read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    proc = cli("demo", "--data", root / "data", "--out", root / "out", "--per-class", 4, *TINY)
    return root, proc


def test_demo_runs_every_stage_and_scores_a_held_out_test_split(demo):
    root, proc = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary(root / "out")
    assert s["ok"] and not s["failed_stages"] and not s["skipped_stages"]
    assert set(s["seconds"]) >= {"scan", "extract", "complete", "split", "train", "predict", "evaluate test",
                                 "evaluate val"}
    assert s["split"]["test_split"] == "held out" and s["split"]["test_fraction"] == 0.25
    assert s["headline"]["split"] == "test (held out)" and s["selection"]["split"].startswith("val")
    assert len(s["split"]["test_ids"]) == 4 and s["split"]["videos"]["test"] == 4
    ckpt = torch.load(root / "out" / "runs" / "early_fusion" / "best.pt", weights_only=False)
    held = set(s["split"]["test_ids"])
    assert held == set(ckpt["split_ids"]["test"]) and not held & set(ckpt["split_ids"]["train"] + ckpt["split_ids"]["val"])
    assert "accuracy" in s["headline"]["metrics"] and "test (held out)" in proc.stdout   # the printed table says so
    assert len((root / "out" / "runs" / "early_fusion" / "predictions.jsonl").read_text().splitlines()) == 16


@pytest.mark.slow   # two more whole runs (one with 2-fold CV): about a minute on a quiet 2-core machine
def test_run_uses_the_labels_test_split_then_k_folds(demo):
    root, _ = demo
    rows = [line.split("\t") for line in (root / "data" / "labels.tsv").read_text().splitlines()]
    labels = root / "data" / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "title", "labels", "split"])
        for i, (file, title, label) in enumerate(rows):
            w.writerow([file, title, label, "test" if i % 4 == 0 else "train"])
    proc = cli("--videos", root / "data" / "videos", "--labels", labels, "--out", root / "out", *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary(root / "out")
    assert s["split"]["test_split"] == "labels" and s["headline"]["split"] == "test (labels)"
    assert s["split"]["videos"]["test"] == 4 and "test_ids" not in s["split"]

    proc = cli("run", "--videos", root / "data" / "videos", "--labels", labels, "--out", root / "out", *TINY,
               "run.folds=2", "train.epochs=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary(root / "out")
    assert s["headline"]["split"].startswith("held-out folds (2-fold")
    assert set(s["headline"]["metrics"]["accuracy"]) == {"mean", "std"}
    assert s["test"]["split"] == "test (labels)"    # the final model on the labels' test split, beside
    cv = json.loads((root / "out" / "runs" / "early_fusion-cv2" / "cv.json").read_text())
    assert sum(f["videos"] for f in cv["per_fold"]) == 12   # every non-test video held out once
