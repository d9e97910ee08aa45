"""Decode once, many views: one pass over a video's frames fills every `View` the extractors asked for.

Each view turns into target times before decoding starts (uniform: segment centres; window: the
frames of its windows on a grid at the window's own rate, the last window ending at the clip's
last grid frame and at most `max_windows` of them; keyframes: the I-frames' times from the
demuxed packets), except shots, which PySceneDetect's content detector finds during the pass.
Frames then stream out of the decoder once, in presentation order, and each view takes, for each
of its targets, the decoded frame nearest that time. Because only decoded frames are candidates,
a frame lost to a damaged packet is replaced by its nearest decodable neighbour (salvage, see
`pipeline.decode`); on an intact file the choice equals `nearest_indices` on the container's
timestamps.

Each chosen frame is converted (RGB or grey, resized inside libswscale) once per distinct size
and kept; everything else is dropped as soon as the next frame arrives, so memory grows with
what the views keep, not with the video's length. Shots keep a small buffer of the current shot
(at most `SHOT_BUFFER` frames, thinned by doubling its stride) to pick the frame nearest the
shot's middle when the cut arrives.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from .decode import View, nearest_indices, resized_size, sample_times

SHOT_BUFFER = 16          # frames of the current shot kept to choose its middle frame
SHOT_DETECT_WIDTH = 256   # the content detector sees frames this wide (PySceneDetect's own default)


def collect_views(extractors: dict) -> dict[str, View]:
    """The union of the views a dict of extractors declares ({View.key(): View}); equal views of
    two extractors are decoded once."""
    out: dict[str, View] = {}
    for ext in extractors.values():
        for view in (ext.views() or {}).values():
            out.setdefault(view.key(), view)
    return out


_REFORMATTERS: dict = {}
_INHERITED: list = []


def _after_fork_in_child() -> None:
    # A forked decode worker must not use its parent's SwsContexts: their worker threads do not
    # exist in the child, which then waits forever (measured: a hung task per inherited size).
    # Keep them referenced, never freed (freeing would wait on those threads too).
    _INHERITED.append(dict(_REFORMATTERS))
    _REFORMATTERS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def convert(frame, width: int, height: int, fmt: str, interpolation: str | None = None) -> np.ndarray:
    """An av.VideoFrame as a (height, width, C) array in `fmt`, resized in libswscale. One
    VideoReformatter per output kind keeps its SwsContext between frames: 3-4x faster than
    `frame.to_ndarray(width=..., height=...)`, which sets one up for every frame."""
    from av.video.reformatter import VideoReformatter

    key = (width, height, fmt, interpolation)
    if key not in _REFORMATTERS:
        _REFORMATTERS[key] = VideoReformatter()
    return _REFORMATTERS[key].reformat(frame, width=width, height=height, format=fmt,
                                       interpolation=interpolation).to_ndarray()


class Decoded:
    """One decoded frame (an av.VideoFrame) with its time and presentation index; pictures of it
    are converted on demand and cached per (size, grey), so two views of one size share one."""

    __slots__ = ("frame", "time", "index", "_cache")

    def __init__(self, frame, time: float, index: int):
        self.frame, self.time, self.index, self._cache = frame, time, index, {}

    def picture(self, size: tuple[int, int], gray: bool) -> np.ndarray:
        key = (size, gray)
        if key not in self._cache:
            img = convert(self.frame, size[0], size[1], "gray" if gray else "rgb24", "AREA")
            self._cache[key] = img[..., None] if gray else img
        return self._cache[key]


@dataclass
class Slots:
    """The frames one view collects: row i takes the decoded frame nearest `targets[i]`. Targets
    need not be sorted or distinct (overlapping windows share frames): they are filled in time
    order, and a picture is converted once per size however many rows take it."""

    targets: np.ndarray              # target time (s) of each output row
    size: tuple[int, int]            # (w, h) of the stored (not yet rotated) picture
    gray: bool
    out: np.ndarray = field(init=False)
    index: np.ndarray = field(init=False)
    time: np.ndarray = field(init=False)
    order: np.ndarray = field(init=False)
    next: int = 0

    def __post_init__(self):
        w, h = self.size
        self.targets = np.asarray(self.targets, np.float64)
        self.out = np.zeros((len(self.targets), h, w, 1 if self.gray else 3), np.uint8)
        self.index = np.full(len(self.targets), -1, np.int64)
        self.time = np.zeros(len(self.targets), np.float64)
        self.order = np.argsort(self.targets, kind="stable")

    @property
    def done(self) -> bool:
        return self.next >= len(self.targets)

    def offer(self, prev: Decoded | None, next_time: float | None) -> None:
        """`prev` is the last decoded frame and `next_time` the time of the one after it (None at
        the end of the stream): targets up to the midpoint are nearer `prev` than anything later
        (ties go to the earlier frame, as in `nearest_indices`)."""
        if prev is None:
            return
        limit = np.inf if next_time is None else (prev.time + next_time) / 2
        while self.next < len(self.targets) and self.targets[self.order[self.next]] <= limit:
            row = self.order[self.next]
            self.out[row] = prev.picture(self.size, self.gray)
            self.index[row], self.time[row] = prev.index, prev.time
            self.next += 1


class Shots:
    """One frame per shot of PySceneDetect's ContentDetector (default threshold 27, shots of at
    least 15 frames), the frame nearest the shot's middle."""

    def __init__(self, size: tuple[int, int], gray: bool, fps: float, stored: tuple[int, int]):
        from scenedetect import ContentDetector

        self.detector = ContentDetector()
        self.size, self.gray, self.fps = size, gray, max(float(fps), 1e-3)
        w, h = stored
        self.small = (SHOT_DETECT_WIDTH, max(2, round(h * SHOT_DETECT_WIDTH / w / 2) * 2)) if w > SHOT_DETECT_WIDTH else (w, h)
        self.count, self.start, self.stride = 0, 0, 1
        self.times: list[float] = []
        self.buffer: list[tuple[int, np.ndarray, int, float]] = []   # (count, picture, index, time)
        self.shots: list[tuple[float, float, np.ndarray, int, float]] = []

    def add(self, dec: Decoded) -> None:
        from scenedetect import FrameTimecode

        small = convert(dec.frame, self.small[0], self.small[1], "bgr24")
        self.times.append(dec.time)
        for cut in self.detector.process_frame(FrameTimecode(self.count, self.fps), small):
            self._close(cut.frame_num)
        if (self.count - self.start) % self.stride == 0:
            self.buffer.append((self.count, dec.picture(self.size, self.gray), dec.index, dec.time))
            if len(self.buffer) > SHOT_BUFFER:  # thin the buffer: every other kept frame
                self.stride *= 2
                self.buffer = [b for b in self.buffer if (b[0] - self.start) % self.stride == 0]
        self.count += 1

    def _close(self, cut: int, end_time: float | None = None) -> None:
        if cut <= self.start:
            return
        middle = (self.start + cut - 1) / 2
        mine = [b for b in self.buffer if b[0] < cut]
        if mine:
            _, pic, index, time = min(mine, key=lambda b: abs(b[0] - middle))
            end = end_time if end_time is not None else self.times[cut] if cut < len(self.times) else self.times[-1]
            self.shots.append((self.times[self.start], end, pic, index, time))
        self.buffer = [b for b in self.buffer if b[0] >= cut]
        self.start, self.stride = cut, 1

    def finish(self, duration: float) -> None:
        from scenedetect import FrameTimecode

        if self.count:
            for cut in self.detector.post_process(FrameTimecode(self.count, self.fps)):
                self._close(cut.frame_num)
            self._close(self.count, end_time=duration)


