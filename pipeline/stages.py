"""The scan and extract stages: orchestration only, no model internals.

Extraction overlaps decoding with compute: a pool of decoding processes (pebble, so a video
that hangs or crashes its decoder is killed after `decode.timeout_s` and recorded as failed)
works ahead of the main process, which gathers decoded clips into batches across videos and
runs every extractor on each batch. Only the main process writes the catalog.

Resuming: a video is processed again only for the modalities whose `extract:<m>` status is not
done/missing (failed ones too with `extract.retry_failed`), so a killed run redoes only what was
not committed. Shards are committed every `store.shard_size` videos or `store.flush_seconds`.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from .catalog import Catalog
from .config import resolve_device, to_dict, versions
from .decode import Clip, DecodeError, DecodeOptions, decode_video
from .scan import ScanSummary, scan_folder
from .store import FeatureStore


def open_output(cfg: DictConfig, out_dir: str | Path) -> tuple[Catalog, FeatureStore]:
    out_dir = Path(out_dir)
    catalog = Catalog(out_dir / "catalog.sqlite")
    store = FeatureStore(out_dir, catalog, shard_size=cfg.store.shard_size, dtype=cfg.store.dtype,
                         flush_seconds=cfg.store.get("flush_seconds"))
    return catalog, store


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path


def run_scan(cfg: DictConfig, out_dir: str | Path, videos_dir: str | Path, labels_file=None) -> ScanSummary:
    catalog, _ = open_output(cfg, out_dir)
    try:
        return scan_folder(catalog, videos_dir, labels_file, cfg.scan.extensions, cfg.scan.labels_from_folders)
    finally:
        catalog.close()


# -- decoding ahead of compute ----------------------------------------------------------------
def _decode_task(path: str, options: DecodeOptions, video_id: str, title: str | None,
                 prepare: dict | None = None) -> Clip:
    """Decode one video, then run the extractors' worker steps on it (`Extractor.worker_fn`):
    their results travel back with the clip in clip.meta["prepared"][modality]. A step that
    raises leaves its exception there, so only that modality of that video fails."""
    clip = decode_video(path, options, video_id=video_id, title=title)
    if prepare:
        clip.meta["prepared"] = {m: _run_step(fn, clip) for m, fn in prepare.items()}
    return clip


def _run_step(fn, clip: Clip):
    try:
        return fn(clip)
    except Exception as e:  # the extractor re-raises it for this video (extract_clips records it)
        return e


def worker_steps(extractors: dict) -> dict:
    """{modality: picklable function of a Clip} for the extractors that do CPU work in the decode
    workers, where it overlaps with the networks running in the main process."""
    return {m: fn for m, ext in extractors.items() if (fn := ext.worker_fn()) is not None}


def decode_stream(videos: list[dict], options: DecodeOptions, workers: int, timeout_s: float,
                  window: int = 16, prepare: dict | None = None) -> Iterator[tuple[dict, Clip | DecodeError]]:
    """Yield (video row, Clip or DecodeError) in input order, decoding up to `window` videos
    ahead in `workers` processes. workers=0 decodes in this process (no time limit).
    `prepare` ({modality: fn}, see `worker_steps`) runs on each clip in the worker, for the
    modalities the video still needs (its row's "need"; all when the row has none)."""
    def steps(v):
        return {m: fn for m, fn in (prepare or {}).items() if m in v.get("need", prepare)} or None

    if workers <= 0:
        for v in videos:
            try:
                yield v, _decode_task(v["path"], options, v["video_id"], v["title"], steps(v))
            except DecodeError as e:
                yield v, e
        return

    import pebble
    from concurrent.futures import TimeoutError as FutureTimeout

    with pebble.ProcessPool(max_workers=workers) as pool:
        def submit(v, opts):
            return pool.schedule(_decode_task, args=(v["path"], opts, v["video_id"], v["title"], steps(v)),
                                 timeout=timeout_s)

        pending: deque = deque()
        queue = iter(videos)
        for v in queue:
            pending.append((v, submit(v, options)))
            if len(pending) >= window:
                break
        while pending:
            v, future = pending.popleft()
            try:
                result = future.result()
            except DecodeError as e:
                result = e
            except FutureTimeout:
                result = DecodeError(f"decoding took longer than {timeout_s:g} s (decode.timeout_s); killed")
            except pebble.ProcessExpired as e:
                # The decoder crashed the worker (decord segfaults on some broken files):
                # one more try with PyAV alone, in a fresh worker.
                if options.backend == "auto":
                    try:
                        retry = submit(v, DecodeOptions(**{**asdict(options), "backend": "pyav"}))
                        result = retry.result()
                    except Exception as e2:
                        result = DecodeError(f"decoder crashed (exit code {e.exitcode}); PyAV retry: {e2}")
                else:
                    result = DecodeError(f"decoder crashed (exit code {e.exitcode})")
            except Exception as e:  # anything else raised while decoding is this video's failure
                result = DecodeError(f"{type(e).__name__}: {e}")
            yield v, result
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, submit(nxt, options)))


