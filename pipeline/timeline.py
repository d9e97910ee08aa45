"""One timeline: the start / end seconds of sequence rows, and resampling several sequences onto
one grid so that their steps cover the same seconds (`align`, used by the store's aligned read
and by `pipeline.dataset.FeatureDataset(step_s=...)`). Plain numpy, no torch.
"""
from __future__ import annotations

import numpy as np


def sequence_times(n: int, fps: float, offset: float = 0.0) -> np.ndarray:
    """(n, 2) start/end seconds of n rows sampled at `fps` (row i covers [i, i+1] / fps): the
    timeline of a source that only gives a frame index and a rate (YouTube-8M: 1 frame/s)."""
    start = offset + np.arange(n, dtype=np.float64) / float(fps)
    return np.stack([start, start + 1.0 / float(fps)], 1)


def check_times(times, n: int, where: str) -> np.ndarray:
    times = np.asarray(times, np.float64)
    if times.shape != (n, 2):
        raise ValueError(f"{where}: times must be (T, 2) = ({n}, 2), got {times.shape}")
    if not np.all(np.isfinite(times)) or np.any(times[:, 1] < times[:, 0]) or np.any(times < 0):
        raise ValueError(f"{where}: times must be finite seconds >= 0 with end >= start")
    return times


def align(rows: dict[str, tuple[np.ndarray, np.ndarray]], dims: dict[str, int], step_s: float,
          where: str = "") -> dict:
    """Resample sequences with times onto one grid: step k covers [k step_s, (k+1) step_s); its
    value is the mean of the rows overlapping it, weighted by the overlap in seconds (a row of
    zero length counts fully in the step holding its start); present[k] says whether any row
    overlaps. `rows` = {m: (seq (T, D), times (T, 2))}; modalities of `dims` absent from
    `rows` get zeros and present False everywhere. K covers the latest row end (at least 1)."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    for m, (_, t) in rows.items():
        if len(t) and not np.all(np.isfinite(t)):
            raise ValueError(f"{m} of {where}: its sequence rows have no times recorded (extracted or imported "
                             "before the store kept times); re-extract it to read it aligned")
    end = max([float(t[:, 1].max()) for _, t in rows.values() if len(t)] + [0.0])
    k = max(1, int(np.ceil(end / step_s - 1e-9)))
    for _, t in rows.values():  # a zero-length row at the very end still needs its step
        points = t[t[:, 1] <= t[:, 0], 0]
        if len(points):
            k = max(k, int(np.floor(points.max() / step_s)) + 1)
    grid = np.arange(k + 1, dtype=np.float64) * step_s
    out = {"times": np.stack([grid[:-1], grid[1:]], 1), "sequence": {}, "present": {}}
    for m, dim in dims.items():
        seq, t = rows.get(m, (np.zeros((0, dim), np.float32), np.zeros((0, 2))))
        start, stop = t[:, 0][None], t[:, 1][None]
        overlap = np.clip(np.minimum(stop, grid[1:, None]) - np.maximum(start, grid[:-1, None]), 0, None)
        point = (stop <= start) & (start >= grid[:-1, None]) & (start < grid[1:, None])
        weight = np.where(point, 1.0, overlap)  # (K, T)
        total = weight.sum(1)
        present = total > 0
        values = weight @ np.asarray(seq, np.float64)
        values[present] /= total[present, None]
        out["sequence"][m] = values.astype(np.float32)
        out["present"][m] = present
    return out
