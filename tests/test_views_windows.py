"""Window views cover the whole clip (#14): the last window ends at the clip's end, a clip shorter
than one window gets one padded window, and `max_windows` bounds a long clip's windows. The clips
are solid grey frames whose level encodes the frame number, so each window frame's source frame
can be read back from its pixels."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode import DecodeOptions, View, decode_video
from pipeline.demo import write_clip
from pipeline.views import window_starts

FPS = 30


def numbered_clip(path, frames: int, fps: int = FPS):
    """Frame i is solid grey at level 4 * i (mod 256): its number survives h264."""
    levels = (4 * np.arange(frames)) % 256
    video = np.repeat(levels.astype(np.uint8)[:, None, None, None], 32 * 48 * 3).reshape(frames, 32, 48, 3)
    return write_clip(path, video, fps)


def decode_windows(path, view: View):
    clip = decode_video(path, DecodeOptions(audio=False, num_frames=2, short_side=32, views={view.key(): view}))
    key = view.key()
    return clip, clip.views[key], clip.view_times[key], clip.meta["view_indices"][key]


def check_timeline(spans: np.ndarray, duration: float, grid_fps: float):
    """Times on the one timeline: inside the clip, monotonic, covering [0, duration] within one frame."""
    assert spans.shape[1] == 2 and spans.min() >= 0 and spans.max() <= duration + 1e-9
    assert np.all(np.diff(spans[:, 0]) > 0) and np.all(np.diff(spans[:, 1]) > 0)
    assert np.all(spans[:, 1] > spans[:, 0])
    assert spans[0, 0] == 0 and duration - spans[-1, 1] < 1 / grid_fps + 1e-9


@pytest.mark.parametrize("grid,n,stride,cap,expected", [
    (31, 16, 16, None, [0, 15]),            # 2.1 s at 15 fps: the tail becomes a window shifted back
    (32, 16, 16, None, [0, 16]),            # whole windows only: nothing to add
    (16, 16, 16, None, [0]),                # exactly one window
    (10, 16, 16, None, [0]),                # shorter than one window: one (padded) window
    (31, 16, 8, None, [0, 8, 15]),          # overlapping windows, tail shifted back
    (100, 16, 32, None, [0, 32, 64, 84]),   # sparse windows: the due one at 96 would not fit
    (60, 16, 32, None, [0, 32]),            # ... and none is due after 32 + 32 >= 60
    (1000, 16, 16, 5, [0, 246, 492, 738, 984]),   # capped: spread evenly, both ends kept
])
def test_window_starts(grid, n, stride, cap, expected):
    assert window_starts(grid, n, stride, cap).tolist() == expected


def test_trailing_partial_window_is_shifted_back_to_the_clip_end(tmp_path):
    # 2.1 s at 30 fps; 16-frame windows at 15 fps (1.07 s): before, 0-1.07 s and the rest dropped.
    path = numbered_clip(tmp_path / "c.mp4", 63)
    view = View("window", num_frames=16, fps=15, short_side=32)
    clip, win, spans, idx = decode_windows(path, view)
    assert clip.duration == pytest.approx(2.1)
    assert win.shape == (2, 16, 32, 48, 3) and idx.shape == (2, 16)
    np.testing.assert_array_equal(idx[0], np.arange(0, 32, 2))         # every other 30 fps frame
    np.testing.assert_array_equal(idx[1], np.arange(30, 62, 2))        # grid frames 15..30: ends at the last
    np.testing.assert_allclose(spans, [[0, 16 / 15], [1.0, 31 / 15]], atol=1e-9)
    check_timeline(spans, clip.duration, 15)
    np.testing.assert_array_equal(win[0, 15], win[1, 0])                # the shared grid frame, same picture
    levels = win[..., 0].mean(axis=(2, 3))                              # the frame numbers, read from the pixels
    np.testing.assert_allclose(levels, 4 * idx, atol=3)


def test_clip_exactly_one_window_long_gives_one_window(tmp_path):
    path = numbered_clip(tmp_path / "one.mp4", 32)                      # 32 frames at 30 fps = 16 at 15 fps
    clip, win, spans, idx = decode_windows(path, View("window", num_frames=16, fps=15, short_side=32))
    assert win.shape[0] == 1 and len(np.unique(idx)) == 16              # no padding, no second window
    np.testing.assert_allclose(spans, [[0, clip.duration]], atol=1e-9)


def test_clip_shorter_than_one_window_gets_one_padded_window(tmp_path):
    path = numbered_clip(tmp_path / "short.mp4", 12)                    # 0.4 s: 6 frames at 15 fps
    clip, win, spans, idx = decode_windows(path, View("window", num_frames=16, fps=15, short_side=32))
    assert win.shape[:2] == (1, 16)
    np.testing.assert_array_equal(idx[0], [0, 2, 4, 6, 8, 10] + [10] * 10)   # padded with the last frame
    np.testing.assert_array_equal(win[0, 5], win[0, 15])
    np.testing.assert_allclose(spans, [[0, 0.4]], atol=1e-9)


def test_overlapping_windows_share_frames(tmp_path):
    path = numbered_clip(tmp_path / "o.mp4", 63)
    clip, win, spans, idx = decode_windows(path, View("window", num_frames=8, fps=15, stride=4, short_side=32))
    starts = window_starts(31, 8, 4)
    assert starts.tolist() == [0, 4, 8, 12, 16, 20, 23] and win.shape[0] == len(starts)
    np.testing.assert_array_equal(idx, 2 * (starts[:, None] + np.arange(8)))
    np.testing.assert_array_equal(win[0, 4:], win[1, :4])
    check_timeline(spans, clip.duration, 15)


def test_max_windows_caps_a_long_clip_evenly(tmp_path):
    path = numbered_clip(tmp_path / "long.mp4", 600)                    # 20 s: 300 grid frames, 38 windows
    view = View("window", num_frames=8, fps=15, short_side=32, max_windows=4)
    assert view.key() != View("window", num_frames=8, fps=15, short_side=32).key()
    clip, win, spans, idx = decode_windows(path, view)
    assert win.shape == (4, 8, 32, 48, 3)                               # only the kept windows are held
    starts = np.round(np.linspace(0, 300 - 8, 4)).astype(int)
    np.testing.assert_array_equal(idx[:, 0], 2 * starts)
    np.testing.assert_allclose(spans, np.stack([starts, starts + 8], 1) / 15, atol=1e-9)
    assert spans[0, 0] == 0 and spans[-1, 1] == pytest.approx(clip.duration)
    levels = win[..., 0].mean(axis=(2, 3))
    np.testing.assert_allclose(levels, (4 * idx) % 256, atol=3)