# -- extraction --------------------------------------------------------------------------------
@dataclass
class ExtractSummary:
    videos_todo: int = 0
    decoded: int = 0
    decode_failed: int = 0
    per_modality: dict = field(default_factory=dict)   # m -> {"done": n, "missing": n, "failed": n}
    seconds: dict = field(default_factory=dict)         # wall, decode_wait, extract:<m>
    videos_per_s: float = 0.0


def _missing_reason(clip: Clip, modality: str) -> str:
    if clip.audio is None and "audio" in modality:
        return "no audio track"
    if not clip.title and "text" in modality:
        return "no title"
    return f"{modality}: no features for this video"


def _fit_extractors(extractors: dict, todo: list[dict], cfg, out_dir: Path, options: DecodeOptions) -> None:
    """Corpus-fitted extractors (codebooks, autoencoders, Doc2Vec) learn from a seeded sample of
    the videos once; their state is saved so a resumed run extracts with the same state."""
    to_fit = {}
    for name, ext in extractors.items():
        if not getattr(ext, "needs_fit", False):
            continue
        state_path = out_dir / "extractors" / f"{name}.pt"
        if state_path.exists():
            ext.load_state_dict(torch.load(state_path, weights_only=False))
        else:
            to_fit[name] = state_path
    if not to_fit:
        return
    n = max(int(cfg.extractors[name].get("fit_videos", 64)) for name in to_fit)
    sample = sorted(todo, key=lambda v: v["video_id"])
    random.Random(cfg.seed).shuffle(sample)
    clips = [c for _, c in decode_stream(sample[:n], options, cfg.decode.workers, cfg.decode.timeout_s,
                                         prepare=worker_steps({m: extractors[m] for m in to_fit}))
             if isinstance(c, Clip)]
    for name, state_path in to_fit.items():
        extractors[name].fit(clips)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save(extractors[name].state_dict(), tmp)
        os.replace(tmp, state_path)


def extract_clips(extractors: dict, clips: list[Clip], need: dict[str, list[str]], writers: dict,
                  summary: ExtractSummary) -> None:
    """Run every extractor on the clips that need it, batched across videos, and hand the
    results to the writers: features, "missing" (no audio track / no title) or "failed" (the
    extractor raised on that video; the others in the batch still get their features)."""
    for m, extractor in extractors.items():
        batch = [c for c in clips if m in need[c.video_id]]
        if not batch:
            continue
        t0 = time.perf_counter()
        try:
            results = list(zip(batch, extractor.extract(batch)))
        except Exception:
            results = []
            for c in batch:
                try:
                    results.append((c, extractor.extract([c])[0]))
                except Exception as e:
                    results.append((c, e))
        summary.seconds[f"extract:{m}"] = summary.seconds.get(f"extract:{m}", 0.0) + time.perf_counter() - t0
        counts = summary.per_modality.setdefault(m, {"done": 0, "missing": 0, "failed": 0})
        for c, feats in results:
            if isinstance(feats, Exception):
                writers[m].mark_failed(c.video_id, f"{type(feats).__name__}: {feats}")
                counts["failed"] += 1
            elif feats is None:
                writers[m].mark_missing(c.video_id, _missing_reason(c, m))
                counts["missing"] += 1
            else:
                layouts = {"pooled": feats.pooled}
                if feats.sequence is not None:
                    layouts["sequence"] = feats.sequence
                writers[m].add(c.video_id, **layouts)
                counts["done"] += 1


