#!/usr/bin/env python3
"""Extractor benchmark on the 300 real clips of ../shared/data/fight.

Measures, on this machine:
  * the fp32 and bf16 matrix-multiply rate (GFLOP/s), the yardstick for ResNet-50;
  * decode alone (the pipeline's decode_stream, 16 frames at 224 px + 16 kHz audio);
  * every extractor on the decoded clips in batches of 8: clips/s and frames/s (ResNet-50 also
    images/s and GFLOP/s at 8.2 GFLOP per 224x224 image against both matmul rates);
    text extractors on the msrvtt-mini pseudo captions (the fight clips have no titles);
  * ResNet-50 on 8 frames per clip with decoding included, decode in the same process one clip
    after the other vs decode in worker processes overlapped with compute (s/clip; the
    video_features reference is 1.18 s/clip on this machine, target <= 0.24);
  * the pipeline's own extract stage (pipeline.extract.run_extract: decode workers, which also
    run the trajectory flow and tracking, overlapped with the default extractors) against the
    same clips done stage after stage, with each stage's CPU seconds (their sum / cores is the
    least wall time any overlap can reach on this machine).
  * the visual families (`--families`: video3d R(2+1)D-18 / S3D / MViT / Swin3D, I3D RGB and flow,
    CLIP / SigLIP / timm frames, scene scores) on `--family-clips` clips decoded once with the
    union of their views: clips/s, windows or frames per s, network GFLOP per window / frame
    (torch's FlopCounterMode) and achieved GFLOP/s against the matmul rate of their precision;
  * video_features' visual families side by side: whether each runs here (separate process).
Visual and VGGish run with `weights: random` (no pretrained files offline here): the speed of a
network does not depend on its weights. Prints and saves bench/results/extract.json.

    python bench/extract.py [--data ../shared/data/fight] [--limit N] [--threads 2] [--workers 2]
        [--families video3d i3d_rgb ...] [--family-clips 8] [--family-frames 16] [--skip families peers ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from extractors import build_extractor  # noqa: E402
from extractors.base import cpu_has_fast_bf16  # noqa: E402
from pipeline.config import load_config, versions  # noqa: E402
from pipeline.decode import Clip, DecodeOptions, decode_video  # noqa: E402
from pipeline.extract import decode_stream  # noqa: E402
from pipeline.io import write_json  # noqa: E402

RESNET50_GFLOP = 8.2  # per 224x224 image (4.1 GMAC)


def matmul_gflops(dtype, n=2048, seconds=3.0, device="cpu") -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN / MKL / cuBLAS kernel selection)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
        if reps % 16 == 0:
            sync()
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def decode_all(paths, options, workers) -> tuple[list[Clip], float]:
    videos = [{"path": str(p), "video_id": p.stem, "title": None} for p in paths]
    start = time.perf_counter()
    clips = [c for _, c in decode_stream(videos, options, workers, 120.0, window=16) if isinstance(c, Clip)]
    return clips, time.perf_counter() - start


def time_extractor(ext, clips, batch=8, fit_clips=None) -> dict:
    out = {}
    if ext.needs_fit:
        start = time.perf_counter()
        ext.fit(fit_clips)
        out["fit_s"] = round(time.perf_counter() - start, 2)
        out["fit_clips"] = len(fit_clips)
    ext.extract(clips[:2])  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    present = 0
    for i in range(0, len(clips), batch):
        present += sum(f is not None for f in ext.extract(clips[i:i + batch]))
    seconds = time.perf_counter() - start
    frames = sum(len(c.frames) for c in clips)
    out.update(clips=len(clips), with_features=present, seconds=round(seconds, 2),
               clips_per_s=round(len(clips) / seconds, 2), frames_per_s=round(frames / seconds, 1),
               precision=ext.metadata().get("precision"), dim=ext.dim)
    return out


def resnet_decode_included(paths, workers: int, threads: int) -> dict:
    """ResNet-50 (bf16 where supported) on 8 frames per clip, decode included."""
    ext = build_extractor("visual", {"family": "resnet", "depth": 50, "weights": "random"}, "cpu")
    opts = DecodeOptions(num_frames=8, short_side=224, audio=False)
    ext.extract([decode_video(paths[0], opts)])  # warm-up
    videos = [{"path": str(p), "video_id": p.stem, "title": None} for p in paths]
    res = {}
    for mode, w in (("same_process", 0), ("overlapped", workers)):
        start = time.perf_counter()
        batch = []
        for _, clip in decode_stream(videos, opts, w, 120.0, window=16):
            if isinstance(clip, Clip):
                batch.append(clip)
            if len(batch) == 8:
                ext.extract(batch)
                batch = []
        if batch:
            ext.extract(batch)
        seconds = time.perf_counter() - start
        res[mode] = {"workers": w, "seconds": round(seconds, 2), "s_per_clip": round(seconds / len(paths), 3)}
        print(f"resnet50 8 frames decode included ({mode}): {res[mode]}", flush=True)
    res["reference_video_features_s_per_clip"] = 1.18
    res["target_s_per_clip"] = 0.24
    return res


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the decode workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline_end_to_end(paths: list[Path], workers: int) -> dict:
    """The pipeline's extract stage (decode workers overlapped with the default extractors, CPU
    flow and tracking inside the decode workers) against the same clips done stage after stage:
    decode everything, then each extractor over all clips. Both exclude fitting the trajectory
    codebook (the stage-after-stage run reuses the codebook the pipeline run learnt). The CPU
    seconds of the stages bound the wall time of any overlap from below: sum / cores."""
    from pipeline.extract import build_extractors, run_extract
    from pipeline.scan import run_scan

    overrides = ["extractors.visual.weights=random", "extractors.audio.weights=random",
                 f"decode.workers={workers}", f"extractors.trajectory.fit_videos={min(60, len(paths))}"]
    cfg = load_config(overrides=overrides)
    names = list(cfg.extract.modalities)
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        for p in paths:  # only these clips, in their label folders
            (videos / p.parent.name).mkdir(parents=True, exist_ok=True)
            (videos / p.parent.name / p.name).symlink_to(p.resolve())
        run_scan(cfg, Path(tmp) / "out", videos)
        # Warm-up, so that neither run pays for the first oneDNN kernel selection.
        warm = build_extractors(cfg, ["visual", "audio"], "cpu")
        first = decode_video(paths[0], DecodeOptions.from_config(cfg.decode))
        for ext in warm.values():
            ext.extract([first])
        del warm
        cpu0 = _cpu_seconds()
        summary = run_extract(cfg, Path(tmp) / "out", progress=False)
        pipeline_cpu = _cpu_seconds() - cpu0
        print("pipeline extract stage:", summary.seconds, flush=True)

        extractors = build_extractors(cfg, names, "cpu")
        for name, ext in extractors.items():
            if ext.needs_fit:
                ext.load_state_dict(torch.load(Path(tmp) / "out" / "extractors" / f"{name}.pt", weights_only=False))
        stages = {}
        t0, c0 = time.perf_counter(), _cpu_seconds()
        clips, _ = decode_all(paths, DecodeOptions.from_config(cfg.decode), workers)
        stages["decode"] = (time.perf_counter() - t0, _cpu_seconds() - c0)
        step = int(cfg.extract.batch_videos)
        for name, ext in extractors.items():
            t0, c0 = time.perf_counter(), _cpu_seconds()
            for i in range(0, len(clips), step):
                ext.extract(clips[i:i + step])
            stages[name] = (time.perf_counter() - t0, _cpu_seconds() - c0)
            print(f"stage {name}: {stages[name][0]:.2f} s wall, {stages[name][1]:.2f} s CPU", flush=True)
    wall = summary.seconds["wall"]
    slowest = max(w for w, _ in stages.values())
    stage_sum = sum(w for w, _ in stages.values())
    cpu_bound = sum(c for _, c in stages.values()) / (os.cpu_count() or 1)
    return {"overrides": overrides, "videos": summary.videos_todo,
            "pipeline": {"wall_s": round(wall, 2), "cpu_s_including_fit": round(pipeline_cpu, 2),
                         "seconds": {k: round(v, 2) for k, v in summary.seconds.items()}},
            "stage_after_stage": {k: {"wall_s": round(w, 2), "cpu_s": round(c, 2)} for k, (w, c) in stages.items()},
            "stage_after_stage_total_s": round(stage_sum, 2), "slowest_stage_s": round(slowest, 2),
            "cpu_lower_bound_s": round(cpu_bound, 2),
            "wall_over_slowest_stage": round(wall / slowest, 3),
            "wall_over_stage_after_stage": round(wall / stage_sum, 3),
            "wall_over_cpu_lower_bound": round(wall / cpu_bound, 3),
            "target_wall_over_slowest_stage": 1.2}


# -- the visual families of extractors/video3d.py, i3d.py, image_text.py, scene.py ------------------
FAMILY_BENCH = {  # bench name -> (YAML modality, overrides, unit the network runs on)
    "video3d": ("video3d", {}, "window"),
    "video3d_s3d": ("video3d", {"arch": "s3d"}, "window"),
    "video3d_mvit_v2_s": ("video3d", {"arch": "mvit_v2_s"}, "window"),
    "video3d_swin3d_t": ("video3d", {"arch": "swin3d_t"}, "window"),
    "i3d_rgb": ("i3d_rgb", {}, "window"),
    "i3d_flow": ("i3d_flow", {}, "window"),
    "image_text": ("image_text", {}, "frame"),
    "image_text_siglip": ("image_text", {"backend": "siglip", "model": "google/siglip-base-patch16-224"}, "frame"),
    "image_text_timm": ("image_text", {"backend": "timm", "model": "convnext_tiny"}, "frame"),
    "scene": ("scene", {}, "frame"),
}
RANDOM = {"weights": "random", "global_weights": "random", "local_weights": "random"}


def family_extractor(name: str, device: str = "cpu", **extra):
    """(extractor with random weights, unit) for a FAMILY_BENCH entry; `extra` overrides its YAML."""
    from omegaconf import OmegaConf

    modality, over, unit = FAMILY_BENCH[name]
    cfg = OmegaConf.to_container(load_config().extractors[modality], resolve=True)
    for changes in ({k: v for k, v in RANDOM.items() if k in cfg or k == "weights"}, over, extra):
        cfg.update(changes)
    return build_extractor(modality, cfg, device), unit


def network_flops(ext, clip) -> float:
    """FLOPs of the networks for one clip (torch's FlopCounterMode: 2 per multiply-add of every
    conv / matmul; optical flow and preprocessing not counted), on a copy so that no cached
    forward pass is reused."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        ext.extract([copy.copy(clip)])
    return float(counter.get_total_flops())


