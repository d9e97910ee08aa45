"""train.standardize (models/standardize.py, pipeline.task.input_stats): the statistics against
numpy, the wrapper against the direct formula x' = (x - mean) / std, and a run whose inputs are on
scales 1,000 apart, trained, saved and reloaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build_model
from models.standardize import Standardized
from pipeline.catalog import Catalog
from pipeline.checkpoint import load_model, read_checkpoint
from pipeline.evaluate import run_evaluate
from pipeline.store import FeatureStore
from pipeline.task import input_stats, make_dataset
from pipeline.train import run_train

from test_train import config, make_store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_input_stats_match_numpy(tmp_path):
    make_store(tmp_path, n=120)
    cat = Catalog(tmp_path / "catalog.sqlite")
    store = FeatureStore(tmp_path, cat)
    ids = [f"clip{i:04d}" for i in range(0, 120, 2)]   # a "training split": every other video
    stats = input_stats(make_dataset(store, ids, {"pooled": ["alpha", "beta"], "sequence": ["beta"]}))
    _, alpha, _ = store.read_pooled("alpha", ids)
    _, beta, present = store.read_pooled("beta", ids)
    steps = np.concatenate([store.sequence_at(store.locations("beta", "sequence")[v])
                            for v in ids if v in store.locations("beta", "sequence")]).astype(np.float64)
    cat.close()
    for (mean, std), x in ((stats["pooled"]["alpha"], alpha), (stats["pooled"]["beta"], beta[present]),
                           (stats["sequence"]["beta"], steps)):
        x = np.asarray(x, np.float64)
        np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std.numpy(), x.std(0), rtol=1e-4, atol=1e-6)
    assert 0 < present.sum() < len(ids), "the fixture has videos without beta"


class Recorder(torch.nn.Module):
    """An inner model that keeps the batch it was called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.note = "inner attribute"

    def forward(self, batch):
        self.seen = batch
        return {"logits": batch["pooled"]["a"].sum(1, keepdim=True) * self.w}


def test_wrapper_is_the_direct_formula():
    mean_a, std_a = torch.tensor([1.0, -2.0, 5.0]), torch.tensor([2.0, 0.5, 0.0])   # a constant dimension: std 0
    mean_s, std_s = torch.tensor([10.0, 0.0]), torch.tensor([4.0, 1.0])
    model = Standardized(Recorder(), {"pooled": {"a": (mean_a, std_a)}, "sequence": {"s": (mean_s, std_s)}})
    a = torch.tensor([[3.0, 1.0, 7.0], [0.0, 0.0, 0.0]])
    s = torch.tensor([[[14.0, 1.0], [6.0, -1.0], [0.0, 0.0]], [[2.0, 3.0], [0.0, 0.0], [0.0, 0.0]]])
    batch = {"pooled": {"a": a}, "sequence": {"s": s}, "lengths": {"s": torch.tensor([2, 1])},
             "present": {"a": torch.tensor([True, False]), "s": torch.tensor([True, True])}}
    model(batch)
    seen = model.model.seen
    expected_a = torch.stack([(a[0] - mean_a) / torch.tensor([2.0, 0.5, 1.0]), torch.zeros(3)])   # absent row stays 0
    torch.testing.assert_close(seen["pooled"]["a"], expected_a)
    expected_s = torch.zeros_like(s)
    expected_s[0, :2] = (s[0, :2] - mean_s) / std_s
    expected_s[1, :1] = (s[1, :1] - mean_s) / std_s          # padded steps stay 0
    torch.testing.assert_close(seen["sequence"]["s"], expected_s)
    torch.testing.assert_close(batch["pooled"]["a"], a, msg="the caller's batch is not modified")
    assert model.note == "inner attribute"                    # attributes reach the inner model
    assert {k for k in model.state_dict()} == {"model.w", "mean_0", "scale_0", "mean_1", "scale_1"}


def test_train_standardize_scales_apart_round_trip(tmp_path):
    """alpha x 1,000 next to beta: the paper Early Fusion sees beta only after standardizing. The
    statistics are the training split's, saved with the run, and the reloaded model predicts the same."""
    make_store(tmp_path, n=400)
    cat = Catalog(tmp_path / "catalog.sqlite")
    store = FeatureStore(tmp_path, cat)
    _, alpha, _ = store.read_pooled("alpha", [f"clip{i:04d}" for i in range(400)])
    with store.writer("alpha", "pooled", 6) as w:   # rewrite alpha on a scale 1,000 times larger
        for i in range(400):
            w.add(f"clip{i:04d}", alpha[i].astype(np.float32) * 1000)
    cat.close()
    base = ["train.epochs=15", "train.modalities=[alpha,beta]"]
    plain = run_train(config(*base), tmp_path, "early_fusion", run_name="plain")
    std = run_train(config(*base, "train.standardize=true"), tmp_path, "early_fusion", run_name="std")
    # 1 video in 7 has no beta, so about 0.93 is the ceiling; 40 val videos
    assert std["best"]["accuracy"] >= 0.75 and std["best"]["accuracy"] >= plain["best"]["accuracy"] + 0.15, \
        (std["best"], plain["best"])

    ckpt = read_checkpoint(tmp_path / "runs" / "std" / "best.pt")
    cat = Catalog(tmp_path / "catalog.sqlite")
    train_ids = ckpt["split_ids"]["train"]
    want = input_stats(make_dataset(FeatureStore(tmp_path, cat), train_ids, ckpt["inputs"]))
    cat.close()
    torch.testing.assert_close(ckpt["extra"]["input_stats"]["pooled"]["alpha"][0], want["pooled"]["alpha"][0])
    assert "input_stats" not in read_checkpoint(tmp_path / "runs" / "plain" / "best.pt")["extra"]

    model, _ = load_model(tmp_path / "runs" / "std" / "best.pt")
    assert isinstance(model, Standardized)
    evaluated = run_evaluate(config(*base), tmp_path, tmp_path / "runs" / "std", split="val", show=False)["metrics"]
    assert evaluated["accuracy"] == pytest.approx(std["best"]["accuracy"])


def test_build_model_without_stats_is_unwrapped():
    dims = {"pooled": {"a": 3}}
    assert not isinstance(build_model("early_fusion", {"hidden": 4}, dims, 2, False), Standardized)
    stats = {"pooled": {"a": (torch.zeros(3), torch.ones(3))}}
    assert isinstance(build_model("early_fusion", {"hidden": 4}, dims, 2, False, {"input_stats": stats}), Standardized)


def test_wrapper_survives_ema_copy_and_keeps_the_statistics_fixed():
    """train.ema deep-copies the model (AveragedModel, use_buffers=True): the copy standardizes
    the same way, and averaging leaves the statistics as they were."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    stats = {"pooled": {"a": (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))}}
    model = build_model("early_fusion", {"hidden": 4}, {"pooled": {"a": 3}}, 2, False, {"input_stats": stats})
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.mean_0, stats["pooled"]["a"][0])
    torch.testing.assert_close(ema.module.scale_0, torch.full((3,), 0.5))
    batch = {"pooled": {"a": torch.randn(5, 3)}, "sequence": {}, "lengths": {},
             "present": {"a": torch.ones(5, dtype=torch.bool)}}
    assert ema.module(batch)["logits"].shape == (5, 2)