def videos_to_extract(catalog: Catalog, modalities: list[str], retry_failed: bool) -> list[dict]:
    finished = {"done", "missing"} | (set() if retry_failed else {"failed"})
    decode = catalog.stage_status("decode")
    status = {m: catalog.stage_status(f"extract:{m}") for m in modalities}
    todo = []
    for v in catalog.videos():
        if not v["path"] or (decode.get(v["video_id"]) == "failed" and not retry_failed):
            continue
        need = [m for m in modalities if status[m].get(v["video_id"]) not in finished]
        if need:
            todo.append({**v, "need": need})
    return todo


def build_extractors(cfg: DictConfig, names: list[str], device: str) -> dict:
    """Every engine builds its extractors here, in the same order with the run's seed, so random
    weights, codebooks, DAE and Doc2Vec come out the same in the local and the Ray engine."""
    from extractors import build_extractor

    torch.manual_seed(cfg.seed)
    return {m: build_extractor(m, OmegaConf.merge(cfg.extractors[m], {"seed": cfg.seed}), device) for m in names}


def run_extract(cfg: DictConfig, out_dir: str | Path, progress: bool = True, limit: int | None = None) -> ExtractSummary:
    out_dir = Path(out_dir)
    catalog, store = open_output(cfg, out_dir)
    store.collect_garbage()
    names = list(cfg.extract.modalities)
    todo = videos_to_extract(catalog, names, cfg.extract.retry_failed)[:limit]
    summary = ExtractSummary(videos_todo=len(todo), per_modality={m: {"done": 0, "missing": 0, "failed": 0} for m in names})
    if not todo:
        catalog.close()
        return summary
    device = resolve_device(cfg.device)
    extractors = build_extractors(cfg, names, device)
    options = DecodeOptions.from_config(cfg.decode)
    _fit_extractors(extractors, todo, cfg, out_dir, options)

    run_meta = {"decode": to_dict(cfg.decode), "versions": versions(), "device": device}
    # Writers learn their layouts and dims from the first features they get; statuses of
    # videos lacking the modality are committed with the shards, in the same transaction.
    writers = {m: store.writer(m, meta={"extractor": extractors[m].metadata(), "config": to_dict(cfg.extractors[m]),
                                        **run_meta}, stage=f"extract:{m}") for m in names}

    def run_batch(clips: list[Clip], need: dict[str, list[str]]) -> None:
        catalog.record_decodes([(c.video_id, c.duration, c.fps, c.width, c.height, c.has_audio) for c in clips])
        extract_clips(extractors, clips, need, writers, summary)

    from .progress import video_progress

    start = time.perf_counter()
    need = {v["video_id"]: v["need"] for v in todo}
    batch: list[Clip] = []
    wait = 0.0
    try:
        with video_progress("extract", len(todo), enabled=progress) as advance:
            t_wait = time.perf_counter()
            for v, result in decode_stream(todo, options, cfg.decode.workers, cfg.decode.timeout_s,
                                           window=max(8, 2 * cfg.extract.batch_videos),
                                           prepare=worker_steps(extractors)):
                wait += time.perf_counter() - t_wait
                if isinstance(result, DecodeError):
                    catalog.record_decodes(failed=[(v["video_id"], str(result))])
                    summary.decode_failed += 1
                    advance(1)
                else:
                    batch.append(result)
                    summary.decoded += 1
                    if len(batch) >= cfg.extract.batch_videos:
                        run_batch(batch, need)
                        advance(len(batch))
                        batch = []
                t_wait = time.perf_counter()
            if batch:
                run_batch(batch, need)
                advance(len(batch))
    finally:
        for w in writers.values():
            w.flush()
        catalog.close()
    summary.seconds["decode_wait"] = wait
    summary.seconds["wall"] = time.perf_counter() - start
    summary.videos_per_s = len(todo) / max(summary.seconds["wall"], 1e-9)
    write_json(out_dir / "summaries" / f"extract-{time.strftime('%Y%m%d-%H%M%S')}.json",
               {"summary": asdict(summary), "config": to_dict(cfg), "versions": versions()})
    return summary