@dataclass
class Plan:
    """What the pass does for one view: its Slots (or Shots) and how to turn them into arrays."""

    view: View
    slots: Slots | None = None
    shots: Shots | None = None
    spans: np.ndarray | None = None   # (T, 2) per target for uniform/keyframes, (N, 2) per window


def plan_view(view: View, duration: float, fps: float, frame_times: np.ndarray, keyframe_times: np.ndarray,
              stored: tuple[int, int], turned: bool) -> Plan:
    """Target times of one view (stored = (w, h) of the pictures as the decoder gives them)."""
    w, h = resized_size(*((stored[1], stored[0]) if turned else stored), view.short_side)
    size = (h, w) if turned else (w, h)   # resize the stored picture, turn it upright afterwards
    if view.kind == "shots":
        return Plan(view, shots=Shots(size, view.gray, fps, stored))
    if view.kind == "uniform":
        targets = sample_times(duration, view.num_frames, view.fps, max_frames=view.num_frames)
        step = 1 / view.fps if view.fps else duration / view.num_frames
        spans = np.stack([targets - step / 2, targets + step / 2], axis=1)
    elif view.kind == "keyframes":
        kf = np.unique(keyframe_times) if len(keyframe_times) else frame_times[:1]
        if len(kf) > view.num_frames:
            kf = kf[np.unique(np.round(np.linspace(0, len(kf) - 1, view.num_frames)).astype(int))]
        targets = kf
        ends = np.append(kf[1:], duration)
        spans = np.stack([kf, ends], axis=1)
    elif view.kind == "window":
        grid_fps = float(view.fps or fps)
        grid = max(1, int(np.floor(duration * grid_fps + 1e-6)))   # grid frame k stands for [k, k+1) / grid_fps
        starts = window_starts(grid, view.num_frames, view.stride or view.num_frames, view.max_windows)
        take = np.minimum(starts[:, None] + np.arange(view.num_frames)[None, :], grid - 1)  # pad: the last frame
        ends = np.minimum(starts + view.num_frames, grid)
        spans = np.clip(np.stack([starts, ends], axis=1) / grid_fps, 0, duration)
        # One row per window frame, in window order: the finished view is a reshape, not a copy.
        return Plan(view, Slots(take.reshape(-1) / grid_fps, size, view.gray), spans=spans)
    else:
        raise ValueError(f"unknown view kind {view.kind!r} (uniform | window | keyframes | shots)")
    return Plan(view, Slots(np.asarray(targets, np.float64), size, view.gray), spans=spans)


