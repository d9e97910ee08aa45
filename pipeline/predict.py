"""Predict on new videos without touching the training data.

    predict_videos(cfg, OUT, [OUT/runs/nmcl], NEW, output)   # run_pipeline.py predict --run nmcl --videos NEW
    p = Predictor(cfg, OUT, [OUT/runs/nmcl]); p.predict_clips(clips)   # in memory (a service)

Isolation: the training folder OUT is only read (its catalog opened `mode=ro`, its fitted
extractor states in OUT/extractors/*.pt loaded, never rewritten). New videos live in their own
output folder, OUT/predict/<folder name>-<hash of its path>/, with their own catalog, store and
lock, so a new `Train/Excited/14.mp4` is a different video from the training one of the same
relative path: no training row, label, split or feature changes, and new videos never join a
training pool (they carry no labels). Rerunning on the same folder resumes there.

Recorded settings: features must be made the way the model's training features were, not the
way today's config says. Every store modality records the extractor's resolved config (with its
seed) and the decode config of the run that extracted it; the `Predictor` builds its extractors
and decoding from those, and checks the dims against the checkpoints. A modality that was
imported rather than extracted (YouTube-8M) cannot be computed for new videos: a one-line error.
A completed input (`visual@completed`) is fed the new video's raw features (completion needs
the training matrix; the present / observed masks say what is there).

No prediction from nothing: a video that cannot be decoded, or for which none of the model's
inputs could be extracted, gets a record with "error" and no labels.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .catalog import Catalog, OutputLock
from .config import resolve_device, to_dict, versions
from .errors import DataError, UsageError
from .io import atomic_write, write_json
from .store import FeatureStore

RUNTIME_DECODE_KEYS = ("workers", "timeout_s")  # how to decode, not what: taken from today's config


def base_name(modality: str) -> str:
    """`visual@completed` -> `visual`: what is extracted for a new video."""
    return modality.split("@", 1)[0]


def prediction_dir(out_dir: str | Path, videos_dir: str | Path) -> Path:
    """OUT/predict/<folder name>-<8 hex of its absolute path>: one isolated folder per source."""
    src = Path(videos_dir).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", src.name) or "videos"
    return Path(out_dir) / "predict" / f"{name}-{hashlib.sha256(str(src).encode()).hexdigest()[:8]}"


def recorded_settings(store: FeatureStore, modalities: Sequence[str]) -> dict[str, dict]:
    """{m: {"extractor": resolved extractor config, "decode": decode config}} as recorded in the
    store's modality metadata when the training features were extracted."""
    infos = store.modalities()
    out = {}
    for m in modalities:
        if m not in infos:
            raise DataError(f"the model's input {m!r} is not in the training store; it has {sorted(infos)}")
        meta = infos[m].meta
        extractor = (meta.get("extractor") or {}).get("config")
        if extractor is None or "decode" not in meta:
            raise DataError(f"modality {m!r} was imported ({meta.get('source', 'no extractor recorded')}), not "
                            "extracted: predict --videos cannot compute it for new videos")
        out[m] = {"extractor": extractor, "decode": meta["decode"], "dims": infos[m].layouts}
    return out


def _decode_key(decode: dict) -> str:
    return json.dumps({k: v for k, v in decode.items() if k not in RUNTIME_DECODE_KEYS}, sort_keys=True)


