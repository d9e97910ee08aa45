"""The best YouTube-8M recipe the project ships (configs/presets/yt8m_best.yaml), measured on
shards no choice has seen.

    python bench/yt8m_best.py --out /tmp/yt8m_best                 # every member, then the ensemble
    python bench/yt8m_best.py --out /tmp/yt8m_best --members ef1024 ef2048_ema   # some members only

Protocol (the refit of bench/models.py, one member at a time): shards 0-49 train, 50-54 val,
55-59 test. Each member of MEMBERS is trained on 0-49 with early stopping on 50-54 (that chooses
its epoch count), then refit on 0-54 for that many epochs (train.keep=last: the last epoch is best.pt). The ensemble
is chosen on val only: greedy forward selection (Caruana et al. 2004, without replacement) of the
train-only runs by the val GAP@20 of their mean probability, stopping when no member adds. The
chosen members' refit runs are the shipped ensemble, scored on test with the product's
`evaluate --run A --run B ...` path (`pipeline.evaluate.run_evaluate`). Test (55-59) chooses
nothing. The import of an earlier call in --out is reused, and so is a member whose two runs are
there with the same overrides (bench_member.json), so the benchmark can be completed in parts.

Results: bench/results/yt8m_best.json (every member, the selection trace, settings, load
average) and bench/results/yt8m_best.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import bench.models as bm  # noqa: E402  (bench/ is a namespace package under ROOT)

from pipeline.catalog import Catalog  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.evaluate import ensemble_scores, load_runs, run_evaluate, split_ids  # noqa: E402
from pipeline.io import write_json, write_text  # noqa: E402
from pipeline.metrics import compute_metrics  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from pipeline.task import load_labels  # noqa: E402
from pipeline.train import run_train  # noqa: E402

RESULTS = ROOT / "bench" / "results"
read_json = lambda path: json.loads(Path(path).read_text())   # noqa: E731
PRESET = ROOT / "configs" / "presets" / "yt8m_best.yaml"
# name -> [model[:variant], overrides on top of the preset]. Diversity: width, EMA, context
# gating, seed, and other model families. Listed before any test figure was looked at.
MEMBERS = {
    "ef1024": ["early_fusion:tuned", "models.early_fusion.hidden=1024"],
    "ef2048_ema": ["early_fusion:tuned", "models.early_fusion.hidden=2048", "train.ema=0.99", "train.epochs=12"],
    "ef2048_cg": ["early_fusion:tuned", "models.early_fusion.hidden=2048", "models.early_fusion.tuned.context_gating=true",
                  "train.epochs=12"],
    "ef1024_ema_s1": ["early_fusion:tuned", "models.early_fusion.hidden=1024", "train.ema=0.99", "train.epochs=12", "seed=1"],
    "videotag": ["videotag"],
    "late_fusion": ["late_fusion"],
    "ef4096_do5": ["early_fusion:tuned", "models.early_fusion.hidden=4096", "models.early_fusion.dropout=0.5",
                   "train.epochs=15"],
    # Added in session 4, before either was scored: another seed, and standardized inputs
    # (train.standardize: rgb and audio scaled by their training mean and std).
    "ef2048_ema_s2": ["early_fusion:tuned", "models.early_fusion.hidden=2048", "train.ema=0.99", "train.epochs=12",
                      "seed=2"],
    "ef2048_std": ["early_fusion:tuned", "models.early_fusion.hidden=2048", "train.ema=0.99", "train.epochs=12",
                   "train.standardize=true"],
    # and two more seeds of the EMA members (added before the ensembles above were scored on test)
    "ef2048_ema_s3": ["early_fusion:tuned", "models.early_fusion.hidden=2048", "train.ema=0.99", "train.epochs=12",
                      "seed=3"],
    "ef1024_ema_s2": ["early_fusion:tuned", "models.early_fusion.hidden=1024", "train.ema=0.99", "train.epochs=12",
                      "seed=2"],
}
MODALITIES = ["rgb", "audio"]


def base_overrides() -> list[str]:
    return ["device=cpu", "train.progress=false", f"train.modalities=[{','.join(MODALITIES)}]"]


def member_cfg(member: list[str], extra: list[str] = ()):
    model, variant = bm.row_model(member[0])
    return model, load_config([PRESET], overrides=base_overrides() + variant + member[1:] + list(extra))


def run_member(out_dir: Path, name: str, member: list[str]) -> dict:
    """Train on 0-49 (epochs chosen on 50-54), refit on 0-54 for that many epochs; both scored on
    55-59. Reuses both runs when bench_member.json says they were made with these overrides."""
    first, second = out_dir / "runs" / f"{name}_train", out_dir / "runs" / f"{name}_trainval"
    marker = second / "bench_member.json"
    if marker.exists() and read_json(marker).get("member") == member:
        print(f"== {name}: reused", flush=True)
        return read_json(marker)
    model, cfg = member_cfg(member)
    for d in (first, second):
        shutil.rmtree(d, ignore_errors=True)
    print(f"== {name}: train on 0-49, epochs chosen on 50-54", flush=True)
    t0 = time.time()
    got = run_train(cfg, out_dir, model, run_name=first.name)
    train_s, epochs = round(time.time() - t0, 1), got["best_epoch"] + 1
    _, cfg2 = member_cfg(member, [f"train.stop_after_epochs={epochs}", "train.keep=last"])
    print(f"== {name}: refit on 0-54 for {epochs} epochs", flush=True)
    t0 = time.time()
    run_train(cfg2, out_dir, model, run_name=second.name, fixed_split=bm._fixed_split(out_dir, ("train", "val")))
    score = lambda run: run_evaluate(cfg, out_dir, run, split="test", show=False)["metrics"]   # noqa: E731
    out = {"member": member, "epochs": epochs, "epochs_run": got["epochs_run"], "train_s": train_s,
           "refit_s": round(time.time() - t0, 1), "val": got["best"], "test_train_only": score(first),
           "test_refit": score(second), "params": bm._params(first), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    write_json(marker, out)
    return out


def probabilities(out_dir: Path, run: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of one run on a split, the same path `evaluate` scores with."""
    cfg = load_config([PRESET], overrides=base_overrides())
    cat = Catalog(out_dir / "catalog.sqlite")
    try:
        store, task = FeatureStore(out_dir, cat), load_labels(cat)
        loaded = load_runs([run], "cpu", store)
        ids = split_ids(task, loaded, split)
        row = {v: i for i, v in enumerate(task["video_ids"])}
        labels = task["labels"][[row[v] for v in ids]]
        return ensemble_scores(loaded, store, ids, labels, cfg, "cpu")[1], labels
    finally:
        cat.close()


