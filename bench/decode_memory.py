#!/usr/bin/env python3
"""Peak memory of decoding one long video: a synthetic 10-minute 1280x720 25 fps clip (low
bitrate, 44.1 kHz audio), decoded in a fresh child process per setting, which reports its own
peak RSS from the kernel (VmHWM, so nothing is missed between samples).

Peak RSS = the child's VmHWM after decoding (and, for *_extract, after the extractor ran).
Settings: the default decode (16 frames @ 224 + 16 kHz audio, decord and PyAV), one pass
with many views (a 3D-CNN window view at 15 fps, grey low-res frames, keyframes, shots), and
the window views of the two 3D families' defaults alone: R(2+1)D-18 (16 frames @ 15 fps, short
side 128) and I3D (64 frames @ 25 fps, short side 256), each with the family's `max_windows` cap
(configs/extractors/video3d.yaml, i3d_rgb.yaml; `--only NAME` runs some settings).
The clip is written once with ffmpeg (about 2 minutes on 2 cores) and reused.
Prints and saves bench/results/decode_memory.json.

    python bench/decode_memory.py [--clip /tmp/long720.mp4] [--minutes 10] [--only i3d_window_pyav ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.config import versions  # noqa: E402
from pipeline.demo import ffmpeg_run  # noqa: E402
from pipeline.io import write_json  # noqa: E402

SETTINGS = {
    "default_decord": {"backend": "auto", "views": []},
    "default_pyav": {"backend": "pyav", "views": []},
    "many_views_pyav": {"backend": "auto", "views": [
        {"kind": "window", "num_frames": 16, "fps": 15, "short_side": 128},       # r2plus1d_18's recipe
        {"kind": "uniform", "num_frames": 32, "short_side": 112, "gray": True},   # trajectories / flow
        {"kind": "keyframes", "num_frames": 64, "short_side": 224},
        {"kind": "shots", "num_frames": 64, "short_side": 224}]},
    "video3d_window_pyav": {"backend": "auto", "views": [
        {"kind": "window", "num_frames": 16, "fps": 15, "short_side": 128, "max_windows": 64}]},
    "i3d_window_pyav": {"backend": "auto", "views": [
        {"kind": "window", "num_frames": 64, "fps": 25, "short_side": 256, "max_windows": 32}]},
    # decode + the I3D RGB extractor itself (random weights, its YAML otherwise) in one process
    "i3d_rgb_extract": {"backend": "auto", "views": [], "extract": "i3d_rgb"},
}

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.decode import DecodeOptions, View, decode_video
setting = json.loads(sys.argv[3])
def hwm_mb():  # this process's own peak RSS (getrusage's ru_maxrss would include the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)
views = {v.key(): v for v in (View(**d) for d in setting["views"])}
ext = None
if setting.get("extract"):
    from extractors import build_extractor
    from pipeline.config import load_config
    name = setting["extract"]
    ext = build_extractor(name, {**load_config().extractors[name], "weights": "random"}, "cpu")
    views.update({v.key(): v for v in ext.views().values()})
t0 = time.perf_counter()
clip = decode_video(sys.argv[2], DecodeOptions(backend=setting["backend"], views=views))
sec = time.perf_counter() - t0
kept = clip.frames.nbytes + sum(a.nbytes for a in clip.views.values()) + (clip.audio.nbytes if clip.audio is not None else 0)
out = {"seconds": round(sec, 1), "backend": clip.backend, "decoded_frames": clip.meta.get("decoded_frames"),
       "frames": list(clip.frames.shape), "views": {k: list(a.shape) for k, a in clip.views.items()},
       "clip_mb": round(kept / 2**20, 1), "duration_s": round(clip.duration, 1), "peak_rss_mb": hwm_mb()}
if ext is not None:
    t0 = time.perf_counter()
    f = ext.extract([clip])[0]
    out.update(extract_seconds=round(time.perf_counter() - t0, 1), sequence=list(f.sequence.shape),
               precision=ext.precision, window=ext.metadata()["window"], peak_rss_after_extract_mb=hwm_mb())
print(json.dumps(out))
"""


def make_clip(path: Path, minutes: float) -> None:
    seconds = int(minutes * 60)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    import ffmpeg

    video = ffmpeg.input(f"testsrc2=size=1280x720:rate=25:duration={seconds}", f="lavfi")
    audio = ffmpeg.input(f"sine=frequency=440:sample_rate=44100:duration={seconds}", f="lavfi")
    ffmpeg_run(ffmpeg.output(video, audio, str(tmp), vcodec="libx264", preset="ultrafast", video_bitrate="600k",
                             g=250, acodec="aac", audio_bitrate="64k", shortest=None))
    os.replace(tmp, path)


def measure(clip: Path, setting: dict) -> dict:
    """Decode in a fresh interpreter, which reports its own peak RSS (VmHWM)."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(clip), json.dumps(setting)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default="/tmp/long720.mp4")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode_memory.json"))
    ap.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="run these settings only")
    args = ap.parse_args()
    settings = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only}
    clip = Path(args.clip)
    if not clip.exists():
        print(f"writing {clip} ({args.minutes:g} min 1280x720) ...", flush=True)
        make_clip(clip, args.minutes)
    results = {"clip": str(clip), "clip_mb": round(clip.stat().st_size / 2**20, 1), "cpu_count": os.cpu_count(),
               "loadavg_before": os.getloadavg(), "versions": versions(), "settings": settings}
    for name, setting in settings.items():
        t0 = time.perf_counter()
        results[name] = measure(clip, setting)
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(results[name]), flush=True)
    results["loadavg_after"] = os.getloadavg()
    write_json(args.out, results)


if __name__ == "__main__":
    main()