def rows_of(ext, clip) -> int:
    """Sequence rows (windows or frames) `ext` makes for `clip`, from the decoded views alone."""
    views = ext.views()
    return len(clip.view_times[next(iter(views.values())).key()]) if views else len(clip.frames)


def visual_families(paths, names, workers, res, frames: int = 16) -> dict:
    """Each family with `weights: random` on the same decoded clips (one decode pass for the union
    of their views; `frames` uniform frames per clip for the per-frame families): clips/s, windows
    or frames per s, achieved GFLOP/s against the matmul rate of the precision the family ran in.
    Decode timed apart (it overlaps compute in the pipeline)."""
    from pipeline.views import collect_views

    built = {n: family_extractor(n) for n in names}
    views = collect_views({n: e for n, (e, _) in built.items()})
    opts = DecodeOptions(num_frames=frames, short_side=224, audio=False, views=views)
    clips, seconds = decode_all(paths, opts, workers)
    out = {"decode": {"clips": len(clips), "seconds": round(seconds, 2), "uniform_frames": frames,
                      "views": sorted(views)}}
    print("families decode:", out["decode"], flush=True)
    for name, (ext, unit) in built.items():
        r = time_extractor(ext, clips)
        r.pop("frames_per_s", None)
        rows = [rows_of(ext, c) for c in clips]
        flops = network_flops(ext, clips[0]) / rows[0]
        r.update(unit=unit, units_per_clip=round(float(np.mean(rows)), 2), units_per_s=round(sum(rows) / r["seconds"], 3),
                 gflop_per_unit=round(flops / 1e9, 2), gflops=round(sum(rows) * flops / r["seconds"] / 1e9, 2),
                 model=ext.metadata().get("model"))
        rate = res.get("matmul_gflops", {}).get("bf16" if r["precision"] == "bf16" else "fp32")
        if rate:
            r["fraction_of_matmul_rate_same_precision"] = round(r["gflops"] / rate, 3)
        out[name] = r
        print(name, r, flush=True)
        res["families"] = out
    return out


