#!/usr/bin/env python3
"""End to end on the 300 real fight/noFight clips: every stage through the CLI, then 5-fold
cross-validated accuracy of the fused model and of each modality alone.

    python bench/e2e_fight.py [--data ../shared/data/fight] [--out /tmp/fight_out]

No pretrained ResNet / VGGish weights can be downloaded on the development machine, so this
runs with `weights: random` for visual and audio (recorded in the store metadata); set
--weights pretrained when the files are in the torch hub cache. Extraction is resumable, so a
second call on the same --out reuses the features. Saves bench/results/e2e_fight.json.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--out", default="/tmp/fight_out")
    ap.add_argument("--weights", choices=["random", "pretrained"], default="random")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--skip-run", action="store_true", help="reuse the last full run in --out")
    args = ap.parse_args()
    overrides = ["train.batch_size=32", "train.epochs=40"]
    if args.weights == "random":
        overrides += ["extractors.visual.weights=random", "extractors.audio.weights=random"]
    out = Path(args.out)
    if not args.skip_run:
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--videos", args.data, "--out", str(out),
               "--no-progress", f"run.folds={args.folds}", *overrides]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    run = json.loads(sorted((out / "summaries").glob("run-*.json"))[-1].read_text())

    from pipeline import crossval
    from pipeline.config import load_config, versions

    result = {"command_overrides": overrides, "weights": args.weights, "stage_seconds": run["seconds"],
              "fused": {"model": run["model"], "cv": run["train"]["summary"] if run.get("train") else None},
              "extract": run.get("extract"), "per_modality": {}, "loadavg": os.getloadavg(), "versions": versions()}
    for modality in ("visual", "audio", "trajectory"):
        cfg = load_config(overrides=overrides + [f"train.modalities=[{modality}]", "train.use_completed=false",
                                                 "train.progress=false"])
        t0 = time.perf_counter()
        cv = crossval.run_cross_validation(cfg, out, "early_fusion", folds=args.folds, run_name=f"single-{modality}")
        result["per_modality"][modality] = {"model": "early_fusion", "cv": cv["summary"],
                                            "seconds": round(time.perf_counter() - t0, 1)}
        print(modality, json.dumps(cv["summary"]["accuracy"]), flush=True)
    path = ROOT / "bench" / "results" / "e2e_fight.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)
    print(json.dumps({k: result[k] for k in ("stage_seconds", "fused")}, indent=2, default=str))


if __name__ == "__main__":
    main()
