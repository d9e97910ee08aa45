#!/usr/bin/env python3
"""Start-up benchmark (#13): whole-process time for one 2-s clip, ours vs video_features.

The job: one 2-s fight clip (the first 2 s of ../shared/data/fight/fight/fi001.mp4, re-encoded
once), ResNet-50 with random weights (nothing can be downloaded here), 8 frames, CPU, features
saved to disk. Measured from process start to process exit, as a user waits for it:

    ours   `run_pipeline.py scan` + `run_pipeline.py extract` (two processes, a fresh OUT each time)
    peer   video_features `main.py feature_type=resnet model_name=resnet50 extraction_total=8`
           (../shared/peers/video_features, run as its own process, never imported)

Alternated ours, peer, ours, peer, ... `--repeats` times each; medians and the ratio ours / peer
(target <= 1.0). Also the medians of `scan` alone, `status` alone and a bare
`python -c "import torch, torchvision"`, and the 1-minute load average before and after (the
machine may be shared: the ratio is only meaningful on a quiet one). Saves
bench/results/startup.json.

    python bench/startup.py [--repeats 5] [--clip PATH]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.io import write_json  # noqa: E402

SHARED = ROOT.parent / "shared"
PEER = SHARED / "peers" / "video_features"
DEFAULT_CLIP = SHARED / "data" / "fight" / "fight" / "fi001.mp4"
OURS = ["extract.modalities=[visual]", "extractors.visual.depth=50", "extractors.visual.weights=random",
        "decode.num_frames=8", "decode.audio=false", "device=cpu"]


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def cut_clip(src: Path, dst_dir: Path) -> Path:
    """The first 2 s of `src` as its own mp4 (h264), so both tools decode the same file."""
    import ffmpeg

    from pipeline.demo import ffmpeg_run

    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / "clip2s.mp4"
    ffmpeg_run(ffmpeg.input(str(src)).output(str(dst), t=2, vcodec="libx264", pix_fmt="yuv420p", an=None))
    return dst


def ours(videos: Path, work: Path, i: int) -> dict:
    out = work / f"ours-{i}"
    py, entry = sys.executable, str(ROOT / "run_pipeline.py")
    scan = timed([py, entry, "scan", "--videos", str(videos), "--out", str(out)], ROOT)
    extract = timed([py, entry, "extract", "--out", str(out), "--no-progress", *OURS], ROOT)
    status = timed([py, entry, "status", "--out", str(out)], ROOT)
    shutil.rmtree(out)
    return {"scan": scan, "extract": extract, "scan+extract": scan + extract, "status": status}


def ffmpeg_on_path(work: Path) -> dict:
    """video_features calls `ffmpeg` from PATH: a folder with the project's ffmpeg under that name
    (the system one when there is one)."""
    from pipeline.demo import ffmpeg_exe

    if shutil.which("ffmpeg"):
        return {}
    folder = work / "bin"
    folder.mkdir(exist_ok=True)
    (folder / "ffmpeg").symlink_to(ffmpeg_exe())
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


def peer(clip: Path, work: Path, i: int, env: dict) -> float:
    out = work / f"peer-{i}"
    out.mkdir()
    paths = out / "paths.txt"
    paths.write_text(f"{clip}\n")
    seconds = timed([sys.executable, "main.py", "feature_type=resnet", "model_name=resnet50", "device=cpu",
                     "extraction_total=8", "on_extraction=save_numpy", f"file_with_video_paths={paths}",
                     f"output_path={out}", f"tmp_path={out / 'tmp'}"], PEER, env)
    if not list(out.rglob("*.npy")):
        raise RuntimeError(f"video_features wrote no features under {out}")
    shutil.rmtree(out)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    a = p.parse_args()
    if not PEER.is_dir() or not a.clip.exists():
        sys.exit(f"skipped: needs {PEER} and {a.clip} (../shared)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = cut_clip(a.clip, work / "videos")
        env = ffmpeg_on_path(work)
        bare = [timed([sys.executable, "-c", "import torch, torchvision"], ROOT) for _ in range(a.repeats)]
        runs_ours, runs_peer = [], []
        for i in range(a.repeats):   # alternated, so drifting load hits both alike
            runs_ours.append(ours(clip.parent, work, i))
            runs_peer.append(peer(clip, work, i, env))
            print(f"round {i + 1}: ours {runs_ours[-1]['scan+extract']:.2f} s, peer {runs_peer[-1]:.2f} s", flush=True)
    med = {k: statistics.median(r[k] for r in runs_ours) for k in runs_ours[0]}
    result = {"job": "one 2-s clip (first 2 s of fight/fi001.mp4), ResNet-50 random weights, 8 frames, CPU, "
                     "features saved; whole-process wall time",
              "ours_command": "run_pipeline.py scan --videos DIR --out OUT; run_pipeline.py extract --out OUT "
                              "--no-progress " + " ".join(OURS),
              "peer_command": "video_features main.py feature_type=resnet model_name=resnet50 device=cpu "
                              "extraction_total=8 on_extraction=save_numpy",
              "repeats": a.repeats, "median_s": {**{f"ours_{k}": v for k, v in med.items()},
                                                  "peer": statistics.median(runs_peer),
                                                  "import_torch_torchvision": statistics.median(bare)},
              "ratio_ours_over_peer": med["scan+extract"] / statistics.median(runs_peer),
              "runs": {"ours": runs_ours, "peer": runs_peer, "import_torch_torchvision": bare},
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
              "cpus": os.cpu_count()}
    write_json(a.output, result)
    print({k: round(v, 3) for k, v in result["median_s"].items()}, "ratio", round(result["ratio_ours_over_peer"], 3))
    print(f"saved {a.output}")


if __name__ == "__main__":
    main()
