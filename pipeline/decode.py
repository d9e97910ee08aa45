"""Decode one video into a `Clip`: sampled RGB frames, the views extractors declared, the mono
audio track, the title and the time-stamped subtitles.

Frames are chosen in time: the presentation timestamps of every frame are read from the
container (cheap: packets are demuxed, not decoded), target times are spread over the duration
(uniform by default; `sampling: keyframes | shots`, see `pipeline.views`), and each target takes
the decoded frame whose timestamp is nearest. Sampling in time rather than in frame index keeps
variable-frame-rate clips uniform, and makes both backends (`pipeline.backends`) pick the same
frames: decord when only uniform `clip.frames` are asked for, one PyAV pass that fills every
view otherwise (decode once, many views).

The file is read once, by `pipeline.probe` (the demux pass).

Damaged files are salvaged as `ffmpeg -i clip -f null -` salvages them: rejected packets are
skipped, samples take the nearest frame that decoded, and `clip.warnings` says what was lost;
only a file with no decodable video frame raises DecodeError. Animated GIF goes through PyAV,
animated WebP through Pillow (PyAV's FFmpeg has no animated-WebP decoder).

Rotation metadata (the display matrix) is applied, so frames come out upright.
Per-video time limits are enforced by the caller's process pool (`pipeline.extract`), because a
decoder stuck inside C code cannot be interrupted from Python in the same process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .probe import DecodeError, probe  # noqa: F401  (DecodeError: callers import it from here)


@dataclass
class Clip:
    """Everything the extractors see of one video.

    frames:      (T, H, W, 3) uint8 RGB, upright, short side resized to `short_side`
    frame_times: (T,) float64 presentation time of each sampled frame in seconds
    frame_indices: (T,) int64 index of each sampled frame in presentation order
    audio:       (S,) float32 mono in [-1, 1] at `sample_rate`, or None when the file has no audio
    title:       free text from the labels/titles sidecar, or None (never the file name)
    """

    video_id: str
    frames: np.ndarray
    frame_times: np.ndarray
    frame_indices: np.ndarray
    audio: np.ndarray | None
    sample_rate: int
    title: str | None
    duration: float
    fps: float
    rotation: int = 0
    width: int = 0
    height: int = 0
    backend: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # Extra views of the same decode pass, keyed by `View.key()` (see `View`): uint8 arrays,
    # (T, H, W, C) for frame views, (N, T, H, W, C) for windows; `view_times[key]` is (T, 2) or
    # (N, 2) start/end seconds per frame or per window.
    views: dict[str, np.ndarray] = field(default_factory=dict)
    view_times: dict[str, np.ndarray] = field(default_factory=dict)
    # Time-stamped text of the video: [(start_s, end_s, text), ...] from a sidecar .srt/.vtt/.ass
    # or an embedded subtitle stream; None when the video has none.
    subtitles: list[tuple[float, float, str]] | None = None
    warnings: dict[str, int] = field(default_factory=dict)   # e.g. {"lost_packets": 3, "lost_frames": 3}

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


@dataclass(frozen=True)
class View:
    """One set of frames an extractor needs from the decode pass (decode once, many views).

    kind: "uniform"   num_frames frames at the centres of equal segments (or one every 1/fps s)
          "window"    windows of num_frames consecutive frames resampled to `fps`, a new window
                      every `stride` frames (default num_frames), the last one ending at the
                      clip's end; a clip shorter than one window gives one window padded with
                      its last frame (pipeline.views.window_starts)
          "keyframes" the I-frames (at most num_frames, evenly chosen among them)
          "shots"     one frame (the middle) per shot of PySceneDetect's content detector
    short_side: resize so the short side has this many pixels (None: as decoded)
    gray:       one channel (C = 1)
    max_windows: window views: at most this many windows, spread evenly over the clip (None: all)
    """

    kind: str = "uniform"
    num_frames: int = 16
    fps: float | None = None
    stride: int | None = None
    short_side: int | None = 224
    gray: bool = False
    max_windows: int | None = None

    def key(self) -> str:
        """Name of this view in `Clip.views`; equal views of two extractors share one key."""
        parts = [self.kind, f"n{self.num_frames}", f"s{self.short_side}"]
        if self.fps:
            parts.append(f"fps{self.fps:g}")
        if self.stride:
            parts.append(f"st{self.stride}")
        if self.gray:
            parts.append("gray")
        if self.max_windows:
            parts.append(f"max{self.max_windows}")
        return "-".join(parts)


SAMPLINGS = ("uniform", "keyframes", "shots")


@dataclass
class DecodeOptions:
    """`decode:` of configs/pipeline.yaml, plus the extra views the run's extractors declared.
    sampling: what `clip.frames` holds: uniform (num_frames, or one every 1/fps s up to
    max_frames), keyframes (the I-frames, at most max_frames) or shots (one frame per shot)."""

    backend: str = "auto"
    num_frames: int = 16
    fps: float | None = None
    max_frames: int = 64
    short_side: int = 224
    sample_rate: int = 16000
    audio: bool = True
    sampling: str = "uniform"
    views: dict[str, View] = field(default_factory=dict)

    def __post_init__(self):
        # dataclasses.asdict (a retry with another backend) turns the views into dicts
        self.views = {k: v if isinstance(v, View) else View(**v) for k, v in (self.views or {}).items()}
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"decode.sampling must be one of {'|'.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"decode.backend must be auto|decord|pyav, got {self.backend!r}")
        if self.backend == "decord" and (self.views or self.sampling != "uniform"):
            raise ValueError("decode.backend: decord gives only uniformly sampled frames; extra views "
                             f"({', '.join(self.views) or 'sampling: ' + self.sampling}) need backend auto or pyav")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], views: Mapping[str, View] | None = None) -> "DecodeOptions":
        """From `cfg.decode` (unknown keys such as timeout_s and workers are the caller's), with
        the union of the extractors' views (`pipeline.views.collect_views`)."""
        kwargs = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg and k != "views"}
        return cls(**kwargs, views=dict(views or {}))

    def main_view(self) -> View:
        """`clip.frames` as a view."""
        if self.sampling == "uniform":
            n = self.max_frames if self.fps else self.num_frames
            return View("uniform", num_frames=n, fps=self.fps, short_side=self.short_side)
        return View(self.sampling, num_frames=self.max_frames, short_side=self.short_side)


