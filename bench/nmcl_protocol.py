"""NMCL's evaluation protocol (Wei et al., TIP 2020, §5 and Table 2) on CMU-MOSI.

    python bench/nmcl_protocol.py                    # 5 seeds, NMCL (paper + tuned) and the four baselines
    python bench/nmcl_protocol.py --seeds 0 1 2 --methods nmcl early_fusion

The paper trains every method 5 times with different seeds on one fixed split and reports
micro-F1, macro-F1 and AUC with a paired significance test between NMCL and each baseline.
Here: the features of ../shared/data/mosi are imported with configs/importers/mosi.yaml (its
fixed splits: train, a speaker-independent val carved from train for model selection, and the
official test split); every method is trained with seeds 0..4 (`seed` sets the initialisation,
the batch order and dropout; the split never changes) and scored on test. p-values: a paired
two-sided t-test over the seeds (scipy.stats.ttest_rel) of NMCL (paper) against each other
method, per metric. AUC = ROC-AUC of the positive class (binary task).

Results: bench/results/nmcl_protocol.json (every run's figures, the settings, versions, load
average) and bench/results/nmcl_protocol.md (the Table 2 layout).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config, versions  # noqa: E402
from pipeline.evaluate import run_evaluate  # noqa: E402
from pipeline.importers import import_features  # noqa: E402
from pipeline.io import write_json, write_text  # noqa: E402
from pipeline.train import run_train  # noqa: E402

SHARED = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
# row name -> (model, overrides); the reference method first
METHODS = {
    "nmcl": ("nmcl", []),
    "early_fusion": ("early_fusion", []),
    "late_fusion": ("late_fusion", []),
    "early_att": ("early_att", []),
    "late_att": ("late_att", []),
    "nmcl (tuned)": ("nmcl", ["models.nmcl.variant=tuned"]),
    "nmcl (paper, xD scores)": ("nmcl", ["models.nmcl.paper.relation_scale=dim"]),
}
METRICS = [("Micro-F1", "micro_f1"), ("Macro-F1", "macro_f1"), ("AUC", "macro_roc_auc")]
# Short runs (the best MOSI epochs of bench/models.py were 1-9 of 30): 12 epochs, patience 4.
COMMON = ["device=cpu", "train.progress=false", "train.num_workers=0", "train.epochs=12", "train.batch_size=64",
          "train.lr=1e-3", "train.patience=4", "train.modalities=[text,audio,video]", "train.use_completed=false"]


def paired_test(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the paired t-test of a against b (same seeds); 1.0 when identical."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.allclose(a, b):
        return 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def run_method(out_dir: Path, row: str, model: str, overrides: list[str], seed: int) -> dict:
    cfg = load_config(overrides=COMMON + overrides + [f"seed={seed}"])
    name = f"{row.replace(' ', '_').replace('(', '').replace(')', '')}_seed{seed}"
    shutil.rmtree(out_dir / "runs" / name, ignore_errors=True)
    started = time.time()
    result = run_train(cfg, out_dir, model, run_name=name)
    test = run_evaluate(cfg, out_dir, result["run_dir"], split="test", show=False)["metrics"]
    return {"seed": seed, "test": test, "val": result["best"], "best_epoch": result["best_epoch"] + 1,
            "train_s": round(time.time() - started, 1)}


def summarise(results: dict) -> dict:
    """Per method: mean / std of each metric over the seeds and the paired p-value against NMCL."""
    ref = results["methods"]["nmcl"]["runs"]
    for row, entry in results["methods"].items():
        runs = entry["runs"]
        entry["summary"] = {}
        for _, key in METRICS:
            vals = [r["test"][key] for r in runs]
            s = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
            if row != "nmcl" and len(runs) == len(ref) > 1:
                s["p_vs_nmcl"] = paired_test([r["test"][key] for r in ref], vals)
            entry["summary"][key] = s
    return results


def _earlier(seeds: list[int]) -> dict:
    """Methods of an earlier run with the same seeds (bench/results/nmcl_protocol.json), {} if none."""
    path = RESULTS / "nmcl_protocol.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    return old.get("methods", {}) if old.get("seeds") == seeds else {}


def save(results: dict) -> None:
    """Write the results, keeping the methods an earlier (or concurrent) run with the same seeds
    finished and this one did not re-run; rows in METHODS order."""
    merged = {**_earlier(results["seeds"]), **results["methods"]}
    results["methods"] = {k: merged[k] for k in [*METHODS, *merged] if k in merged and k in METHODS} | \
        {k: v for k, v in merged.items() if k not in METHODS}
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    summarise(results)
    write_json(RESULTS / "nmcl_protocol.json", results)
    write_text(RESULTS / "nmcl_protocol.md", markdown(results))


def markdown(results: dict) -> str:
    out = ["# NMCL protocol on CMU-MOSI (Table 2 layout)", "",
           f"Test split ({results['videos']['test']} utterances), {len(results['seeds'])} seeds "
           f"({', '.join(map(str, results['seeds']))}) on the fixed split; mean ± std over the seeds; "
           "p = paired two-sided t-test against NMCL (paper) over the seeds.", "",
           "| method | " + " | ".join(f"{h} | p ({h})" for h, _ in METRICS) + " |",
           "|---|" + "---:|---:|" * len(METRICS)]
    for row, entry in results["methods"].items():
        cells = []
        for _, key in METRICS:
            s = entry["summary"][key]
            p = s.get("p_vs_nmcl")
            cells += [f"{s['mean']:.4f} ± {s['std']:.4f}", "-" if p is None else f"{p:.3g}"]
        out.append(f"| {row} | " + " | ".join(cells) + " |")
    out += ["", f"Settings: {' '.join(results['settings'])}. Variants: every model's `variant: paper` "
            "unless the row says tuned. Load average: " + str(results["loadavg"]) + "."]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder, removed after)")
    a = p.parse_args()
    reuse = {k: v for k, v in _earlier(a.seeds).items() if k not in a.methods}
    if "nmcl" not in a.methods and "nmcl" not in reuse:
        a.methods = ["nmcl", *a.methods]   # the reference of the p-values
    torch.set_num_threads(1)   # tiny models: one thread (two fight each other on a loaded machine)
    if not (SHARED / "mosi").is_dir():
        sys.exit(f"{SHARED / 'mosi'} is absent: the protocol needs ../shared/data/mosi")
    work = a.out or Path(tempfile.mkdtemp(prefix="nmcl-protocol-"))
    out_dir = work / "mosi"
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        imported = import_features(ROOT / "configs" / "importers" / "mosi.yaml", out_dir, root=SHARED / "mosi")
        imported.pop("per_file", None)
        results = {"dataset": "cmu-mosi", "seeds": a.seeds, "settings": COMMON, "import": imported,
                   "versions": versions(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "loadavg_start": [round(x, 2) for x in os.getloadavg()], "methods": dict(reuse)}
        for row in a.methods:
            model, overrides = METHODS[row]
            entry = results["methods"][row] = {"model": model, "overrides": overrides, "runs": []}
            for seed in a.seeds:
                print(f"== {row} seed {seed}", flush=True)
                entry["runs"].append(run_method(out_dir, row, model, overrides, seed))
            # after every method: an interrupted run keeps the methods it finished
            results["videos"] = {"test": results["methods"]["nmcl"]["runs"][0]["test"]["num_videos"]}
            save(results)
        print(markdown(results), flush=True)
    finally:
        if a.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
