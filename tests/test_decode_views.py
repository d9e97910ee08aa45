"""Decode once, many views (#14): keyframes, shots, windows, grey low-res frames, all from one pass."""
from __future__ import annotations

from dataclasses import asdict

import av
import numpy as np
import pytest
from decode_clips import solid_segments, write_gop_clip
from omegaconf import OmegaConf

from pipeline.decode import DecodeOptions, View, decode_video, nearest_indices
from pipeline.demo import moving_stripes, tone, write_clip
from pipeline.views import collect_views

KEYS = [0, 17, 40, 61]
# distinct in hue and brightness, so each change is a cut for the content detector's defaults
COLORS = [(220, 40, 40), (40, 40, 90), (240, 240, 240), (30, 160, 60)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    return {
        "keys": write_gop_clip(folder / "keys.mp4", moving_stripes(75, 64, 96, velocity=(2, 0)), 25,
                               force_key_frames=KEYS),
        "shots": write_gop_clip(folder / "shots.mp4", solid_segments(COLORS, 30), 25, gop=250),
        "short": write_clip(folder / "short.mp4", moving_stripes(10, 64, 96, velocity=(1, 0)), 25,
                            tone(0.4, 16000, 300)),
    }


def keyframe_indices(path) -> list[int]:
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return sorted(round(float(p.pts * p.time_base) * 25) for p in c.demux(vs) if p.size and p.is_keyframe)


def test_keyframes_view_and_sampling(clips):
    assert keyframe_indices(clips["keys"]) == KEYS              # the clip has the I-frames we asked for
    view = View("keyframes", num_frames=10, short_side=32)
    clip = decode_video(clips["keys"], DecodeOptions(views={view.key(): view}))
    assert clip.meta["view_indices"][view.key()].tolist() == KEYS
    np.testing.assert_allclose(clip.view_times[view.key()], [[0, .68], [.68, 1.6], [1.6, 2.44], [2.44, 3.0]], atol=1e-6)
    assert clip.views[view.key()].shape == (4, 32, 48, 3)
    main = decode_video(clips["keys"], DecodeOptions(sampling="keyframes"))
    assert main.frame_indices.tolist() == KEYS and main.frames.shape == (4, 224, 336, 3)
    capped = decode_video(clips["keys"], DecodeOptions(sampling="keyframes", max_frames=2))
    assert capped.frame_indices.tolist() == [0, 61]             # evenly chosen among the I-frames


def test_shots_view_one_frame_per_cut_segment(clips):
    view = View("shots", num_frames=16, short_side=36)
    clip = decode_video(clips["shots"], DecodeOptions(num_frames=4, views={view.key(): view}))
    frames, spans = clip.views[view.key()], clip.view_times[view.key()]
    assert frames.shape == (4, 36, 48, 3)
    np.testing.assert_allclose(spans, [[0, 1.2], [1.2, 2.4], [2.4, 3.6], [3.6, 4.8]], atol=1e-6)
    np.testing.assert_array_equal(clip.meta["view_indices"][view.key()] // 30, [0, 1, 2, 3])
    centre = frames[:, 18, 2].astype(int)                       # left of the moving bar
    assert np.abs(centre - np.array(COLORS)).max() < 20         # each shot's own colour
    main = decode_video(clips["shots"], DecodeOptions(sampling="shots", short_side=36))
    np.testing.assert_array_equal(main.frames, frames)


def test_window_view_count_and_timing(clips):
    view = View("window", num_frames=8, fps=12.5, stride=4, short_side=32)
    clip = decode_video(clips["shots"], DecodeOptions(views={view.key(): view}))
    win, spans, idx = clip.views[view.key()], clip.view_times[view.key()], clip.meta["view_indices"][view.key()]
    grid = int(4.8 * 12.5)                                      # 60 frames at 12.5 fps
    n = (grid - 8) // 4 + 1
    assert win.shape == (n, 8, 32, 42, 3) and spans.shape == (n, 2)
    np.testing.assert_array_equal(idx[0], np.arange(0, 16, 2))  # every other 25 fps frame
    np.testing.assert_array_equal(idx[:, 0], np.arange(n) * 8)  # a new window every 4 grid frames
    np.testing.assert_allclose(spans[:, 0], np.arange(n) * 0.32, atol=1e-6)
    np.testing.assert_allclose(spans[:, 1] - spans[:, 0], 8 / 12.5, atol=1e-6)


def test_short_clip_gives_one_padded_window(clips):
    view = View("window", num_frames=16, short_side=32)        # native rate, 10 frames only
    clip = decode_video(clips["short"], DecodeOptions(views={view.key(): view}))
    win, idx = clip.views[view.key()], clip.meta["view_indices"][view.key()]
    assert win.shape == (1, 16, 32, 48, 3)
    np.testing.assert_array_equal(idx[0], list(range(10)) + [9] * 6)
    np.testing.assert_array_equal(win[0, 9], win[0, 15])
    np.testing.assert_allclose(clip.view_times[view.key()], [[0, 0.4]], atol=1e-6)


def test_gray_low_res_view(clips):
    view = View("uniform", num_frames=16, short_side=32, gray=True)
    clip = decode_video(clips["keys"], DecodeOptions(short_side=32, views={view.key(): view}))
    gray = clip.views[view.key()]
    assert gray.shape == (16, 32, 48, 1) and gray.dtype == np.uint8
    np.testing.assert_array_equal(clip.meta["view_indices"][view.key()], clip.frame_indices)
    luma = clip.frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(luma - gray[..., 0]).mean() < 6                # the same frames, one channel


def test_union_decodes_each_frame_once(clips):
    views = [View("uniform", 8, short_side=48), View("window", 8, fps=12.5, short_side=32),
             View("keyframes", 8, short_side=32), View("uniform", 16, short_side=24, gray=True)]
    union = decode_video(clips["keys"], DecodeOptions(views={v.key(): v for v in views}))
    assert union.meta["decoded_frames"] <= 75                   # one pass: no frame decoded twice
    for v in views:                                              # same pictures as a pass of its own
        alone = decode_video(clips["keys"], DecodeOptions(views={v.key(): v}))
        np.testing.assert_array_equal(union.views[v.key()], alone.views[v.key()])
        np.testing.assert_array_equal(union.view_times[v.key()], alone.view_times[v.key()])
    plain = decode_video(clips["keys"], DecodeOptions(backend="pyav"))
    np.testing.assert_array_equal(union.frames, plain.frames)


def test_uniform_view_matches_timestamp_plan(clips):
    view = View("uniform", num_frames=5, short_side=None)
    clip = decode_video(clips["keys"], DecodeOptions(views={view.key(): view}))
    times = np.arange(75) / 25
    expected = nearest_indices(times, (np.arange(5) + 0.5) * 3.0 / 5)
    np.testing.assert_array_equal(clip.meta["view_indices"][view.key()], expected)
    assert clip.views[view.key()].shape == (5, 64, 96, 3)


class _Ext:
    def __init__(self, views):
        self._views = views

    def views(self):
        return self._views


def test_collect_views_and_options():
    a, b = View("window", 16, fps=15, short_side=112), View("uniform", 8, short_side=112, gray=True)
    union = collect_views({"x": _Ext({"clips": a}), "y": _Ext({"flow": b, "same": a}), "z": _Ext({})})
    assert union == {a.key(): a, b.key(): b}
    cfg = OmegaConf.create({"backend": "auto", "num_frames": 8, "sampling": "keyframes", "timeout_s": 60, "workers": 2})
    opts = DecodeOptions.from_config(cfg, views=union)
    assert opts.sampling == "keyframes" and opts.num_frames == 8 and opts.views == union
    assert DecodeOptions(**asdict(opts)) == opts                # survives the PyAV-retry round trip
    with pytest.raises(ValueError, match="backend auto or pyav"):
        DecodeOptions(backend="decord", views=union)
    with pytest.raises(ValueError, match="decode.sampling"):
        DecodeOptions(sampling="random")


def test_rotated_views_are_upright(tmp_path):
    import ffmpeg

    from pipeline.demo import ffmpeg_run

    src = write_clip(tmp_path / "src.mp4", moving_stripes(20, 64, 96), 25)
    rot = tmp_path / "rot.mp4"
    ffmpeg_run(ffmpeg.input(str(src), display_rotation=90).output(str(rot), c="copy"))
    view = View("window", 4, short_side=32)
    clip = decode_video(rot, DecodeOptions(short_side=32, views={view.key(): view}))
    assert clip.frames.shape[1:] == (48, 32, 3) and clip.views[view.key()].shape[2:] == (48, 32, 3)
    first = int(clip.frame_indices[0])                                            # same frame, same picture
    np.testing.assert_array_equal(clip.views[view.key()][0, first], clip.frames[0])


def _decode_in_worker(path):
    return decode_video(path, DecodeOptions(backend="pyav", num_frames=4)).frames


def test_forked_worker_after_a_decode_in_the_parent(clips):
    """The reused libswscale contexts (pipeline.views.convert) own threads a forked decode worker
    does not have: each worker must build its own, or it hangs on the first frame of that size."""
    import pebble

    here = decode_video(clips["short"], DecodeOptions(backend="pyav", num_frames=4)).frames
    with pebble.ProcessPool(max_workers=1) as pool:
        there = pool.schedule(_decode_in_worker, args=(clips["short"],), timeout=60).result()
    np.testing.assert_array_equal(here, there)
