"""What every extractor shares: the `Features` record, the `Extractor` base class, the precision
switch (bf16 autocast + channels_last where the hardware runs it fast) and the weight-file
loader (torch hub cache with checksum, a clear error when a file is missing offline).

One family per file next to this one; `extractors/__init__.py` maps YAML `family:` names to them.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.weights import sha256_file  # noqa: F401  (the one file hasher; extractors import it from here)


@dataclass
class Features:
    """One video's output for one modality: a pooled vector and (optionally) a sequence."""

    pooled: np.ndarray                  # (D,) float32
    sequence: np.ndarray | None = None  # (T, D) float32: per frame / audio example / token / segment
    times: np.ndarray | None = None     # (T, 2) float64 start/end seconds of each sequence row
    segments: list | None = None        # [(start_s, end_s, text), ...] text made by the extractor (ASR)
    info: dict | None = None            # per-video facts the extractor found, e.g. ASR {"language": "en"}


def frame_spans(frame_times, duration: float | None = None) -> np.ndarray:
    """(T, 2) start/end seconds of sampled frames (the one timeline, `Features.times`): each frame
    stands for its time +- half the step between sampled frames (duration / T for a single
    frame), clipped to [0, duration], so uniformly sampled frames tile the clip."""
    t = np.asarray(frame_times, np.float64)
    if len(t) == 0:
        return np.zeros((0, 2))
    step = float(np.median(np.diff(t))) if len(t) > 1 else float(duration or 0.0)
    spans = np.stack([t - step / 2, t + step / 2], 1)
    upper = float(duration) if duration else spans[-1, 1]
    return np.clip(spans, 0.0, max(upper, float(t[-1])))


class WeightsNotFound(FileNotFoundError):
    """A pretrained weight file is not on disk and could not be downloaded."""


class Extractor:
    """Base class. Subclasses set `family`, `dim`, implement `extract` (and `fit` when they learn
    from the corpus). `cfg` is `cfg.extractors.<name>` (a dict or DictConfig)."""

    family: str = ""
    modality: str = ""
    needs_fit: bool = False
    dim: int = 0
    # The YAML under configs/extractors/ that declares every key this family reads, with its
    # default: the config is merged over it strictly (pipeline.config.strict_section), so a
    # mistyped key is an error and the code reads cfg[key] with no default of its own.
    defaults: str = ""
    # What `extract` reads of a Clip: frames | audio | title | subtitles | text (subtitles, else
    # the title). `missing_reason` says which of it was absent when a video gets no features.
    reads: str = "frames"

    def __init__(self, cfg: Mapping[str, Any] | None, device: str = "cpu", seed: int | None = None):
        cfg = _plain(cfg or {})
        seed = cfg.pop("seed", 0) if seed is None else seed   # the pipeline's seed, not a family key
        modality = cfg.get("modality")
        self.cfg = self.resolved(cfg)
        self.device = torch.device(device)
        self.modality = modality or self.modality or self.family
        self.seed = int(seed)
        self.fitted = not self.needs_fit

    @classmethod
    def resolved(cls, cfg: Mapping[str, Any] | None) -> dict:
        """`cfg` (a raw cfg.extractors.<name> section: dict, DictConfig or None) as the family reads
        it: the framework keys `seed` and `modality` dropped, merged strictly over the reference YAML
        `configs/extractors/<defaults>.yaml`, so every key is there and a mistyped one is a
        ConfigError naming the closest declared key. `__init__` sets `self.cfg` to this; class
        methods that get the raw section (`weights_spec`) call it themselves."""
        cfg = _plain(cfg or {})
        cfg.pop("seed", None)
        modality = cfg.pop("modality", None)
        if not cls.defaults:
            return cfg
        from pipeline.config import strict_section

        return strict_section(f"extractors/{cls.defaults}", cfg, f"extractors.{modality or cls.defaults}")

    # -- the interface -------------------------------------------------------------------------
    def extract(self, clips: list) -> list[Features | None]:
        raise NotImplementedError

    @classmethod
    def weights_spec(cls, cfg) -> list:
        """The pretrained files this family needs under `cfg` (= cfg.extractors.<name>), as
        [pipeline.weights.WeightFile], without loading anything: `run_pipeline.py weights
        list|fetch|verify` reads it. Build entries with pipeline.weights.torchvision_weights /
        torch_file(url) / hf_repo(id, revision) / local_file(path). Default: none."""
        return []

    def views(self) -> dict:
        """The frames this extractor needs beyond `clip.frames`: {name: pipeline.decode.View}.
        The decode pass produces the union of every extractor's views once per video; read them
        as clip.views[view.key()]. Default: none (the extractor uses clip.frames / clip.audio)."""
        return {}

    def worker_fn(self):
        """A picklable function of one Clip that the decode worker processes run for this
        extractor, or None. Meant for CPU-bound per-video work (optical flow and tracking) that
        would otherwise hold up the main process while the networks wait; its result reaches
        `extract` (and `fit`) as clip.meta["prepared"][self.modality] (an exception it raised
        is left there instead: re-raise it so that only this video fails)."""
        return None

    def missing_reason(self, clip) -> str:
        """Why `extract` returned None for `clip`, recorded in the catalog beside the "missing"
        status: the input of `reads` that the clip lacks (a family with reasons of its own, ASR's
        "no words", overrides this)."""
        if self.reads == "audio":
            if clip.audio is None or len(clip.audio) == 0:
                return clip.meta.get("audio_error", "no audio track")
            limit = getattr(self, "silence_dbfs", None)
            if limit is not None:
                from .mfcc import rms_dbfs

                if rms_dbfs(clip.audio) < limit:
                    return f"silent audio track (RMS {rms_dbfs(clip.audio):.0f} dBFS < silence_dbfs {limit:g})"
        if self.reads == "title" and not str(clip.title or "").strip():
            return "no title"
        if self.reads == "subtitles" and not clip.subtitles:
            return "no subtitles (no sidecar .srt/.vtt/.ass, no embedded stream)"
        if self.reads == "text" and not clip.subtitles and not str(clip.title or "").strip():
            return "no subtitles and no title"
        if self.reads == "frames" and (clip.frames is None or len(clip.frames) == 0):
            return "no decoded frames"
        return f"{self.modality}: no features for this video"

    def fit(self, clips: list) -> None:
        raise TypeError(f"{type(self).__name__} learns nothing from the corpus (needs_fit=False)")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no fitted state, got keys {sorted(state)}")

    def metadata(self) -> dict:
        from pipeline.config import versions

        # `config` is what rebuilds this extractor (predict on new videos): the resolved section
        # and the seed that random weights and fitting depend on.
        return {"family": self.family, "modality": self.modality, "dim": self.dim,
                "device": str(self.device), "config": {**self.cfg, "seed": self.seed}, "versions": versions(),
                "fitted": self.fitted}

    def _check_fitted(self):
        if not self.fitted:
            raise RuntimeError(f"extractor {self.modality!r} ({self.family}) must be fit on the corpus "
                               "(or given its saved state) before extract()")


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is a pipeline dependency; plain dicts work without it
        pass
    return dict(cfg)


