"""Decode one video into a `Clip`: uniformly sampled RGB frames, the mono audio track, the title.

Frames come from decord when it is installed and works on the file, from PyAV otherwise
(`backend: auto`). Both backends pick the *same* frames: the presentation timestamps of every
frame are read from the container (cheap: packets are demuxed, not decoded), target times are
spread uniformly over the duration, and each target takes the frame whose timestamp is nearest.
Sampling in time rather than in frame index keeps variable-frame-rate clips uniform.

The file is read once: `probe` demuxes it with PyAV, keeps the compressed video packets and
their timestamps, and decodes + resamples the audio on the way (libswresample, then the mean of
the channels). PyAV decodes frames from those packets; decord opens the file itself. Audio
always comes from PyAV because decord's audio reader raises on files without an audio track and
cannot tell that apart from a real error. No audio stream gives `audio=None`: a missing
modality, not a failure.

Rotation metadata (the display matrix) is applied, so frames come out upright.
Per-video time limits are enforced by the caller's process pool (`pipeline.stages`), because a
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


@dataclass
class DecodeOptions:
    backend: str = "auto"
    num_frames: int = 16
    fps: float | None = None
    max_frames: int = 64
    short_side: int = 224
    sample_rate: int = 16000
    audio: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "DecodeOptions":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


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
class _Probe:
    duration: float
    fps: float
    width: int
    height: int
    rotation: int
    frame_times: np.ndarray       # presentation times of every frame, sorted
    has_audio: bool
    packets: list                 # the video stream's compressed packets, in file order
    audio: np.ndarray | None      # decoded, resampled audio (when asked for)
    codec: str = ""
    extradata: bytes | None = None


def probe(path: str | Path, sample_rate: int | None = None) -> _Probe:
    """One pass over the file with PyAV: keep the video packets (compressed, small for short
    clips) with their timestamps, decode and resample the audio as it goes by (when
    `sample_rate` is given), decode the first frame for the rotation. Decoding frames later
    reuses the packets instead of reading the file again. Raises DecodeError with a reason for
    anything that is not a decodable video."""
    import av

    path = str(path)
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
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
        streams = [vs] + ([container.streams.audio[0]] if has_audio and sample_rate else [])
        packets, chunks = [], []
        resampler = av.AudioResampler(format="fltp", rate=sample_rate) if len(streams) > 1 else None
        try:
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue  # demuxer flush packets
                if packet.stream is vs:
                    packets.append(packet)
                else:
                    for frame in packet.decode():
                        chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        except av.error.FFmpegError as e:
            raise DecodeError(f"corrupt container: {e}") from e
        pts = [p.pts for p in packets if p.pts is not None]
        if not pts:
            raise DecodeError("video stream has no frames")
        audio = None
        if resampler is not None:
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
            # mono = mean of the channels (libswresample's own downmix uses other weights)
            audio = np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32) if chunks else np.zeros(0, np.float32)
        tb = float(vs.time_base)
        start = vs.start_time if vs.start_time is not None else min(pts)
        times = (np.sort(np.asarray(pts, dtype=np.float64)) - start) * tb
        rate = float(vs.average_rate) if vs.average_rate else (len(times) / max(times[-1], 1e-6))
        # Duration = last frame's time + the last frame's own display interval; container
        # metadata is often wrong on truncated or remuxed files, the packets are not.
        last_step = times[-1] - times[-2] if len(times) > 1 else 1.0 / max(rate, 1e-6)
        duration = float(times[-1] + last_step)
        rotation = _first_frame_rotation(vs, packets)
        return _Probe(duration, rate, vs.codec_context.width, vs.codec_context.height, rotation, times,
                      has_audio, packets, audio, vs.codec_context.name, vs.codec_context.extradata)


def _first_frame_rotation(vs, packets) -> int:
    import av

    # The stream's own decoder: it carries the stream side data (the display matrix).
    ctx = vs.codec_context
    try:
        for packet in packets:
            for frame in ctx.decode(packet):
                return int(round(getattr(frame, "rotation", 0) or 0))
        for frame in ctx.decode(None):
            return int(round(getattr(frame, "rotation", 0) or 0))
    except av.error.FFmpegError as e:
        raise DecodeError(f"first video frame cannot be decoded: {e}") from e
    raise DecodeError("no video frame can be decoded")


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    # PyAV reports the display matrix angle counter-clockwise and np.rot90 with k > 0 turns
    # counter-clockwise too, so k = rotation / 90 gives what ffmpeg's autorotate shows
    # (tests/test_decode.py checks this against ffmpeg itself).
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _frames_decord(path: str, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=size[0], height=size[1], num_threads=1)
    if len(vr) <= int(indices.max()):
        raise DecodeError(f"decord sees {len(vr)} frames, needs index {int(indices.max())}")
    return vr.get_batch(list(map(int, indices))).asnumpy()


def _frames_pyav(info: _Probe, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decode the probed packets in order, converting to RGB (and resizing, inside libswscale)
    only the frames that were picked. Frames come out of the decoder in presentation order, so
    the running count is the presentation index."""
    import av

    wanted = {}
    for slot, idx in enumerate(indices):
        wanted.setdefault(int(idx), []).append(slot)
    out = np.empty((len(indices), size[1], size[0], 3), np.uint8)
    last = int(indices.max())
    ctx = av.CodecContext.create(info.codec, "r")
    ctx.extradata = info.extradata
    ctx.thread_type = "SLICE"
    count = 0

    def take(frames) -> bool:
        nonlocal count
        for frame in frames:
            if count in wanted:
                rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
                for slot in wanted[count]:
                    out[slot] = rgb
            count += 1
            if count > last:
                return True
        return False

    try:
        done = any(take(ctx.decode(p)) for p in info.packets) or take(ctx.decode(None))
    except av.error.FFmpegError as e:
        raise DecodeError(f"decoding stopped at frame {count}: {e}") from e
    if not done:
        raise DecodeError(f"truncated: the stream ends after {count} frames, frame {last} was expected")
    return out


