"""Decoding checked against an independent PyAV reference (every frame decoded, plain loop)."""
from __future__ import annotations


import av
import numpy as np
import pytest

from pipeline.decode import DecodeError, DecodeOptions, decode_video, nearest_indices, resized_size, sample_times
from pipeline.demo import ffmpeg_run, make_bad_inputs, moving_stripes, tone, write_clip


def reference_decode(path):
    """Every frame (RGB, full size) with its presentation time, and the audio duration, via PyAV."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames, times = [], []
        for f in c.decode(vs):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(f.time)
        audio_seconds = None
        if c.streams.audio:
            c.seek(0)
            samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
            audio_seconds = samples / c.streams.audio[0].rate
    times = np.asarray(times) - times[0]
    return np.stack(frames), times, audio_seconds


def check_against_reference(path, backend, num_frames=8, short_side=None, tol=6.0):
    clip = decode_video(path, DecodeOptions(backend=backend, num_frames=num_frames, short_side=short_side))
    ref_frames, ref_times, audio_seconds = reference_decode(path)
    duration = ref_times[-1] + (ref_times[-1] - ref_times[-2] if len(ref_times) > 1 else 0)
    expected = nearest_indices(ref_times, sample_times(duration, num_frames))
    assert clip.backend == backend
    np.testing.assert_array_equal(clip.frame_indices, expected)
    np.testing.assert_allclose(clip.frame_times, ref_times[expected], atol=1e-3)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[0] == num_frames
    if short_side is None:  # same size: pixels must agree (decoders differ only by rounding)
        diff = np.abs(clip.frames.astype(np.int16) - ref_frames[expected]).mean()
        assert diff < tol, f"mean abs pixel difference {diff:.2f}"
    if audio_seconds is not None:
        assert clip.audio is not None and clip.audio.dtype == np.float32
        assert abs(len(clip.audio) / clip.sample_rate - audio_seconds) < 0.05
    return clip


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("dec") / "clip.mp4"
    return write_clip(path, moving_stripes(37, 96, 160, velocity=(3, 1), seed=1), 25, tone(1.48, 16000, 440))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_synthetic_matches_reference(synthetic_clip, backend):
    clip = check_against_reference(synthetic_clip, backend)
    assert clip.frames.shape == (8, 96, 160, 3)
    assert clip.fps == pytest.approx(25)


def test_backends_agree_and_resize(synthetic_clip):
    a = decode_video(synthetic_clip, DecodeOptions(backend="decord", num_frames=6, short_side=48))
    b = decode_video(synthetic_clip, DecodeOptions(backend="pyav", num_frames=6, short_side=48))
    assert a.frames.shape == b.frames.shape == (6, 48, 80, 3)
    np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
    assert np.abs(a.frames.astype(int) - b.frames).mean() < 8


def test_fps_sampling(synthetic_clip):
    clip = decode_video(synthetic_clip, DecodeOptions(fps=5, max_frames=64))
    assert len(clip.frames) == int(np.floor(clip.duration * 5))
    assert np.all(np.diff(clip.frame_times) > 0.15)


def test_sampling_helpers():
    assert resized_size(1280, 720, 224) == (398, 224)
    assert resized_size(97, 301, 224)[0] == 224 and resized_size(97, 301, 224)[1] % 2 == 0
    t = sample_times(2.0, 4)
    np.testing.assert_allclose(t, [0.25, 0.75, 1.25, 1.75])
    np.testing.assert_array_equal(nearest_indices(np.array([0, 0.1, 0.5, 0.9]), np.array([0.0, 0.3, 0.31, 2.0])),
                                  [0, 1, 2, 3])


def test_variable_frame_rate(tmp_path):
    """Frames at irregular times: sampling is uniform in time, not in frame index."""
    path = tmp_path / "vfr.mp4"
    frames = moving_stripes(30, 64, 96, velocity=(2, 0))
    # first 20 frames in the first 0.4 s, the last 10 spread over 2 s
    times_ms = list(range(0, 400, 20)) + list(range(400, 2400, 200))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=50)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.time_base = __import__("fractions").Fraction(1, 1000)
        vs.codec_context.time_base = vs.time_base
        for img, t in zip(frames, times_ms):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t, vs.time_base
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    for backend in ("decord", "pyav"):
        clip = check_against_reference(path, backend, num_frames=6)
        # uniform in time puts most samples in the sparse 0.4-2.4 s part
        assert (clip.frame_times > 0.4).sum() >= 4


def test_rotation_metadata_is_applied(tmp_path):
    src = tmp_path / "src.mp4"
    img = np.zeros((10, 64, 96, 3), np.uint8)
    img[:, :32, :, 0] = 255  # top half red, bottom half blue
    img[:, 32:, :, 2] = 255
    write_clip(src, img, 25)
    rotated = tmp_path / "rot.mp4"
    import ffmpeg

    ffmpeg_run(ffmpeg.input(str(src), display_rotation=90).output(str(rotated), c="copy"))
    # ffmpeg's own autorotated output is the reference for "upright"
    raw, _ = ffmpeg_run(ffmpeg.input(str(rotated)).output("-", vframes=1, f="rawvideo", pix_fmt="rgb24"),
                        capture_stdout=True)
    reference = np.frombuffer(raw, np.uint8).reshape(96, 64, 3)
    for backend in ("decord", "pyav"):
        clip = decode_video(rotated, DecodeOptions(backend=backend, num_frames=2, short_side=None))
        assert clip.rotation != 0
        assert clip.frames.shape[1:] == (96, 64, 3)
        assert np.abs(clip.frames[0].astype(int) - reference).mean() < 10


def test_no_audio_is_a_missing_modality_not_a_failure(tmp_path):
    path = write_clip(tmp_path / "silent.mp4", moving_stripes(20, 64, 64), 25, None)
    clip = decode_video(path)
    assert clip.audio is None and not clip.has_audio
    assert clip.frames.shape[0] == 16


@pytest.mark.parametrize("kind, reason", [("zero_byte", "empty file"), ("truncated", ""),
                                          ("text_as_mp4", "not a readable media file"),
                                          ("audio_only", "no video stream")])
def test_bad_inputs_raise_with_reason(tmp_path_factory, kind, reason):
    bad = make_bad_inputs(tmp_path_factory.mktemp("bad"))
    with pytest.raises(DecodeError, match=reason):
        decode_video(bad[kind])


def test_real_clips_match_reference(shared_data):
    clips = sorted((shared_data / "fight" / "fight").glob("*.mp4"))[:3] + \
        sorted((shared_data / "fight" / "noFight").glob("*.mp4"))[:3] + \
        sorted((shared_data / "kinetics-mini").rglob("*.mp4"))[:1] + sorted((shared_data / "msrvtt-mini").glob("*.mp4"))[:1]
    assert len(clips) == 8
    for path in clips:
        for backend in ("decord", "pyav"):
            check_against_reference(path, backend, num_frames=8, tol=8.0)


def test_real_silent_clip(shared_data):
    """The fight set has clips without an audio track: decoded with audio=None."""
    silent = None
    for path in sorted((shared_data / "fight").rglob("*.mp4")):
        with av.open(str(path)) as c:
            if not c.streams.audio:
                silent = path
                break
    assert silent is not None
    clip = decode_video(silent)
    assert clip.audio is None and clip.frames.shape[0] == 16