class Predictor:
    """The run's models and the extractors of its inputs, built once from the recorded settings;
    `predict_clips` scores decoded clips in memory, `score_store` the videos of a store.

    Features are rounded to the store's dtype (float16) before scoring, exactly as the training
    features were, so a clip scored in memory and the same video scored from a store agree."""

    def __init__(self, cfg, out_dir: str | Path, run_dirs: Sequence[str | Path], device: str | None = None):
        from .checkpoint import checkpoint_path, load_model

        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.device = resolve_device(device or cfg.device)
        self.run_dirs = [Path(r) for r in run_dirs]
        self.loaded = [load_model(checkpoint_path(r), self.device) for r in self.run_dirs]
        first = self.loaded[0][1]
        for r, (_, ckpt) in zip(self.run_dirs, self.loaded):
            if ckpt["class_names"] != first["class_names"] or ckpt["multilabel"] != first["multilabel"]:
                raise UsageError(f"{r} was trained on other classes than {self.run_dirs[0]}: they cannot be ensembled")
        self.class_names, self.multilabel = first["class_names"], first["multilabel"]
        names = [n for _, c in self.loaded for layout in ("pooled", "sequence") for n in c["inputs"][layout]]
        self.modalities = list(dict.fromkeys(base_name(n) for n in names))
        catalog = Catalog(self.out_dir / "catalog.sqlite", readonly=True)
        try:
            self.settings = recorded_settings(FeatureStore(self.out_dir, catalog), self.modalities)
            dtypes = {s["dtype"] for s in catalog.shard_rows() if s["modality"] in self.modalities and s["dtype"]}
            self.dtype = np.dtype(dtypes.pop() if len(dtypes) == 1 else cfg.store.dtype)  # the training features'
        finally:
            catalog.close()
        self._check_dims()
        self.extractors = self._build_extractors()
        self._groups: list[tuple] | None = None

    def _check_dims(self) -> None:
        for r, (_, ckpt) in zip(self.run_dirs, self.loaded):
            for layout, dims in ckpt["dims"].items():
                for n, d in dims.items():
                    have = self.settings[base_name(n)]["dims"].get(layout)
                    if have != d:
                        raise DataError(f"{r} was trained on {n}/{layout} with dim {d}, the training store "
                                        f"records {have}: the store changed after training")

    def _build_extractors(self) -> dict:
        """The recorded extractor configs; fitted states from OUT/extractors/<m>.pt (read only)."""
        from extractors import build_extractor

        torch.manual_seed(int(self.cfg.seed))
        extractors = {}
        for m in self.modalities:
            ext = build_extractor(m, self.settings[m]["extractor"], self.device)
            if getattr(ext, "needs_fit", False):
                state = self.out_dir / "extractors" / f"{m}.pt"
                if not state.exists():
                    raise DataError(f"{state} is missing: {m} was fitted on the training corpus and its state is "
                                    "needed to extract new videos the same way")
                ext.load_state_dict(torch.load(state, map_location="cpu", weights_only=False))
            extractors[m] = ext
        return extractors

    def decode_groups(self) -> list[tuple]:
        """[(DecodeOptions, [modality, ...])]: one decode pass per distinct recorded decode config
        (normally one), with the views of its extractors; the same list every call."""
        if self._groups is None:
            from .decode import DecodeOptions
            from .views import collect_views

            groups: dict[str, list[str]] = {}
            for m in self.modalities:
                groups.setdefault(_decode_key(self.settings[m]["decode"]), []).append(m)
            self._groups = [(DecodeOptions.from_config(self.settings[ms[0]]["decode"],
                                                       collect_views({m: self.extractors[m] for m in ms})), ms)
                            for ms in groups.values()]
        return self._groups

    # -- scoring ---------------------------------------------------------------------------
    def extract(self, clips: list) -> dict[str, dict]:
        """{video_id: {modality: Features | None (missing) | Exception (failed)}}. A video is one
        Clip, or a list of Clips, one per `decode_groups()` entry (in that order), when the run's
        modalities were extracted with different decode settings."""
        from .extract import extract_one_by_one

        groups = [names for _, names in self.decode_groups()]
        per_video = [c if isinstance(c, (list, tuple)) else [c] * len(groups) for c in clips]
        out: dict[str, dict] = {v[0].video_id: {} for v in per_video}
        for g, names in enumerate(groups):
            batch = [v[g] for v in per_video]
            for m in names:
                try:
                    results = list(zip(batch, self.extractors[m].extract(batch)))
                except Exception:
                    results = extract_one_by_one(self.extractors[m], batch)
                for c, feats in results:
                    out[c.video_id][m] = feats
        return out

    def predict_clips(self, clips: list, top_k: int | None = 5, threshold: float | None = None) -> list[dict]:
        """Records for decoded clips (pipeline.decode.Clip; a list of Clips per video, one per
        decode group, see `extract`), scored in memory: nothing is written."""
        features = self.extract(clips)
        clips = [c[0] if isinstance(c, (list, tuple)) else c for c in clips]
        items, errors = [], {}
        for c in clips:
            feats = features[c.video_id]
            if not any(_usable(f) for f in feats.values()):
                errors[c.video_id] = "none of the model's inputs could be extracted: " + _reasons(feats)
            else:
                items.append(self._item(c.video_id, {m: f.__dict__ if _usable(f) else None for m, f in feats.items()}))
        scores = dict(zip([it["video_id"] for it in items], self.score_items(items))) if items else {}
        return [self.record(c.video_id, scores.get(c.video_id), top_k, threshold, error=errors.get(c.video_id),
                            missing=[m for m, f in features[c.video_id].items() if not _usable(f)])
                for c in clips]

    def _item(self, video_id: str, feats: dict[str, dict | None]) -> dict:
        """A FeatureDataset-style item from features {m: {"pooled", "sequence"} | None}."""
        item = {"video_id": video_id, "pooled": {}, "sequence": {}, "present": {}, "observed": {}}
        for _, ckpt in self.loaded:
            for layout in ("pooled", "sequence"):
                for n in ckpt["inputs"][layout]:
                    f, dim = feats.get(base_name(n)), ckpt["dims"][layout][n]
                    value = None if f is None else f.get(layout)
                    if value is None:
                        value = np.zeros(dim if layout == "pooled" else (0, dim), np.float32)
                    item[layout][n] = torch.from_numpy(np.asarray(value).astype(self.dtype).astype(np.float32))
                    item["present"][n] = item["observed"][n] = f is not None
        return item

    @torch.no_grad()
    def score_items(self, items: list[dict]) -> np.ndarray:
        """Mean probability over the run's models [N, C] (one model: its probabilities)."""
        from .dataset import collate_batch
        from .evaluate import predict_scores

        per_run = []
        for model, ckpt in self.loaded:
            keep = {layout: set(ckpt["inputs"][layout]) for layout in ("pooled", "sequence")}
            own = [{**it, "pooled": {n: v for n, v in it["pooled"].items() if n in keep["pooled"]},
                    "sequence": {n: v for n, v in it["sequence"].items() if n in keep["sequence"]}} for it in items]
            loader = torch.utils.data.DataLoader(own, batch_size=int(self.cfg.train.eval_batch_size),
                                                 collate_fn=collate_batch)
            per_run.append(predict_scores(model, loader, self.device, self.multilabel, bool(self.cfg.train.amp))[1])
        return np.mean(per_run, 0) if len(per_run) > 1 else per_run[0]

    def score_store(self, store: FeatureStore, video_ids: Sequence[str]) -> np.ndarray:
        seq = {m: store.locations(m, "sequence") for m in self.modalities if _has(store, m, "sequence")}
        pooled = {m: store.read_pooled(m, video_ids) for m in self.modalities if _has(store, m, "pooled")}
        items = []
        for i, vid in enumerate(video_ids):
            feats = {}
            for m in self.modalities:
                f = {}
                if m in pooled and pooled[m][2][i]:
                    f["pooled"] = pooled[m][1][i]
                if m in seq and vid in seq[m]:
                    f["sequence"] = store.sequence_at(seq[m][vid])
                feats[m] = f or None
            items.append(self._item(vid, feats))
        return self.score_items(items)

    def record(self, video_id: str, scores: np.ndarray | None, top_k: int | None, threshold: float | None,
               error: str | None = None, missing: Sequence[str] = (), **extra) -> dict:
        """{"video_id", "labels": [[label, prob], ...] best first, "missing": [...]} or, when the
        video could not be scored, {"video_id", "error", "labels": []}."""
        if error is not None or scores is None:
            return {"video_id": video_id, **extra, "error": error or "not scored", "labels": []}
        order = np.argsort(-scores, kind="stable")
        if threshold is not None:
            order = order[scores[order] >= threshold]
        if top_k is not None:
            order = order[:top_k]
        rec = {"video_id": video_id, **extra, "labels": [[self.class_names[j], round(float(scores[j]), 6)] for j in order]}
        if missing:
            rec["missing"] = sorted(missing)
        return rec


