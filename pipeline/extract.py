"""The extract stage, shared by both engines (local here, Ray in `ray_engine.py`).

Extraction overlaps decoding with compute: a pool of decoding processes (pebble, so a video
that hangs or crashes its decoder is killed after `decode.timeout_s` and recorded as failed)
works ahead of the main process, which gathers decoded clips into batches across videos and
runs every extractor on each batch. Only the main process writes the catalog.

    videos_to_extract  -> rows {video_id, path, title, need}      what a resumed run still needs
    build_extractors   -> {modality: Extractor}                   same seed and order in every engine
    fit_extractors     -> corpus-fitted states (codebooks, DAE, Doc2Vec) fitted once, saved
    open_writers       -> {modality: ShardWriter} with the run's metadata
    extract_stream     -> decode ahead, batch across videos, extract, hand results to the writers

Resuming: a video is processed again only for the modalities whose `extract:<m>` status is not
done/missing (failed ones too with `extract.retry_failed`), so a killed run redoes only what was
not committed. Shards are committed every `store.shard_size` videos or `store.flush_seconds`.
"""
from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from omegaconf import DictConfig

from .catalog import Catalog
from .config import resolve_device, to_dict, versions
from .decode import Clip, DecodeError, DecodeOptions, decode_video
from .views import collect_views
from .io import save_torch, write_json
from .output import open_output


# -- decoding ahead of compute ----------------------------------------------------------------
def _decode_task(path: str, options: DecodeOptions, video_id: str, title: str | None,
                 prepare: dict | None = None, subtitles: list | None = None) -> Clip:
    """Decode one video, then run the extractors' worker steps on it (`Extractor.worker_fn`):
    their results travel back with the clip in clip.meta["prepared"][modality]. A step that
    raises leaves its exception there, so only that modality of that video fails."""
    clip = decode_video(path, options, video_id=video_id, title=title, subtitles=subtitles)
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


def _pool_result(future, v: dict, options: DecodeOptions, timeout_s: float, submit) -> Clip | DecodeError:
    """The clip of one pool future, or the DecodeError that says why there is none."""
    import pebble
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        return future.result()
    except DecodeError as e:
        return e
    except FutureTimeout:
        return DecodeError(f"decoding took longer than {timeout_s:g} s (decode.timeout_s); killed")
    except pebble.ProcessExpired as e:
        # The decoder crashed the worker (decord segfaults on some broken files):
        # one more try with PyAV alone, in a fresh worker.
        if options.backend != "auto":
            return DecodeError(f"decoder crashed (exit code {e.exitcode})")
        try:
            return submit(v, DecodeOptions(**{**asdict(options), "backend": "pyav"})).result()
        except Exception as e2:
            return DecodeError(f"decoder crashed (exit code {e.exitcode}); PyAV retry: {e2}")
    except Exception as e:  # anything else raised while decoding is this video's failure
        return DecodeError(f"{type(e).__name__}: {e}")


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
                yield v, _decode_task(v["path"], options, v["video_id"], v["title"], steps(v), v.get("subtitles"))
            except DecodeError as e:
                yield v, e
        return

    import pebble

    with pebble.ProcessPool(max_workers=workers) as pool:
        def submit(v, opts):
            return pool.schedule(_decode_task, args=(v["path"], opts, v["video_id"], v["title"], steps(v),
                                                     v.get("subtitles")),
                                 timeout=timeout_s)

        pending: deque = deque()
        queue = iter(videos)
        for v in queue:
            pending.append((v, submit(v, options)))
            if len(pending) >= window:
                break
        while pending:
            v, future = pending.popleft()
            yield v, _pool_result(future, v, options, timeout_s, submit)
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, submit(nxt, options)))


def decode_in_pool(pool, v: dict, options: DecodeOptions, timeout_s: float, prepare: dict | None = None
                   ) -> Clip | DecodeError:
    """Decode one video row ({"path", "video_id", "title"}) in a pebble pool, with the same time
    limit and crash retry as `decode_stream` (the service decodes request by request)."""
    def submit(row, opts):
        return pool.schedule(_decode_task, args=(row["path"], opts, row["video_id"], row.get("title"), prepare,
                                                 row.get("subtitles")), timeout=timeout_s)

    return _pool_result(submit(v, options), v, options, timeout_s, submit)


