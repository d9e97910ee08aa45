"""Clips the decode tests build and damage themselves (helpers, not tests)."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import av
import numpy as np

from pipeline.demo import ffmpeg_run


def write_gop_clip(path, frames: np.ndarray, fps: int = 25, gop: int = 25, force_key_frames: list[int] | None = None,
                   audio: np.ndarray | None = None, sample_rate: int = 16000) -> Path:
    """h264 mp4 with an I-frame every `gop` frames exactly (no scene-cut keyframes), or at the
    frame numbers in `force_key_frames` (and frame 0)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        vs.options = {"g": str(gop if not force_key_frames else 10_000), "keyint_min": "1", "sc_threshold": "0",
                      "preset": "veryfast", "bf": "0", "forced-idr": "1"}
        aus = out.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        keys = set(force_key_frames or [])
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if i in keys:
                frame.pict_type = av.video.frame.PictureType.I
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if aus is not None:
            for start in range(0, len(audio), 1024):
                piece = av.AudioFrame.from_ndarray(audio[None, start:start + 1024].astype(np.float32), format="flt",
                                                   layout="mono")
                piece.sample_rate, piece.pts = sample_rate, start
                for p in aus.encode(piece):
                    out.mux(p)
            for p in aus.encode():
                out.mux(p)
    return path


def solid_segments(colors, frames_each: int, height: int = 72, width: int = 96, seed: int = 0) -> np.ndarray:
    """Concatenated segments of solid colours (plus a little noise and a moving bar, so each
    shot has motion but no cut inside): a cut at every multiple of `frames_each`."""
    rng = np.random.default_rng(seed)
    out = []
    for color in colors:
        for t in range(frames_each):
            img = np.full((height, width, 3), color, np.float32) + rng.normal(0, 3, (height, width, 3))
            x = (t * 3) % width
            img[:, x:x + 4] *= 0.8
            out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def mdat_range(data: bytes) -> tuple[int, int]:
    """(start, end) byte offsets of the payload of the top-level mdat box of an mp4."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, pos + size
        pos += size
    raise ValueError("no mdat box")


def damage_mdat(src, dst, spots: int = 3, nbytes: int = 400, seed: int = 0) -> Path:
    """Overwrite `nbytes` random bytes at `spots` places spread over the middle third of the mdat."""
    data = bytearray(Path(src).read_bytes())
    a, b = mdat_range(bytes(data))
    rng = np.random.default_rng(seed)
    third = (b - a) // 3
    for off in np.linspace(a + third, b - third, spots).astype(int):
        data[off:off + nbytes] = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def packet_spans(path, kind: str) -> list[tuple[int, int, float]]:
    """(byte offset, size, time) of every packet of the first `kind` ("video"/"audio") stream."""
    with av.open(str(path)) as c:
        stream = getattr(c.streams, kind)[0]
        return [(p.pos, p.size, float(p.pts * p.time_base)) for p in c.demux(stream) if p.size and p.pos is not None]


def damage_packets(src, dst, kind: str, which=None, seed: int = 0) -> Path:
    """Overwrite the payload (all but the first 4 bytes) of the chosen packets of one stream with
    random bytes; `which` indexes the packets in file order (None: all of them)."""
    data = bytearray(Path(src).read_bytes())
    spans = packet_spans(src, kind)
    rng = np.random.default_rng(seed)
    for pos, size, _ in (spans if which is None else [spans[i] for i in which]):
        data[pos + 4:pos + size] = rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def ffmpeg_frame_count(path) -> int:
    """Frames `ffmpeg -i clip -f null -` decodes (its final progress line)."""
    import ffmpeg

    _, err = ffmpeg_run(ffmpeg.input(str(path)).output("-", map="0:v:0", f="null"), loglevel=None)
    counts = re.findall(r"frame=\s*(\d+)", err.decode("utf-8", "replace"))
    assert counts, err[-2000:]
    return int(counts[-1])


def pyav_decodable(path):
    """Every frame PyAV decodes when each rejected packet is skipped: (frames RGB, times)."""
    frames, times = [], []
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        start = vs.start_time or 0
        for packet in c.demux(vs):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            for f in decoded:
                frames.append(f.to_ndarray(format="rgb24"))
                times.append((f.pts - start) * float(vs.time_base))
    return np.stack(frames), np.asarray(times)
