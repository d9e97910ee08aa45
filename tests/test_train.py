"""Training end to end on small synthetic stores (pipeline/train.py, task.py, checkpoint.py,
evaluate.py, crossval.py, distributed.py): train -> checkpoints, metrics, logs; evaluate; predict;
resume; task detection and splits; held-out cross-validation; every model through the store; and
DistributedDataParallel with 2 CPU processes (`run_pipeline.py train --nproc 2`) matching 1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.catalog import Catalog, VideoRow
from pipeline.checkpoint import load_model
from pipeline.config import load_config
from pipeline.crossval import run_cross_validation
from pipeline.distributed import launch_distributed
from pipeline.evaluate import run_evaluate, run_predict
from pipeline.store import FeatureStore
from pipeline.task import mixup
from pipeline.train import run_train

from test_models import SMALL   # small model configs, shared with the model tests

ROOT = Path(__file__).resolve().parent.parent


def make_store(out: Path, n=400, seed=0, multilabel=False, splits=False) -> dict:
    """alpha: pooled 6-d; beta: pooled 5-d + 2-4 step sequences, absent for every 7th video.
    Class = 2 [alpha_0 > 0] + [beta_0 > 0]; multi-label adds "extra" to videos with alpha_1 > 1."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32)
    y = 2 * (a[:, 0] > 0) + (b[:, 0] > 0)
    ids = [f"clip{i:04d}" for i in range(n)]
    rows = []
    for i, vid in enumerate(ids):
        labels = [f"c{y[i]}"] + (["extra"] if multilabel and a[i, 1] > 1 else [])
        split = (["train", "train", "train", "val"][i % 4] if splits else None)
        rows.append(VideoRow(vid, labels=labels, split=split))
    catalog = Catalog(out / "catalog.sqlite")
    catalog.upsert_videos(rows)
    store = FeatureStore(out, catalog, shard_size=64)
    with store.writer("alpha", "pooled", 6) as w:
        for i, vid in enumerate(ids):
            w.add(vid, a[i])
    with store.writer("beta", dims={"pooled": 5, "sequence": 5}) as w:
        for i, vid in enumerate(ids):
            if i % 7 != 3:
                steps = 2 + i % 3
                w.add(vid, pooled=b[i], sequence=b[i] + 0.1 * rng.normal(size=(steps, 5)).astype(np.float32))
    catalog.close()
    return {"ids": ids, "y": y}


