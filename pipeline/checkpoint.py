"""Checkpoints: what a run saves (best.pt / last.pt) and how a model is rebuilt from one.

A checkpoint carries everything needed to rebuild the model without the training data: model
name and config, input modalities and dims, class names, the task type, the label graph /
embeddings the model was built with, the resolved config and library versions; plus, for
resuming, the optimizer, scheduler, early-stopping state, history and every RNG state.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .errors import NotFound
from .io import save_torch


def pack_extra(extra: dict) -> dict:
    """The co-occurrence matrix is C x C but sparse (3,862 classes: 60 MB dense): store only its
    non-zero entries."""
    out = dict(extra)
    if "label_cooccurrence" in out:
        dense = torch.as_tensor(out["label_cooccurrence"])
        nz = dense.nonzero().T
        out["label_cooccurrence"] = {"indices": nz, "values": dense[nz[0], nz[1]], "shape": list(dense.shape)}
    return out


def unpack_extra(extra: dict) -> dict:
    out = dict(extra)
    packed = out.get("label_cooccurrence")   # absent for models without a label graph
    if isinstance(packed, dict):
        dense = torch.zeros(packed["shape"], dtype=packed["values"].dtype)
        dense[packed["indices"][0], packed["indices"][1]] = packed["values"]
        out["label_cooccurrence"] = dense
    return out


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path, prefer=("last.pt",))
    if not path.exists():
        raise NotFound(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    return save_torch(path, state)


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from best.pt / last.pt (eval mode) and return it with the checkpoint."""
    from models import build_model, legacy_config

    ckpt = read_checkpoint(checkpoint)
    name = ckpt["model_name"]   # legacy_config: runs saved before the variant blocks (flat MARNet / MART sections)
    model = build_model(name, legacy_config(name, ckpt["model_cfg"]), ckpt["dims"], len(ckpt["class_names"]),
                        ckpt["multilabel"], unpack_extra(ckpt["extra"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def checkpoint_path(run_dir: Path, prefer=("best.pt", "last.pt")) -> Path:
    """best.pt, else last.pt, of a run folder; a one-line error naming the folder otherwise."""
    run_dir = Path(run_dir)
    for name in prefer:
        if (run_dir / name).exists():
            return run_dir / name
    if not run_dir.exists():
        runs = run_dir.parent
        have = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
        raise NotFound(f"no run {run_dir.name!r} in {runs}" + (f" (runs there: {', '.join(have)})" if have else
                                                             " (train one first: run_pipeline.py train)"))
    raise NotFound(f"no {' or '.join(prefer)} in {run_dir}: train first (run_pipeline.py train)")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