def _usable(f) -> bool:
    return f is not None and not isinstance(f, Exception)


def _reasons(feats: dict) -> str:
    return "; ".join(f"{m}: {'failed: ' + str(f) if isinstance(f, Exception) else 'missing'}" for m, f in feats.items())


def _has(store: FeatureStore, modality: str, layout: str) -> bool:
    info = store.modalities().get(modality)
    return info is not None and layout in info.layouts


# -- new videos from a folder ------------------------------------------------------------------
def predict_videos(cfg, out_dir: str | Path, run_dirs: Sequence[str | Path], videos_dir: str | Path,
                   output: str | Path | None = None, top_k: int | None = 5, threshold: float | None = None,
                   progress: bool = True) -> Path:
    """Scan, decode and extract `videos_dir` into its own folder (`prediction_dir`) with the
    run's recorded settings, score every video there and write one JSONL record per video
    (default: that folder's predictions.jsonl). The training folder is only read."""
    from .scan import scan_folder

    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise UsageError(f"--videos folder not found: {videos_dir}")
    pred_dir = prediction_dir(out_dir, videos_dir)
    predictor = Predictor(cfg, out_dir, run_dirs)
    try:
        lock = OutputLock(pred_dir).__enter__()
    except RuntimeError as e:
        raise UsageError(f"refusing to run: {e}") from None
    try:
        catalog = Catalog(pred_dir / "catalog.sqlite")
        try:
            store = FeatureStore(pred_dir, catalog, shard_size=cfg.store.shard_size, dtype=str(predictor.dtype),
                                 flush_seconds=cfg.store.flush_seconds)
            scanned = scan_folder(catalog, videos_dir, None, cfg.scan.extensions, labels_from_folders=False)
            catalog.set_meta("prediction", {"videos": str(videos_dir.resolve()), "training_output": str(out_dir.resolve()),
                                            "runs": [str(r) for r in predictor.run_dirs]})
            store.collect_garbage()
            _extract_new(predictor, catalog, store, progress)
            records = _records(predictor, catalog, store, top_k, threshold)
        finally:
            catalog.close()
    finally:
        lock.__exit__(None, None, None)
    output = Path(output) if output else pred_dir / "predictions.jsonl"
    with atomic_write(output, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    write_json(pred_dir / "predict-summary.json", {
        "videos": str(videos_dir.resolve()), "found": scanned.found, "scored": sum("error" not in r for r in records),
        "errors": sum("error" in r for r in records), "output": str(output), "runs": [str(r) for r in predictor.run_dirs],
        "settings": predictor.settings, "config": to_dict(cfg), "versions": versions()})
    return output


def _extract_new(predictor: Predictor, catalog: Catalog, store: FeatureStore, progress: bool) -> None:
    """The extract stage on the prediction folder, with the predictor's (recorded) extractors:
    resumable like `extract` (videos whose modalities are done are skipped)."""
    from .extract import extract_stream, new_summary, videos_to_extract
    from .progress import video_progress

    cfg = predictor.cfg
    for options, names in predictor.decode_groups():
        todo = videos_to_extract(catalog, names, retry_failed=False)
        if not todo:
            continue
        extractors = {m: predictor.extractors[m] for m in names}
        writers = {m: store.writer(m, meta={"extractor": ext.metadata(), "config": predictor.settings[m]["extractor"],
                                            "decode": predictor.settings[m]["decode"], "versions": versions(),
                                            "recorded_from": str(predictor.out_dir)}, stage=f"extract:{m}")
                   for m, ext in extractors.items()}
        summary = new_summary(todo, names)
        try:
            with video_progress("predict: extract", len(todo), enabled=progress) as advance:
                extract_stream(todo, extractors, writers, options, cfg, summary, int(cfg.decode.workers),
                               on_decoded=lambda facts, failed: catalog.record_decodes(facts, failed), advance=advance)
        finally:
            for w in writers.values():
                w.flush()


def _records(predictor: Predictor, catalog: Catalog, store: FeatureStore, top_k, threshold) -> list[dict]:
    """One record per live video of the prediction folder: labels, or the reason it has none."""
    videos = catalog.videos()
    decode = catalog.stage_reasons("decode")
    status = {m: catalog.stage_reasons(f"extract:{m}") for m in predictor.modalities}
    done = {v["video_id"]: [m for m in predictor.modalities if status[m].get(v["video_id"], ("pending",))[0] == "done"]
            for v in videos}
    scorable = [v["video_id"] for v in videos if done[v["video_id"]] and decode.get(v["video_id"], ("",))[0] != "failed"]
    scores = dict(zip(scorable, predictor.score_store(store, scorable))) if scorable else {}
    records = []
    for v in videos:
        vid, error = v["video_id"], None
        if decode.get(vid, ("",))[0] == "failed":
            error = f"cannot be decoded: {decode[vid][1]}"
        elif vid not in scores:
            error = "none of the model's inputs could be extracted: " + "; ".join(
                f"{m}: {status[m].get(vid, ('pending', None))[0]}"
                + (f" ({status[m][vid][1]})" if status[m].get(vid, (None, None))[1] else "") for m in predictor.modalities)
        missing = [m for m in predictor.modalities if m not in done[vid]]
        records.append(predictor.record(vid, scores.get(vid), top_k, threshold, error=error, missing=missing,
                                        path=v["path"]))
    return records
