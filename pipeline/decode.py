"""Decode one video into a `Clip`: sampled RGB frames, the views extractors declared, the mono
audio track, the title and the time-stamped subtitles.

Frames are chosen in time: the presentation timestamps of every frame are read from the
container (cheap: packets are demuxed, not decoded), target times are spread over the duration
(uniform by default; `sampling: keyframes | shots`, see `pipeline.views`), and each target takes
the decoded frame whose timestamp is nearest. Sampling in time rather than in frame index keeps
variable-frame-rate clips uniform, and makes both backends (`pipeline.backends`) pick the same
frames: decord when only uniform `clip.frames` are asked for, one PyAV pass that fills every
view otherwise (decode once, many views).

The file is read once: `probe` demuxes it with PyAV, keeps the compressed video packets with
their timestamps and keyframe flags, decodes + resamples the audio on the way (libswresample,
then the mean of the channels) and reads an embedded subtitle stream. Audio always comes from
PyAV because decord's audio reader raises on files without an audio track and cannot tell that
apart from a real error. No audio stream gives `audio=None`: a missing modality, not a failure.

Damaged files are salvaged as `ffmpeg -i clip -f null -` salvages them: rejected packets are
skipped, samples take the nearest frame that decoded, and `clip.warnings` says what was lost;
only a file with no decodable video frame raises DecodeError. Animated GIF goes through PyAV,
animated WebP through Pillow (PyAV's FFmpeg has no animated-WebP decoder).

Rotation metadata (the display matrix) is applied, so frames come out upright.
Per-video time limits are enforced by the caller's process pool (`pipeline.extract`), because a
decoder stuck inside C code cannot be interrupted from Python in the same process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class DecodeError(RuntimeError):
    """The file cannot be decoded as a video; the message is the reason recorded in the catalog."""


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
                      every `stride` frames (default num_frames); a clip shorter than one window
                      gives one window padded with its last frame
          "keyframes" the I-frames (at most num_frames, evenly chosen among them)
          "shots"     one frame (the middle) per shot of PySceneDetect's content detector
    short_side: resize so the short side has this many pixels (None: as decoded)
    gray:       one channel (C = 1)
    """

    kind: str = "uniform"
    num_frames: int = 16
    fps: float | None = None
    stride: int | None = None
    short_side: int | None = 224
    gray: bool = False

    def key(self) -> str:
        """Name of this view in `Clip.views`; equal views of two extractors share one key."""
        parts = [self.kind, f"n{self.num_frames}", f"s{self.short_side}"]
        if self.fps:
            parts.append(f"fps{self.fps:g}")
        if self.stride:
            parts.append(f"st{self.stride}")
        if self.gray:
            parts.append("gray")
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


@dataclass
class Probe:
    duration: float
    fps: float
    width: int
    height: int
    rotation: int
    frame_times: np.ndarray       # presentation times of every demuxed frame, sorted
    has_audio: bool
    packets: list                 # the video stream's compressed packets, in file order
    audio: np.ndarray | None      # decoded, resampled audio (when asked for)
    codec: str = ""
    extradata: bytes | None = None
    time_base: float = 0.0
    start: int = 0
    keyframe_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    declared_frames: int = 0      # frame count in the container's index (0 = not given)
    subtitles: list | None = None  # events of an embedded subtitle stream
    warnings: dict = field(default_factory=dict)
    audio_error: str | None = None
    path: str = ""

    @property
    def incomplete(self) -> bool:
        """Frames the index lists were not demuxed (cut file) or the demuxer stopped early."""
        return self.declared_frames > len(self.frame_times) or bool(self.warnings.get("demux_stopped"))


