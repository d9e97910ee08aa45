"""Distributed extraction on a Ray cluster with Ray Data: `run_pipeline.py extract --engine ray`.

    driver (holds OUT/.lock, the only catalog writer)
      catalog -> videos_to_extract -> rows {video_id, path, title, need}    (paths, never frames)
      ray.data.from_items(rows).map_batches(ExtractActor, concurrency=actors, num_gpus=...)
    ExtractActor (one per actor slot, GPU actors via `num_gpus`)
      decode its batch in a small pebble pool (per-video time limit, crash -> PyAV retry)
      -> extract_clips -> its own shard files through a worker-side FeatureStore(OUT, None)
      -> returns the catalog records of those shards + the decode outcomes as one row
    driver
      applies each returned row to the catalog as it streams in (decode statuses and facts,
      then the shards and extract statuses, like the local engine)

Only paths cross the object store; decoded frames live and die inside the actor that decoded
them. Every batch ends with a flush, so one map_batches call = one shard per modality = one
unit of commit: a killed driver loses at most the batches whose rows it had not applied yet;
their shard files are unknown to the catalog and `collect_garbage` removes them on the next
run, which then redoes exactly those videos (the same resume rule as the local engine).

Why a pebble pool inside the actor rather than decoding in the actor's own thread: a decoder
stuck in C code cannot be interrupted from Python, and decord can segfault on broken files.
Reusing `decode_stream` keeps the local engine's time limit (`decode.timeout_s`), its crash
handling and its failure messages, so both engines record the same reasons. The pool has
`extract.ray.decode_workers` processes (default: the actor's CPUs) and lives for one batch.

Config (`extract.ray` in configs/pipeline.yaml):
    actors: auto          # actor count; auto = cluster GPUs / gpus_per_actor, else CPUs / cpus_per_actor
    cpus_per_actor: 2     # CPUs Ray reserves per actor (its decoders run on them)
    gpus_per_actor: auto  # auto = 1 when device is cuda, or device is auto and the cluster has GPUs
    decode_workers: null  # decoding processes per actor (null = cpus_per_actor; 0 = no time limit)
    batch_videos: 32      # videos per map_batches call = per shard = per commit

The OUT folder must be the same path on every node (shared storage), and the code, the weights
and the fitted extractor states (OUT/extractors/) must be reachable there too: see
docs/scale-out.md.
"""
from __future__ import annotations

import json
import math
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config import resolve_device, to_dict, versions
from .decode import DecodeOptions
from .extract import (ExtractSummary, build_extractors, extract_stream, finish_summary, fit_extractors, load_fitted,
                      open_writers, plan_extract)
from .io import write_json
from .store import FeatureStore
from .views import collect_views

def ray_settings(cfg: DictConfig) -> dict:
    """`extract.ray` (declared in configs/pipeline.yaml; unknown keys are config errors) as a dict."""
    return to_dict(cfg.extract.ray)


def plan_resources(settings: dict, device: str, cluster: dict) -> dict:
    """Per-actor CPUs/GPUs and the actor count from the settings and `ray.cluster_resources()`."""
    cpus = float(settings["cpus_per_actor"])
    gpus = settings["gpus_per_actor"]
    if gpus == "auto":
        wants_gpu = device.startswith("cuda") or (device == "auto" and cluster.get("GPU", 0) > 0)
        gpus = 1.0 if wants_gpu else 0.0
    gpus = float(gpus)
    if device.startswith("cuda") and gpus <= 0:
        raise ValueError("device=cuda with extract.ray.gpus_per_actor=0: give the actors GPUs or use device=cpu")
    if device == "cpu":
        gpus = 0.0
    if gpus > 0 and cluster.get("GPU", 0) < gpus:
        raise RuntimeError(f"the Ray cluster has {cluster.get('GPU', 0):g} GPUs; each actor asks for {gpus:g}")
    actors = settings["actors"]
    if actors == "auto":
        actors = math.floor(cluster.get("GPU", 0) / gpus) if gpus > 0 else math.floor(cluster.get("CPU", 1) / cpus)
    decode_workers = settings["decode_workers"]
    if decode_workers is None:
        decode_workers = max(1, int(cpus))
    return {"actors": max(1, int(actors)), "num_cpus": cpus, "num_gpus": gpus,
            "decode_workers": int(decode_workers), "batch_videos": int(settings["batch_videos"])}


