"""The `complete` stage: fill in the modalities a video lacks (`run_pipeline.py complete`).

Reads the store's pooled modalities into one matrix (a row per video, a block of columns per
modality), standardizes each column over the videos that have it, completes it with the
low-rank factorization of `lowrank.py` (NMCL §4.3; Hastie et al., JMLR 2015), undoes the
standardization and writes every modality `m` as the new store modality `m@completed`
(observed rows copied bit for bit, `observed_mask_of: m` in its metadata, so models can still
tell measured from imputed rows). The originals stay. Settings: configs/complete.yaml. Nothing
is recomputed when the sources and settings are unchanged (a fingerprint in the metadata).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from .config import resolve_device, to_dict, versions
from .errors import DataError
from .io import write_json
from .lowrank import lambda_max, soft_impute_als, standardize_
from .output import open_output

SUFFIX = "@completed"


def _source_fingerprint(catalog, modalities: list[str], params: dict) -> str:
    """Hash of exactly which committed rows the completion was computed from, and how: equal
    fingerprints mean re-running would reproduce the stored result."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for m in modalities:
        h.update(f"\0{m}\0".encode())
        for vid, file, row in catalog.feature_locations(m, "pooled"):
            h.update(f"{vid}\t{file}\t{row}\n".encode())
    return h.hexdigest()


def _progress(enabled: bool, total: int):
    """A rich bar showing the objective and the relative change of the fit per iteration."""
    from rich.progress import Progress, TextColumn

    from .progress import bar_columns

    if not enabled:
        return None
    return Progress(*bar_columns("complete"),
                    TextColumn("objective [cyan]{task.fields[objective]}[/] change [cyan]{task.fields[change]}"))


def _modalities(c, infos: dict) -> list[str]:
    """`complete.modalities`, or every pooled one in the store (not the completed copies)."""
    names = list(c.modalities) if c.modalities else sorted(
        m for m, info in infos.items() if "pooled" in info.layouts and not m.endswith(SUFFIX))
    unknown = [m for m in names if m not in infos or "pooled" not in infos[m].layouts]
    if unknown:
        raise DataError(f"no pooled features in the store for {unknown}; it has {sorted(infos)}")
    return names


def _read_matrix(catalog, store, names: list[str], infos: dict, device: str):
    """(video ids, X [N, sum D] float32, observed [N, M] bool, column spans, dims): the union of
    videos having any of the modalities, a row per video, a block of columns per modality."""
    ids = sorted({vid for m in names for vid, _, _ in catalog.feature_locations(m, "pooled")})
    dims = {m: infos[m].layouts["pooled"] for m in names}
    empty = [m for m in names if not any(True for _ in catalog.feature_locations(m, "pooled"))]
    if empty:
        raise DataError(f"modality {empty[0]!r} is missing for every video: nothing to complete it from")
    X = torch.empty(len(ids), sum(dims.values()), dtype=torch.float32)
    observed = torch.zeros(len(ids), len(names), dtype=torch.bool)
    spans, col = [], 0
    for k, m in enumerate(names):
        _, values, present = store.read_pooled(m, ids)
        X[:, col:col + dims[m]] = torch.from_numpy(values)
        observed[:, k] = torch.from_numpy(present)
        spans.append((col, col + dims[m]))
        col += dims[m]
        del values
    return ids, X.to(device), observed.to(device), spans, dims


def _fit(X, observed, dims: dict, c, lam: float, seed: int, device: str, progress: bool):
    """soft_impute_als with a progress bar showing the objective and its change per iteration."""
    bar = _progress(progress, int(c.max_iters))
    task = None

    def show(info: dict) -> None:
        bar.update(task, completed=info["iterations"], objective=f"{info['objective']:.5g}",
                   change=f"{info['change']:.2e}")

    if bar is not None:
        bar.start()
        task = bar.add_task("complete", total=int(c.max_iters), objective="-", change="-")
    try:
        return soft_impute_als(X, observed, rank=int(c.rank), lam=lam, tol=float(c.tol), max_iters=int(c.max_iters),
                               seed=seed, device=device, blocks=dims, method=str(c.method), inplace=True,
                               chunk_rows=int(c.chunk_rows), callback=show if bar is not None else None)
    finally:
        if bar is not None:
            bar.stop()


