#!/usr/bin/env python3
"""End to end on the 300 real fight/noFight clips: every stage through the CLI, then 5-fold
cross-validated accuracy of the fused model and of each modality alone.

    python bench/e2e_fight.py [--data ../shared/data/fight] [--out /tmp/fight_out]

No pretrained ResNet / VGGish weights can be downloaded on the development machine, so this
runs with `weights: random` for visual and audio (recorded in the store metadata); set
--weights pretrained when the files are in the torch hub cache. Extraction is resumable, so a
second call on the same --out reuses the features. Saves bench/results/e2e_fight.json.

Per model (`--models`, default MODEL_ROWS + STD_ROWS): after the one extraction, every model whose inputs
the default extractors produce (visual, audio, text, trajectory; pooled or as frame sequences)
is cross-validated with the same folds (`train`, run.folds=5 in the product): accuracy mean ±
std over the held-out folds, one row each in e2e_fight.json "per_model". `sun` is not a row:
it needs scene and action score modalities (`scene`, `i3d_rgb_scores`), which are not default
extractors. A failing model is recorded with its error, not hidden.

    python bench/e2e_fight.py --skip-run --models nmcl early_fusion   # reuse the extraction
    python bench/e2e_fight.py --skip-run --skip-modalities --models nmcl+std   # with train.standardize=true
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
# model[:variant]: both variants of every model whose inputs the default extractors produce.
# Pooled-input models first, the sequence models (slower per step) after.
MODEL_ROWS = ["early_fusion", "early_fusion:tuned", "late_fusion", "late_fusion:tuned", "early_att", "early_att:tuned",
              "late_att", "late_att:tuned", "nmcl", "nmcl:tuned", "marnet:tuned", "marnet", "netvlad", "mart",
              "mart:masking-only", "videotag"]
# "+std": the same model with train.standardize=true (inputs scaled by their training-split mean
# and std, models/standardize.py): the rows whose raw random-ResNet visual vector (norm ~1,000)
# swamps the others (trajectory norm ~2).
STD_ROWS = ["early_fusion+std", "early_att+std", "nmcl+std", "mart:masking-only+std", "marnet+std", "early_fusion:tuned+std"]


def per_model(rows: list[str], overrides: list[str], out: Path, folds: int, result: dict) -> None:
    """Cross-validate each row on the extracted features; errors are recorded per row."""
    from pipeline import crossval
    from pipeline.config import load_config

    for row in rows:
        name, _, option = row.partition("+")
        model, _, variant = name.partition(":")
        extra = [f"models.{model}.variant={variant}"] if variant else []
        extra += ["train.standardize=true"] if option == "std" else []
        t0 = time.perf_counter()
        fused = result.get("fused") or {}
        if row == fused.get("model") and fused.get("cv"):   # the pipeline run's own cross-validation
            result.setdefault("per_model", {})[row] = {"accuracy": fused["cv"]["accuracy"],
                                                       "macro_f1": fused["cv"].get("macro_f1"), "seconds": None,
                                                       "overrides": [], "note": "the pipeline run's cross-validation"}
            continue
        try:
            cfg = load_config(overrides=overrides + extra + ["train.progress=false"])
            cv = crossval.run_cross_validation(cfg, out, model, folds=folds, run_name=f"cv-{row.replace(':', '-')}")
            got = {"accuracy": cv["summary"]["accuracy"], "macro_f1": cv["summary"].get("macro_f1"),
                   "best_epochs": [f["best_epoch"] + 1 for f in cv["per_fold"]]}
        except Exception as e:   # reported, not hidden
            got = {"error": f"{type(e).__name__}: {e}"}
        result.setdefault("per_model", {})[row] = {**got, "seconds": round(time.perf_counter() - t0, 1),
                                                   "overrides": extra, "loadavg": [round(x, 2) for x in os.getloadavg()]}
        print(row, json.dumps(got)[:200], flush=True)
        save(result)


def save(result: dict) -> None:
    path = ROOT / "bench" / "results" / "e2e_fight.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--out", default="/tmp/fight_out")
    ap.add_argument("--weights", choices=["random", "pretrained"], default="random")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--skip-run", action="store_true", help="reuse the last full run in --out")
    ap.add_argument("--models", nargs="*", default=MODEL_ROWS + STD_ROWS,
                    help="per-model rows, model[:variant][+std] (none: skip them)")
    ap.add_argument("--skip-modalities", action="store_true", help="no per-modality Early Fusion rows")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every stage, key=value")
    args = ap.parse_args()
    overrides = ["train.batch_size=32", "train.epochs=40"]
    if args.weights == "random":
        overrides += ["extractors.visual.weights=random", "extractors.audio.weights=random"]
    overrides += args.overrides
    out = Path(args.out)
    if not args.skip_run:
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--videos", args.data, "--out", str(out),
               "--no-progress", f"run.folds={args.folds}", *overrides]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    run = json.loads(sorted((out / "summaries").glob("run-*.json"))[-1].read_text())

    from pipeline import crossval
    from pipeline.config import load_config, versions

    folds_cv = run.get("headline", {}).get("metrics") if args.folds > 1 else None   # the run's k-fold mean ± std
    result = {"command_overrides": overrides, "weights": args.weights, "stage_seconds": run["seconds"],
              "fused": {"model": run["model"], "cv": folds_cv, "headline_split": run.get("headline", {}).get("split")},
              "extract": run.get("extract"), "per_modality": {}, "loadavg": os.getloadavg(), "versions": versions()}
    old = ROOT / "bench" / "results" / "e2e_fight.json"
    if args.skip_run and old.exists():   # keep the rows this call does not re-run
        kept = json.loads(old.read_text())
        result["per_modality"], result["per_model"] = kept.get("per_modality", {}), kept.get("per_model", {})
    for modality in () if args.skip_modalities else ("visual", "audio", "trajectory"):
        cfg = load_config(overrides=overrides + [f"train.modalities=[{modality}]", "train.use_completed=false",
                                                 "train.progress=false"])
        t0 = time.perf_counter()
        cv = crossval.run_cross_validation(cfg, out, "early_fusion", folds=args.folds, run_name=f"single-{modality}")
        result["per_modality"][modality] = {"model": "early_fusion", "cv": cv["summary"],
                                            "seconds": round(time.perf_counter() - t0, 1)}
        print(modality, json.dumps(cv["summary"]["accuracy"]), flush=True)
    save(result)
    per_model(args.models, overrides, out, args.folds, result)
    print(json.dumps({k: result[k] for k in ("stage_seconds", "fused")}, indent=2, default=str))


if __name__ == "__main__":
    main()
