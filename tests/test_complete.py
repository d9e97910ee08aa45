"""Missing-modality completion (pipeline/complete.py): the algorithm on synthetic low-rank
matrices with whole blocks missing, and the stage through a real store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.catalog import Catalog, VideoRow
from pipeline.complete import run_complete
from pipeline.lowrank import lambda_max, soft_impute_als
from pipeline.config import load_config
from pipeline.dataset import FeatureDataset
from pipeline.store import FeatureStore

BLOCKS = {"visual": 40, "audio": 20, "text": 30}


def low_rank_with_holes(n=600, rank=5, noise=0.01, missing=0.3, seed=0):
    """(X with zeros in the holes, block mask [n, 3], noise-free signal, elementwise hole mask)."""
    g = torch.Generator().manual_seed(seed)
    d = sum(BLOCKS.values())
    signal = torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g) / rank ** 0.5
    X = signal + noise * torch.randn(n, d, generator=g)
    observed = torch.ones(n, len(BLOCKS), dtype=torch.bool)
    rows = torch.randperm(n, generator=g)[: int(missing * n)]
    observed[rows, torch.randint(0, len(BLOCKS), (len(rows),), generator=g)] = False
    cols = torch.cat([torch.full((w,), k) for k, w in enumerate(BLOCKS.values())])
    holes = ~observed[:, cols]
    X[holes] = 0
    return X, observed, signal, holes


@pytest.mark.parametrize("method", ["als", "softimpute-als"])
def test_recovers_low_rank_matrix_with_missing_blocks(method):
    X, observed, signal, holes = low_rank_with_holes()
    completed, info = soft_impute_als(X, observed, rank=10, lam=0.01 * lambda_max(X), tol=1e-6, max_iters=300,
                                      blocks=BLOCKS, method=method)
    error = float((completed - signal)[holes].norm() / signal[holes].norm())
    # Stated tolerance: hidden blocks within 10 % (relative Frobenius error) of the noise-free
    # signal, where filling them with the column mean (0 here) scores 100 %.
    assert error < 0.10, f"{method}: relative error {error:.3f} on the hidden blocks"
    assert info["converged"] and info["iterations"] > 1
    objectives = [h["objective"] for h in info["history"]]
    # non-increasing, up to the float32 rounding of the expanded sums F is computed from (~1e-5)
    assert all(b <= a * (1 + 1e-4) for a, b in zip(objectives[1:], objectives[2:])), "objective went up"


def test_observed_entries_unchanged_and_input_untouched():
    X, observed, _, holes = low_rank_with_holes(n=200)
    before = X.clone()
    completed, _ = soft_impute_als(X, observed, rank=6, lam=1.0, max_iters=20, blocks=BLOCKS)
    assert torch.equal(completed[~holes], before[~holes])
    assert torch.equal(X, before)                        # not in place unless asked
    assert not torch.equal(completed[holes], before[holes])  # the holes were filled (not left at 0)
    same, _ = soft_impute_als(X, observed, rank=6, lam=1.0, max_iters=20, blocks=BLOCKS, inplace=True)
    assert same.data_ptr() == X.data_ptr() and torch.equal(same, completed)


def test_deterministic_given_seed():
    X, observed, _, _ = low_rank_with_holes(n=300)
    a, info_a = soft_impute_als(X, observed, rank=8, lam=1.0, max_iters=15, blocks=BLOCKS, seed=3)
    b, info_b = soft_impute_als(X, observed, rank=8, lam=1.0, max_iters=15, blocks=BLOCKS, seed=3)
    assert torch.equal(a, b) and info_a["objective"] == info_b["objective"]


def test_block_missing_for_every_row_is_a_clear_error():
    X, observed, _, _ = low_rank_with_holes(n=100)
    observed[:, 1] = False
    with pytest.raises(ValueError, match="audio"):
        soft_impute_als(X, observed, rank=4, lam=1.0, blocks=BLOCKS)


def test_elementwise_mask_needs_softimpute_als():
    X, _, signal, _ = low_rank_with_holes(n=400, missing=0.0)
    g = torch.Generator().manual_seed(1)
    observed = torch.rand(X.shape, generator=g) > 0.2
    X = X.masked_fill(~observed, 0)
    with pytest.raises(ValueError, match="softimpute-als"):
        soft_impute_als(X, observed, rank=8, lam=1.0)
    completed, _ = soft_impute_als(X, observed, rank=8, lam=0.01 * lambda_max(X), tol=1e-6, max_iters=200,
                                   method="softimpute-als")
    assert torch.equal(completed[observed], X[observed])
    assert float((completed - signal)[~observed].norm() / signal[~observed].norm()) < 0.10


# -- the stage through a real store ---------------------------------------------------------------
def make_store(out, n=120, seed=0):
    """Three pooled modalities sharing a rank-4 structure; video i lacks audio when i % 4 == 1
    and text when i % 5 == 2; each modality has its own scale and offset (standardization)."""
    X, _, _, _ = low_rank_with_holes(n=n, rank=4, noise=0.01, missing=0.0, seed=seed)
    ids = [f"v{i:03d}" for i in range(n)]
    cat = Catalog(out / "catalog.sqlite")
    cat.upsert_videos([VideoRow(v, labels=["a" if i % 2 else "b"]) for i, v in enumerate(ids)])
    store = FeatureStore(out, cat, shard_size=32)
    lacks = {"audio": lambda i: i % 4 == 1, "text": lambda i: i % 5 == 2, "visual": lambda i: False}
    col = 0
    for k, (m, w) in enumerate(BLOCKS.items()):
        with store.writer(m, "pooled", w, {"extractor": m}) as wr:
            for i, v in enumerate(ids):
                if not lacks[m](i):
                    wr.add(v, (X[i, col:col + w] * (k + 1) * 3 + k).numpy())
        col += w
    return cat, store, ids, lacks


def test_run_complete_round_trip(tmp_path):
    cat, store, ids, lacks = make_store(tmp_path)
    cfg = load_config(overrides=["complete.rank=8", "complete.max_iters=50", "complete.lambda=0.01",
                                 "device=cpu"])
    result = run_complete(cfg, tmp_path, progress=False)
    assert not result["skipped"] and result["iterations"] >= 1
    infos = store.modalities()
    for m, w in BLOCKS.items():
        done = infos[f"{m}@completed"]
        assert done.layouts == {"pooled": w} and done.meta["observed_mask_of"] == m
        assert done.meta["rank"] == 8 and done.meta["iterations"] == result["iterations"]
        got_ids, completed, present = store.read_pooled(f"{m}@completed", ids)
        _, source, observed = store.read_pooled(m, ids)
        assert present.all(), "every video gets a completed row"
        assert np.array_equal(completed[observed], source[observed]), "observed rows copied as they are"
        assert np.isfinite(completed.astype(np.float32)).all()
        assert observed.sum() == len(ids) - sum(lacks[m](i) for i in range(len(ids)))
        if (~observed).any():
            # imputed rows carry the modality's own scale, not standardized units
            imputed, real = completed[~observed].astype(np.float32), source[observed].astype(np.float32)
            assert abs(imputed.mean() - real.mean()) < 0.5 * real.std()

    # The dataset sees every row as present and still knows which ones were observed.
    ds = FeatureDataset(store, ids, pooled=["audio@completed"])
    assert all(ds[i]["present"]["audio@completed"] for i in range(len(ids)))
    assert [ds[i]["observed"]["audio@completed"] for i in range(len(ids))] == [not lacks["audio"](i) for i in range(len(ids))]

    completed_audio = store.read_pooled("audio@completed", ids)[1]
    # Idempotent: nothing changed, so nothing is recomputed; force recomputes the same result.
    assert run_complete(cfg, tmp_path, progress=False)["skipped"]
    forced = load_config(overrides=["complete.rank=8", "complete.max_iters=50", "complete.lambda=0.01",
                                    "complete.force=true", "device=cpu"])
    files_before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*.npy"))
    again = run_complete(forced, tmp_path, progress=False)
    assert not again["skipped"] and again["objective"] == result["objective"]
    # The superseded completion is gone from disk and catalog: as many files as before, all in use.
    files_after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*.npy"))
    assert len(files_after) == len(files_before) and files_after != files_before
    in_use = {r[0] for r in cat.conn.execute("SELECT DISTINCT s.file FROM shards s JOIN features f USING (shard_id)")}
    assert {str(p.relative_to("store")) for p in files_after if ".offsets" not in p.name} == in_use
    assert np.array_equal(store.read_pooled("audio@completed", ids)[1], completed_audio)
    cat.close()


def test_run_complete_modality_missing_everywhere(tmp_path):
    cat, store, ids, _ = make_store(tmp_path, n=40)
    with store.writer("trajectory", "pooled", 6, {}):  # registered, never written for any live video
        pass
    store.catalog.register_modality("trajectory", "pooled", 6, {})
    cfg = load_config(overrides=["complete.modalities=[visual,trajectory]", "complete.rank=4", "device=cpu"])
    with pytest.raises(ValueError, match="trajectory"):
        run_complete(cfg, tmp_path, progress=False)
    cat.close()