# -- precision ---------------------------------------------------------------------------------
def cpu_has_fast_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX). On older CPUs bf16
    is emulated and slower than fp32, so `precision: auto` stays in fp32 there."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    except OSError:  # not Linux: trust oneDNN's answer
        return True


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA and on CPUs with native bf16, else 'fp32'."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto|fp32|bf16, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def one_thread(device: torch.device | str | None = None):
    """Run small-tensor CPU work (trajectory maps, k-means, the DAE's 500-unit layers, the r x r
    LAPACK calls of pipeline/lowrank.py) on one thread: torch's intra-op threads and the BLAS /
    OpenMP pools of numpy, scipy and scikit-learn. For such work threads cost more in
    synchronisation than they gain, up to 20x slower when the cores are shared (measured: k-means
    512 x 20k points, 5 s on one thread vs 105 s on two under load; a rank-100 Cholesky inverse
    0.17 s instead of 0.1 ms). Throughput comes from the decode workers and from batching the big
    networks instead. `device`: where the work runs; on a GPU nothing is limited. None = CPU
    work of a caller without a device (or whose tensors may live anywhere: lowrank)."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _thread_pools().limit(limits=1):
            yield
    finally:
        torch.set_num_threads(old)


_POOLS: list = [None, -1]   # [threadpoolctl controller, len(sys.modules) when it was made]


def _thread_pools():
    """threadpoolctl's controller of the native thread pools loaded so far. Finding them scans
    every loaded library (~10 ms, against 0.1 ms for a limit through the controller), so it is
    redone only when modules were imported since: only an import loads a new native library."""
    if _POOLS[0] is None or _POOLS[1] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _POOLS[:] = [ThreadpoolController(), len(sys.modules)]
    return _POOLS[0]


# -- weights -----------------------------------------------------------------------------------
HASH_RE = re.compile(r"-([a-f0-9]{8,64})\.")




def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("MICROVIDEO_OFFLINE", "HF_HUB_OFFLINE", "TORCH_HUB_OFFLINE"))


def hub_checkpoint(url: str, timeout_s: float = 10.0) -> Path:
    """Path of `url`'s file in the torch hub cache (`torch.hub.get_dir()/checkpoints/<file>`),
    downloading it when absent. The sha256 prefix in the file name (torchvision / torch hub
    convention, e.g. resnet50-11ad3fa6.pth) is checked. Raises WeightsNotFound naming the file and
    the folder to put it in when it is absent and cannot be downloaded; the download attempt has
    a short socket timeout so an offline machine fails fast instead of hanging."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    name = os.path.basename(url)
    path = folder / name
    if not path.exists():
        if _offline():
            reason = "offline mode is set (MICROVIDEO_OFFLINE / HF_HUB_OFFLINE / TORCH_HUB_OFFLINE)"
        else:
            folder.mkdir(parents=True, exist_ok=True)
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout_s)
            try:
                from pipeline.weights import download  # rich progress bar, sha256, atomic write

                m = HASH_RE.search(name)
                download(url, path, sha256=m.group(1) if m else None, timeout_s=timeout_s)
                reason = ""
            except Exception as e:  # no network, DNS failure, HTTP error: all mean "not here"
                reason = f"download failed: {type(e).__name__}: {e}"
            finally:
                socket.setdefaulttimeout(old)
        if not path.exists():
            raise WeightsNotFound(
                f"pretrained weights {name} are not in {folder} and cannot be fetched ({reason}). "
                f"Download {url} on a machine with internet and copy it to {path} "
                f"(or set TORCH_HOME so that <TORCH_HOME>/hub/checkpoints/{name} exists), "
                f"or set `weights: random` in the extractor's YAML for untrained features.")
    m = HASH_RE.search(name)
    digest = sha256_file(path)
    if m and not digest.startswith(m.group(1)):
        raise ValueError(f"checksum mismatch for {path}: sha256 {digest[:16]}..., the file name "
                         f"expects a prefix {m.group(1)}; the file is corrupt or not the published one")
    return path
