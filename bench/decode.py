#!/usr/bin/env python3
"""Decode benchmark on the 300 real fight clips: 16 frames at 224 px short side + 16 kHz audio.

Runs the pipeline's own decode path (`pipeline.extract.decode_stream`, a process pool working
ahead) with decord and with PyAV, and, as the yardstick, a plain PyAV decode of every frame of
every clip (no RGB conversion, no audio) on the same number of processes.
Prints and saves bench/results/decode.json.

    python bench/decode.py [--data ../shared/data/fight] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.config import versions  # noqa: E402
from pipeline.decode import Clip, DecodeOptions  # noqa: E402
from pipeline.extract import decode_stream  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process plus its children, sampled every 20 ms."""

    def __enter__(self):
        self.peak, self._stop = 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        me = psutil.Process()
        while not self._stop:
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()


def full_decode(path: str) -> int:
    import av

    with av.open(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "SLICE"
        return sum(1 for _ in c.decode(vs))


def run_backend(paths, backend, workers):
    videos = [{"video_id": p, "path": p, "title": None} for p in paths]
    opts = DecodeOptions(backend=backend, num_frames=16, short_side=224, sample_rate=16000)
    frames = failed = audio = 0
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for _, clip in decode_stream(videos, opts, workers=workers, timeout_s=60, window=4 * workers):
            if isinstance(clip, Clip):
                frames += len(clip.frames)
                audio += clip.audio is not None
            else:
                failed += 1
        sec = time.perf_counter() - t0
    return {"backend": backend, "workers": workers, "clips": len(paths), "failed": failed, "with_audio": audio,
            "seconds": round(sec, 2), "clips_per_s": round(len(paths) / sec, 2), "frames_per_s": round(frames / sec, 1),
            "peak_rss_mb": round(mem.peak / 2**20, 1)}


def run_full_decode(paths, workers):
    t0 = time.perf_counter()
    if workers <= 1:
        n = sum(full_decode(p) for p in paths)
    else:
        with ProcessPoolExecutor(workers) as pool:
            n = sum(pool.map(full_decode, paths, chunksize=4))
    sec = time.perf_counter() - t0
    return {"workers": workers, "seconds": round(sec, 2), "clips_per_s": round(len(paths) / sec, 2),
            "frames_decoded_per_s": round(n / sec, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fight"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "decode.json"))
    args = ap.parse_args()
    paths = sorted(str(p) for p in Path(args.data).rglob("*.mp4"))
    if not paths:
        sys.exit(f"no clips under {args.data}")
    results = {"data": args.data, "cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg(),
               "versions": versions()}
    results["full_decode_every_frame_1proc"] = run_full_decode(paths, 1)
    results["full_decode_every_frame"] = run_full_decode(paths, args.workers)
    for backend in ("decord", "pyav"):
        results[backend] = run_backend(paths, backend, args.workers)
        print(json.dumps(results[backend]))
    best = max(results["decord"]["clips_per_s"], results["pyav"]["clips_per_s"])
    results["best_clips_per_s"] = best
    results["best_vs_full_decode_same_workers"] = round(best / results["full_decode_every_frame"]["clips_per_s"], 3)
    results["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in results.items() if k != "versions"}, indent=2))


if __name__ == "__main__":
    main()