def probe(path: str | Path, sample_rate: int | None = None) -> Probe:
    """One pass over the file with PyAV: keep the video packets (compressed, small for short
    clips) with their timestamps and keyframe flags, decode and resample the audio as it goes by
    (when `sample_rate` is given), read an embedded subtitle stream, decode the first frame for
    the rotation. Decoding frames later reuses the packets instead of reading the file again.
    A demuxer error after some packets keeps what was read (salvage, recorded in warnings);
    raises DecodeError with a reason for anything that is not a decodable video."""
    import av

    path = str(path)
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    from .backends import is_webp, probe_webp

    if is_webp(path):
        return probe_webp(path)
    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise DecodeError(f"not a readable media file: {e}") from e
    with container:
        if not container.streams.video:
            kinds = ",".join(s.type for s in container.streams) or "none"
            raise DecodeError(f"no video stream (streams: {kinds})")
        vs = container.streams.video[0]
        vs.thread_type = "SLICE"
        has_audio = bool(container.streams.audio)
        aus = container.streams.audio[0] if has_audio and sample_rate else None
        sub = container.streams.subtitles[0] if container.streams.subtitles else None
        streams = [s for s in (vs, aus, sub) if s is not None]
        packets, chunks, events, warnings, audio_ok = [], [], [], {}, 0
        resampler = av.AudioResampler(format="fltp", rate=sample_rate) if aus is not None else None
        try:
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue  # demuxer flush packets
                if packet.stream is vs:
                    packets.append(packet)
                elif packet.stream is sub:
                    events.extend(_subtitle_events(packet))
                else:
                    audio_ok += _decode_audio(packet, resampler, sample_rate, chunks, warnings)
        except av.error.FFmpegError as e:
            if not packets:
                raise DecodeError(f"corrupt container: {e}") from e
            warnings["demux_stopped"] = 1
        pts = [p.pts for p in packets if p.pts is not None]
        if not pts:
            raise DecodeError("video stream has no frames")
        audio, audio_error = None, None
        if resampler is not None:
            chunks.extend(_mono(f) for f in resampler.resample(None))
            if not audio_ok and warnings.get("lost_audio_packets"):
                audio_error = f"audio stream cannot be decoded ({warnings['lost_audio_packets']} packets rejected)"
            else:
                audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        tb = float(vs.time_base)
        start = vs.start_time if vs.start_time is not None else min(pts)
        times = (np.sort(np.asarray(pts, dtype=np.float64)) - start) * tb
        keyframes = np.sort([(p.pts - start) * tb for p in packets if p.is_keyframe and p.pts is not None])
        rate = float(vs.average_rate) if vs.average_rate else (len(times) / max(times[-1], 1e-6))
        # Duration = last frame's time + the last frame's own display interval; container
        # metadata is often wrong on truncated or remuxed files, the packets are not.
        last_step = times[-1] - times[-2] if len(times) > 1 else 1.0 / max(rate, 1e-6)
        duration = float(times[-1] + last_step)
        rotation = _first_frame_rotation(vs, packets)
        return Probe(duration, rate, vs.codec_context.width, vs.codec_context.height, rotation, times,
                      has_audio, packets, audio, vs.codec_context.name, vs.codec_context.extradata, tb, start,
                      np.asarray(keyframes, np.float64), int(vs.frames or 0), events or None, warnings, audio_error)


def _decode_audio(packet, resampler, sample_rate: int, chunks: list, warnings: dict) -> bool:
    """Decode one audio packet into `chunks`; a packet the decoder rejects becomes silence of its
    own duration, so the audio after it stays on time."""
    import av

    try:
        for frame in packet.decode():
            chunks.extend(_mono(f) for f in resampler.resample(frame))
        return True
    except (av.error.FFmpegError, ValueError):
        warnings["lost_audio_packets"] = warnings.get("lost_audio_packets", 0) + 1
        if packet.duration and packet.time_base:
            chunks.append(np.zeros(int(round(float(packet.duration * packet.time_base) * sample_rate)), np.float32))
        return False


def _mono(frame) -> np.ndarray:
    # mono = mean of the channels (libswresample's own downmix uses other weights)
    return frame.to_ndarray().mean(axis=0, dtype=np.float32)


def _subtitle_events(packet) -> list[tuple[float, float, str]]:
    """(start_s, end_s, text) of one embedded subtitle packet: its time span is the packet's,
    its text the ASS dialogue libavcodec makes of text subtitles (srt, mov_text, webvtt, ass),
    override tags removed. Bitmap subtitles carry no text and are skipped."""
    import re

    import av

    try:
        rects = packet.decode()
    except av.error.FFmpegError:
        return []
    tb = packet.time_base
    start = float(packet.pts * tb) if packet.pts is not None else 0.0
    end = start + float((packet.duration or 0) * tb)
    texts = []
    for rect in rects:  # PyAV >= 14 hands out the rectangles themselves
        raw = getattr(rect, "dialogue", None) or getattr(rect, "text", None) or b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        text = re.sub(r"\{[^}]*\}", "", text).replace("\\N", "\n").replace("\\n", "\n").strip()
        if text:
            texts.append(text)
    return [(round(start, 3), round(end, 3), "\n".join(texts))] if texts else []


def _first_frame_rotation(vs, packets) -> int:
    import av

    # The stream's own decoder: it carries the stream side data (the display matrix). A packet
    # it rejects is skipped (salvage): the first frame that decodes gives the rotation.
    ctx = vs.codec_context
    for packet in [*packets, None]:
        try:
            for frame in ctx.decode(packet):
                return int(round(getattr(frame, "rotation", 0) or 0))
        except av.error.FFmpegError:
            continue
    raise DecodeError(f"no video frame can be decoded ({len(packets)} packets)")


def _rotate(frames: np.ndarray, rotation: int, axes=(1, 2)) -> np.ndarray:
    # PyAV reports the display matrix angle counter-clockwise and np.rot90 with k > 0 turns
    # counter-clockwise too, so k = rotation / 90 gives what ffmpeg's autorotate shows
    # (tests/test_decode.py checks this against ffmpeg itself).
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=axes)) if k else frames


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
