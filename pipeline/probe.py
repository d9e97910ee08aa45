"""The demux pass: `probe` reads a video file once with PyAV.

It keeps the compressed video packets with their timestamps and keyframe flags (small for short
clips; decoding frames later reuses them instead of reading the file again), decodes and
resamples the audio on the way (libswresample, then the mean of the channels), reads an embedded
subtitle stream and decodes the first frame for the rotation. Audio always comes from PyAV
because decord's audio reader raises on files without an audio track and cannot tell that apart
from a real error. No audio stream gives `audio=None`: a missing modality, not a failure.

Damaged files are salvaged as far as the demuxer goes: a demuxer error after some packets keeps
what was read, a rejected audio packet becomes silence of its own length, and `warnings` says
what was lost. `pipeline.decode` turns a Probe into a Clip.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DecodeError(RuntimeError):
    """The file cannot be decoded as a video; the message is the reason recorded in the catalog."""


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
    """One pass over the file (see the module docstring); the audio is decoded only when
    `sample_rate` is given. Raises DecodeError with a reason for anything that is not a
    decodable video."""
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
        packets, audio, audio_error, events, warnings = _demux(container, vs, aus, sub, sample_rate)
        pts = [p.pts for p in packets if p.pts is not None]
        if not pts:
            raise DecodeError("video stream has no frames")
        tb = float(vs.time_base)
        start = vs.start_time if vs.start_time is not None else min(pts)
        times = (np.sort(np.asarray(pts, dtype=np.float64)) - start) * tb
        keyframes = np.sort([(p.pts - start) * tb for p in packets if p.is_keyframe and p.pts is not None])
        rate = float(vs.average_rate) if vs.average_rate else (len(times) / max(times[-1], 1e-6))
        # Duration = last frame's time + the last frame's own display interval; container
        # metadata is often wrong on truncated or remuxed files, the packets are not.
        last_step = times[-1] - times[-2] if len(times) > 1 else 1.0 / max(rate, 1e-6)
        ctx = vs.codec_context
        return Probe(float(times[-1] + last_step), rate, ctx.width, ctx.height, _first_frame_rotation(vs, packets),
                     times, has_audio, packets, audio, ctx.name, ctx.extradata, tb, start,
                     np.asarray(keyframes, np.float64), int(vs.frames or 0), events or None, warnings, audio_error)


def _demux(container, vs, aus, sub, sample_rate: int | None):
    """Every packet once: video packets kept, audio packets decoded into mono samples, subtitle
    packets read as events. Returns (packets, audio, audio_error, events, warnings)."""
    import av

    packets, chunks, events, warnings, audio_ok = [], [], [], {}, 0
    resampler = av.AudioResampler(format="fltp", rate=sample_rate) if aus is not None else None
    try:
        for packet in container.demux(*[s for s in (vs, aus, sub) if s is not None]):
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
    audio, audio_error = None, None
    if resampler is not None:
        chunks.extend(_mono(f) for f in resampler.resample(None))
        if not audio_ok and warnings.get("lost_audio_packets"):
            audio_error = f"audio stream cannot be decoded ({warnings['lost_audio_packets']} packets rejected)"
        else:
            audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return packets, audio, audio_error, events, warnings


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


