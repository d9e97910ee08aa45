"""The two frame decoders behind `pipeline.decode.decode_video`.

PyAV (`decode_pyav`) decodes the probed packets once and feeds every frame to the views' pass
(`pipeline.views`). A packet the decoder rejects is skipped and counted, the way
`ffmpeg -i clip -f null -` goes on past it; when anything was lost the whole stream is decoded
so that `lost_frames` (frames the container lists minus frames that decoded) is exact.

decord (`decode_decord`) reads uniformly sampled frames by index, resizing inside its decoder;
it is the fast path when `clip.frames` is all that is asked for. Its reader stays broken after a
damaged packet, so in `backend: auto` a decord error hands the file to PyAV's salvage; with
`backend: decord` each sample is read alone instead and a frame decord cannot read gives way
to its nearest readable neighbour in time (`unreadable_frames`, `moved_samples`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .decode import View, nearest_indices
from .probe import DecodeError, Probe
from .views import finish, frame_stream, plan_view, run_pass


@dataclass
class _Frames:
    frames: dict            # {view key: uint8 array}
    spans: dict             # {view key: (T, 2) or (N, 2) seconds}
    indices: dict           # {view key: presentation indices}
    warnings: dict
    decoded: int = 0        # frames out of the decoder (PyAV path)


MAIN = "__frames__"         # the key of clip.frames inside a decode pass


def _pyav_frames(info: Probe, counts: dict):
    """(av frame, time) of every frame the decoder gives for the probed packets, in presentation
    order. A packet the decoder rejects is skipped and counted, as `ffmpeg -i clip -f null -`
    does: decoding goes on with the next one."""
    import av

    if info.codec == "webp_anim:pillow":
        yield from _webp_frames(info.path, info.frame_times, counts)
        return
    ctx = av.CodecContext.create(info.codec, "r")
    ctx.extradata = info.extradata
    ctx.thread_type = "SLICE"
    last = len(info.frame_times) - 1
    n = 0
    for packet in [*info.packets, None]:
        try:
            frames = ctx.decode(packet)
        except av.error.FFmpegError:
            counts["lost_packets"] += 1
            continue
        for frame in frames:  # a frame without a timestamp takes the n-th demuxed one's
            t = (frame.pts - info.start) * info.time_base if frame.pts is not None else info.frame_times[min(n, last)]
            n += 1
            yield frame, float(t)


def decode_pyav(info: Probe, wanted: dict[str, View]) -> _Frames:
    """Every wanted view in one pass over the decoded frames (`pipeline.views`)."""
    stored, turned = (info.width, info.height), info.rotation % 180 != 0
    plans = {k: plan_view(v, info.duration, info.fps, info.frame_times, info.keyframe_times, stored, turned)
             for k, v in wanted.items()}
    counts = {"lost_packets": 0}
    decoded = run_pass(frame_stream(_pyav_frames(info, counts), info.frame_times), plans,
                       keep_going=lambda: counts["lost_packets"] > 0 or info.incomplete)
    if decoded == 0:
        raise DecodeError(f"no video frame can be decoded ({counts['lost_packets']} of {len(info.packets)} packets rejected)")
    frames, spans, indices = finish(plans, info.duration, lambda a, axes: _rotate(a, info.rotation, axes))
    warnings = {k: v for k, v in counts.items() if v}
    if counts["lost_packets"] or info.incomplete:  # the whole stream was decoded: count the loss
        lost = max(info.declared_frames, len(info.frame_times)) - decoded
        if lost > 0:
            warnings["lost_frames"] = lost
    main = plans[MAIN]
    if main.slots is not None:
        moved = int((main.slots.index != nearest_indices(info.frame_times, main.slots.targets)).sum())
        if moved:
            warnings["moved_samples"] = moved
    return _Frames(frames, spans, indices, warnings, decoded)


def decode_decord(path: str, info: Probe, view: View, salvage: bool) -> _Frames:
    """clip.frames through decord (uniform sampling only). decord's reader stays broken after a
    damaged packet, so with `salvage` each sample is read alone, a frame decord cannot read
    giving way to its nearest readable neighbour in time."""
    import decord

    turned = info.rotation % 180 != 0
    plan = plan_view(view, info.duration, info.fps, info.frame_times, info.keyframe_times,
                     (info.width, info.height), turned)
    w, h = plan.slots.size[::-1] if turned else plan.slots.size  # decord resizes the upright picture
    indices = nearest_indices(info.frame_times, plan.slots.targets)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    if len(vr) <= int(indices.max()):
        raise DecodeError(f"decord sees {len(vr)} frames, needs index {int(indices.max())}")
    warnings = {}
    try:
        frames = vr.get_batch(list(map(int, indices))).asnumpy()
    except Exception:
        if not salvage:
            raise
        frames, got, warnings = _decord_salvage(lambda: decord.VideoReader(
            path, ctx=decord.cpu(0), width=w, height=h, num_threads=1), info.frame_times[:len(vr)], indices)
        indices = got
    spans = np.clip(plan.spans, 0, info.duration)
    return _Frames({MAIN: frames}, {MAIN: spans}, {MAIN: indices}, warnings)


def _decord_salvage(open_reader, times: np.ndarray, planned: np.ndarray, tries_per_sample: int = 8):
    vr, got, bad = open_reader(), {}, set()
    budget = tries_per_sample * len(planned)
    for i in planned:
        order = np.argsort(np.abs(times - times[i]), kind="stable")  # nearest in time first
        for j in map(int, order):
            if j in got or budget <= 0:
                break
            if j in bad:
                continue
            budget -= 1
            try:
                got[j] = vr[j].asnumpy()
                break
            except Exception:  # decord.DECORDError; its reader is unusable afterwards
                bad.add(j)
                vr = open_reader()
    if not got:
        raise DecodeError(f"decord cannot read any frame ({len(bad)} tried)")
    have = np.array(sorted(got))
    chosen = have[nearest_indices(times[have], times[planned])]
    warnings = {"unreadable_frames": len(bad), "moved_samples": int((chosen != planned).sum())}
    return np.stack([got[int(j)] for j in chosen]), chosen.astype(np.int64), {k: v for k, v in warnings.items() if v}


# -- animated WebP ------------------------------------------------------------------------------
# PyAV's bundled FFmpeg has no animated-WebP demuxer/decoder (`webp_anim`), so these files are
# read with Pillow (libwebp's WebPAnimDecoder, frames composited on the canvas). Frame times come
# from the RIFF container's ANMF headers, so probing decodes nothing.
def is_webp(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def probe_webp(path: str) -> Probe:
    import struct

    data = open(path, "rb").read()
    pos, width, height, durations = 12, 0, 0, []
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if kind == b"VP8X" and len(body) >= 10:
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
        elif kind == b"ANMF" and len(body) >= 16:
            durations.append(int.from_bytes(body[12:15], "little") / 1000)
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if not durations:
        raise DecodeError("a still WebP image (no animation frames), not a video")
    durations = [d if d > 0 else 0.1 for d in durations]   # 0 ms frames: browsers show them 100 ms
    times = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    duration = float(sum(durations))
    return Probe(duration, len(times) / duration, width, height, 0, times, False, [], None, codec="webp_anim:pillow",
                 keyframe_times=times[:1], declared_frames=len(times), path=path)


def _webp_frames(path: str, times: np.ndarray, counts: dict):
    import av
    from PIL import Image

    with Image.open(path) as im:
        for i, t in enumerate(times):
            try:
                im.seek(i)
                rgb = np.asarray(im.convert("RGB"))
            except (OSError, EOFError, ValueError):  # a damaged frame: skip it, as for packets
                counts["lost_packets"] += 1
                continue
            yield av.VideoFrame.from_ndarray(rgb, format="rgb24"), float(t)


def _rotate(frames: np.ndarray, rotation: int, axes=(1, 2)) -> np.ndarray:
    # PyAV reports the display matrix angle counter-clockwise and np.rot90 with k > 0 turns
    # counter-clockwise too, so k = rotation / 90 gives what ffmpeg's autorotate shows
    # (tests/test_decode.py checks this against ffmpeg itself).
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=axes)) if k else frames