def config(*overrides, model="early_fusion"):
    small = [f"models.{model}.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in SMALL.get(model, {}).items()]
    return load_config(overrides=["device=cpu", "train.progress=false", "train.batch_size=32", "train.epochs=8",
                                  "train.lr=0.005", "train.patience=20", "train.warmup_epochs=0", *small, *overrides])


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_store")
    make_store(out)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting


def test_train_evaluate_predict(store_dir, tmp_path):
    cfg = config("train.epochs=15")
    result = run_train(cfg, store_dir, "early_fusion", run_name="ef")
    run = store_dir / "runs" / "ef"
    for name in ("best.pt", "last.pt", "metrics.json", "config.yaml"):
        assert (run / name).exists(), name
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["monitor"] == "accuracy" and not saved["multilabel"] and saved["num_classes"] == 4
    assert saved["videos"]["train"] + saved["videos"]["val"] == 400 and saved["videos"]["val"] == 40
    assert saved["best"]["accuracy"] >= 0.8, saved["best"]
    assert len(saved["history"]) == 15 and "torch" in saved["versions"]

    model, ckpt = load_model(run / "best.pt")
    assert ckpt["class_names"] == ["c0", "c1", "c2", "c3"] and ckpt["dims"]["pooled"] == {"alpha": 6, "beta": 5}
    assert ckpt["epoch"] == result["best_epoch"]

    evaluated = run_evaluate(cfg, store_dir, run, split="val")
    assert evaluated["metrics"]["accuracy"] == pytest.approx(saved["best"]["accuracy"])
    assert json.loads((run / "eval-val.json").read_text())["metrics"]["accuracy"] == evaluated["metrics"]["accuracy"]

    path = run_predict(cfg, store_dir, run, tmp_path / "pred.jsonl", top_k=2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 400 and all(len(r["labels"]) == 2 for r in lines)
    first = lines[0]["labels"]
    assert first[0][1] >= first[1][1] and {lab for lab, _ in first} <= set(ckpt["class_names"])
    above = run_predict(cfg, store_dir, run, tmp_path / "thr.jsonl", top_k=None, threshold=0.5,
                        video_ids=["clip0000", "clip0003"])
    rows = [json.loads(line) for line in above.read_text().splitlines()]
    assert [r["video_id"] for r in rows] == ["clip0000", "clip0003"]
    assert all(p >= 0.5 for r in rows for _, p in r["labels"]) and all(len(r["labels"]) <= 1 for r in rows)


def test_resume_continues_exactly_where_it_stopped(store_dir):
    full = run_train(config("train.epochs=4"), store_dir, "nmcl", run_name="full")
    run_train(config("train.epochs=4", "train.stop_after_epochs=2"), store_dir, "nmcl", run_name="sliced")
    assert len(json.loads((store_dir / "runs" / "sliced" / "metrics.json").read_text())["history"]) == 2
    resumed = run_train(config("train.epochs=4"), store_dir, "nmcl", resume=store_dir / "runs" / "sliced")
    assert resumed["run_dir"] == str(store_dir / "runs" / "sliced") and len(resumed["history"]) == 4
    a = torch.load(store_dir / "runs" / "full" / "last.pt", weights_only=False)["model"]
    b = torch.load(store_dir / "runs" / "sliced" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed["history"][-1]["val_loss"] == pytest.approx(full["history"][-1]["val_loss"], abs=1e-6)


def test_multilabel_task_and_catalog_splits(tmp_path):
    make_store(tmp_path, n=160, multilabel=True, splits=True)
    result = run_train(config("train.epochs=2"), tmp_path, "late_fusion", run_name="ml")
    assert result["multilabel"] and result["monitor"] == "gap@20" and result["num_classes"] == 5
    assert result["videos"] == {"train": 120, "val": 40, "test": 0}
    ckpt = torch.load(tmp_path / "runs" / "ml" / "best.pt", weights_only=False)
    assert all(int(v[4:]) % 4 == 3 for v in ckpt["split_ids"]["val"])   # the catalog's split column
    for key in ("map", "gap@20", "hit@1", "coverage", "ranking_loss", "one_error", "hamming_loss"):
        assert key in result["best"]


def test_cross_validation_scores_held_out_folds(tmp_path):
    make_store(tmp_path, n=120)
    cv = run_cross_validation(config("train.epochs=2"), tmp_path, "early_fusion", folds=2)
    assert len(cv["per_fold"]) == 2 and set(cv["summary"]["accuracy"]) == {"mean", "std"}
    assert [f["videos"] for f in cv["per_fold"]] == [60, 60]   # each fold scored on its own 60 videos
    for i in range(2):   # ... which its model neither trained nor early-stopped on
        ids = torch.load(tmp_path / "runs" / "early_fusion-cv2" / f"fold-{i}" / "best.pt", weights_only=False)["split_ids"]
        assert len(ids["test"]) == 60 and not set(ids["test"]) & (set(ids["train"]) | set(ids["val"]))
    assert (tmp_path / "runs" / "early_fusion-cv2" / "cv.json").exists()
    assert (tmp_path / "runs" / "early_fusion-cv2" / "fold-1" / "best.pt").exists()
    accs = [f["accuracy"] for f in cv["per_fold"]]
    assert cv["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))


@pytest.mark.parametrize("name", list(SMALL))
def test_every_model_trains_evaluates_and_predicts_from_the_store(name, store_dir, tmp_path):
    cfg = config("train.epochs=1", "models.marnet.label_embeddings=random", model=name)
    result = run_train(cfg, store_dir, name, run_name=f"every-{name}")
    want = cfg.models[name].get("input", "pooled")
    if want == "sequence":   # beta's sequences are used, alpha has only pooled vectors
        assert result["modalities"] == {"pooled": ["alpha"], "sequence": ["beta"]}
    else:
        assert result["modalities"] == {"pooled": ["alpha", "beta"], "sequence": []}
    run = Path(result["run_dir"])
    assert np.isfinite(run_evaluate(cfg, store_dir, run)["metrics"]["loss"])
    assert len(run_predict(cfg, store_dir, run, tmp_path / "p.jsonl").read_text().splitlines()) == 400


def test_launch_distributed_drops_nproc_and_runs_torchrun(monkeypatch):
    import torch.distributed.run as torchrun

    seen = {}
    monkeypatch.setattr(torchrun, "run", lambda args: seen.update(args=args))
    argv = ["train", "--out", "o", "--run", "r", "--nproc", "2", "x=1"]
    assert launch_distributed(2, argv) == 0
    args = seen["args"]
    assert args.nproc_per_node == "2" and args.standalone and not args.module
    assert args.training_script == str(ROOT / "run_pipeline.py")
    assert args.training_script_args == ["train", "--out", "o", "--run", "r", "x=1"]


def test_two_gloo_processes_match_one_process(tmp_path):
    """DistributedDataParallel over 2 CPU processes (gloo) with the global batch split in two
    gives the same weights and metrics as one process on the same seed (dropout off)."""
    make_store(tmp_path, n=142)   # 128 training videos: 4 global batches of 32 (16 per process)
    overrides = ["device=cpu", "train.progress=false", "train.batch_size=32", "train.epochs=3",
                 "train.warmup_epochs=0", "models.early_fusion.hidden=16", "models.early_fusion.dropout=0.0"]
    single = run_train(load_config(overrides=overrides), tmp_path, "early_fusion", run_name="one")
    code = subprocess.run([sys.executable, "run_pipeline.py", "train", "--out", str(tmp_path), "--no-progress",
                           "--model", "early_fusion", "--run", "two", "--nproc", "2", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr[-3000:]
    two = json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and single["world_size"] == 1
    a = torch.load(tmp_path / "runs" / "one" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "runs" / "two" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    for h1, h2 in zip(single["history"], two["history"]):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["accuracy"] == pytest.approx(h1["accuracy"])


def test_weight_average_is_what_is_validated_saved_and_resumed(store_dir):
    """train.ema: validation, best.pt and last.pt's "model" are the averaged weights, the raw ones
    ride along for resuming, and a sliced + resumed run ends where the uninterrupted one does."""
    cfg = config("train.epochs=4", "train.ema=0.9")
    full = run_train(cfg, store_dir, "early_fusion", run_name="ema-full")
    last = torch.load(store_dir / "runs" / "ema-full" / "last.pt", weights_only=False)
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])
    # best.pt holds the weights that were validated: evaluating it gives the recorded val loss
    best = next(h for h in full["history"] if h["epoch"] == full["best_epoch"])
    evaluated = run_evaluate(cfg, store_dir, store_dir / "runs" / "ema-full", split="val")
    assert evaluated["metrics"]["loss"] == pytest.approx(best["val_loss"], rel=1e-5)

    run_train(config("train.epochs=4", "train.ema=0.9", "train.stop_after_epochs=2"), store_dir, "early_fusion",
              run_name="ema-sliced")
    run_train(cfg, store_dir, "early_fusion", resume=store_dir / "runs" / "ema-sliced")
    resumed = torch.load(store_dir / "runs" / "ema-sliced" / "last.pt", weights_only=False)
    for part in ("model", "train_model"):
        for k in last[part]:
            torch.testing.assert_close(last[part][k], resumed[part][k], rtol=0, atol=1e-6)


def test_mixup_mixes_inputs_and_labels_of_pairs_and_keeps_only_shared_modalities():
    torch.manual_seed(0)
    batch = {"video_ids": ["a", "b", "c", "d"],
             "pooled": {"x": torch.arange(8.0).reshape(4, 2)},
             "sequence": {"s": torch.ones(4, 3, 2)}, "lengths": {"s": torch.tensor([1, 3, 2, 3])},
             "present": {"x": torch.tensor([True, True, False, True])},
             "observed": {"x": torch.tensor([True, True, False, True])},
             "labels": torch.eye(4)}
    torch.manual_seed(1)
    mixed = mixup(batch, 0.4)
    torch.manual_seed(1)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    j = torch.randperm(4)
    assert 0 < lam < 1 and not torch.equal(j, torch.arange(4))
    torch.testing.assert_close(mixed["pooled"]["x"], lam * batch["pooled"]["x"] + (1 - lam) * batch["pooled"]["x"][j])
    torch.testing.assert_close(mixed["labels"], lam * torch.eye(4) + (1 - lam) * torch.eye(4)[j])
    assert torch.equal(mixed["lengths"]["s"], torch.maximum(batch["lengths"]["s"], batch["lengths"]["s"][j]))
    assert torch.equal(mixed["present"]["x"], batch["present"]["x"] & batch["present"]["x"][j])
    torch.testing.assert_close(mixed["labels"].sum(1), torch.ones(4))   # still a distribution per example


@pytest.mark.parametrize("name", ["early_fusion", "nmcl"])
def test_training_with_mixup_learns_and_is_deterministic(name, store_dir):
    # NMCL's tuned variant: the paper variant (the default) stays near 0.75 on this small XOR-like set
    variant = ["models.nmcl.variant=tuned", "models.nmcl.tuned.proj_dim=16", "models.nmcl.tuned.attn_dim=16"] \
        if name == "nmcl" else []
    cfg = config("train.epochs=15", "train.mixup=0.2", *variant, model=name)
    a = run_train(cfg, store_dir, name, run_name=f"mixup-{name}-a")
    b = run_train(cfg, store_dir, name, run_name=f"mixup-{name}-b")
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    plain = run_train(config("train.epochs=15", *variant, model=name), store_dir, name, run_name=f"plain-{name}")
    assert a["history"][-1]["train_loss"] != plain["history"][-1]["train_loss"]   # the batches were mixed
    assert a["best"]["accuracy"] >= 0.8, a["best"]


def test_ensemble_of_runs_averages_their_probabilities(store_dir, tmp_path):
    """evaluate / predict with several runs: the mean of their probabilities, written under
    OUT/ensembles/<a>+<b>/; runs with other val splits are refused."""
    cfg = config("train.epochs=15")
    for name in ("early_fusion", "late_fusion"):
        run_train(config("train.epochs=15", model=name), store_dir, name, run_name=f"ens-{name}")
    runs = [store_dir / "runs" / "ens-early_fusion", store_dir / "runs" / "ens-late_fusion"]
    paths = [run_predict(cfg, store_dir, r, tmp_path / f"{r.name}.jsonl", top_k=None) for r in runs]
    both = run_predict(cfg, store_dir, runs, tmp_path / "both.jsonl", top_k=None)
    singles = [{row["video_id"]: dict(row["labels"]) for row in map(json.loads, p.read_text().splitlines())} for p in paths]
    for row in map(json.loads, both.read_text().splitlines()):
        for label, prob in row["labels"]:
            assert prob == pytest.approx((singles[0][row["video_id"]][label] + singles[1][row["video_id"]][label]) / 2, abs=2e-6)

    result = run_evaluate(cfg, store_dir, runs, split="val")
    saved = json.loads((store_dir / "ensembles" / "ens-early_fusion+ens-late_fusion" / "eval-val.json").read_text())
    assert saved["metrics"]["accuracy"] == result["metrics"]["accuracy"] and saved["model"] == ["early_fusion", "late_fusion"]
    assert result["metrics"]["accuracy"] >= 0.8 and np.isfinite(result["metrics"]["loss"])

    from typer.testing import CliRunner
    from pipeline.cli import app

    args = ["--out", str(store_dir), "--run", "ens-early_fusion", "--run", "ens-late_fusion", "device=cpu"]
    assert CliRunner().invoke(app, ["evaluate", *args]).exit_code == 0
    assert CliRunner().invoke(app, ["predict", *args, "--top-k", "1"]).exit_code == 0
    lines = (store_dir / "ensembles" / "ens-early_fusion+ens-late_fusion" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 400 and all(len(json.loads(line)["labels"]) == 1 for line in lines)

    run_train(config("train.epochs=1", "train.val_fraction=0.2"), store_dir, "early_fusion", run_name="ens-other-split")
    with pytest.raises(ValueError, match="different val splits"):
        run_evaluate(cfg, store_dir, [runs[0], store_dir / "runs" / "ens-other-split"], split="val")


def test_training_reads_completed_inputs_when_asked(tmp_path):
    """train.use_completed (the YAML's default, true): pooled-input models read <m>@completed
    where the complete stage wrote it; false: the originals."""
    from pipeline.complete import run_complete

    make_store(tmp_path, n=120)
    run_complete(config("complete.rank=4", "complete.max_iters=5"), tmp_path, progress=False)
    completed = run_train(config("train.epochs=1"), tmp_path, "early_fusion", run_name="completed")
    assert completed["modalities"]["pooled"] == ["alpha@completed", "beta@completed"]
    assert completed["dims"]["pooled"] == {"alpha@completed": 6, "beta@completed": 5}
    plain = run_train(config("train.epochs=1", "train.use_completed=false"), tmp_path, "early_fusion", run_name="plain")
    assert plain["modalities"]["pooled"] == ["alpha", "beta"]
    assert np.isfinite(run_evaluate(config(), tmp_path, tmp_path / "runs" / "completed")["metrics"]["loss"])


def test_keep_last_makes_the_last_epoch_best_without_early_stopping(store_dir):
    """train.keep=last (a refit): best.pt is the last epoch even where val got worse, and
    patience does not stop the run."""
    got = run_train(config("train.epochs=5", "train.patience=1", "train.keep=last", "train.lr=0.5"), store_dir,
                    "early_fusion", run_name="keep_last")
    assert got["epochs_run"] == 5 and got["best_epoch"] == 4
    run = store_dir / "runs" / "keep_last"
    best, last = torch.load(run / "best.pt", weights_only=False), torch.load(run / "last.pt", weights_only=False)
    assert best["epoch"] == last["epoch"] == 4
    for k in last["model"]:
        torch.testing.assert_close(best["model"][k], last["model"][k])
    with pytest.raises(Exception, match="train.keep"):
        run_train(config("train.keep=first"), store_dir, "early_fusion", run_name="keep_bad")
