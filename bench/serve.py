#!/usr/bin/env python3
"""Load test of `run_pipeline.py serve` on real fight clips, against offline `predict` in the
same run (loopback only; bounded in requests and time; stops by itself).

    python bench/serve.py [--data ../shared/data/fight] [--out /tmp/serve_bench] [--requests 500]

1. Builds a training folder once (scan + extract + train Early Fusion on --train-clips clips;
   visual ResNet-18 and VGGish with `weights: random` since no pretrained file can be
   downloaded here: the cost is the point, not the labels).
2. Offline: `predict --videos` on --offline-clips other clips (rate = clips / wall, the
   predictor's start-up excluded), before and after the load test; the median is the yardstick.
3. Online: a server on 127.0.0.1, clients at concurrency 1, 4 and 16 sharing --requests uploads
   (1 : 2 : 2), each level bounded by --level-seconds: throughput, p50/p95/p99 latency, errors,
   server RSS at the start and the end.
Saves bench/results/serve.json (with the load average: the machine is shared).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SETTINGS = ["extract.modalities=[visual,audio]", "extractors.visual.depth=18", "extractors.visual.weights=random",
            "extractors.audio.weights=random", "decode.num_frames=8", "train.epochs=5"]


def build(out: Path, clips: list[Path]) -> None:
    from pipeline.config import load_config
    from pipeline.extract import run_extract
    from pipeline.scan import run_scan
    from pipeline.train import run_train

    if (out / "runs" / "ef").is_dir():
        return
    videos = out.parent / "train_videos"
    link_folder(videos, clips, by_label=True)
    cfg = load_config(None, SETTINGS)
    run_scan(cfg, out, videos)
    run_extract(cfg, out, progress=False)
    run_train(cfg, out, "early_fusion", run_name="ef")


def link_folder(folder: Path, clips: list[Path], by_label: bool = False) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    for c in clips:
        dest = folder / (c.parent.name if by_label else "") / c.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(c.resolve())
    return folder


def offline_rate(out: Path, clips: list[Path], tag: str) -> float:
    """Clips per second of `predict --videos` (decode + extract + score), start-up excluded."""
    from pipeline.config import load_config
    from pipeline.predict import Predictor, predict_videos

    cfg = load_config(None, SETTINGS)
    folder = link_folder(out.parent / f"offline_{tag}", clips)
    t0 = time.perf_counter()
    Predictor(cfg, out, [out / "runs" / "ef"])             # the start-up predict_videos pays too
    startup = time.perf_counter() - t0
    shutil.rmtree(out / "predict", ignore_errors=True)
    t0 = time.perf_counter()
    predict_videos(cfg, out, [out / "runs" / "ef"], folder, progress=False)
    return len(clips) / max(time.perf_counter() - t0 - startup, 1e-9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_level(url: str, clips: list[Path], n: int, concurrency: int, limit_s: float) -> dict:
    import httpx

    bodies = [(c.name, c.read_bytes()) for c in clips]
    deadline = time.time() + limit_s

    def one(i: int):
        if time.time() > deadline:
            return None
        name, data = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            r = httpx.post(url + "/v1/predict", files={"file": (name, data, "video/mp4")}, timeout=120)
            return r.status_code, time.perf_counter() - t0
        except httpx.HTTPError as e:
            return type(e).__name__, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for r in pool.map(one, range(n)) if r is not None]
    wall = time.perf_counter() - t0
    ok = [s for code, s in results if code == 200]
    q = np.percentile(ok, [50, 95, 99]) if ok else [float("nan")] * 3
    return {"concurrency": concurrency, "requests": len(results), "ok": len(ok), "errors": len(results) - len(ok),
            "videos_per_s": round(len(ok) / wall, 3), "p50_s": round(q[0], 3), "p95_s": round(q[1], 3),
            "p99_s": round(q[2], 3), "wall_s": round(wall, 1)}


def online(out: Path, clips: list[Path], requests: int, limit_s: float) -> dict:
    import httpx
    import psutil

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "serve", "--out", str(out), "--run", "ef",
                             "--port", str(port), *SETTINGS], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        load_level(url, clips, 4, 2, limit_s)                     # warm-up, not counted
        rss = lambda: psutil.Process(proc.pid).memory_info().rss  # noqa: E731
        rss_start = rss()
        shares = {1: requests // 5, 4: 2 * requests // 5, 16: requests - 3 * (requests // 5)}
        levels = [load_level(url, clips, n, c, limit_s) for c, n in shares.items()]
        rss_end = rss()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"levels": levels, "rss_start_mb": round(rss_start / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
            "rss_growth": round(rss_end / rss_start - 1, 4)}


def main() -> None:
    from pipeline.config import versions
    from pipeline.io import write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--out", default="/tmp/serve_bench/out")
    ap.add_argument("--train-clips", type=int, default=60)
    ap.add_argument("--offline-clips", type=int, default=60)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--level-seconds", type=float, default=600)
    args = ap.parse_args()
    clips = sorted(Path(args.data).rglob("*.mp4"))
    rng = np.random.default_rng(0)
    clips = [clips[i] for i in rng.permutation(len(clips))]
    train, test = clips[:args.train_clips], clips[args.train_clips:args.train_clips + args.offline_clips]
    out = Path(args.out)
    build(out, train)
    load_before = os.getloadavg()
    before = offline_rate(out, test, "a")
    served = online(out, test, args.requests, args.level_seconds)
    after = offline_rate(out, test, "b")
    offline = float(np.median([before, after]))
    at4 = next(lv for lv in served["levels"] if lv["concurrency"] == 4)
    result = {"settings": SETTINGS, "clips": len(test), "offline_videos_per_s": [round(before, 3), round(after, 3)],
              "offline_median": round(offline, 3), **served,
              "ratio_c4_to_offline": round(at4["videos_per_s"] / offline, 3),
              "loadavg": {"start": load_before, "end": os.getloadavg()}, "versions": versions()}
    write_json(ROOT / "bench" / "results" / "serve.json", result)
    for lv in served["levels"]:
        print(lv)
    print({k: v for k, v in result.items() if k not in ("levels", "versions", "settings")})


if __name__ == "__main__":
    main()
