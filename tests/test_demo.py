"""The synthetic demo data and the one way the project runs ffmpeg (ffmpeg-python through
pipeline.demo.ffmpeg_run, binary from ffmpeg_exe()): outputs, the one-line error with ffmpeg's
own stderr tail, and a guard that no module builds ffmpeg command lines by hand."""
from __future__ import annotations

import re
from pathlib import Path

import av
import ffmpeg
import numpy as np
import pytest

from pipeline.demo import (FFmpegError, ffmpeg_exe, ffmpeg_run, make_bad_inputs, make_demo_dataset, moving_stripes,
                           stderr_tail, tone, write_clip)

ROOT = Path(__file__).resolve().parent.parent


def test_ffmpeg_run_writes_and_pipes(tmp_path):
    src = write_clip(tmp_path / "src.mp4", moving_stripes(10, 48, 64), 25, tone(0.4, 16000, 440.0))
    wav = tmp_path / "a.wav"
    ffmpeg_run(ffmpeg.input(str(src)).output(str(wav), vn=None, ac=1, ar=8000))
    with av.open(str(wav)) as c:
        assert not c.streams.video and c.streams.audio[0].rate == 8000
    raw, _ = ffmpeg_run(ffmpeg.input(str(src)).output("pipe:", vframes=1, format="rawvideo", pix_fmt="rgb24"),
                        capture_stdout=True)
    frame = np.frombuffer(raw, np.uint8).reshape(48, 64, 3)
    assert abs(frame.mean() - moving_stripes(1, 48, 64)[0].mean()) < 12


def test_ffmpeg_error_is_one_line_with_stderr_tail(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FFmpegError) as err:
        ffmpeg_run(ffmpeg.input(str(missing)).output(str(tmp_path / "out.mp4")))
    msg = str(err.value)
    assert "\n" not in msg and "nope.mp4" in msg and "No such file" in msg
    assert stderr_tail(b"a\n\nb\nc\nd\n", lines=2) == "c | d" and stderr_tail(b"") == "(no output on stderr)"


def test_bad_inputs_are_what_they_say(tmp_path):
    bad = make_bad_inputs(tmp_path)
    assert bad["zero_byte"].stat().st_size == 0
    with av.open(str(bad["audio_only"])) as c:          # made by ffmpeg-python: stream copy, -vn
        assert c.streams.audio and not c.streams.video
    with av.open(str(bad["no_audio"])) as c:
        assert c.streams.video and not c.streams.audio
    assert not (tmp_path / "_source.mp4").exists()


def test_demo_dataset_has_missing_modalities(tmp_path):
    labels = make_demo_dataset(tmp_path, per_class=2, num_frames=10)
    rows = [line.split("\t") for line in labels.read_text().splitlines()]
    assert len(rows) == 8 and {r[2] for r in rows} == {"skateboarding", "cooking", "swimming", "concert"}
    assert any(not r[1] for r in rows) and any(r[1] for r in rows)          # untitled clips occur
    silent = [r for i, r in enumerate(rows, 1) if i % 5 == 0]
    with av.open(str(tmp_path / "videos" / silent[0][0])) as c:
        assert not c.streams.audio
    assert make_demo_dataset(tmp_path, per_class=2, num_frames=10).read_text() == labels.read_text()  # idempotent


HAND_BUILT = re.compile(r"subprocess\.(run|Popen|call|check_output|check_call)\(\s*\[\s*ffmpeg_exe\(\)")


def test_no_hand_built_ffmpeg_command_lines():
    """Every ffmpeg invocation goes through ffmpeg-python (ffmpeg_run), so errors read the same."""
    offenders = []
    for folder in ("pipeline", "extractors", "models", "bench", "tests", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []:
            if HAND_BUILT.search(path.read_text(encoding="utf-8", errors="replace")):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"build these ffmpeg command lines with ffmpeg-python + pipeline.demo.ffmpeg_run: {offenders}"


def test_ffmpeg_exe_is_runnable():
    _, err = ffmpeg_run(ffmpeg.input("anullsrc", f="lavfi", t=0.1).output("-", f="null"), loglevel=None)
    assert Path(ffmpeg_exe()).name.startswith("ffmpeg")
    assert b"time=" in err                     # loglevel=None keeps ffmpeg's progress lines