def select(out_dir: Path, names: list[str]) -> list[dict]:
    """Greedy forward selection on val GAP@20 of the train-only runs' mean probability."""
    probs = {n: probabilities(out_dir, out_dir / "runs" / f"{n}_train", "val") for n in names}
    labels = next(iter(probs.values()))[1]
    gap = lambda chosen: compute_metrics(np.mean([probs[c][0] for c in chosen], 0), labels, True)["gap@20"]  # noqa: E731
    chosen, trace, best = [], [], -1.0
    while len(chosen) < len(names):
        scored = {n: gap(chosen + [n]) for n in names if n not in chosen}
        n = max(scored, key=scored.get)
        if scored[n] <= best:
            break
        chosen, best = chosen + [n], scored[n]
        trace.append({"members": list(chosen), "val_gap@20": round(best, 4)})
        print(f"   + {n}: val GAP@20 {best:.4f}", flush=True)
    return trace


def markdown(res: dict) -> str:
    lines = ["# YouTube-8M: the shipped recipe (bench/yt8m_best.py)", "",
             "Train shards 0-49, val 50-54 (chooses epochs and members), test 55-59 (chooses nothing).", "",
             "| member | overrides | epochs (chosen on val) | val GAP@20 | test GAP@20, train only | test GAP@20, refit 0-54 | "
             "params | train s + refit s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in res["members"].items():
        lines.append(f"| {name} | `{' '.join(m['member'])}` | {m['epochs']} | {m['val']['gap@20']:.4f} | "
                     f"{m['test_train_only']['gap@20']:.4f} | {m['test_refit']['gap@20']:.4f} | {m['params']:,} | "
                     f"{m['train_s']:.0f} + {m['refit_s']:.0f} |")
    e = res.get("ensemble")
    if e:
        lines += [f"| **ensemble** ({' + '.join(e['members'])}) | mean probability | - | {e['val']['gap@20']:.4f} | "
                  f"{e['test_train_only']['gap@20']:.4f} | **{e['test_refit']['gap@20']:.4f}** | - | - |", "",
                  f"Ensemble refit on test: mAP {e['test_refit']['map']:.4f}, Hit@1 {e['test_refit']['hit@1']:.4f}. "
                  "Selection trace (val GAP@20): " + "; ".join(f"{'+'.join(t['members'])} {t['val_gap@20']}"
                                                             for t in e["trace"]) + "."]
    lines += ["", f"Preset: `{res['preset']}`; load average {res['loadavg']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (kept: members are reused on a second call)")
    p.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS))
    a = p.parse_args()
    out_dir = a.out / "yt8m_refit"
    if not (out_dir / "catalog.sqlite").exists():   # the same import as bench/models.py --rows refit
        shards = sorted((bm.SHARED / "yt8m" / "tfrecord").glob("*.tfrecord"))
        for part, split in ((shards[:50], "train"), (shards[50:55], "val"), (shards[55:60], "test")):
            bm.import_yt8m([str(s) for s in part], out_dir, vocabulary=bm.SHARED / "yt8m" / "vocabulary.csv", split=split)
    path = RESULTS / "yt8m_best.json"
    res = read_json(path) if path.exists() else {}
    res.setdefault("members", {})
    res["preset"] = str(PRESET.relative_to(ROOT))
    for name in a.members:
        res["members"][name] = run_member(out_dir, name, MEMBERS[name])
        res["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        write_json(path, res)
        write_text(RESULTS / "yt8m_best.md", markdown(res))
    names = [n for n in res["members"] if (out_dir / "runs" / f"{n}_trainval" / "bench_member.json").exists()]
    trace = select(out_dir, names)
    chosen = trace[-1]["members"]
    cfg = load_config([PRESET], overrides=base_overrides())
    runs = lambda suffix: [out_dir / "runs" / f"{n}_{suffix}" for n in chosen]   # noqa: E731
    ev = lambda suffix, split: run_evaluate(cfg, out_dir, runs(suffix), split=split, show=False)["metrics"]  # noqa: E731
    res["ensemble"] = {"members": chosen, "trace": trace, "val": ev("train", "val"), "test_train_only": ev("train", "test"),
                       "test_refit": ev("trainval", "test")}
    res["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    write_json(path, res)
    write_text(RESULTS / "yt8m_best.md", markdown(res))
    print(markdown(res), flush=True)


if __name__ == "__main__":
    main()
