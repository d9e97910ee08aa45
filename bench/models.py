"""Model comparison on real features nobody on this project made.

    python bench/models.py                       # everything: YouTube-8M, then CMU-MOSI
    python bench/models.py --datasets mosi       # one dataset; --rows reference nmcl single; --yt8m-epochs 4

YouTube-8M: the video-level TFRecord shards of ../shared/data/yt8m are imported with
`import_yt8m` (shards 0-49 -> train, 50-59 -> val) into a fresh output folder; every model of
`models.MODELS` is trained with `pipeline.train.run_train` on rgb (1,024) + audio (128), plus
Early Fusion on one modality at a time, plus a closed-form ridge regression on the standardised
concatenation as a reference. Model selection (best epoch, ridge lambda) uses the val shards;
the figures are on those same shards, the only held-out data here (the project's quality on
YouTube-8M is judged on other shards). GAP@20, macro mAP, Hit@1, parameters, training time.

CMU-MOSI: `import_features(configs/importers/mosi.yaml)`; a speaker-independent val split is
carved from train for model selection, and accuracy / F1 are reported on val and on the
official test split. The reference row is a logistic regression.

Results: bench/results/models.json (every figure, the config, versions, load average) and
bench/results/models.md (the tables). Each finished row is written at once, so an interrupted
run keeps what it measured; re-running a dataset replaces its section.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import metrics as metrics_module  # noqa: E402
from pipeline.catalog import Catalog  # noqa: E402
from pipeline.config import load_config, versions  # noqa: E402
from pipeline.importers import import_features, import_yt8m  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from pipeline.train import load_labels, load_model, run_evaluate, run_train  # noqa: E402

SHARED = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
ZOO = ["early_fusion", "late_fusion", "early_att", "late_att", "nmcl", "marnet", "videotag", "netvlad", "mart"]


# -- metrics ------------------------------------------------------------------------------------
def _params(run_dir: str | Path) -> int:
    model, _ = load_model(Path(run_dir) / "best.pt")
    return int(sum(p.numel() for p in model.parameters()))


# -- results file -------------------------------------------------------------------------------
def _save(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, text in (("models.json", json.dumps(results, indent=2, default=str)), ("models.md", _markdown(results))):
        tmp = RESULTS / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / name)


# Per dataset: the table's title and its metric columns (header, split, metrics key).
TABLES = {
    "yt8m": ("YouTube-8M video-level (train: shards 0-49, {train} videos; val: shards 50-59, {val} videos; "
             "{classes} classes)",
             [("GAP@20", "val", "gap@20"), ("mAP", "val", "map"), ("Hit@1", "val", "hit@1")]),
    "mosi": ("CMU-MOSI (binary sentiment; train {train}, val {val} (speakers held out of train), test {test})",
             [("val acc", "val", "accuracy"), ("val macro F1", "val", "macro_f1"),
              ("test acc", "test", "accuracy"), ("test macro F1", "test", "macro_f1")]),
}


def _markdown(results: dict) -> str:
    out = ["# Model benchmark on real features", ""]
    for name, (title, columns) in TABLES.items():
        section = results.get(name)
        if not section:
            continue
        out += [f"## {title.format(classes=section['classes'], **section['videos'])}", "",
                "| model | modalities | " + " | ".join(c[0] for c in columns) + " | params | train time (s) | epochs (best) |",
                "|---|---|" + "---:|" * (len(columns) + 3)]
        for r in section["rows"]:
            cells = [f"{r[split][key]:.4f}" for _, split, key in columns]
            out.append(f"| {r['row']} | {'+'.join(r['modalities'])} | {' | '.join(cells)} | {r['params']:,} | "
                       f"{r['train_s']:.0f} | {r.get('epochs', '-')} ({r.get('best_epoch', '-')}) |")
        out += ["", f"Settings: {section['settings']}. Load average during the run: {section['loadavg']}.",
                *_tuned_lines(section), ""]
    return "\n".join(out) + "\n"


def _tuned_lines(section: dict) -> list[str]:
    tuned = section.get("tuned") or {}
    lines = [f"- {m}: {' '.join(o)}" for m, o in tuned.items() if m != "ensemble"]
    lines += [f"- ensemble member: {' '.join(member)}" for member in tuned.get("ensemble", [])]
    return [""] + lines if lines else []


# -- references: closed form ---------------------------------------------------------------------
def _split_arrays(out_dir: Path, modalities: list[str]) -> tuple[dict, list[str], bool]:
    cat = Catalog(out_dir / "catalog.sqlite")
    try:
        task = load_labels(cat)
        store = FeatureStore(out_dir, cat)
        x = np.concatenate([store.read_pooled(m, task["video_ids"])[1].astype(np.float32) for m in modalities], 1)
    finally:
        cat.close()
    splits = np.array([(s or "").lower() for s in task["splits"]])
    return {s: (x[splits == s], task["labels"][splits == s]) for s in np.unique(splits)}, task["class_names"], task["multilabel"]


def ridge_row(out_dir: Path, modalities: list[str], lambdas=(1.0, 10.0, 100.0, 1000.0, 10000.0)) -> dict:
    """W = (X'X + lambda I)^-1 X'Y on standardised features with a bias column; lambda by val GAP@20."""
    started = time.time()
    data, _, _ = _split_arrays(out_dir, modalities)
    (xt, yt), (xv, yv) = data["train"], data["val"]
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt = np.c_[(xt - mu) / sd, np.ones(len(xt))].astype(np.float64)
    xv = np.c_[(xv - mu) / sd, np.ones(len(xv))].astype(np.float64)
    gram, rhs = xt.T @ xt, xt.T @ yt
    best = None
    for lam in lambdas:
        w = np.linalg.solve(gram + lam * np.eye(len(gram)), rhs)
        m = metrics_module.compute_metrics(xv @ w, yv, True)
        if best is None or m["gap@20"] > best[1]["gap@20"]:
            best = (lam, m)
    return {"row": "ridge (closed form)", "model": "ridge", "modalities": modalities, "val": best[1],
            "params": int(w.size), "train_s": round(time.time() - started, 1), "lambda": best[0],
            "lambdas": list(lambdas), "loadavg": os.getloadavg()}


def logistic_row(out_dir: Path, modalities: list[str], cs=(0.01, 0.1, 1.0, 10.0)) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.time()
    data, _, _ = _split_arrays(out_dir, modalities)
    best = None
    for c in cs:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        clf.fit(data["train"][0], data["train"][1].argmax(1))
        val = metrics_module.compute_metrics(clf.predict_proba(data["val"][0]), data["val"][1], False)
        if best is None or val["accuracy"] > best[1]["accuracy"]:
            test = metrics_module.compute_metrics(clf.predict_proba(data["test"][0]), data["test"][1], False)
            best = (c, val, test, clf)
    params = int(best[3][-1].coef_.size + best[3][-1].intercept_.size)
    return {"row": "logistic regression", "model": "logistic", "modalities": modalities, "val": best[1],
            "test": best[2], "params": params, "train_s": round(time.time() - started, 1), "C": best[0],
            "loadavg": os.getloadavg()}


# -- the zoo -----------------------------------------------------------------------------------
def model_row(cfg_overrides: list[str], out_dir: Path, model: str, modalities: list[str], row: str,
              test_split: bool = False) -> dict:
    overrides = cfg_overrides + [f"train.modalities=[{','.join(modalities)}]"]
    cfg = load_config(overrides=overrides)
    run_name = row.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_")
    shutil.rmtree(out_dir / "runs" / run_name, ignore_errors=True)
    started = time.time()
    result = run_train(cfg, out_dir, model, run_name=run_name)
    train_s = time.time() - started
    out = {"row": row, "model": model, "modalities": modalities, "val": result["best"],
           "best_epoch": result["best_epoch"] + 1, "epochs": result["epochs_run"], "params": _params(result["run_dir"]),
           "train_s": round(train_s, 1), "overrides": overrides, "loadavg": os.getloadavg(),
           "history": [{k: h[k] for k in ("epoch", "train_loss", "val_loss", result["monitor"])} for h in result["history"]]}
    if test_split:
        out["test"] = run_evaluate(cfg, out_dir, result["run_dir"], split="test")["metrics"]
    return out


def ensemble_row(cfg_overrides: list[str], out_dir: Path, members: list[list[str]], modalities: list[str],
                 test_split: bool = False) -> dict:
    """One run per member ([model, override, ...]), then their mean probability as one row
    (`run_pipeline.py evaluate --run A --run B ...`); params and train time are the members' sums."""
    trained = [model_row(cfg_overrides + member[1:], out_dir, member[0], modalities, f"ensemble member {i + 1}")
               for i, member in enumerate(members)]
    cfg = load_config(overrides=cfg_overrides + [f"train.modalities=[{','.join(modalities)}]"])
    runs = [out_dir / "runs" / f"ensemble_member_{i + 1}" for i in range(len(members))]
    out = {"row": f"ensemble of {len(members)} ({' + '.join(m[0] for m in members)})", "model": "ensemble",
           "modalities": modalities, "val": run_evaluate(cfg, out_dir, runs, split="val")["metrics"],
           "params": sum(t["params"] for t in trained), "train_s": round(sum(t["train_s"] for t in trained), 1),
           "members": trained, "loadavg": os.getloadavg()}
    if test_split:
        out["test"] = run_evaluate(cfg, out_dir, runs, split="test")["metrics"]
    return out


def bench_dataset(name: str, out_dir: Path, rows: list[str], overrides: list[str], results: dict,
                  tuned: dict | None = None) -> None:
    """Import `name`, then run the rows asked for: "reference" (ridge / logistic regression), a
    model name (all modalities), "single" (Early Fusion on one modality at a time) or "ensemble"
    (the members listed under `ensemble:` in the tuned settings). Rows of an
    earlier run that are not re-run are kept, so a long benchmark can be completed in parts."""
    modalities = ["rgb", "audio"] if name == "yt8m" else ["text", "audio", "video"]
    old = {r["row"]: r for r in results.get(name, {}).get("rows", [])}
    section = results[name] = {"rows": [], "settings": " ".join(overrides), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "versions": versions(), "torch_threads": torch.get_num_threads(),
                               "loadavg": [round(x, 2) for x in os.getloadavg()], "tuned": tuned or {}}
    t0 = time.time()
    if name == "yt8m":
        shards = sorted(glob.glob(str(SHARED / "yt8m" / "tfrecord" / "*.tfrecord")))
        vocab = SHARED / "yt8m" / "vocabulary.csv"
        section["import"] = [import_yt8m(shards[:50], out_dir, vocabulary=vocab, split="train"),
                             import_yt8m(shards[50:60], out_dir, vocabulary=vocab, split="val")]
        for s in section["import"]:
            s.pop("per_file", None)
            if s["corrupt_records"]:
                raise RuntimeError(f"corrupt records in the benchmark data: {s['corrupt_records']}")
        reference = ridge_row
    else:
        section["import"] = import_features(ROOT / "configs" / "importers" / "mosi.yaml", out_dir,
                                            root=SHARED / "mosi")
        reference = logistic_row
    data, classes, _ = _split_arrays(out_dir, modalities)
    section["videos"] = {s: int(len(v[0])) for s, v in data.items()}
    section["classes"] = len(classes)
    del data

    def finish(row: dict) -> None:
        old.pop(row["row"], None)
        section["rows"] = [row] + list(old.values()) if row["model"] in ("ridge", "logistic") else \
            [r for r in section["rows"] if r["row"] != row["row"]] + [row]
        section["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        section["seconds"] = round(time.time() - t0, 1)
        _save(results)

    section["rows"] = list(old.values())   # kept until re-run
    plan = []
    for r in rows:
        if r == "single":
            plan += [("early_fusion", [m], f"early_fusion ({m} only)") for m in modalities]
        elif r not in ("reference", "ensemble"):
            plan.append((r, modalities, r))
    if "reference" in rows:
        finish(reference(out_dir, modalities))
    for model, mods, row in plan:
        print(f"== {name}: {row}", flush=True)
        try:
            finish(model_row(overrides + list((tuned or {}).get(model, [])), out_dir, model, mods, row,
                             test_split=name == "mosi"))
        except Exception as e:  # a failing model is reported in the results, not hidden
            section.setdefault("failed", []).append({"row": row, "error": f"{type(e).__name__}: {e}"})
            print(f"   FAILED: {e}", flush=True)
            _save(results)
    if "ensemble" in rows and (tuned or {}).get("ensemble"):
        print(f"== {name}: ensemble", flush=True)
        finish(ensemble_row(overrides, out_dir, tuned["ensemble"], modalities, test_split=name == "mosi"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["yt8m", "mosi"], choices=["yt8m", "mosi"])
    p.add_argument("--rows", nargs="+", default=["reference", *ZOO, "single", "ensemble"],
                   help="reference, model names, single (Early Fusion per modality), ensemble; default: all")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder, removed after)")
    p.add_argument("--yt8m-epochs", type=int, default=6)
    p.add_argument("--mosi-epochs", type=int, default=30)
    p.add_argument("--tuned", type=Path, default=ROOT / "bench" / "models_tuned.yaml",
                   help="per-dataset, per-model overrides chosen on the validation split")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every model, key=value")
    a = p.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: the benchmark needs ../shared/data")
    work = a.out or Path(tempfile.mkdtemp(prefix="bench-models-"))
    results = json.loads((RESULTS / "models.json").read_text()) if (RESULTS / "models.json").exists() else {}
    tuned = yaml.safe_load(a.tuned.read_text()) if a.tuned and a.tuned.exists() else {}
    common = ["device=cpu", "seed=0", "train.progress=false", "train.num_workers=0"]
    settings = {
        # YouTube-8M: few epochs on a shared CPU; larger batches, cosine schedule, early stopping.
        "yt8m": common + [f"train.epochs={a.yt8m_epochs}", "train.batch_size=256", "train.lr=2e-3",
                          "train.warmup_epochs=0.5", "train.patience=3", "train.eval_batch_size=1024"],
        "mosi": common + [f"train.epochs={a.mosi_epochs}", "train.batch_size=64", "train.lr=1e-3",
                          "train.patience=8"],
    }
    try:
        for name in a.datasets:
            out_dir = work / name
            shutil.rmtree(out_dir, ignore_errors=True)
            bench_dataset(name, out_dir, a.rows, settings[name] + list(a.overrides), results, tuned.get(name))
            print(open(RESULTS / "models.md").read(), flush=True)
    finally:
        if a.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
