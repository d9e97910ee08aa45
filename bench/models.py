"""Model comparison on real features nobody on this project made.

    python bench/models.py                       # everything: YouTube-8M, then CMU-MOSI
    python bench/models.py --datasets mosi       # one dataset; --rows reference nmcl nmcl:tuned single; --yt8m-epochs 4
    python bench/models.py --datasets yt8m --rows refit   # the train + val refit estimate (below)

Rows: a model name is its default variant (`paper`); `model:variant` sets
`models.<model>.variant` (e.g. nmcl:tuned). bench/models_tuned.yaml holds per-row settings
chosen on the validation split, keyed by the row name.

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

Refit (YouTube-8M, `--rows refit`): is "train on train + val with the epoch count chosen on
val" worth it, measured on videos no choice has seen? Shards 50-54 become the tuning split and
55-59 a test split: the ensemble of `refit:` members (models_tuned.yaml) is trained on 0-49 with
its epochs chosen on 50-54, scored on 55-59, then refit on 0-54 with those epochs (keeping the
last epoch) and scored on 55-59 again. The shipped recipe is the same refit on 0-59.

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
from pipeline.checkpoint import load_model  # noqa: E402
from pipeline.evaluate import run_evaluate  # noqa: E402
from pipeline.task import load_labels  # noqa: E402
from pipeline.train import run_train  # noqa: E402

SHARED = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
# Both variants of NMCL and its baselines (the default variant is the paper's), then the other models.
ZOO = ["early_fusion", "early_fusion:tuned", "late_fusion", "late_fusion:tuned", "early_att", "early_att:tuned",
       "late_att", "late_att:tuned", "nmcl", "nmcl:tuned", "marnet", "videotag", "netvlad", "mart"]


def row_model(row: str) -> tuple[str, list[str]]:
    """"nmcl:tuned" -> ("nmcl", ["models.nmcl.variant=tuned"]); "nmcl" -> ("nmcl", [])."""
    model, _, variant = row.partition(":")
    return model, [f"models.{model}.variant={variant}"] if variant else []


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
                *([f"\n{section['note']}"] if section.get("note") else []), *_tuned_lines(section), ""]
    return "\n".join(out + _refit_markdown(results.get("yt8m_refit"))) + "\n"


def _refit_markdown(section: dict | None) -> list[str]:
    if not section:
        return []
    out = ["## YouTube-8M: refit on train + val (train: shards 0-49; val: 50-54, chooses lambda / epochs; "
           "test: 55-59, chooses nothing)", ""]
    if "ridge" in section:
        r = section["ridge"]
        out += [f"Ridge reference (lambda {r['lambda']:g} chosen on val): test GAP@20 "
                f"{r['test_train_only']['gap@20']:.4f} fit on 0-49, {r['test_refit']['gap@20']:.4f} refit on 0-54 "
                f"(mAP {r['test_train_only']['map']:.4f} -> {r['test_refit']['map']:.4f}). "
                f"Load average: {r['loadavg']}.", ""]
    if "ensemble_refit" in section:
        out += ["| member | epochs (chosen on val) | val GAP@20 | test GAP@20, train only | test GAP@20, refit |",
                "|---|---:|---:|---:|---:|"]
        for i, m in enumerate(section["members"]):
            t = m["train_only"]
            out.append(f"| {i + 1}: {' '.join(m['member'])} | {t['best_epoch']} | {t['val']['gap@20']:.4f} | "
                       f"{t['test']['gap@20']:.4f} | {m['refit']['test']['gap@20']:.4f} |")
        out.append(f"| ensemble (mean probability) | - | {section['ensemble_train_only_val']['gap@20']:.4f} | "
                   f"{section['ensemble_train_only']['gap@20']:.4f} | {section['ensemble_refit']['gap@20']:.4f} |")
        out += ["", f"Settings: {section['settings']}. Load average: {section.get('loadavg')}.", ""]
    return out


def _tuned_lines(section: dict) -> list[str]:
    tuned = section.get("tuned") or {}
    lines = [f"- {m}: {' '.join(o)}" for m, o in tuned.items() if m not in ("ensemble", "refit")]
    lines += [f"- {key} member: {' '.join(member)}" for key in ("ensemble", "refit") for member in tuned.get(key, [])]
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


def _ridge(x: np.ndarray, y: np.ndarray, lambdas) -> dict:
    """{lambda: predict(x')}: W = (X'X + lambda I)^-1 X'Y on features standardised with x's
    statistics, plus a bias column (one Gram matrix for every lambda)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    prep = lambda z: np.c_[(z - mu) / sd, np.ones(len(z))].astype(np.float64)   # noqa: E731
    xt = prep(x)
    gram, rhs = xt.T @ xt, xt.T @ y
    weights = {lam: np.linalg.solve(gram + lam * np.eye(len(gram)), rhs) for lam in lambdas}
    return {lam: (lambda z, w=w: prep(z) @ w) for lam, w in weights.items()}


def ridge_row(out_dir: Path, modalities: list[str], lambdas=(1.0, 10.0, 100.0, 1000.0, 10000.0)) -> dict:
    """Closed-form ridge regression on the standardised concatenation; lambda by val GAP@20."""
    started = time.time()
    data, _, _ = _split_arrays(out_dir, modalities)
    (xt, yt), (xv, yv) = data["train"], data["val"]
    scored = {lam: metrics_module.compute_metrics(f(xv), yv, True) for lam, f in _ridge(xt, yt, lambdas).items()}
    lam = max(scored, key=lambda k: scored[k]["gap@20"])
    return {"row": "ridge (closed form)", "model": "ridge", "modalities": modalities, "val": scored[lam],
            "params": int((xt.shape[1] + 1) * yt.shape[1]), "train_s": round(time.time() - started, 1), "lambda": lam,
            "lambdas": list(lambdas), "loadavg": os.getloadavg()}


def ridge_refit(out_dir: Path, modalities: list[str], lambdas=(10.0, 100.0, 1000.0, 10000.0)) -> dict:
    """The refit measured with the closed-form reference (cheap where training is not): lambda
    chosen on val (shards 50-54) for a fit on train (0-49); that fit and a refit on train + val
    with the same lambda, both scored on test (55-59)."""
    started = time.time()
    data, _, _ = _split_arrays(out_dir, modalities)
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    fits = _ridge(xt, yt, lambdas)
    val = {lam: metrics_module.compute_metrics(f(xv), yv, True)["gap@20"] for lam, f in fits.items()}
    lam = max(val, key=val.get)
    refit = _ridge(np.r_[xt, xv], np.r_[yt, yv], [lam])[lam]
    return {"lambda": lam, "val_gap": val, "test_train_only": metrics_module.compute_metrics(fits[lam](xs), ys, True),
            "test_refit": metrics_module.compute_metrics(refit(xs), ys, True), "seconds": round(time.time() - started, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


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
    run_name = row.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_").replace(":", "-")
    shutil.rmtree(out_dir / "runs" / run_name, ignore_errors=True)
    started = time.time()
    result = run_train(cfg, out_dir, model, run_name=run_name)
    train_s = time.time() - started
    out = {"row": row, "model": model, "modalities": modalities, "val": result["best"], "run_dir": result["run_dir"],
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
    trained = [model_row(cfg_overrides + row_model(member[0])[1] + member[1:], out_dir, row_model(member[0])[0],
                         modalities, f"ensemble member {i + 1}") for i, member in enumerate(members)]
    cfg = load_config(overrides=cfg_overrides + [f"train.modalities=[{','.join(modalities)}]"])
    runs = [out_dir / "runs" / f"ensemble_member_{i + 1}" for i in range(len(members))]
    out = {"row": f"ensemble of {len(members)} ({' + '.join(m[0] for m in members)})", "model": "ensemble",
           "modalities": modalities, "val": run_evaluate(cfg, out_dir, runs, split="val")["metrics"],
           "params": sum(t["params"] for t in trained), "train_s": round(sum(t["train_s"] for t in trained), 1),
           "members": trained, "loadavg": os.getloadavg()}
    if test_split:
        out["test"] = run_evaluate(cfg, out_dir, runs, split="test")["metrics"]
    return out


def _fixed_split(out_dir: Path, train_splits: tuple[str, ...]) -> dict:
    """Task row indices: "train" = every video whose catalog split is in `train_splits`."""
    cat = Catalog(out_dir / "catalog.sqlite")
    try:
        splits = np.array([(s or "").lower() for s in load_labels(cat)["splits"]])
    finally:
        cat.close()
    idx = np.arange(len(splits))
    return {"train": idx[np.isin(splits, train_splits)], "val": idx[splits == "val"], "test": idx[splits == "test"]}


def refit_section(work: Path, overrides: list[str], members: list[list[str]], results: dict,
                  ridge_only: bool = False) -> None:
    """The train + val refit, measured: shards 0-49 train, 50-54 val (epoch choice), 55-59 test.
    An import of an earlier call in the same --out folder is reused."""
    out_dir = work / "yt8m_refit"
    if not (out_dir / "catalog.sqlite").exists():
        shards = sorted(glob.glob(str(SHARED / "yt8m" / "tfrecord" / "*.tfrecord")))
        vocab = SHARED / "yt8m" / "vocabulary.csv"
        for part, split in ((shards[:50], "train"), (shards[50:55], "val"), (shards[55:60], "test")):
            import_yt8m(part, out_dir, vocabulary=vocab, split=split)
    modalities = ["rgb", "audio"]
    if ridge_only or "ridge" not in results.get("yt8m_refit", {}):
        results.setdefault("yt8m_refit", {})["ridge"] = ridge_refit(out_dir, modalities)
        _save(results)
    if ridge_only:
        return
    base = overrides + [f"train.modalities=[{','.join(modalities)}]"]
    section = results["yt8m_refit"] = {"ridge": results["yt8m_refit"]["ridge"], "members": [], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                       "loadavg_start": [round(x, 2) for x in os.getloadavg()], "settings": " ".join(overrides),
                                       "split": {"train": "shards 0-49", "val": "shards 50-54", "test": "shards 55-59"}}
    refit_split = _fixed_split(out_dir, ("train", "val"))
    section["videos"] = {k: int(len(v)) for k, v in _fixed_split(out_dir, ("train",)).items()}
    section["videos"]["train+val"] = int(len(refit_split["train"]))
    first, second = [], []
    for i, member in enumerate(members):
        model, variant = row_model(member[0])
        cfg_over = base + variant + member[1:]
        print(f"== refit member {i + 1}: train only", flush=True)
        row = model_row(overrides + variant + member[1:], out_dir, model, modalities, f"refit member {i + 1} train", True)
        cfg = load_config(overrides=cfg_over + [f"train.stop_after_epochs={row['best_epoch']}", "train.patience=1000"])
        print(f"== refit member {i + 1}: train + val, {row['best_epoch']} epochs", flush=True)
        started = time.time()
        refit = run_train(cfg, out_dir, model, run_name=f"refit_member_{i + 1}_trainval", fixed_split=refit_split)
        run_dir = Path(refit["run_dir"])
        shutil.copy(run_dir / "last.pt", run_dir / "best.pt")   # the last epoch, not the in-sample "best"
        test = run_evaluate(cfg, out_dir, run_dir, split="test", show=False)["metrics"]
        section["members"].append({"member": member, "train_only": row, "refit": {
            "epochs": refit["epochs_run"], "train_s": round(time.time() - started, 1), "test": test}})
        first.append(Path(row["run_dir"]))
        second.append(run_dir)
        _save(results)
    cfg = load_config(overrides=base)
    section["ensemble_train_only"] = run_evaluate(cfg, out_dir, first, split="test", show=False)["metrics"]
    section["ensemble_refit"] = run_evaluate(cfg, out_dir, second, split="test", show=False)["metrics"]
    section["ensemble_train_only_val"] = run_evaluate(cfg, out_dir, first, split="val", show=False)["metrics"]
    section["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    _save(results)


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
        elif r not in ("reference", "ensemble", "refit", "refit-ridge"):
            plan.append((r, modalities, r))
    if "reference" in rows:
        finish(reference(out_dir, modalities))
    for spec, mods, row in plan:
        print(f"== {name}: {row}", flush=True)
        model, variant = row_model(spec)
        try:
            finish(model_row(overrides + variant + list((tuned or {}).get(spec, [])), out_dir, model, mods, row,
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
                   help="reference, model[:variant] names, single (Early Fusion per modality), ensemble, refit, "
                        "refit-ridge (YouTube-8M train + val refit, measured on shards 55-59); default: all but refit")
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
            if name == "yt8m" and ({"refit", "refit-ridge"} & set(a.rows)):
                refit_section(work, settings[name] + list(a.overrides), tuned["yt8m"]["refit"], results,
                              ridge_only="refit" not in a.rows)
            if name == "yt8m" and set(a.rows) <= {"refit", "refit-ridge"}:
                continue
            out_dir = work / name
            shutil.rmtree(out_dir, ignore_errors=True)
            bench_dataset(name, out_dir, a.rows, settings[name] + list(a.overrides), results, tuned.get(name))
            print(open(RESULTS / "models.md").read(), flush=True)
    finally:
        if a.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
