"""One config system: OmegaConf YAML files in `configs/`, merged in a fixed order.

    configs/pipeline.yaml            -> the top level (decode, scan, extract, store, ...)
    configs/<section>.yaml            -> cfg.<section>          (e.g. complete.yaml, train.yaml)
    configs/extractors/<name>.yaml    -> cfg.extractors.<name>
    configs/models/<name>.yaml        -> cfg.models.<name>
    --config FILE                     -> merged on top
    key=value overrides               -> merged last (OmegaConf dotlist syntax)

Every output of the pipeline records the resolved config (`to_dict`).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_config(config_file: str | Path | None = None, overrides: Iterable[str] = ()) -> DictConfig:
    cfg = OmegaConf.load(CONFIG_DIR / "pipeline.yaml")
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.name != "pipeline.yaml":
            cfg[path.stem] = OmegaConf.load(path)
    for group in ("extractors", "models"):
        cfg[group] = {p.stem: OmegaConf.load(p) for p in sorted((CONFIG_DIR / group).glob("*.yaml"))}
    if config_file is not None:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(config_file))
    overrides = list(overrides)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like key=value, got {bad}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def versions() -> dict:
    """Versions of everything that can change an output; recorded next to every output."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict:  # importing torchvision/transformers to read a version is slow: once
    import numpy
    import torch

    out = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
           "pipeline": __import__("pipeline").__version__, "platform": platform.platform()}
    for name in ("torchvision", "torchaudio", "decord", "av", "transformers", "sklearn"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # an optional library that is not installed is simply not recorded
            pass
    return out


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but torch sees no CUDA device")
    return name
