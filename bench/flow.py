#!/usr/bin/env python3
"""Optical-flow back-ends (extractors/optical_flow.py) on real frames of ../shared/data/fight.

Frames: `--clips` clips spread over the corpus (both classes), the first `--frames` frames
sampled at 15 fps (about every second frame: "consecutive-ish"), short side 112 (the trajectory
extractor's working size), decoded by pipeline.decode. For each method available here:
  * speed: pairs/s of compute_flows over every consecutive pair of every clip, one clip per call
    (one thread, as the trajectory extractor runs on the CPU: see extractors.base.one_thread);
  * accuracy: end-point error (EPE, px) against ground truth known by construction. Each real
    frame is warped by a known field f (frame1(x) = frame(x + f(x)), bicubic; frame2 = frame),
    so the forward flow frame1 -> frame2 is exactly f. Fields: a random translation of up to 4 px
    per axis, a smooth non-rigid field (up to ~3 px), an 8 px translation. EPE is averaged over
    the pixels at least 12 px from the border ("all") and over the textured ones among them
    (the points the trajectory extractor starts tracks on: min eigenvalue >= 0.001 x max);
  * the flow magnitude on the real consecutive pairs (how far things move at 15 fps, 112 px);
  * dense_trajectories per clip with each method (s/clip and tracks/clip, 16 frames).
RAFT runs with `weights: random` (no pretrained file offline here): its speed is that of the
trained network, its accuracy is meaningless and not reported. Prints and saves
bench/results/flow.json.

    python bench/flow.py [--data ../shared/data/fight] [--clips 20] [--frames 9] [--raft-clips 5]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from extractors.optical_flow import compute_flows, load_raft, to_gray  # noqa: E402
from extractors.trajectory import dense_trajectories  # noqa: E402
from pipeline.config import load_config, versions  # noqa: E402
from pipeline.decode import DecodeOptions, decode_video  # noqa: E402
from pipeline.io import write_json  # noqa: E402

MARGIN = 12


def fields(h: int, w: int, rng) -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = rng.uniform(-4, 4, 2)
    ax, ay, px, py = *rng.uniform(1.0, 2.5, 2), *rng.uniform(0, 2 * np.pi, 2)
    const = lambda u, v: np.dstack([np.full((h, w), u), np.full((h, w), v)]).astype(np.float32)  # noqa: E731
    out = {"translation_4px": const(dx, dy),
           "smooth": np.dstack([0.5 + ax * np.sin(2 * np.pi * ys / h + px),
                                -0.5 + ay * np.cos(2 * np.pi * xs / w + py)]),
           "translation_8px": const(8.0 * np.sign(dx), 8.0 * np.sign(dy)) / np.sqrt(2)}   # 8 px long
    return {k: v.astype(np.float32) for k, v in out.items()}


def warped_pair(rgb: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(2, h, w, 3) uint8: frame1(x) = rgb(x + flow(x)), frame2 = rgb; forward flow = `flow`."""
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    first = cv2.remap(rgb.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC,
                      borderMode=cv2.BORDER_REFLECT)
    return np.stack([first.clip(0, 255).round().astype(np.uint8), rgb])


def textured(gray: np.ndarray) -> np.ndarray:
    eig = cv2.cornerMinEigenVal(gray, 3)
    return eig >= 0.001 * max(float(eig.max()), 1e-12)


def run_method(method, clips, raft=None, accuracy=True, rng_seed=0) -> dict:
    def flows(frames):
        return compute_flows(frames, method, "cpu", raft)

    flows(clips[0][:2])  # warm-up (first-call allocations)
    pairs, start = 0, time.perf_counter()
    real = []
    for frames in clips:
        f = flows(frames)
        pairs += len(f)
        real.append(f.norm(dim=-1).flatten())
    seconds = time.perf_counter() - start
    out = {"pairs": pairs, "seconds": round(seconds, 2), "pairs_per_s": round(pairs / seconds, 1)}
    if not accuracy:
        return out
    mag = torch.cat(real).numpy()
    out["real_pairs_flow_px"] = {"median": round(float(np.median(mag)), 2),
                                 "p95": round(float(np.percentile(mag, 95)), 2)}
    rng = np.random.default_rng(rng_seed)
    epe: dict[str, dict[str, list]] = {}
    for frames in clips:
        rgb = frames[len(frames) // 2]
        h, w = rgb.shape[:2]
        tex = textured(to_gray(rgb[None])[0])[MARGIN:-MARGIN, MARGIN:-MARGIN]
        for field, truth in fields(h, w, rng).items():
            est = flows(warped_pair(rgb, truth))[0].numpy()
            err = np.linalg.norm(est - truth, axis=-1)[MARGIN:-MARGIN, MARGIN:-MARGIN]
            e = epe.setdefault(field, {"all": [], "textured": []})
            e["all"].append(float(err.mean()))
            e["textured"].append(float(err[tex].mean()))
    out["epe_px"] = {f: {k: round(float(np.mean(v)), 3) for k, v in e.items()} for f, e in epe.items()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--raft-clips", type=int, default=5, help="clips timed with RAFT (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "flow.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data} not found (the real clips ship beside the repo as ../shared/data/fight)")
    paths = sorted(data.rglob("*.mp4"))
    paths = paths[:: max(1, len(paths) // args.clips)][: args.clips]
    opts = DecodeOptions(fps=15.0, max_frames=args.frames, short_side=112, audio=False)
    clips = [decode_video(p, opts, video_id=p.stem).frames for p in paths]
    clips = [c for c in clips if len(c) >= 2]
    res = {"data": str(data), "clips": len(clips), "frames_per_clip": args.frames, "fps": 15.0, "short_side": 112,
           "frame_size": list(clips[0].shape[1:3]), "threads": args.threads, "device": "cpu",
           "cuda_available": torch.cuda.is_available(), "loadavg_before": os.getloadavg(),
           "epe_margin_px": MARGIN, "versions": versions(), "methods": {}}

    def save():
        res["loadavg_after"] = os.getloadavg()
        write_json(args.out, res)

    runs = {"farneback": lambda: run_method("farneback", clips), "torch_cpu": lambda: run_method("torch", clips)}
    for model in ("raft_small", "raft_large"):
        runs[f"{model}_random"] = lambda model=model: {
            **run_method("raft", clips[: args.raft_clips], load_raft(model, "random")[0], accuracy=False),
            "note": "random weights: speed only, accuracy not meaningful"}
    for name, run in runs.items():
        r = run()
        res["methods"][name] = r
        print(name, json.dumps(r), flush=True)
        save()

    # The whole trajectory descriptor step (flow + tracking + descriptors) per clip, 16 frames
    # uniformly sampled at 112 px as the extractor sees them.
    cfg = dict(load_config().extractors.trajectory)
    long = [decode_video(p, DecodeOptions(num_frames=16, short_side=112, audio=False)).frames for p in paths]
    res["dense_trajectories_16f"] = {}
    for method in ("farneback", "torch"):
        start = time.perf_counter()
        tracks = [len(dense_trajectories(f, {**cfg, "flow": method})["when"]) for f in long]
        seconds = time.perf_counter() - start
        r = {"clips": len(long), "s_per_clip": round(seconds / len(long), 3),
             "tracks_per_clip": round(float(np.mean(tracks)), 1)}
        res["dense_trajectories_16f"][method] = r
        print("dense_trajectories", method, json.dumps(r), flush=True)
    save()


if __name__ == "__main__":
    main()