# -- extraction --------------------------------------------------------------------------------
@dataclass
class ExtractSummary:
    videos_todo: int = 0
    decoded: int = 0
    decode_failed: int = 0
    per_modality: dict = field(default_factory=dict)   # m -> {"done": n, "missing": n, "failed": n}
    seconds: dict = field(default_factory=dict)         # wall, decode_wait, extract:<m>
    videos_per_s: float = 0.0


def decode_facts(clip: Clip) -> tuple:
    """What the catalog records about a decoded video (`Catalog.record_decodes`)."""
    return (clip.video_id, clip.duration, clip.fps, clip.width, clip.height, int(clip.has_audio), clip.warnings)


def build_extractors(cfg: DictConfig, names: list[str], device: str) -> dict:
    """Every engine builds its extractors here, in the same order with the run's seed, so random
    weights, codebooks, DAE and Doc2Vec come out the same in the local and the Ray engine."""
    import torch

    from extractors import build_extractor

    torch.manual_seed(cfg.seed)
    return {m: build_extractor(m, cfg.extractors[m], device, seed=cfg.seed) for m in names}


def _state_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / "extractors" / f"{name}.pt"


def load_fitted(extractors: dict, out_dir: Path, required: bool = False) -> list[str]:
    """Load the saved states of corpus-fitted extractors; returns the names still unfitted.
    `required`: a missing state is an error (Ray actors never fit: every actor must extract
    with the state the driver fitted)."""
    import torch

    unfitted = []
    for name, ext in extractors.items():
        if not getattr(ext, "needs_fit", False):
            continue
        path = _state_path(out_dir, name)
        if path.exists():
            ext.load_state_dict(torch.load(path, weights_only=False))
        elif required:
            raise FileNotFoundError(f"{path} is missing on this node: OUT must be on storage shared by "
                                    "the driver and every Ray worker")
        else:
            unfitted.append(name)
    return unfitted


def fit_extractors(extractors: dict, todo: list[dict], cfg, out_dir: Path, options: DecodeOptions) -> None:
    """Corpus-fitted extractors (codebooks, autoencoders, Doc2Vec) learn from a seeded sample of
    the videos once (`extractors.<m>.fit_videos`); their state is saved so a resumed run
    extracts with the same state."""
    to_fit = load_fitted(extractors, out_dir)
    if not to_fit:
        return
    n = max(int(cfg.extractors[name].fit_videos) for name in to_fit)   # declared in each fitted extractor's YAML
    sample = sorted(todo, key=lambda v: v["video_id"])
    random.Random(cfg.seed).shuffle(sample)
    clips = [c for _, c in decode_stream(sample[:n], options, cfg.decode.workers, cfg.decode.timeout_s,
                                         prepare=worker_steps({m: extractors[m] for m in to_fit}))
             if isinstance(c, Clip)]
    for name in to_fit:
        extractors[name].fit(clips)
        save_torch(_state_path(out_dir, name), extractors[name].state_dict())


def extract_one_by_one(extractor, batch: list[Clip]) -> list[tuple]:
    """After a batch raised: each video alone, so one bad video fails alone."""
    results = []
    for c in batch:
        try:
            results.append((c, extractor.extract([c])[0]))
        except Exception as e:
            results.append((c, e))
    return results


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
            results = extract_one_by_one(extractor, batch)
        summary.seconds[f"extract:{m}"] = summary.seconds.get(f"extract:{m}", 0.0) + time.perf_counter() - t0
        counts = summary.per_modality.setdefault(m, {"done": 0, "missing": 0, "failed": 0})
        for c, feats in results:
            if isinstance(feats, Exception):
                writers[m].mark_failed(c.video_id, f"{type(feats).__name__}: {feats}")
                counts["failed"] += 1
            elif feats is None:
                writers[m].mark_missing(c.video_id, extractor.missing_reason(c))
                counts["missing"] += 1
            else:
                layouts = {"pooled": feats.pooled}
                if feats.sequence is not None:
                    layouts["sequence"] = feats.sequence
                writers[m].add(c.video_id, times=feats.times if feats.sequence is not None else None,
                               segments=feats.segments, info=feats.info, **layouts)
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


