"""The multimodal classifiers. Every model is built the same way,

    model = build_model(name, cfg.models[name], dims={"pooled": {m: D}, "sequence": {m: D}},
                        num_classes=C, multilabel=bool, extra={...})

and called on a collated batch (pipeline.dataset.collate_batch):

    out = model(batch)   # {"logits": [B, C], "aux_loss": scalar, "losses": {name: scalar}}

`MODELS` is a plain dict from the name used on the command line (and the YAML file stem in
configs/models/) to the class. The sequence models live in their own files and are imported
lazily so that one file failing to import does not take the others down with it.

Variants: a model's YAML says `variant: paper` (the default: what its paper describes) or a
named adaptation such as `variant: tuned` (docs/models-nmcl.md). A variant that only swaps a few
layers is read by the class itself (the fusion baselines); one with its own forward is its own
class, listed in `VARIANTS` (model -> {variant: class}); `model_class(name, variant)` picks it.
Shared heads (label prior, attention networks) live in models/heads.py.
"""
from __future__ import annotations

import importlib

from torch import nn

from .fusion import EarlyAtt, EarlyFusion, LateAtt, LateFusion
from .marnet import MARNet
from .nmcl import NMCL, NMCLTuned

MODELS: dict[str, type | str] = {
    "early_fusion": EarlyFusion,
    "late_fusion": LateFusion,
    "early_att": EarlyAtt,
    "late_att": LateAtt,
    "nmcl": NMCL,
    "marnet": MARNet,
    # "module:Class", imported on first use
    "videotag": "models.videotag:AttentionLSTMTagger",
    "netvlad": "models.netvlad:NetVLADFusion",
    "mart": "models.mart:MART",
    "sun": "models.sun:SunNet",
}


# Variants with a class of their own (the default, `paper`, is the class in MODELS).
VARIANTS: dict[str, dict[str, type | str]] = {
    "nmcl": {"tuned": NMCLTuned},
    "marnet": {"tuned": "models.marnet_tuned:MARNetTuned"},
    "mart": {"masking-only": "models.mart_masking:MaskedTemporalModel"},
}


def model_class(name: str, variant: str | None = None) -> type:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cls = VARIANTS.get(name, {}).get(variant, MODELS[name]) if variant else MODELS[name]
    if isinstance(cls, str):
        module, attr = cls.split(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls


def available_models() -> list[str]:
    """Names whose class can be imported right now (all of them in a complete checkout)."""
    out = []
    for name in MODELS:
        try:
            model_class(name)
        except ImportError:
            continue
        out.append(name)
    return out


def build_model(name: str, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None) -> nn.Module:
    dims = {"pooled": dict(dims.get("pooled", {})), "sequence": dict(dims.get("sequence", {}))}
    if len(set(dims["pooled"]) | set(dims["sequence"])) < 1:
        raise ValueError("no input modality: dims has neither pooled nor sequence features")
    variant = (cfg or {}).get("variant")
    return model_class(name, variant)(cfg or {}, dims, int(num_classes), bool(multilabel), dict(extra or {}))