def decode_video(path: str | Path, options: DecodeOptions | None = None, video_id: str | None = None,
                 title: str | None = None) -> Clip:
    """Decode one file. Raises DecodeError (with the reason to record) when it is not a usable video."""
    opts = options or DecodeOptions()
    path = str(path)
    info = probe(path, opts.sample_rate if opts.audio else None)
    targets = sample_times(info.duration, opts.num_frames, opts.fps, opts.max_frames)
    indices = nearest_indices(info.frame_times, targets)
    # Size of the upright picture. decord applies the rotation itself and resizes after it;
    # PyAV hands out the stored picture, which we resize first and turn upright afterwards.
    turned = info.rotation % 180 != 0
    w, h = resized_size(*((info.height, info.width) if turned else (info.width, info.height)), opts.short_side)

    backends = ["decord", "pyav"] if opts.backend == "auto" else [opts.backend]
    errors = []
    frames, used = None, ""
    for backend in backends:
        try:
            if backend == "decord":
                frames = _frames_decord(path, indices, (w, h))
            else:
                frames = _rotate(_frames_pyav(info, indices, (h, w) if turned else (w, h)), info.rotation)
            used = backend
            break
        except DecodeError as e:
            errors.append(f"{backend}: {e}")
        except ImportError as e:  # decord is optional at run time
            errors.append(f"{backend}: not installed ({e})")
        except Exception as e:  # decord raises plain DECORDError/RuntimeError on bad streams
            errors.append(f"{backend}: {type(e).__name__}: {e}")
    if frames is None:
        raise DecodeError("; ".join(errors))

    audio = info.audio
    info.packets.clear()  # free the compressed data before the clip travels between processes
    return Clip(
        video_id=video_id or Path(path).name, frames=frames, frame_times=info.frame_times[indices],
        frame_indices=indices, audio=audio, sample_rate=opts.sample_rate, title=title,
        duration=info.duration, fps=info.fps, rotation=info.rotation, width=info.width,
        height=info.height, backend=used, meta={"fallback_errors": errors} if errors else {},
    )