class ExtractActor:
    """A Ray Data callable class: built once per actor, called once per batch of video rows."""

    def __init__(self, cfg: dict, out_dir: str, use_gpu: bool, decode_workers: int):
        self.cfg = OmegaConf.create(cfg)
        self.out_dir = Path(out_dir)
        # Ray points CUDA_VISIBLE_DEVICES at this actor's GPU(s), so "cuda" is the right one.
        self.device = resolve_device("cuda" if use_gpu else "cpu")
        self.decode_workers = decode_workers
        names = list(self.cfg.extract.modalities)
        # Same seed, same build order as the local engine: random-init weights come out equal.
        self.extractors = build_extractors(self.cfg, names, self.device)
        self.options = DecodeOptions.from_config(self.cfg.decode, views=collect_views(self.extractors))
        load_fitted(self.extractors, self.out_dir, required=True)
        # Worker-side store: shard files are written here, catalog records wait in `pending`.
        # No time-based flushing: every batch ends with a flush anyway.
        self.store = FeatureStore(self.out_dir, None, shard_size=self.cfg.store.shard_size, dtype=self.cfg.store.dtype)
        self.writers = open_writers(self.store, self.extractors, self.cfg, self.device, engine="ray")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A batch whose titles are all None arrives as an Arrow null column (not None objects):
        # anything but a non-empty string means "no title", as in the catalog.
        rows = [{"video_id": str(vid), "path": str(path), "title": title if isinstance(title, str) and title else None,
                 "need": [str(m) for m in need], "subtitles": json.loads(subs)}
                for vid, path, title, need, subs in zip(batch["video_id"], batch["path"], batch["title"], batch["need"],
                                                        batch["subtitles"])]
        summary = ExtractSummary(videos_todo=len(rows))
        decoded, failed = [], []

        def on_decoded(facts, fails):
            decoded.extend(facts)
            failed.extend(fails)

        t0 = time.perf_counter()
        extract_stream(rows, self.extractors, self.writers, self.options, self.cfg, summary, self.decode_workers,
                       on_decoded)
        for w in self.writers.values():
            w.flush()
        records, self.store.pending = self.store.pending, []
        summary.seconds["actor"] = time.perf_counter() - t0
        # One row per batch; pickled because store records are nested Python tuples.
        payload = {"decoded": decoded, "failed": failed, "records": records, "summary": asdict(summary)}
        return {"payload": np.array([pickle.dumps(payload)], dtype=object)}


def _commit(catalog, store: FeatureStore, payload: dict) -> None:
    """Apply one actor batch: decode outcomes first (as the local engine commits them before
    extracting), then the shards with their extract statuses."""
    catalog.record_decodes(payload["decoded"], payload["failed"])
    store.apply(payload["records"])


def _merge(total: ExtractSummary, part: dict) -> None:
    total.decoded += part["decoded"]
    total.decode_failed += part["decode_failed"]
    for m, counts in part["per_modality"].items():
        mine = total.per_modality.setdefault(m, {"done": 0, "missing": 0, "failed": 0})
        for k, n in counts.items():
            mine[k] += n
    for k, s in part["seconds"].items():   # summed over actors: compute time, not wall time
        total.seconds[k] = total.seconds.get(k, 0.0) + s


def _fit_on_driver(cfg: DictConfig, todo: list[dict], out_dir: Path) -> None:
    """Fit corpus-fitted extractors exactly as the local engine does (same seed, same build
    order, same sample), once, on the driver; actors load the saved states."""
    from extractors import family_class

    names = list(cfg.extract.modalities)
    missing = [m for m in names if family_class(cfg.extractors[m].family).needs_fit
               and not (out_dir / "extractors" / f"{m}.pt").exists()]
    if not missing:
        return
    device = resolve_device("cpu" if cfg.device == "cpu" else "auto")
    extractors = build_extractors(cfg, names, device)
    fit_extractors(extractors, todo, cfg, out_dir, DecodeOptions.from_config(cfg.decode))


def run_extract_ray(cfg: DictConfig, out_dir: str | Path, address: str | None = None,
                    limit: int | None = None) -> ExtractSummary:
    """Extract every configured modality for the videos not done yet, on Ray actors.

    `address`: a running cluster ("auto", "ray://head:10001", "head:6379"); None starts a local
    Ray instance, or uses the one this process already joined with `ray.init`."""
    import ray

    out_dir = Path(out_dir).resolve()   # actors on other nodes open the same absolute path
    catalog, store, names, todo, summary = plan_extract(cfg, out_dir, limit)
    if not todo:
        return summary
    settings = ray_settings(cfg)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    start = time.perf_counter()
    try:
        _fit_on_driver(cfg, todo, out_dir)
        plan = plan_resources(settings, cfg.device, ray.cluster_resources())
        # Subtitles travel as JSON text ("null" for none): an Arrow column of nested lists, or of
        # Nones only, would be typed per batch.
        rows = [{"video_id": v["video_id"], "path": v["path"], "title": v["title"], "need": v["need"],
                 "subtitles": json.dumps(v.get("subtitles"))} for v in todo]
        ds = ray.data.from_items(rows).map_batches(
            ExtractActor, batch_size=plan["batch_videos"], batch_format="numpy",
            fn_constructor_kwargs={"cfg": to_dict(cfg), "out_dir": str(out_dir), "use_gpu": plan["num_gpus"] > 0,
                                   "decode_workers": plan["decode_workers"]},
            compute=ray.data.ActorPoolStrategy(size=plan["actors"]), num_cpus=plan["num_cpus"],
            num_gpus=plan["num_gpus"])
        # Commit each batch as soon as it arrives: what is applied survives a killed driver.
        for row in ds.iter_rows():
            payload = pickle.loads(row["payload"])
            _commit(catalog, store, payload)
            _merge(summary, payload["summary"])
    finally:
        catalog.close()
        if started_ray:
            ray.shutdown()
    finish_summary(summary, todo, start)
    write_json(out_dir / "summaries" / f"extract-ray-{time.strftime('%Y%m%d-%H%M%S')}.json",
               {"summary": asdict(summary), "engine": "ray", "ray": {"settings": settings, "plan": plan},
                "config": to_dict(cfg), "versions": {**versions(), "ray": ray.__version__}})
    return summary
