"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))

# Two cores on CI: keep torch from oversubscribing them in the test process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("MICROVIDEO_OFFLINE", "1")  # never try the network in tests
    yield tmp_path / "hub"
    torch.hub.set_dir(old)
