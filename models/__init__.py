"""The multimodal classifiers. Every model is built the same way,

    model = build_model(name, cfg.models[name], dims={"pooled": {m: D}, "sequence": {m: D}},
                        num_classes=C, multilabel=bool, extra={...})

and called on a collated batch (pipeline.dataset.collate_batch):

    out = model(batch)   # {"logits": [B, C], "aux_loss": scalar, "losses": {name: scalar}}

`MODELS` is a plain dict from the name used on the command line (and the YAML file stem in
configs/models/) to the class. The sequence models live in their own files and are imported
lazily so that one file failing to import does not take the others down with it.

Config: `build_model` merges the given section (cfg.models.<name>, or any partial dict) over
configs/models/<name>.yaml strictly (`resolved_config`): a key the YAML does not declare is a
one-line ConfigError naming the closest one, and the class receives one flat, complete dict,
so it reads `cfg[key]` and holds no default of its own (the YAML is the only place for them).

Variants: a model's YAML says `variant: paper` (the default: what its paper describes) or a
named adaptation such as `variant: tuned` (docs/models.md). Its top-level keys are shared by
every variant; each variant's own keys sit in a block named after it (`paper:`, `tuned:`), and
only the chosen block reaches the class, lifted to the top level. A variant that only swaps a
few layers is read by the class itself (the fusion baselines); one with its own forward is its
own class. `VARIANTS` lists every model's variants besides `paper`; `model_class(name, variant)`
picks the class. Shared heads (label prior, attention networks) live in models/heads.py.
"""
from __future__ import annotations

import copy
import importlib

from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.config import CONFIG_DIR, ConfigError, read_yaml, strict_section

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


# Every variant besides the default `paper` (the class in MODELS) -> its class. The fusion
# baselines' variants are the same class (it reads `variant`); the others have their own forward.
VARIANTS: dict[str, dict[str, type | str]] = {
    "early_fusion": {"tuned": EarlyFusion},
    "late_fusion": {"tuned": LateFusion},
    "early_att": {"tuned": EarlyAtt},
    "late_att": {"tuned": LateAtt},
    "nmcl": {"tuned": NMCLTuned},
    "marnet": {"tuned": "models.marnet_tuned:MARNetTuned"},
    "mart": {"masking-only": "models.mart_masking:MaskedTemporalModel"},
}

# Keys whose value maps modality names (any name a store holds) to a setting: not a fixed set
# of options, so a user's map is merged over the YAML's one without the strict check.
MODALITY_MAPS: dict[str, tuple[str, ...]] = {"videotag": ("lstm_sizes",), "late_fusion": ("paper.layers", "tuned.layers")}


# Checkpoints written before the variant blocks held MARNet's and MART's keys in one flat section:
# where a renamed or ambiguous old key lives now (the others go to the block that declares them).
LEGACY_KEYS: dict[str, dict[str, str]] = {"marnet": {"tuned_heads": "tuned.heads", "heads": "paper.heads"}}


def variant_names(name: str) -> tuple[str, ...]:
    """The variants of a model, the default first: ("paper", "tuned") for NMCL."""
    return ("paper", *VARIANTS.get(name, {}))


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


def _plain(cfg) -> dict:
    """A model section (DictConfig, dict or None) as a fresh plain dict."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(dict(cfg or {}))


def _reference(name: str) -> dict:
    return read_yaml(CONFIG_DIR / "models" / f"{name}.yaml")


def _block_keys(name: str, key: str, reference: dict) -> list[str]:
    """The variants whose block declares `key` when the top level does not."""
    return [] if key in reference else [v for v in variant_names(name) if key in (reference.get(v) or {})]


def resolved_config(name: str, cfg=None) -> dict:
    """What the class of model `name` receives: `cfg` (cfg.models.<name>, a partial dict or None)
    merged strictly over configs/models/<name>.yaml, the chosen variant's block lifted to the top
    level (its keys win) and the other blocks dropped. Unknown keys and variants: ConfigError."""
    given, maps = _plain(cfg), {}
    for path in MODALITY_MAPS.get(name, ()):
        *parents, key = path.split(".")
        node = given
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), dict):
            maps[(*parents, key)] = node.pop(key)
    _check_placement(name, given)
    flat = strict_section(f"models/{name}", given, f"models.{name}", variants=variant_names(name))
    variant = flat.get("variant", "paper")
    if variant not in variant_names(name):
        raise ConfigError(f"models.{name}.variant must be one of {', '.join(variant_names(name))}; got {variant!r}")
    for (*parents, key), value in maps.items():
        if not parents or parents == [variant]:   # another variant's block is dropped with the rest of it
            flat[key] = {**flat[key], **value} if isinstance(flat.get(key), dict) else value
    return flat


def _check_placement(name: str, given: dict) -> None:
    """A variant's own key given at the top level: name its block (the strict merge's "did you
    mean" can only guess from the spelling)."""
    reference = _reference(name)
    for key in given:
        owners = _block_keys(name, key, reference)
        if owners:
            raise ConfigError(f"unknown config key {key} (models.{name}); it is a key of variant "
                              f"{' / '.join(owners)}: models.{name}.{owners[0]}.{key}")


def legacy_config(name: str, cfg) -> dict:
    """A model section saved before the variant blocks (MARNet and MART checkpoints had one flat
    section) in today's layout: each top-level key that only a variant's block declares moves into
    that block. For loading old checkpoints only; a section in today's layout comes back as it is."""
    given, reference = _plain(cfg), _reference(name)
    for key in list(given):
        places = [LEGACY_KEYS[name][key]] if key in LEGACY_KEYS.get(name, {}) else \
            [f"{v}.{key}" for v in _block_keys(name, key, reference)]
        value = given.pop(key) if places else None
        for block, new in (p.split(".") for p in places):
            given.setdefault(block, {}).setdefault(new, value)
    return given


def build_model(name: str, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None) -> nn.Module:
    dims = {"pooled": dict(dims.get("pooled", {})), "sequence": dict(dims.get("sequence", {}))}
    if len(set(dims["pooled"]) | set(dims["sequence"])) < 1:
        raise ValueError("no input modality: dims has neither pooled nor sequence features")
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    flat, extra = resolved_config(name, cfg), dict(extra or {})
    model = model_class(name, flat.get("variant"))(flat, dims, int(num_classes), bool(multilabel), extra)
    if extra.get("input_stats"):   # train.standardize: the statistics travel with the model
        from .standardize import Standardized
        model = Standardized(model, extra["input_stats"])
    return model
