"""Synthetic micro-videos: real mp4 files (h264 video, AAC audio) written with PyAV.

Used for the built-in demo (`run_pipeline.py demo`) and for unit tests. Each class has its own
colour, stripe texture, motion direction, tone and title words, so every modality carries
signal; some clips are silent and some have no title, so missing modalities occur.
Claims about quality and speed are made on real data (`../shared/data`), never on these.

Every ffmpeg command line the project runs (here, in the tests' fixtures, in benches) is built
with ffmpeg-python and run by `ffmpeg_run`, with the binary of `ffmpeg_exe()`; a failure is one
`FFmpegError` line that ends with ffmpeg's own stderr tail.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def ffmpeg_exe() -> str:
    """The system ffmpeg when installed, else the static binary shipped by imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class FFmpegError(RuntimeError):
    """ffmpeg exited with an error; the message is one line ending in ffmpeg's stderr tail."""


def stderr_tail(stderr: bytes | str | None, lines: int = 3, chars: int = 400) -> str:
    """The last non-empty lines of ffmpeg's stderr on one line (' | ' between them)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else (stderr or "")
    tail = " | ".join([x.strip() for x in text.splitlines() if x.strip()][-lines:])
    return tail[-chars:] or "(no output on stderr)"


def ffmpeg_run(stream, capture_stdout: bool = False, loglevel: str | None = "error") -> tuple[bytes, bytes]:
    """Run an ffmpeg-python output stream (e.g. `ffmpeg.input(a).output(b, c="copy")`) with
    `ffmpeg_exe()`, overwriting outputs, never reading stdin. Returns (stdout, stderr) bytes
    (stdout only when captured). `loglevel=None` keeps ffmpeg's default log (its progress
    lines, e.g. to count decoded frames). Raises FFmpegError with the stderr tail."""
    import ffmpeg

    extra = ["-nostdin"] + (["-loglevel", loglevel] if loglevel else [])
    stream = stream.global_args(*extra)
    try:
        out, err = stream.run(cmd=ffmpeg_exe(), capture_stdout=capture_stdout, capture_stderr=True,
                              overwrite_output=True)
    except ffmpeg.Error as e:
        raise FFmpegError(f"ffmpeg {' '.join(stream.get_args())[:200]} failed: {stderr_tail(e.stderr)}") from None
    except FileNotFoundError as e:  # the binary itself is gone
        raise FFmpegError(f"ffmpeg binary {ffmpeg_exe()} cannot be run: {e}") from None
    return out or b"", err or b""


def moving_stripes(num_frames: int, height: int, width: int, color=(200, 60, 60), period: int = 16,
                   velocity=(0.0, 0.0), noise: float = 8.0, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a 2-D stripe/checker texture of `period` pixels translating by
    `velocity` = (dx, dy) pixels per frame over a coloured background, plus pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.asarray(color, np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        x = xx - velocity[0] * t
        y = yy - velocity[1] * t
        pattern = 0.5 + 0.25 * np.sin(2 * np.pi * x / period) + 0.25 * np.sin(2 * np.pi * y / (period * 1.7))
        img = base[None, None, :] * (0.45 + 0.8 * pattern[..., None])
        img += rng.normal(0, noise, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def tone(duration: float, sample_rate: int, freq: float, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * sample_rate)) / sample_rate
    wave = amplitude * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write_clip(path: str | Path, frames: np.ndarray, fps: float = 25, audio: np.ndarray | None = None,
               sample_rate: int = 16000) -> Path:
    """Write an mp4 (h264 yuv420p, AAC mono) atomically."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=int(fps))
        vs.height, vs.width = frames.shape[1], frames.shape[2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=sample_rate, layout="mono")
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None:
            chunk = 1024
            for start in range(0, len(audio), chunk):
                piece = audio[start:start + chunk][None, :].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class DemoClass:
    name: str
    color: tuple
    velocity: tuple
    period: int
    freq: float
    words: tuple


DEMO_CLASSES = (
    DemoClass("skateboarding", (210, 70, 60), (3.0, 0.0), 12, 330.0, ("skate", "board", "trick", "park", "ollie")),
    DemoClass("cooking", (230, 180, 60), (0.0, 0.0), 24, 520.0, ("recipe", "kitchen", "pan", "dinner", "chef")),
    DemoClass("swimming", (50, 110, 220), (-2.0, 1.0), 18, 220.0, ("pool", "swim", "water", "lap", "dive")),
    DemoClass("concert", (150, 60, 190), (0.0, -2.5), 8, 880.0, ("music", "live", "band", "stage", "crowd")),
)
FILLER = ("my", "new", "video", "today", "look", "at", "this", "best", "day", "fun")


def make_demo_dataset(root: str | Path, per_class: int = 6, seed: int = 0, num_frames: int = 50,
                      fps: int = 25, size=(120, 160), silent_every: int = 5, untitled_every: int = 4) -> Path:
    """Write `root/videos/<class>/clip_NNN.mp4` and `root/labels.tsv` (MultimodalVideoTag format:
    file<TAB>title<TAB>label). Every `silent_every`-th clip has no audio track and every
    `untitled_every`-th clip has no title. Returns the labels file. Idempotent."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    lines = []
    index = 0
    for cls in DEMO_CLASSES:
        for i in range(per_class):
            index += 1
            rel = f"{cls.name}/clip_{index:03d}.mp4"
            path = root / "videos" / rel
            jitter = rng.uniform(0.7, 1.3)
            if not path.exists():
                frames = moving_stripes(num_frames, size[0], size[1], cls.color, cls.period,
                                        (cls.velocity[0] * jitter, cls.velocity[1] * jitter),
                                        seed=seed * 1000 + index)
                silent = index % silent_every == 0
                audio = None if silent else tone(num_frames / fps, 16000, cls.freq * jitter, seed=index)
                write_clip(path, frames, fps, audio)
            title = ""
            if index % untitled_every:
                words = list(rng.choice(cls.words, 2, replace=False)) + list(rng.choice(FILLER, 3))
                rng.shuffle(words)
                title = " ".join(words)
            lines.append(f"{rel}\t{title}\t{cls.name}")
    labels = root / "labels.tsv"
    tmp = labels.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, labels)
    return labels


def make_bad_inputs(folder: str | Path) -> dict[str, Path]:
    """The bad inputs every run must survive: zero-byte, truncated mp4, text renamed .mp4,
    audio-only file, video without audio. Returns {kind: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = write_clip(folder / "_source.mp4", moving_stripes(40, 96, 128, velocity=(2, 0)), 25,
                      tone(1.6, 16000, 440.0))
    data = good.read_bytes()
    out = {
        "zero_byte": folder / "zero_byte.mp4",
        "truncated": folder / "truncated.mp4",
        "text_as_mp4": folder / "text_as_mp4.mp4",
        "audio_only": folder / "audio_only.mp4",
        "no_audio": folder / "no_audio.mp4",
    }
    out["zero_byte"].write_bytes(b"")
    out["truncated"].write_bytes(data[: len(data) // 3])
    out["text_as_mp4"].write_text("this is not a video, just text renamed to .mp4\n" * 20)
    import ffmpeg

    ffmpeg_run(ffmpeg.input(str(good)).output(str(out["audio_only"]), vn=None, acodec="copy"))
    write_clip(out["no_audio"], moving_stripes(40, 96, 128, velocity=(0, 2)), 25, None)
    good.unlink()
    return out
