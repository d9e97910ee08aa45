"""The torch Lucas-Kanade flow and the dense-trajectory descriptors of a fixed synthetic clip are
the ones recorded before `torch_flows` and `dense_trajectories` were cut into smaller functions
(tests/data/extractors_flow_golden.npz, written by `write_golden()` from the code of that time):
a refactoring that changes a number fails here. Recorded on CPU (torch 2.11); small tolerances
absorb last-bit differences of another BLAS, not a changed algorithm."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from extractors.optical_flow import torch_flows
from extractors.trajectory import TYPES, dense_trajectories, one_thread
from pipeline.demo import moving_stripes

GOLDEN = Path(__file__).parent / "data" / "extractors_flow_golden.npz"
PARAMS = {"short_side": 112, "track_length": 8, "grid_step": 5, "temporal_cells": 2, "patch": 16,
          "start_stride": 2, "min_std": 0.8, "flow": "torch", "raft_model": "raft_small", "raft_weights": "C_T_V2"}


def clip_frames() -> np.ndarray:
    return moving_stripes(12, 96, 128, (200, 90, 40), 13, (2.3, -0.8), seed=3)


def summary() -> dict[str, np.ndarray]:
    """What is compared: the flow on a 4-px grid, and per descriptor type the number of tracks,
    the column means and every 25th row; plus where the tracks sit in the clip."""
    frames = clip_frames()
    with one_thread(torch.device("cpu")):
        flow = torch_flows(frames[:6]).numpy()
        d = dense_trajectories(frames, PARAMS)
    out = {"flow": flow[:, ::4, ::4], "when": d["when"]}
    for k in TYPES:
        out[f"{k}_mean"] = d[k].mean(0)
        out[f"{k}_rows"] = d[k][::25]
    return out


def write_golden() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **summary())


def test_flow_and_trajectories_match_the_recorded_outputs():
    want = np.load(GOLDEN)
    got = summary()
    assert sorted(got) == sorted(want.files)
    assert len(got["when"]) == len(want["when"]) > 100          # the same tracks survive the pruning
    for k in want.files:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