def window_starts(grid: int, n: int, stride: int, max_windows: int | None = None) -> np.ndarray:
    """First grid frame of each window of `n` frames over a grid of `grid` frames: one every
    `stride` frames (video_features' stack_size / step_size), then, when frames are left after
    the last whole window, one more shifted back to end at the last frame, so the windows cover
    the whole clip. A grid shorter than one window: one window at 0 (padded by the caller).
    `max_windows` caps a long clip's count: that many windows spread uniformly from the first
    frame to the last (both ends kept), so memory stays bounded whatever the clip's length."""
    if grid <= n:
        return np.zeros(1, np.int64)
    starts = np.arange(0, grid - n + 1, stride)
    if starts[-1] < grid - n and starts[-1] + stride < grid:
        starts = np.append(starts, grid - n)
    if max_windows and len(starts) > max_windows:
        starts = np.unique(np.round(np.linspace(0, grid - n, int(max_windows))).astype(np.int64))
    return starts


def windows(plan: Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (N, T, H, W, C), spans (N, 2), indices (N, T)) of a window view: the rows of its
    Slots, window by window (see `plan_view` and `window_starts`)."""
    s, n = plan.slots, plan.view.num_frames
    count = len(s.targets) // n
    return s.out.reshape(count, n, *s.out.shape[1:]), plan.spans, s.index.reshape(count, n)


def run_pass(frames: Iterable[Decoded], plans: dict[str, Plan], keep_going=lambda: False) -> int:
    """Feed the decoded frames to every plan; stop early once every frame view is full and no
    shot view needs the rest (unless `keep_going()`: the decoder lost packets and the caller
    wants the whole stream counted). Returns the number of frames that came out of the decoder.

    The SwsContexts `convert` keeps live only for this pass: freed at its end, so a process
    that forks decode workers later (the extract stage, the service) holds none of them or their
    threads, which a forked child would hang or crash on (seen in the full test suite)."""
    try:
        return _run_pass(frames, plans, keep_going)
    finally:
        _REFORMATTERS.clear()


def _run_pass(frames: Iterable[Decoded], plans: dict[str, Plan], keep_going) -> int:
    slots = [p.slots for p in plans.values() if p.slots is not None]
    shots = [p.shots for p in plans.values() if p.shots is not None]
    prev, count = None, 0
    for dec in frames:
        count += 1
        for s in slots:
            s.offer(prev, dec.time)
        for sh in shots:
            sh.add(dec)
        prev = dec
        if not shots and all(s.done for s in slots) and not keep_going():
            break
    for s in slots:
        s.offer(prev, None)
    return count


def finish(plans: dict[str, Plan], duration: float, rotate) -> tuple[dict, dict, dict]:
    """({key: frames}, {key: (T, 2) or (N, 2) spans}, {key: presentation indices}) of every
    plan, turned upright by `rotate(frames, axes)`."""
    frames, spans, indices = {}, {}, {}
    for key, p in plans.items():
        if p.shots is not None:
            p.shots.finish(duration)
            shots = p.shots.shots
            if len(shots) > p.view.num_frames:
                keep = np.unique(np.round(np.linspace(0, len(shots) - 1, p.view.num_frames)).astype(int))
                shots = [shots[i] for i in keep]
            w, h = p.shots.size
            pics = np.stack([s[2] for s in shots]) if shots else np.zeros((0, h, w, 1 if p.view.gray else 3), np.uint8)
            frames[key] = rotate(pics, (1, 2))
            spans[key] = np.array([[s[0], s[1]] for s in shots], np.float64).reshape(-1, 2)
            indices[key] = np.array([s[3] for s in shots], np.int64)
        elif p.view.kind == "window":
            win, spans[key], indices[key] = windows(p)
            frames[key] = rotate(win, (2, 3))
        else:
            frames[key] = rotate(p.slots.out, (1, 2))
            spans[key] = np.clip(p.spans, 0, duration)
            indices[key] = p.slots.index
    return frames, spans, indices


def frame_stream(decoded: Iterator, frame_times: np.ndarray) -> Iterator[Decoded]:
    """Wrap (av frame, time) pairs with their presentation index among the container's frames
    (the nearest timestamp; frames arrive in time order, so a running pointer finds it)."""
    times = frame_times.tolist()
    j = 0
    for frame, time in decoded:
        if time < times[j]:  # out of order (broken timestamps): search from the start
            j = int(nearest_indices(frame_times, np.array([time]))[0])
        while j + 1 < len(times) and times[j + 1] <= time:
            j += 1
        nearer_next = j + 1 < len(times) and times[j + 1] - time < time - times[j]
        yield Decoded(frame, time, j + 1 if nearer_next else j)