def sample_times(duration: float, num_frames: int, fps: float | None = None, max_frames: int = 64) -> np.ndarray:
    """Target times: the centres of `num_frames` equal segments of [0, duration) (TSN-style), or
    one every 1/fps seconds (at most `max_frames`)."""
    if fps:
        count = int(min(max_frames, max(1, np.floor(duration * fps))))
        return (np.arange(count) + 0.5) / fps
    return (np.arange(num_frames) + 0.5) * duration / num_frames


def nearest_indices(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest each target (frame_times sorted ascending)."""
    pos = np.searchsorted(frame_times, targets)
    pos = np.clip(pos, 1, len(frame_times) - 1) if len(frame_times) > 1 else np.zeros_like(pos)
    left = frame_times[pos - 1] if len(frame_times) > 1 else frame_times[pos]
    choose_left = (targets - left) <= (frame_times[pos] - targets)
    return np.where(choose_left & (pos > 0), pos - 1, pos).astype(np.int64)


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, both even (what h264 and most
    resizers like), aspect ratio kept."""
    if not short_side:
        return width, height
    scale = short_side / min(width, height)
    w, h = round(width * scale / 2) * 2, round(height * scale / 2) * 2
    return max(2, w), max(2, h)


def decode_video(path: str | Path, options: DecodeOptions | None = None, video_id: str | None = None,
                 title: str | None = None, subtitles=None) -> Clip:
    """Decode one file into `clip.frames` plus every view in `options.views`, in one pass.
    Raises DecodeError (with the reason to record) when no video frame can be decoded; a
    damaged file that partly decodes gives a Clip whose `warnings` say what was lost.
    `subtitles` (from the catalog: a sidecar file) win over an embedded subtitle stream."""
    from .backends import MAIN, decode_decord, decode_pyav

    opts = options or DecodeOptions()
    path = str(path)
    info = probe(path, opts.sample_rate if opts.audio else None)
    main = opts.main_view()
    only_main = not opts.views and main.kind == "uniform" and not info.codec.endswith(":pillow")
    backends = {"auto": ["decord", "pyav"] if only_main else ["pyav"]}.get(opts.backend, [opts.backend])
    errors, result, used = [], None, ""
    for backend in backends:
        try:
            if backend == "decord":
                result = decode_decord(path, info, main, salvage=opts.backend == "decord")
            else:
                result = decode_pyav(info, {MAIN: main, **opts.views})
            used = "pillow" if info.codec.endswith(":pillow") else backend
            break
        except DecodeError as e:
            errors.append(f"{backend}: {e}")
        except ImportError as e:  # decord is optional at run time
            errors.append(f"{backend}: not installed ({e})")
        except Exception as e:  # decord raises plain DECORDError/RuntimeError on bad streams
            errors.append(f"{backend}: {type(e).__name__}: {e}")
    if result is None:
        raise DecodeError("; ".join(errors))

    frames, indices = result.frames.pop(MAIN), result.indices.pop(MAIN)
    result.spans.pop(MAIN)
    meta: dict[str, Any] = {"fallback_errors": errors} if errors else {}
    meta.update(view_indices=result.indices, decoded_frames=result.decoded)
    if info.audio_error:
        meta["audio_error"] = info.audio_error
    packets = len(info.packets)
    info.packets.clear()  # free the compressed data before the clip travels between processes
    return Clip(
        video_id=video_id or Path(path).name, frames=frames, frame_times=info.frame_times[indices],
        frame_indices=indices, audio=info.audio, sample_rate=opts.sample_rate, title=title,
        duration=info.duration, fps=info.fps, rotation=info.rotation, width=info.width,
        height=info.height, backend=used, meta={**meta, "packets": packets}, views=result.frames,
        view_times=result.spans, subtitles=[tuple(s) for s in subtitles] if subtitles else info.subtitles,
        warnings={**info.warnings, **result.warnings},
    )
