"""Benchmarks of missing-modality completion (pipeline/complete.py, softImpute-ALS).

    python bench/complete.py scale [--rows 10000 50000 270000]
        synthetic low-rank + noise matrices, 2,348 columns in NMCL's three blocks (visual 2048,
        acoustic 200, textual 100), 10 % of rows missing one block; time, iterations, peak RSS
        and error on the hidden blocks per size -> bench/results/complete_scale.json.
        Each size runs in a fresh process so its peak RSS is its own.
    python bench/complete.py quality
        YouTube-8M (rgb 1024 + audio 128) and CMU-MOSI (text/audio/video), one modality hidden
        for 10/30/50 % of the videos: (a) reconstruction error of the hidden blocks, softImpute-ALS
        vs mean vs kNN imputation; (b) downstream GAP@20 / accuracy of a classifier trained on
        completed features vs zero fill vs a mask-aware model vs full data
        -> bench/results/complete.json and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.lowrank import lambda_max, soft_impute_als, standardize_  # noqa: E402
from pipeline.config import load_config, versions  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DATA = Path(os.environ.get("MICROVIDEO_SHARED", ROOT.parent / "shared" / "data"))
NMCL_BLOCKS = {"visual": 2048, "acoustic": 200, "textual": 100}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def spans_of(blocks: dict[str, int]) -> list[tuple[int, int]]:
    ends = np.cumsum([0] + list(blocks.values()))
    return [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


# -- scale ----------------------------------------------------------------------------------------
def scale_one(rows: int, rank: int, true_rank: int, lam_rel: float, tol: float, max_iters: int, seed: int,
              method: str = "als", noise: float = 0.3) -> dict:
    """One size in this process: build X in place (low-rank + noise), hide a random block for
    10 % of rows, standardize, complete in place; report time, peak RSS and hidden-block error
    against the noise-free signal."""
    torch.manual_seed(seed)
    D, spans = sum(NMCL_BLOCKS.values()), spans_of(NMCL_BLOCKS)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(true_rank, D, generator=g) / true_rank ** 0.5
    hidden = torch.full((rows,), -1)
    hide = torch.randperm(rows, generator=g)[: rows // 10]
    hidden[hide] = torch.randint(0, len(spans), (len(hide),), generator=g)
    observed = torch.ones(rows, len(spans), dtype=torch.bool)
    observed[hide, hidden[hide]] = False
    # Built chunk by chunk (never a second N×D matrix); the noise-free signal of the hidden
    # blocks is kept as the truth the completion is scored against.
    X = torch.empty(rows, D)
    truth: dict[int, list] = {k: [] for k in range(len(spans))}
    for s in range(0, rows, 16384):
        n = min(16384, rows - s)
        signal = torch.randn(n, true_rank, generator=g) @ W
        for k, (c0, c1) in enumerate(spans):
            sel = (hidden[s:s + n] == k).nonzero().squeeze(1)
            truth[k].append((sel + s, signal[sel, c0:c1].clone()))
        X[s:s + n] = signal + noise * torch.randn(n, D, generator=g)
    t0 = time.perf_counter()
    mean, std = standardize_(X, observed, spans)
    lam = lam_rel * lambda_max(X, seed=seed)
    prep_s = time.perf_counter() - t0
    X, info = soft_impute_als(X, observed, rank=rank, lam=lam, tol=tol, max_iters=max_iters, seed=seed,
                              blocks=NMCL_BLOCKS, method=method, inplace=True)
    total_s = time.perf_counter() - t0
    err_sq = ref_sq = 0.0
    for k, (c0, c1) in enumerate(spans):
        idx, true_block = torch.cat([i for i, _ in truth[k]]), torch.cat([t for _, t in truth[k]])
        est = X[idx, c0:c1] * std[c0:c1] + mean[c0:c1]
        err_sq += float((est - true_block).square().sum())
        ref_sq += float((true_block - mean[c0:c1]).square().sum())
    return {"method": method, "rows": rows, "cols": D, "missing_rows": len(hide), "rank": info["rank"], "lambda_relative": lam_rel,
            "iterations": info["iterations"], "converged": info["converged"], "objective": info["objective"],
            "seconds_total": total_s, "seconds_prepare": prep_s, "seconds_als": info["seconds"],
            "seconds_per_iteration": info["seconds"] / max(1, info["iterations"]),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "matrix_gb": rows * D * 4 / 2 ** 30,
            "noise_std": noise, "true_rank": true_rank,
            # ||completed - signal|| / ||signal - column mean|| over the hidden blocks: mean imputation scores 1
            "hidden_relative_error": (err_sq / ref_sq) ** 0.5,
            "torch_threads": torch.get_num_threads(), "load_average_after": os.getloadavg()}


def scale(args) -> None:
    results = []
    for rows in args.rows:
        load_before = os.getloadavg()
        cmd = [sys.executable, __file__, "scale-one", "--rows", str(rows), "--rank", str(args.rank),
               "--lam", str(args.lam), "--tol", str(args.tol), "--max-iters", str(args.max_iters),
               "--method", args.method, "--true-rank", str(args.true_rank)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1]) | {"load_average_before": load_before}
        results.append(r)
        print(f"{rows:>7} rows: {r['seconds_total']:.1f} s ({r['iterations']} iterations, "
              f"{r['seconds_per_iteration']:.2f} s each), peak RSS {r['peak_rss_gb']:.2f} GB "
              f"(matrix {r['matrix_gb']:.2f} GB), hidden-block relative error {r['hidden_relative_error']:.3f}, "
              f"load {load_before[0]:.1f} -> {r['load_average_after'][0]:.1f}", flush=True)
        path = RESULTS / "complete_scale.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        runs = {str(x["rows"]): x for x in old.get("runs", [])} | {str(x["rows"]): x for x in results}
        write_json(path, {"runs": sorted(runs.values(), key=lambda x: x["rows"]), "cpu_count": os.cpu_count(),
                          "note": "2-core CPU shared with other jobs; see load averages", "versions": versions()})


# -- quality on real data -------------------------------------------------------------------------
def load_mosi() -> dict:
    """CMU-MOSI utterances: text 100-d, audio 73-d, video 100-d; binary sentiment; the shipped
    speaker-independent split (train 1,447 / test 752)."""
    parts = {s: np.load(DATA / "mosi" / f"mosi_{s}.npz") for s in ("train", "test")}
    blocks = {"text": 100, "audio": 73, "video": 100}
    return {"name": "mosi", "blocks": blocks, "hide": "text", "metric": "accuracy",
            "features": {m: np.concatenate([parts[s][m] for s in parts]).astype(np.float32) for m in blocks},
            "ids": [f"{s}/{u}" for s in parts for u in parts[s]["utt_id"]],
            "labels": [[str(int(y))] for s in parts for y in parts[s]["label"]],
            "split": [s for s in parts for _ in parts[s]["label"]], "class_names": None}


def load_yt8m() -> dict:
    """YouTube-8M video level, read with pipeline.tfrecord: rgb 1024 + audio 128, 3,862 classes;
    shards 0-49 train, 50-59 test (the project's suggested development split)."""
    from pipeline.importers import read_vocabulary
    from pipeline.tfrecord import parse_example, read_records

    vocab = read_vocabulary(DATA / "yt8m" / "vocabulary.csv")
    ids, labels, split, rgb, audio = [], [], [], [], []
    for path in sorted((DATA / "yt8m" / "tfrecord").glob("validate*.tfrecord")):
        part = "train" if int(path.stem[-4:]) < 50 else "test"
        for _, data in read_records(path):
            ex = parse_example(data)
            ids.append(ex["id"][0].decode())
            labels.append([vocab[int(i)] for i in ex["labels"]])
            split.append(part)
            rgb.append(ex["mean_rgb"])
            audio.append(ex["mean_audio"])
    multi_hot = np.zeros((len(ids), len(vocab)), np.float32)
    index = {name: i for i, name in enumerate(vocab)}
    for i, labs in enumerate(labels):
        multi_hot[i, [index[lab] for lab in labs]] = 1
    return {"name": "yt8m", "blocks": {"rgb": 1024, "audio": 128}, "hide": "rgb", "metric": "gap@20",
            "multi_hot": multi_hot,
            "features": {"rgb": np.stack(rgb), "audio": np.stack(audio)}, "ids": ids, "labels": labels,
            "split": split, "class_names": vocab}


def hidden_rows(n: int, rate: float, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[: int(round(rate * n))])


def zscore_stats(x: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x[observed].mean(0), x[observed].std(0) + 1e-6


def knn_impute(data: dict, hidden: np.ndarray, k: int = 10) -> np.ndarray:
    """kNN imputation of the hidden block (standardized units): distances on the other blocks
    (standardized), average of the 10 nearest videos that have the block. Batched torch cdist."""
    m, n = data["hide"], len(data["ids"])
    observed = np.ones(n, bool)
    observed[hidden] = False
    others = [b for b in data["blocks"] if b != m]
    Z = np.concatenate([(data["features"][b] - data["features"][b].mean(0)) / (data["features"][b].std(0) + 1e-6)
                        for b in others], 1)
    mu, sd = zscore_stats(data["features"][m], observed)
    target = torch.from_numpy((data["features"][m][observed] - mu) / sd)
    refs, queries = torch.from_numpy(Z[observed]), torch.from_numpy(Z[hidden])
    out = []
    for s in range(0, len(queries), 2048):
        nearest = torch.cdist(queries[s:s + 2048], refs).topk(k, largest=False).indices
        out.append(target[nearest].mean(1))
    return torch.cat(out).numpy()


def standardized_errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    """RMSE in standardized units, and relative error ||pred - truth|| / ||truth|| (mean imputation = 1)."""
    return {"rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
            "relative_error": float(np.linalg.norm(pred - truth) / np.linalg.norm(truth))}


def choose_lambda(data: dict, grid: list[float], rate: float = 0.3, seed: int = 1) -> dict:
    """λ chosen on the training part only, with its own random hiding (never the test rows or
    the evaluation hiding): the grid value with the lowest hidden-block error."""
    train = np.array([s == "train" for s in data["split"]])
    blocks, m = data["blocks"], data["hide"]
    X = torch.from_numpy(np.concatenate([data["features"][b][train] for b in blocks], 1))
    n = len(X)
    hide = hidden_rows(n, rate, seed)
    observed = torch.ones(n, len(blocks), dtype=torch.bool)
    observed[hide, list(blocks).index(m)] = False
    spans = spans_of(blocks)
    c0, c1 = spans[list(blocks).index(m)]
    truth = X[hide, c0:c1].clone()
    mean, std = standardize_(X, observed, spans)
    truth = (truth - mean[c0:c1]) / std[c0:c1]
    c = load_config().complete
    scores = {}
    for lam_rel in grid:
        Z, info = soft_impute_als(X, observed, rank=int(c.rank), lam=lam_rel * lambda_max(X), tol=float(c.tol),
                                  max_iters=int(c.max_iters), blocks=blocks, method=str(c.method))
        scores[lam_rel] = standardized_errors(Z[hide, c0:c1].numpy(), truth.numpy())["relative_error"]
        print(f"  {data['name']}: λ/λmax={lam_rel:g}: validation relative error {scores[lam_rel]:.4f} "
              f"({info['iterations']} iterations)", flush=True)
    return {"grid": scores, "best": min(scores, key=scores.get)}


def write_store(out: Path, data: dict, hidden: np.ndarray | None) -> None:
    """A project output folder (catalog + store) holding `data`, without the hidden rows of the
    hidden modality: exactly what extraction leaves when videos lack that modality."""
    from pipeline.catalog import Catalog, VideoRow
    from pipeline.store import FeatureStore

    cat = Catalog(out / "catalog.sqlite")
    cat.upsert_videos([VideoRow(v, labels=lab, split=s) for v, lab, s in zip(data["ids"], data["labels"], data["split"])])
    if data["class_names"]:
        cat.set_class_names(data["class_names"])
    store = FeatureStore(out, cat, shard_size=4096)
    skip = set(hidden.tolist()) if hidden is not None else set()
    for m, dim in data["blocks"].items():
        with store.writer(m, "pooled", dim, {"source": data["name"]}) as w:
            for i, vid in enumerate(data["ids"]):
                if not (m == data["hide"] and i in skip):
                    w.add(vid, data["features"][m][i])
    cat.close()


def train_eval(out: Path, model: str, modalities: list[str], data: dict, seed: int, overrides: list[str]) -> float:
    """Train with the project's trainer (pipeline/train.py) and score on the test split."""
    from pipeline.evaluate import run_evaluate
    from pipeline.train import run_train

    # use_completed=false: the listed modalities are read as named (the trainer would otherwise
    # swap in <m>@completed wherever the store has it, and zero fill would not be zero fill).
    cfg = load_config(overrides=[f"seed={seed}", "device=cpu", "train.progress=false", "train.use_completed=false",
                                 f"train.modalities=[{','.join(modalities)}]", *overrides])
    name = f"{model}-{'-'.join(m.replace('@', '_') for m in modalities)}-s{seed}"
    run_train(cfg, out, model, run_name=name)
    return float(run_evaluate(cfg, out, out / "runs" / name, split="test")["metrics"][data["metric"]])


def mean_fill(x: np.ndarray, hidden: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """The hidden block replaced by its column means over the videos that have it."""
    out = x.copy()
    keep = np.ones(len(x), bool)
    keep[hidden] = False
    out[hidden, k0:k1] = x[keep, k0:k1].mean(0)
    return out


def mlp_score(data: dict, x: np.ndarray, seed: int, epochs: int = 4, hidden: int = 256) -> float:
    """A plain torch MLP (one hidden layer, bf16 autocast) on the concatenated inputs, trained on
    the train split and scored on the test split. Used for YouTube-8M: the project's trainer
    took ~4.5 min per epoch on the 2 cores shared with other jobs, too slow for 10 runs here."""
    from pipeline.metrics import compute_metrics

    torch.manual_seed(seed)
    train = np.array([s == "train" for s in data["split"]])
    y = data["multi_hot"]
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(hidden, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    idx = np.flatnonzero(train)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        net.train()
        order = rng.permutation(idx)
        for s in range(0, len(idx), 256):
            b = torch.from_numpy(order[s:s + 256])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(xt[b])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    test = np.flatnonzero(~train)
    with torch.no_grad():
        scores = torch.sigmoid(net(xt[test])).numpy()
    return float(compute_metrics(scores, y[test], True, 0.5, 20)[data["metric"]])


def quality(args) -> None:
    import tempfile
    from contextlib import redirect_stdout

    from pipeline.complete import run_complete

    path = RESULTS / "complete.json"   # merged: one dataset can be re-run without the other
    results = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
    results["versions"] = versions()
    train_overrides = {"mosi": ["train.epochs=30", "train.patience=5"],
                       "yt8m": ["train.epochs=3", "train.patience=2"]}   # 2 shared CPU cores
    seeds = {"mosi": args.seeds, "yt8m": args.seeds}
    for name in args.datasets:
        t0 = time.perf_counter()
        data = load_mosi() if name == "mosi" else load_yt8m()
        blocks, m = data["blocks"], data["hide"]
        n = len(data["ids"])
        print(f"{name}: {n} videos, blocks {blocks}, hiding {m!r}", flush=True)
        lam = choose_lambda(data, args.lambdas)
        entry = {"videos": n, "blocks": blocks, "hidden_modality": m, "metric": data["metric"],
                 "lambda_selection": lam, "rates": {}, "train_overrides": train_overrides[name], "seeds": seeds[name]}
        complete_overrides = [f"complete.lambda={lam['best']}", "device=cpu"]

        def downstream(out: Path, conditions: list[tuple[str, str, list[str]]]) -> dict:
            scores = {}
            for label, model, mods in conditions:
                with open(os.devnull, "w") as null, redirect_stdout(null):
                    values = [train_eval(out, model, mods, data, s, train_overrides[name]) for s in seeds[name]]
                scores[label] = {"mean": float(np.mean(values)), "per_seed": values}
                print(f"    {label}: {data['metric']} {scores[label]['mean']:.4f}", flush=True)
            return scores

        fast = name == "yt8m"
        entry["classifier"] = ("in-bench torch MLP (hidden 256, 4 epochs, AdamW, bf16 autocast)" if fast else
                               "project trainer: models early_fusion / late_fusion via pipeline.train")
        full_x = np.concatenate([data["features"][b] for b in blocks], 1)
        if fast:
            entry["full"] = {"full data, MLP": {"mean": float(np.mean([mlp_score(data, full_x, s) for s in seeds[name]]))}}
            print(f"    full data: {entry['full']['full data, MLP']['mean']:.4f}", flush=True)
        else:
            with tempfile.TemporaryDirectory(prefix=f"complete-{name}-full-") as tmp:
                write_store(Path(tmp), data, None)
                print("  full data", flush=True)
                entry["full"] = downstream(Path(tmp), [
                    ("full data, early fusion", "early_fusion", list(blocks)),
                    ("full data, late fusion", "late_fusion", list(blocks))][:args.full_models])
        for rate in args.rates:
            hidden = hidden_rows(n, rate, seed=0)
            observed = np.ones(n, bool)
            observed[hidden] = False
            mu, sd = zscore_stats(data["features"][m], observed)
            truth = (data["features"][m][hidden] - mu) / sd
            row = {"hidden_videos": len(hidden), "reconstruction": {}}
            print(f"  {int(rate * 100)}% of videos without {m}", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"complete-{name}-{rate}-") as tmp:
                out = Path(tmp)
                write_store(out, data, hidden)
                cfg = load_config(overrides=complete_overrides)
                t1 = time.perf_counter()
                with open(os.devnull, "w") as null, redirect_stdout(null):
                    summary = run_complete(cfg, out, progress=False)
                row["completion"] = {k: summary[k] for k in ("iterations", "converged", "lambda", "lambda_relative",
                                                             "rank", "method")} | {"seconds": time.perf_counter() - t1}
                from pipeline.catalog import Catalog
                from pipeline.store import FeatureStore

                cat = Catalog(out / "catalog.sqlite")
                _, completed_all, _ = FeatureStore(out, cat).read_pooled(m + "@completed", data["ids"])
                cat.close()
                completed = completed_all[hidden]
                row["reconstruction"] = {
                    "mean imputation": standardized_errors(np.zeros_like(truth), truth),
                    "kNN imputation (k=10)": standardized_errors(knn_impute(data, hidden), truth),
                    "low-rank completion": standardized_errors((completed.astype(np.float32) - mu) / sd, truth)}
                for method, e in row["reconstruction"].items():
                    print(f"    {method}: RMSE {e['rmse']:.4f}, relative {e['relative_error']:.4f}", flush=True)
                completed_mods = [b + "@completed" for b in blocks]
                if fast:
                    k0, k1 = spans_of(blocks)[list(blocks).index(m)]
                    zero = full_x.copy()
                    zero[hidden, k0:k1] = 0
                    present = np.ones((n, 1), np.float32)
                    present[hidden] = 0
                    filled = full_x.copy()
                    filled[hidden, k0:k1] = completed_all[hidden].astype(np.float32)
                    mean_filled = mean_fill(full_x, hidden, k0, k1)
                    inputs = {"zero fill, MLP": zero, "mask-aware MLP (zero fill + presence flag), no completion":
                              np.concatenate([zero, present], 1), "mean imputation, MLP": mean_filled,
                              "completed, MLP": filled}
                    row["downstream"] = {}
                    for label, x in inputs.items():
                        row["downstream"][label] = {"mean": float(np.mean([mlp_score(data, x, s) for s in seeds[name]]))}
                        print(f"    {label}: {data['metric']} {row['downstream'][label]['mean']:.4f}", flush=True)
                else:
                    row["downstream"] = downstream(out, [
                        ("zero fill, early fusion", "early_fusion", list(blocks)),
                        ("mask-aware late fusion, no completion", "late_fusion", list(blocks)),
                        ("completed, early fusion", "early_fusion", completed_mods),
                        ("completed, late fusion", "late_fusion", completed_mods)])
            entry["rates"][str(rate)] = row
        entry["seconds"] = time.perf_counter() - t0
        results["datasets"][name] = entry
        write_json(RESULTS / "complete.json", results)
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = []
    for name, e in results["datasets"].items():
        lines += [f"\n### {name}: `{e['hidden_modality']}` hidden (λ/λmax = {e['lambda_selection']['best']:g}, "
                  f"chosen on a validation hiding of the training part)\n",
                  "| hidden | mean imp. rel. err | kNN rel. err | low-rank rel. err | low-rank RMSE (std units) |",
                  "|---|---|---|---|---|"]
        for rate, row in e["rates"].items():
            r = row["reconstruction"]
            lines.append(f"| {float(rate):.0%} | {r['mean imputation']['relative_error']:.3f} | "
                         f"{r['kNN imputation (k=10)']['relative_error']:.3f} | "
                         f"{r['low-rank completion']['relative_error']:.3f} | {r['low-rank completion']['rmse']:.3f} |")
        conds = list(next(iter(e["rates"].values()))["downstream"])
        lines += ["", "| hidden | " + " | ".join(conds) + " | " + " | ".join(e["full"]) + " |",
                  "|---" * (1 + len(conds) + len(e["full"])) + "|"]
        for rate, row in e["rates"].items():
            lines.append(f"| {float(rate):.0%} | " + " | ".join(f"{row['downstream'][c]['mean']:.4f}" for c in conds)
                         + " | " + " | ".join(f"{v['mean']:.4f}" for v in e["full"].values()) + " |")
        lines.append(f"\n({e['metric']} on the test split; mean over seeds {e['seeds']})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("scale", "scale-one"):
        s = sub.add_parser(name)
        s.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 270_000])
        s.add_argument("--rank", type=int, default=100)
        s.add_argument("--true-rank", type=int, default=50)
        s.add_argument("--lam", type=float, default=None, help="λ / λ_max (default: configs/complete.yaml)")
        s.add_argument("--tol", type=float, default=None)
        s.add_argument("--max-iters", type=int, default=None)
        s.add_argument("--method", default=None, help="als | softimpute-als (default: configs/complete.yaml)")
    q = sub.add_parser("quality")
    q.add_argument("--datasets", nargs="+", default=["mosi", "yt8m"])
    q.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    q.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3],
                   help="λ/λmax grid, chosen on a validation hiding of the training part")
    q.add_argument("--full-models", type=int, default=2, help="1 = only early fusion on the full data")
    q.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (scores are averaged)")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.cmd in ("scale", "scale-one"):
        c = load_config().complete
        args.lam = float(c["lambda"]) if args.lam is None else args.lam
        args.tol = float(c.tol) if args.tol is None else args.tol
        args.max_iters = int(c.max_iters) if args.max_iters is None else args.max_iters
        args.method = c.method if args.method is None else args.method
    if args.cmd == "scale":
        scale(args)
    elif args.cmd == "scale-one":
        print(json.dumps(scale_one(args.rows[0], args.rank, args.true_rank, args.lam, args.tol, args.max_iters, 0,
                                   args.method)))
    else:
        quality(args)


if __name__ == "__main__":
    main()
