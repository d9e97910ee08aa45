"""The Python API: one object per output folder, one method per stage, the same functions the
CLI runs (so a folder made here continues on the command line and the other way round).

    from pipeline.api import Pipeline

    p = Pipeline("out", overrides=["decode.num_frames=8"])     # configs/ + --config + key=value
    p.scan("videos/", labels="labels.tsv")
    p.extract()
    p.complete()
    p.train("nmcl")                                            # OUT/runs/nmcl
    p.evaluate("nmcl", split="val")                            # {"accuracy": ..., ...}
    p.predict("nmcl")                                          # [{"video_id", "labels": [[l, p]]}]
    f = p.features("visual")                                   # FeatureSet: ids, values, present
    x, mask = f.torch()

Every writing method holds the output folder's lock for its duration, as the CLI does.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .catalog import Catalog, OutputLock
from .config import load_config


@dataclass
class FeatureSet:
    """One modality of the store, aligned to `video_ids`.

    pooled:   values (N, D) float32, zeros where `present` is False
    sequence: values (N, Tmax, D) float32 zero-padded, `lengths` (N,) real steps (0 = missing),
              `times` (N, Tmax, 2) start/end seconds (NaN where padded or not recorded)
    """

    modality: str
    layout: str
    video_ids: list[str]
    values: np.ndarray
    present: np.ndarray
    labels: list[list[str]]
    lengths: np.ndarray | None = None
    times: np.ndarray | None = None

    def torch(self):
        """(values, present) as torch tensors (float32, bool)."""
        import torch

        return torch.from_numpy(self.values), torch.from_numpy(self.present)

    def __len__(self) -> int:
        return len(self.video_ids)


class Pipeline:
    """Stages on one output folder. `config`: a YAML merged over configs/ (as --config);
    `overrides`: key=value strings; `device`: auto | cpu | cuda."""

    def __init__(self, out: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
                 device: str | None = None, progress: bool = False):
        self.out = Path(out)
        extra = ([f"device={device}"] if device else []) + ([] if progress else ["train.progress=false"])
        self.cfg = load_config(config, list(overrides) + extra)
        self.progress = progress

    def __repr__(self) -> str:
        return f"Pipeline({str(self.out)!r})"

    @contextmanager
    def _locked(self):
        with OutputLock(self.out):
            yield

    # -- stages --------------------------------------------------------------------------------
    def scan(self, videos: str | Path, labels: str | Path | None = None):
        """Index `videos` (+ a labels/titles sidecar) into OUT/catalog.sqlite; a ScanSummary."""
        from .scan import run_scan

        with self._locked():
            return run_scan(self.cfg, self.out, Path(videos), Path(labels) if labels else None)

    def extract(self, limit: int | None = None):
        """Decode + every configured modality for videos not done yet (resumable); an ExtractSummary."""
        from .extract import run_extract

        with self._locked():
            return run_extract(self.cfg, self.out, progress=self.progress, limit=limit)

    def complete(self) -> dict:
        """Low-rank completion of missing modalities (stored as "<modality>@completed")."""
        from .complete import run_complete

        with self._locked():
            return run_complete(self.cfg, self.out, progress=self.progress)

    def train(self, model: str = "nmcl", run: str | None = None, folds: int = 1, resume: str | Path | None = None) -> dict:
        """Train `model` (configs/models/<model>.yaml) into OUT/runs/<run or model>; metrics.json's content.
        `folds` > 1: k-fold cross-validation instead (its summary)."""
        with self._locked():
            if folds > 1:
                from .crossval import run_cross_validation

                return run_cross_validation(self.cfg, self.out, model, folds=folds, run_name=run)
            from .train import run_train

            return run_train(self.cfg, self.out, model, run_name=run, resume=resume)

    def evaluate(self, run: str | Sequence[str], split: str = "val") -> dict:
        """Metrics of a run (or the ensemble of several) on `split`; also written as eval-<split>.json."""
        from .evaluate import run_evaluate

        return run_evaluate(self.cfg, self.out, self._run_dirs(run), split=split, show=False)

    def predict(self, run: str | Sequence[str], videos: str | Path | None = None, top_k: int | None = 5,
                threshold: float | None = None, output: str | Path | None = None) -> list[dict]:
        """[{"video_id", "labels": [[label, prob], ...]}] for the store's videos, or for new `videos`
        (scanned and extracted apart from the training set, as `predict --videos`)."""
        from .evaluate import ensemble_dir, run_predict

        run_dirs = self._run_dirs(run)
        folder = run_dirs[0] if len(run_dirs) == 1 else ensemble_dir(self.out, run_dirs)
        if videos is not None:
            from .predict import predict_videos

            path = predict_videos(self.cfg, self.out, run_dirs, Path(videos), output, top_k=top_k,
                                  threshold=threshold, progress=self.progress)
        else:
            path = run_predict(self.cfg, self.out, run_dirs, output or folder / "predictions.jsonl",
                               top_k=top_k, threshold=threshold)
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def report(self, run: str | None = None, output: str | Path | None = None) -> Path:
        """The self-contained HTML report (pipeline/report.py)."""
        from .report import write_report

        return write_report(self.out, run=run, output=output, cfg=self.cfg)

    def export(self, dest: str | Path, format: str = "parquet", modalities: Sequence[str] | None = None,
               layouts: Sequence[str] = ("pooled", "sequence")) -> dict:
        """npy / hdf5 / parquet export (pipeline/export.py); returns rows, columns, bytes."""
        from .export import run_export

        return run_export(self.out, dest, format, modalities=modalities, layouts=layouts)

    # -- reading -------------------------------------------------------------------------------
    def videos(self) -> list[dict]:
        """The catalog's live videos: video_id, path, title, labels, split, duration, fps, ..."""
        catalog = Catalog(self.out / "catalog.sqlite")
        try:
            return catalog.videos()
        finally:
            catalog.close()

    def modalities(self) -> dict:
        """{modality: {layout: dim}} of the store."""
        from .store import FeatureStore

        catalog = Catalog(self.out / "catalog.sqlite")
        try:
            return {m: dict(info.layouts) for m, info in FeatureStore(self.out, catalog).modalities().items()}
        finally:
            catalog.close()

    def features(self, modality: str, layout: str = "pooled", video_ids: Sequence[str] | None = None) -> FeatureSet:
        """One modality for `video_ids` (default: every live video, catalog order), missing ones
        marked in `present` (never silently dropped)."""
        from .store import FeatureStore

        catalog = Catalog(self.out / "catalog.sqlite")
        try:
            store = FeatureStore(self.out, catalog)
            rows = {v["video_id"]: v for v in catalog.videos()}
            ids = list(rows) if video_ids is None else list(video_ids)
            labels = [rows[v]["labels"] if v in rows else [] for v in ids]
            if layout == "pooled":
                _, x, present = store.read_pooled(modality, ids)
                return FeatureSet(modality, layout, ids, x.astype(np.float32), present, labels)
            if layout != "sequence":
                raise ValueError(f"layout must be pooled or sequence, got {layout!r}")
            return _sequence_set(store, modality, ids, labels)
        finally:
            catalog.close()

    def _run_dirs(self, run: str | Sequence[str]) -> list[Path]:
        names = [run] if isinstance(run, (str, Path)) else list(run)
        return [self.out / "runs" / str(r) for r in names]


def _sequence_set(store, modality: str, ids: list[str], labels: list) -> FeatureSet:
    dim = store.dim(modality, "sequence")
    seqs, times = store.read_sequences(modality, ids), store.read_times(modality, ids)
    lengths = np.array([0 if s is None else len(s) for s in seqs], np.int64)
    t_max = max(int(lengths.max(initial=0)), 1)
    values = np.zeros((len(ids), t_max, dim), np.float32)
    stamps = np.full((len(ids), t_max, 2), np.nan)
    for i, (s, t) in enumerate(zip(seqs, times)):
        if s is not None:
            values[i, :len(s)], stamps[i, :len(s)] = s, t
    return FeatureSet(modality, "sequence", ids, values, lengths > 0, labels, lengths, stamps)
