#!/usr/bin/env python3
"""GPU benchmark of the visual families: one script, under 5 minutes on one H100 / H200.

Per family (bench/extract.py's FAMILY_BENCH: R(2+1)D-18, S3D, MViT-v2-S, Swin3D-T, I3D RGB and
flow, CLIP ViT-B/32, SigLIP B/16, scene VGG16 + VGG19 grid), with `weights: random` (speed does not
depend on the weights) in bf16 autocast + channels_last:
  * clips/s and windows or frames per s with decoding overlapped: the clips are decoded, with the
    family's own views, in `--workers` decode processes (pipeline.extract.decode_stream) while
    the GPU works on the previous batch of `--batch` clips; the run stops after `--seconds` (after
    one warm-up batch) or when the clips run out;
  * decode alone at the same views and workers (so a family bound by decoding shows as such);
  * achieved TFLOP/s of the networks (FLOPs per window / frame from torch's FlopCounterMode, 2 per
    multiply-add) against the bf16 dense ceiling (`--ceiling-tflops`, 790 for an H200 / H100 SXM)
    and against this GPU's measured bf16 matmul rate.
Saves bench/results/gpu.json (or --out).

    python bench/gpu.py                       # on the GPU machine: all families, 300 fight clips
    python bench/gpu.py --smoke               # CPU, 2 clips, 2 families, tiny windows: checks the script

On a lent device machine (only the checkout travels, 64 MiB at most; its python3 has torch,
torchvision, transformers, timm but no PyAV, omegaconf, pebble): copy ~100 fight clips (about 30 MB)
into an ignored folder of the checkout and pass `--data` to it, carry wheels of av, omegaconf,
antlr4-python3-runtime and pebble (see the device notes), and set `--workers` to the CPU count
minus two so that decoding keeps up.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from extract import FAMILY_BENCH, family_extractor, matmul_gflops, network_flops  # noqa: E402

from pipeline.config import versions  # noqa: E402
from pipeline.decode import Clip, DecodeOptions  # noqa: E402
from pipeline.extract import decode_stream  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.views import collect_views  # noqa: E402

GPU_FAMILIES = ["video3d", "video3d_s3d", "video3d_mvit_v2_s", "video3d_swin3d_t", "i3d_rgb", "i3d_flow",
                "image_text", "image_text_siglip", "scene"]
# --smoke: tiny inputs so the whole script runs in a minute or two on a CPU.
SMOKE = {"video3d": {"arch": "mc3_18", "clip_len": 8, "crop_size": 32},
         "i3d_flow": {"clip_len": 8, "crop_size": 32, "short_side": 32, "flow": "farneback"}}


def options_for(ext) -> DecodeOptions:
    return DecodeOptions(num_frames=16, short_side=224, audio=False, views=collect_views({"x": ext}))


def decode_rate(videos, opts, workers, limit_s) -> dict:
    start, n = time.perf_counter(), 0
    for _, clip in decode_stream(videos, opts, workers, 120.0, window=4 * max(1, workers)):
        n += isinstance(clip, Clip)
        if time.perf_counter() - start > limit_s:
            break
    seconds = time.perf_counter() - start
    return {"clips": n, "seconds": round(seconds, 2), "clips_per_s": round(n / seconds, 2)}


def run_family(name, videos, args, device, ceiling, matmul) -> dict:
    ext, unit = family_extractor(name, device, **(SMOKE.get(name, {}) if args.smoke else {}))
    opts = options_for(ext)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    stream = decode_stream(videos, opts, args.workers, 120.0, window=4 * max(1, args.workers))
    batch, clips, units, start, first = [], 0, 0, None, None
    for _, clip in stream:
        if isinstance(clip, Clip):
            batch.append(clip)
            first = first or clip
        if len(batch) < args.batch:
            continue
        feats = ext.extract(batch)
        sync()
        if start is None:   # the first batch is the warm-up (cuDNN autotuning, allocations)
            start, batch = time.perf_counter(), []
            continue
        clips += len(batch)
        units += sum(len(f.sequence) for f in feats if f is not None)
        batch = []
        if time.perf_counter() - start > args.seconds:
            break
    stream.close()
    seconds = time.perf_counter() - start if start else float("nan")
    flops = network_flops(ext, first) / max(1, len(ext.extract([first])[0].sequence))
    tflops = units * flops / seconds / 1e12 if clips else 0.0
    res = {"model": ext.metadata().get("model"), "precision": ext.metadata().get("precision"), "unit": unit,
           "clips": clips, "seconds": round(seconds, 2), "clips_per_s": round(clips / seconds, 2),
           f"{unit}s_per_s": round(units / seconds, 1), "gflop_per_unit": round(flops / 1e9, 2),
           "achieved_tflops": round(tflops, 3), "fraction_of_ceiling": round(tflops / ceiling, 4),
           "fraction_of_measured_matmul": round(tflops * 1e3 / matmul, 4),
           "decode_only": decode_rate(videos, opts, args.workers, min(args.seconds, 8.0))}
    res["bound"] = "decode" if res["decode_only"]["clips_per_s"] < 1.2 * res["clips_per_s"] else "compute"
    del ext
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--families", nargs="*", default=None, help=f"of {', '.join(FAMILY_BENCH)}")
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16, help="clips per extractor call")
    ap.add_argument("--seconds", type=float, default=12.0, help="timed seconds per family (after warm-up); "
                    "9 families x (12 s + 8 s decode alone + build and warm-up) stay under 5 minutes")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--ceiling-tflops", type=float, default=790.0)
    ap.add_argument("--smoke", action="store_true", help="CPU, 2 clips per batch, tiny inputs: checks the script")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no CUDA device: run on the GPU machine, or with --smoke to check the script on a CPU")
    families = args.families or (["video3d", "i3d_flow"] if args.smoke else GPU_FAMILIES)
    if args.smoke:
        args.clips, args.batch, args.seconds, args.workers = min(args.clips, 6), 2, 1.0, min(args.workers, 2)
    paths = sorted(Path(args.data).rglob("*.mp4"))[: args.clips]
    if not paths:
        sys.exit(f"no clips under {args.data}")
    videos = [{"path": str(p), "video_id": p.stem, "title": None} for p in paths]
    torch.backends.cudnn.benchmark = True
    # The GPU's bf16 matmul rate; in a CPU smoke run fp32 (bf16 is emulated on CPUs without AVX-512 BF16).
    matmul = matmul_gflops(torch.bfloat16, 8192, 3.0, device) if device == "cuda" else matmul_gflops(torch.float32, 512, 1.0)
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)", "smoke": args.smoke,
           "clips_available": len(paths), "batch": args.batch, "workers": args.workers, "seconds_per_family": args.seconds,
           "ceiling_tflops": args.ceiling_tflops, "measured_matmul_tflops": round(matmul / 1e3, 4),
           "matmul_dtype": "bf16" if device == "cuda" else "fp32 (CPU smoke)",
           "loadavg_before": os.getloadavg(), "versions": versions(), "families": {}}
    out = Path(args.out or ROOT / "bench" / "results" / ("gpu_smoke.json" if args.smoke else "gpu.json"))
    t0 = time.perf_counter()
    for name in families:
        res["families"][name] = run_family(name, videos, args, device, args.ceiling_tflops, matmul)
        print(name, res["families"][name], flush=True)
        res["loadavg_after"], res["total_s"] = os.getloadavg(), round(time.perf_counter() - t0, 1)
        write_json(out, res)
    print(f"{len(families)} families in {res['total_s']} s -> {out}")
    print("family".ljust(20), "clips/s".rjust(9), "units/s".rjust(9), "TFLOP/s".rjust(9), "of ceiling".rjust(11), "bound")
    for name, r in res["families"].items():
        print(name.ljust(20), f"{r['clips_per_s']:9.2f}", f"{r[r['unit'] + 's_per_s']:9.1f}",
              f"{r['achieved_tflops']:9.2f}", f"{r['fraction_of_ceiling']:11.4f}", r["bound"])


if __name__ == "__main__":
    main()
