"""The torch side of the feature store: `FeatureDataset` (one item per video) and `collate_batch`
(the batch every model takes, see models/__init__.py). Reads only the store's public methods.

    ds = FeatureDataset(store, ids, pooled=["audio"], sequence=["visual"], labels=Y)
    ds[i] -> {"video_id", "pooled": {m: f32[D]}, "sequence": {m: f32[T, D]},
              "present": {m: bool}, "observed": {m: bool}, "labels": f32[C]}
    FeatureDataset(..., sequence=["visual", "audio"], step_s=1.0)   # aligned: one timeline
    ds[i] -> the same, sequences all (K, D) on one grid of step_s seconds, plus
             "times": f64[K, 2] and "step_present": {m: bool[K]}
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .store import FeatureStore
from .timeline import align


class FeatureDataset(torch.utils.data.Dataset):
    """Features of `video_ids` for models: pooled modalities are read into memory once, sequences
    are sliced from memory-mapped shards per item. Missing features give zeros and present=False.

    For a completed modality ("visual@completed", written by the complete stage) `observed` says
    which rows were really observed, so a model can still tell imputed from measured values.
    With `step_s`, the sequence modalities are read aligned (`pipeline.store.align`): every one
    resampled to the same grid, so step k of the visual and the audio sequence cover the same
    seconds of the video.
    """

    def __init__(self, store: FeatureStore, video_ids: Sequence[str], pooled: Sequence[str] = (),
                 sequence: Sequence[str] = (), labels: np.ndarray | None = None, step_s: float | None = None):
        self.store, self.video_ids = store, list(video_ids)
        self.pooled_names, self.sequence_names = list(pooled), list(sequence)
        self.step_s = step_s
        if labels is not None and len(labels) != len(self.video_ids):
            raise ValueError(f"{len(labels)} label rows for {len(self.video_ids)} videos")
        self.labels = None if labels is None else np.asarray(labels, np.float32)
        self.pooled, self.present, self.observed = {}, {}, {}
        infos = store.modalities()
        for m in self.pooled_names:
            _, self.pooled[m], self.present[m] = store.read_pooled(m, self.video_ids)
        self.seq_where = {m: store.locations(m, "sequence") for m in self.sequence_names}
        self.seq_dims = {m: store.dim(m, "sequence") for m in self.sequence_names}
        for m in self.sequence_names:
            present = np.array([vid in self.seq_where[m] for vid in self.video_ids], bool)
            self.present[m] = self.present[m] & present if m in self.present else present
        for m in self.present:
            source = infos[m].meta.get("observed_mask_of") if m in infos else None
            if source:
                _, _, self.observed[m] = store.read_pooled(source, self.video_ids)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, i: int) -> dict:
        vid = self.video_ids[i]
        item = {"video_id": vid, "pooled": {}, "sequence": {}, "present": {}, "observed": {}}
        for m in self.pooled_names:
            item["pooled"][m] = torch.from_numpy(self.pooled[m][i].astype(np.float32))
        if self.step_s is None:
            for m in self.sequence_names:
                where = self.seq_where[m].get(vid)
                seq = self.store.sequence_at(where) if where else np.zeros((0, self.seq_dims[m]), np.float32)
                item["sequence"][m] = torch.from_numpy(seq.astype(np.float32))
        elif self.sequence_names:
            rows = {m: (self.store.sequence_at(w[vid]), self.store.times_at(w[vid]))
                    for m, w in self.seq_where.items() if vid in w}
            grid = align(rows, self.seq_dims, self.step_s, where=vid)
            item["times"] = torch.from_numpy(grid["times"])
            item["sequence"] = {m: torch.from_numpy(v) for m, v in grid["sequence"].items()}
            item["step_present"] = {m: torch.from_numpy(v) for m, v in grid["present"].items()}
        for m, present in self.present.items():
            item["present"][m] = bool(present[i])
            item["observed"][m] = bool(self.observed[m][i]) if m in self.observed else bool(present[i])
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[i])
        return item


def _pad(tensors: list[torch.Tensor], length: int, fill=0) -> torch.Tensor:
    out = torch.full((len(tensors), length, *tensors[0].shape[1:]), fill, dtype=tensors[0].dtype)
    for j, t in enumerate(tensors):
        out[j, : len(t)] = t
    return out


def collate_batch(items: list[dict]) -> dict:
    """Stack pooled vectors, zero-pad sequences to the longest (at least one step), and give
    lengths and presence masks per modality (aligned items: also "times" [B, K, 2] and
    "step_present" {m: bool [B, K]}, False on padding)."""
    batch = {"video_ids": [it["video_id"] for it in items], "pooled": {}, "sequence": {}, "lengths": {},
             "present": {}, "observed": {}}
    first = items[0]
    for m in first["pooled"]:
        batch["pooled"][m] = torch.stack([it["pooled"][m] for it in items])
    for m in first["sequence"]:
        seqs = [it["sequence"][m] for it in items]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        batch["sequence"][m] = _pad(seqs, max(1, int(lengths.max())))
        batch["lengths"][m] = lengths
    for key in ("present", "observed"):
        for m in first[key]:
            batch[key][m] = torch.tensor([it[key][m] for it in items], dtype=torch.bool)
    if "times" in first:
        length = max(len(it["times"]) for it in items)
        batch["times"] = _pad([it["times"] for it in items], length)
        batch["step_present"] = {m: _pad([it["step_present"][m] for it in items], length, False)
                                 for m in first["step_present"]}
    if "labels" in first:
        batch["labels"] = torch.stack([it["labels"] for it in items])
    return batch