def _write_completed(store, ids, names, spans, dims, X, mean, std, c, base_meta: dict) -> dict:
    """Write every modality for every row as `<m>@completed`: observed rows are the stored
    float16 values copied as they are; missing rows are the completion, back in the modality's
    own units. Returns {modality: imputed rows}."""
    chunk, infos, missing = int(c.chunk_rows), store.modalities(), {}
    for k, m in enumerate(names):
        c0, c1 = spans[k]
        _, values, present = store.read_pooled(m, ids)
        holes = np.flatnonzero(~present)
        missing[m] = len(holes)
        for s in range(0, len(holes), chunk):
            idx = torch.from_numpy(holes[s:s + chunk]).to(X.device)
            block = X[idx, c0:c1] * std[c0:c1] + mean[c0:c1]
            values[holes[s:s + chunk]] = block.cpu().numpy().astype(values.dtype)
        meta = {"completed_from": m, "observed_mask_of": m, "modalities_completed_jointly": names,
                **base_meta, "rows": len(ids), "missing_rows": len(holes), "source_meta": infos[m].meta}
        with store.writer(m + SUFFIX, "pooled", dims[m], meta) as w:
            for i, vid in enumerate(ids):
                w.add(vid, values[i])
        del values
    return missing


def run_complete(cfg, out_dir: str | Path, progress: bool = True) -> dict:
    """Complete the store's pooled modalities jointly and write each one as `<m>@completed`."""
    out_dir = Path(out_dir)
    c = cfg.complete
    catalog, store = open_output(cfg, out_dir)
    try:
        store.collect_garbage()
        infos = store.modalities()
        names = _modalities(c, infos)
        if not names:
            return {"skipped": True, "reason": "the store has no pooled modalities"}
        seed = int(c.seed if c.seed is not None else cfg.seed)
        params = {k: to_dict(c)[k] for k in ("method", "rank", "lambda", "tol", "max_iters")} | {"seed": seed,
                                                                                          "modalities": names}
        fingerprint = _source_fingerprint(catalog, names, params)
        done = [infos.get(m + SUFFIX) for m in names]
        if not c.force and all(i and i.meta.get("source_fingerprint") == fingerprint for i in done):
            return {"skipped": True, "reason": "sources and settings unchanged since the last completion",
                    "modalities": [m + SUFFIX for m in names]}
        device = resolve_device(c.device or cfg.device)
        t0 = time.perf_counter()
        ids, X, observed, spans, dims = _read_matrix(catalog, store, names, infos, device)
        mean, std = standardize_(X, observed, spans, chunk_rows=int(c.chunk_rows))
        lam = float(c["lambda"]) * lambda_max(X, seed=seed)
        read_s = time.perf_counter() - t0
        X, info = _fit(X, observed, dims, c, lam, seed, device, progress)
        t1 = time.perf_counter()
        versions_ = versions()
        base_meta = {"method": info["method"], "reference": "Hastie, Mazumder, Lee & Zadeh, JMLR 16 (2015)",
                     "rank": info["rank"], "lambda_relative": float(c["lambda"]), "lambda": lam,
                     "iterations": info["iterations"], "objective": info["objective"], "converged": info["converged"],
                     "source_fingerprint": fingerprint, "config": to_dict(c), "seed": seed, "device": device,
                     "versions": versions_}
        missing = _write_completed(store, ids, names, spans, dims, X, mean, std, c, base_meta)
        summary = {"skipped": False, "modalities": {m + SUFFIX: {"rows": len(ids), "imputed_rows": missing[m]}
                                                     for m in names},
                   **{k: info[k] for k in ("rank", "iterations", "converged", "objective", "change", "method")},
                   "lambda": lam, "lambda_relative": float(c["lambda"]), "device": device,
                   "seconds": {"read": read_s, "complete": info["seconds"], "write": time.perf_counter() - t1}}
        write_json(out_dir / "summaries" / f"complete-{time.strftime('%Y%m%d-%H%M%S')}.json",
                   {"summary": summary, "history": info["history"], "config": to_dict(cfg), "versions": versions_})
        store.collect_garbage()   # the previous completion's shards, now referenced by no video
        return summary
    finally:
        catalog.close()