def open_writers(store, extractors: dict, cfg: DictConfig, device: str, **extra_meta) -> dict:
    """One writer per modality, recording the extractor, its config, the decode settings and the
    versions. Writers learn their layouts and dims from the first features they get; statuses of
    videos lacking the modality are committed with the shards, in the same transaction."""
    run_meta = {"decode": to_dict(cfg.decode), "versions": versions(), "device": device, **extra_meta}
    return {m: store.writer(m, meta={"extractor": ext.metadata(), "config": to_dict(cfg.extractors[m]), **run_meta},
                            stage=f"extract:{m}") for m, ext in extractors.items()}


def extract_stream(rows: list[dict], extractors: dict, writers: dict, options: DecodeOptions, cfg: DictConfig,
                   summary: ExtractSummary, workers: int, on_decoded: Callable[[list[tuple], list[tuple]], None],
                   advance: Callable[[int], None] = lambda n: None) -> float:
    """Decode `rows` ahead, gather clips into batches of `extract.batch_videos` across videos and
    extract each batch. `on_decoded(facts, failed)` records the decode outcomes (before the
    batch's features, as the catalog expects). Returns the seconds spent waiting on decoders."""
    need = {v["video_id"]: v["need"] for v in rows}
    step = int(cfg.extract.batch_videos)
    batch: list[Clip] = []
    wait, t_wait = 0.0, time.perf_counter()

    def run_batch() -> None:
        on_decoded([decode_facts(c) for c in batch], [])
        extract_clips(extractors, batch, need, writers, summary)
        advance(len(batch))
        batch.clear()

    for v, result in decode_stream(rows, options, workers, cfg.decode.timeout_s, window=max(8, 2 * step),
                                   prepare=worker_steps(extractors)):
        wait += time.perf_counter() - t_wait
        if isinstance(result, DecodeError):
            on_decoded([], [(v["video_id"], str(result))])
            summary.decode_failed += 1
            advance(1)
        else:
            batch.append(result)
            summary.decoded += 1
            if len(batch) >= step:
                run_batch()
        t_wait = time.perf_counter()
    if batch:
        run_batch()
    return wait


def new_summary(todo: list[dict], names: list[str]) -> ExtractSummary:
    return ExtractSummary(videos_todo=len(todo), per_modality={m: {"done": 0, "missing": 0, "failed": 0} for m in names})


def finish_summary(summary: ExtractSummary, todo: list[dict], start: float) -> None:
    summary.seconds["wall"] = time.perf_counter() - start
    summary.videos_per_s = len(todo) / max(summary.seconds["wall"], 1e-9)


def plan_extract(cfg: DictConfig, out_dir: Path, limit: int | None = None):
    """(catalog, store, modalities, videos to do, summary) for an extract run; leftovers of a
    killed run are removed first. With nothing to do the catalog is already closed."""
    catalog, store = open_output(cfg, out_dir)
    store.collect_garbage()
    names = list(cfg.extract.modalities)
    todo = videos_to_extract(catalog, names, cfg.extract.retry_failed)[:limit]
    if not todo:
        catalog.close()
    return catalog, store, names, todo, new_summary(todo, names)


def run_extract(cfg: DictConfig, out_dir: str | Path, progress: bool = True, limit: int | None = None) -> ExtractSummary:
    """Decode and extract every configured modality (`extract.modalities`) for the videos that
    still need it, in this process and its decoding pool; OUT/summaries/extract-*.json."""
    from .progress import video_progress

    out_dir = Path(out_dir)
    catalog, store, names, todo, summary = plan_extract(cfg, out_dir, limit)
    if not todo:
        return summary
    device = resolve_device(cfg.device)
    extractors = build_extractors(cfg, names, device)
    options = DecodeOptions.from_config(cfg.decode, views=collect_views(extractors))
    fit_extractors(extractors, todo, cfg, out_dir, options)
    writers = open_writers(store, extractors, cfg, device)
    start = time.perf_counter()
    try:
        with video_progress("extract", len(todo), enabled=progress) as advance:
            summary.seconds["decode_wait"] = extract_stream(
                todo, extractors, writers, options, cfg, summary, cfg.decode.workers,
                on_decoded=lambda facts, failed: catalog.record_decodes(facts, failed), advance=advance)
    finally:
        for w in writers.values():
            w.flush()
        catalog.close()
    finish_summary(summary, todo, start)
    write_json(out_dir / "summaries" / f"extract-{time.strftime('%Y%m%d-%H%M%S')}.json",
               {"summary": asdict(summary), "config": to_dict(cfg), "versions": versions()})
    return summary