PEER_FAMILIES = {"r21d": "feature_type=r21d", "s3d": "feature_type=s3d", "i3d": "feature_type=i3d",
                 "clip": "feature_type=clip model_name=ViT-B/32", "timm": "feature_type=timm model_name=convnext_tiny"}


def video_features_side_by_side(paths, timeout_s: float = 600.0) -> dict:
    """Does each of video_features' visual families run here (pinned torch, offline)? Each in a
    separate process on one clip; the first error line where it does not."""
    import subprocess

    peer = ROOT.parent / "shared" / "peers" / "video_features"
    if not peer.is_dir():
        return {"skipped": f"{peer} is absent"}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "list.txt").write_text(str(paths[0].resolve()) + "\n")
        for name, args in PEER_FAMILIES.items():
            cmd = [sys.executable, "main.py", *args.split(), "device=cpu", "on_extraction=save_numpy",
                   f"file_with_video_paths={tmp}/list.txt", f"output_path={tmp}/{name}", f"tmp_path={tmp}/{name}/tmp"]
            start = time.perf_counter()
            try:
                p = subprocess.run(cmd, cwd=peer, capture_output=True, text=True, timeout=timeout_s)
                ran = p.returncode == 0 and any((Path(tmp) / name).rglob("*.npy"))
                errs = [ln for ln in (p.stderr + p.stdout).splitlines() if "Error" in ln or "error" in ln]
                out[name] = {"runs": ran, "seconds": round(time.perf_counter() - start, 1),
                             "error": None if ran else (errs[-1] if errs else p.stderr.strip()[-300:])}
            except subprocess.TimeoutExpired:
                out[name] = {"runs": None, "error": f"timed out after {timeout_s} s"}
            print("video_features", name, out[name], flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--captions", default=str(ROOT.parent / "shared" / "data" / "msrvtt-mini" / "pseudo_captions.yaml"))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--visual-clips", type=int, default=100, help="clips for the 16-frame ResNet-50 figure")
    ap.add_argument("--resnet8-clips", type=int, default=None, help="clips for the 8-frame decode-included figure")
    ap.add_argument("--e2e-clips", type=int, default=60, help="clips for the pipeline end-to-end run")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extractors", nargs="*", default=["visual", "audio", "trajectory", "audio_dae", "audio_mfcc", "text", "text_doc2vec"])
    ap.add_argument("--families", nargs="*", default=["video3d", "i3d_rgb", "i3d_flow", "image_text", "scene"],
                    help=f"visual families to time (of {', '.join(FAMILY_BENCH)})")
    ap.add_argument("--family-clips", type=int, default=8, help="clips for the visual families")
    ap.add_argument("--family-frames", type=int, default=16, help="uniform frames per clip for image_text / scene")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="parts to skip: matmul decode extractors resnet8 e2e families peers")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "extract.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data} not found (the real clips ship beside the repo as ../shared/data/fight)")
    paths = sorted(data.rglob("*.mp4"))[: args.limit]
    res = {"data": str(data), "clips": len(paths), "torch_threads": args.threads, "decode_workers": args.workers,
           "cpu_count": os.cpu_count(), "cpu_fast_bf16": cpu_has_fast_bf16(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg_before": os.getloadavg(),
           "versions": versions()}

    def save():
        res["loadavg_after"] = os.getloadavg()
        write_json(args.out, res)

    if "matmul" not in args.skip:
        # Without native bf16 (AVX2 only) a bf16 matmul is emulated, minutes for one 2048^2
        # product, and `precision: auto` runs fp32 there anyway: not measured then.
        res["matmul_gflops"] = {"fp32": round(matmul_gflops(torch.float32), 1),
                                "bf16": round(matmul_gflops(torch.bfloat16), 1) if cpu_has_fast_bf16() else None}
        print("matmul GFLOP/s:", res["matmul_gflops"], flush=True)
        save()

    stage_times = {}
    if "extractors" not in args.skip:
        clips, seconds = decode_all(paths, DecodeOptions(num_frames=16, short_side=224), args.workers)
        res["decode_16f"] = {"clips": len(clips), "seconds": round(seconds, 2), "clips_per_s": round(len(clips) / seconds, 2),
                             "frames_per_s": round(sum(len(c.frames) for c in clips) / seconds, 1)}
        stage_times["decode"] = seconds
        print("decode:", res["decode_16f"], flush=True)
        save()

    if "extractors" not in args.skip:
        cfg = load_config(overrides=["extractors.visual.weights=random", "extractors.audio.weights=random"])
        fit = clips[:: max(1, len(clips) // 60)][:60]  # a spread sample of 60 clips to fit on
        res["extractors"] = {}
        for name in [n for n in ("visual", "audio", "trajectory", "audio_dae", "audio_mfcc") if n in args.extractors]:
            ext = build_extractor(name, cfg.extractors[name], "cpu")
            sub = clips[: args.visual_clips] if name == "visual" else clips
            r = time_extractor(ext, sub, fit_clips=fit)
            if name == "visual":
                r["images_per_s"] = r["frames_per_s"]
                r["gflops"] = round(r["images_per_s"] * RESNET50_GFLOP, 1)
                if "matmul_gflops" in res:
                    rate = res["matmul_gflops"]["bf16" if r["precision"] == "bf16" else "fp32"]
                    r["fraction_of_matmul_rate_same_precision"] = round(r["gflops"] / rate, 3)
                    r["fraction_of_fp32_matmul_rate"] = round(r["gflops"] / res["matmul_gflops"]["fp32"], 3)
            if name in cfg.extract.modalities:  # the stages of the default end-to-end run
                # Whole-corpus extraction time (fit excluded, as in run_extract's loop timer).
                stage_times[name] = r["seconds"] * len(clips) / len(sub)
            res["extractors"][name] = r
            print(name, r, flush=True)
            save()
        # Text: the fight clips have no titles; the msrvtt-mini pseudo captions stand in.
        import yaml

        captions = yaml.safe_load(Path(args.captions).read_text())
        empty = np.zeros((1, 2, 2, 3), np.uint8)
        tclips = [Clip(video_id=k, frames=empty, frame_times=np.zeros(1), frame_indices=np.zeros(1, np.int64),
                       audio=None, sample_rate=16000, title=str(v), duration=1.0, fps=1.0) for k, v in captions.items()]
        for name in [n for n in ("text", "text_doc2vec") if n in args.extractors]:
            ext = build_extractor(name, cfg.extractors[name], "cpu")
            r = time_extractor(ext, tclips * 10, fit_clips=tclips)
            r["note"] = "msrvtt-mini pseudo captions x10 (texts/s = clips_per_s)"
            res["extractors"][name] = r
            print(name, r, flush=True)
            if name == "text":
                stage_times[name] = 0.0  # no titles in the fight clips: nothing to do there
        res["stage_times_s"] = {k: round(v, 2) for k, v in stage_times.items() if not k.startswith("_")}
        save()

    if "families" not in args.skip and args.families:
        res["families"] = visual_families(paths[: args.family_clips], args.families, args.workers, res,
                                          args.family_frames)
        save()
    if "peers" not in args.skip:
        res["video_features"] = video_features_side_by_side(paths)
        save()

    if "resnet8" not in args.skip:
        res["resnet50_8frames_decode_included"] = resnet_decode_included(paths[: args.resnet8_clips], args.workers, args.threads)
        save()

    if "e2e" not in args.skip:
        res["end_to_end"] = pipeline_end_to_end(paths[:: max(1, len(paths) // args.e2e_clips)][: args.e2e_clips],
                                                args.workers)
        print("end to end:", res["end_to_end"], flush=True)
        save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
