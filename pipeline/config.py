"""One config system: OmegaConf YAML files in `configs/`, merged in a fixed order.

    configs/pipeline.yaml            -> the top level (decode, scan, extract, store, ...)
    configs/<section>.yaml            -> cfg.<section>          (e.g. complete.yaml, train.yaml)
    configs/extractors/<name>.yaml    -> cfg.extractors.<name>
    configs/models/<name>.yaml        -> cfg.models.<name>
    configs/importers/yt8m.yaml       -> cfg.importers.yt8m   (the other files there are import specs)
    --config FILE                     -> merged on top
    key=value overrides               -> merged last (OmegaConf dotlist syntax)

These YAML files are the only defaults: every key the code reads is declared (and commented)
in one of them, and the config is read strictly (OmegaConf struct mode), so a mistyped key
(`train.epoch=5`) is an error naming the key it probably meant (`train.epochs`), never a
silently ignored setting. `extractors.*` and `models.*` may hold new sections (a modality YAML
of your own); each section is merged strictly over the YAML that declares its reader's keys
(`strict_section`), so a mistyped extractor or model key is an error too. Every output of the
pipeline records the resolved config (`to_dict`).
"""
from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import NotFound, UsageError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
OPEN_GROUPS = ("extractors", "models")   # sections owned by the extractor / model that reads them


class ConfigError(UsageError):
    """An unknown key, a malformed override or an unreadable --config file."""


def defaults() -> DictConfig:
    """configs/ merged into one tree (no --config, no overrides), struct mode on. The files are
    read with PyYAML's C loader into one plain dict and wrapped once: OmegaConf.load per file
    plus a node copy per assignment cost most of `scan`'s start-up."""
    tree = read_yaml(CONFIG_DIR / "pipeline.yaml")
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.name != "pipeline.yaml":
            tree[path.stem] = read_yaml(path)
    for group in OPEN_GROUPS:
        tree[group] = {p.stem: read_yaml(p) for p in sorted((CONFIG_DIR / group).glob("*.yaml"))}
    tree["importers"] = {"yt8m": read_yaml(CONFIG_DIR / "importers" / "yt8m.yaml")}
    cfg = OmegaConf.create(tree)
    OmegaConf.set_struct(cfg, True)
    for group in OPEN_GROUPS:
        OmegaConf.set_struct(cfg[group], False)
    return cfg


def read_yaml(path: Path) -> dict:
    """One YAML file as a plain dict, read as OmegaConf.load reads it (see `_loader`), fast."""
    with open(path, encoding="utf-8") as f:
        return _loader().load_file(f)


@functools.lru_cache(maxsize=1)
def _loader():
    """PyYAML's C loader, reading values as OmegaConf.load does: `1e-5` is a float (YAML 1.1
    would keep it a string without a dot) and dates stay strings."""
    import re

    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        @classmethod
        def load_file(cls, f) -> dict:
            return yaml.load(f, Loader=cls) or {}

    Loader.yaml_implicit_resolvers = {k: [(t, r) for t, r in v if t != "tag:yaml.org,2002:timestamp"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def _known_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items_ex(resolve=False):
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig) and k not in OPEN_GROUPS:
            keys += _known_keys(v, full + ".")
    return keys


def _unknown_key(e: ConfigKeyError, base: DictConfig, where: str) -> ConfigError:
    import difflib

    key = getattr(e, "full_key", None) or str(e)
    close = difflib.get_close_matches(key, _known_keys(base), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; every key is declared in configs/*.yaml"
    return ConfigError(f"unknown config key {key} ({where}){hint}")


def _merge(cfg: DictConfig, other: DictConfig, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except ConfigKeyError as e:
        raise _unknown_key(e, cfg, where) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None


def strict_section(reference: str | Path, given, where: str, variants: Iterable[str] = ()) -> dict:
    """`given` (cfg.extractors.<name> / cfg.models.<name>, a dict or DictConfig, or None) merged
    over the reference YAML that declares every key its reader takes, read strictly: a key the
    reference does not declare is a ConfigError naming the closest one. `reference` is a path, or
    "extractors/visual" / "models/nmcl" under configs/.

    `variants` names the blocks that hold a variant's own keys (NMCL's `paper:` / `tuned:`): the
    block named by the section's `variant` is lifted to the top level (its keys win) and every
    variant block is dropped, so the reader sees one flat dict. The result is a plain dict."""
    path = Path(reference) if Path(reference).suffix else CONFIG_DIR / f"{reference}.yaml"
    base = OmegaConf.create(read_yaml(path))
    OmegaConf.set_struct(base, True)
    if given is not None:
        extra = given if isinstance(given, DictConfig) else OmegaConf.create(dict(given))
        base = _merge(base, extra, where)
    out = OmegaConf.to_container(base, resolve=True)
    blocks = {v: out.pop(v) for v in list(variants) if v in out}
    chosen = blocks.get(out.get("variant"))
    if isinstance(chosen, dict):
        out.update(chosen)
    return out


def load_config(config_file: str | Path | Sequence[str | Path] | None = None,
                overrides: Iterable[str] = ()) -> DictConfig:
    """The defaults, then each --config file in order (a preset first, say), then the overrides."""
    cfg = defaults()
    files = [] if config_file is None else [config_file] if isinstance(config_file, (str, Path)) else list(config_file)
    for config_file in files:
        if not Path(config_file).is_file():
            raise NotFound(f"--config {config_file}: no such file")
        try:
            extra = OmegaConf.load(config_file)
        except Exception as e:
            raise ConfigError(f"--config {config_file} is not valid YAML: {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, extra, f"in {config_file}")
    overrides = list(overrides)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {' '.join(bad)}")
        try:
            dotlist = OmegaConf.from_dotlist(overrides)
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, dotlist, "on the command line")
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def versions() -> dict:
    """Versions of everything that can change an output; recorded next to every output."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    """Read from the installed packages' metadata: importing torchvision or transformers just to
    read a version costs seconds of start-up."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "pipeline": __import__("pipeline").__version__,
           "platform": platform.platform()}
    for module, dist in (("numpy", "numpy"), ("torch", "torch"), ("torchvision", "torchvision"),
                         ("torchaudio", "torchaudio"), ("decord", "decord"), ("av", "av"),
                         ("transformers", "transformers"), ("sklearn", "scikit-learn")):
        try:   # an imported module's own string when loaded (torch's carries the CUDA build: +cu130)
            out[module] = getattr(sys.modules.get(module), "__version__", None) or version(dist)
        except PackageNotFoundError:  # an optional library that is not installed is simply not recorded
            pass
    return out


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name} was asked for but torch sees no CUDA device (use --device cpu)")
    return name
