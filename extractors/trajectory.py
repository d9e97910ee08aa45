"""Motion features: dense trajectories (Wang, Klaser, Schmid, Liu, "Dense trajectories and motion
boundary descriptors for action recognition", IJCV 2013), encoded per video by a codebook
learned on the corpus (bag of words by default, VLAD optional), 2,048-d like MARNet's
trajectory modality.

Per clip, at reduced resolution (short side `short_side`, 112 by default: the cost is in the
flow, and micro-videos are small):
  1. optical flow between consecutive decoded frames (OpenCV Farneback on CPU), median-filtered
     3x3 as in the paper;
  2. points on a dense grid (every `grid_step` px, textureless points dropped by the minimum
     eigenvalue test of Sec. 3.1) start at frames 0, stride, 2*stride, ... (stride L/4 by
     default; the paper re-seeds every frame) and are tracked for
     L frames:  P_{t+1} = P_t + (M * w)|_{P_t}   (Eq. 1; M = median filter, w = flow);
  3. pruning (Sec. 3.2): tracks that leave the frame, static tracks (std of positions below
     `min_std` px in x and y), erratic tracks (one step longer than 70 % of the whole length);
  4. descriptors along each track: trajectory shape  S = (dP_t, ..., dP_{t+L-1}) / sum_j |dP_j|
     (Eq. 2); HOF (8 orientations + a zero bin) and MBHx / MBHy (8 orientations of the gradient
     of each flow component, Sec. 4) in a 2x2 spatial x n_t temporal grid of cells of a patch
     around the track; each histogram block L1-normalised then square-rooted (RootSIFT, as in
     improved trajectories);
  5. encoding: one k-means codebook per descriptor type (`codebook_size` words each, 4 types ->
     4 x 512 = 2,048 dims). BoW: word counts / number of tracks, square-rooted. VLAD: residual
     sums per word, signed square root, intra-normalised, L2.
Sequence: the same encoding of the tracks starting in each of `segments` equal time
segments (a segment without tracks is a zero row). A clip whose tracks are all pruned (no
motion) gives the zero vector: that is an observation (a static video), not a missing modality.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Extractor, Features, one_thread

TYPES = ("traj", "hof", "mbhx", "mbhy")


def gray_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, h, w) uint8 gray with the short side at `short_side`."""
    import cv2

    t, h, w, _ = frames.shape
    scale = min(1.0, short_side / min(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    out = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    if size != (w, h):
        out = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in out]
    return np.stack(out)


def farneback_flows(gray: np.ndarray) -> np.ndarray:
    """(T, h, w) uint8 -> (T-1, h, w, 2) float32 flow from frame t to t+1, median-filtered 3x3."""
    import cv2

    flows = []
    for a, b in zip(gray[:-1], gray[1:]):
        f = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=9,
                                         iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
        flows.append(np.dstack([cv2.medianBlur(f[..., 0], 3), cv2.medianBlur(f[..., 1], 3)]))
    return np.stack(flows).astype(np.float32)


def orientation_hist(dx: torch.Tensor, dy: torch.Tensor, bins: int, zero_bin: bool) -> torch.Tensor:
    """(N, H, W) vector field -> (N, bins[+1], H, W): magnitude in its orientation bin (hard
    assignment); with zero_bin, vectors shorter than 0.4 px/frame go to an extra bin with weight 1
    (the HOF zero bin)."""
    mag = torch.sqrt(dx * dx + dy * dy)
    ang = torch.atan2(dy, dx) % (2 * np.pi)
    idx = (ang / (2 * np.pi / bins)).long().clamp(max=bins - 1)
    out = torch.zeros(dx.shape[0], bins + int(zero_bin), *dx.shape[1:], device=dx.device)
    out.scatter_(1, idx[:, None], mag[:, None])
    if zero_bin:
        still = mag < 0.4
        out[:, :bins] *= (~still)[:, None]
        out[:, bins] = still.float()
    return out


def integral_maps(flows: torch.Tensor) -> torch.Tensor:
    """(T-1, H, W, 2) flow -> (T-1, H+1, W+1, 25) integral images of the per-pixel
    HOF(9) | MBHx(8) | MBHy(8) histograms, so any cell's histogram is 4 look-ups (the integral
    histogram of the paper's implementation). float64 keeps the differences exact enough."""
    fx, fy = flows[..., 0], flows[..., 1]
    hof = orientation_hist(fx, fy, 8, zero_bin=True)

    def grad(f):  # central differences: the motion boundaries of Sec. 4
        gx = torch.zeros_like(f)
        gy = torch.zeros_like(f)
        gx[:, :, 1:-1] = (f[:, :, 2:] - f[:, :, :-2]) / 2
        gy[:, 1:-1] = (f[:, 2:] - f[:, :-2]) / 2
        return gx, gy

    mbhx = orientation_hist(*grad(fx), 8, zero_bin=False)
    mbhy = orientation_hist(*grad(fy), 8, zero_bin=False)
    maps = torch.cat([hof, mbhx, mbhy], 1).permute(0, 2, 3, 1).double()
    return torch.nn.functional.pad(maps.cumsum(1).cumsum(2), (0, 0, 1, 0, 1, 0))


def cell_hists(integral: torch.Tensor, p: torch.Tensor, cell: int) -> torch.Tensor:
    """Histograms of the 2x2 cells of the (2 cell)^2 patch centred on each point p (N, 2) = (y, x)
    in one integral image (H+1, W+1, C) -> (N, 4, C)."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    y = p[:, 0].round().long()[:, None] + torch.tensor([-cell, -cell, 0, 0])   # cell top rows
    x = p[:, 1].round().long()[:, None] + torch.tensor([-cell, 0, -cell, 0])   # cell left columns
    y0, y1 = y.clamp(0, h), (y + cell).clamp(0, h)
    x0, x1 = x.clamp(0, w), (x + cell).clamp(0, w)
    return (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]).float()


def dense_trajectories(frames: np.ndarray, cfg: dict) -> dict[str, np.ndarray]:
    """Descriptors of the surviving tracks of one clip: {"traj": (N, 2L), "hof", "mbhx", "mbhy",
    "when": (N,) where the track sits in the clip, 0 = first possible start, 1 = last}."""
    import cv2

    L, step, nt = int(cfg["track_length"]), int(cfg["grid_step"]), int(cfg["temporal_cells"])
    patch = int(cfg["patch"])
    cell = max(2, patch // 2)
    gray = gray_frames(frames, int(cfg["short_side"]))
    T, H, W = gray.shape
    dims = {"traj": 2 * L, "hof": 4 * nt * 9, "mbhx": 4 * nt * 8, "mbhy": 4 * nt * 8}
    empty = {k: np.zeros((0, d), np.float32) for k, d in dims.items()}
    empty["when"] = np.zeros(0, np.float32)
    if T < L + 1:
        return empty
    flows = torch.from_numpy(farneback_flows(gray))
    integral = integral_maps(flows)                                # (T-1, H+1, W+1, 25)
    stride = max(1, int(cfg.get("start_stride") or L // 4))
    starts = list(range(0, T - L, stride))
    if starts[-1] != T - 1 - L:
        starts.append(T - 1 - L)                                   # cover the end of the clip too
    out = {k: [] for k in (*TYPES, "when")}
    margin = patch // 2
    ys, xs = np.mgrid[margin:H - margin:step, margin:W - margin:step]
    for s in starts:
        # Drop grid points in textureless areas (Sec. 3.1: min eigenvalue < 0.001 x max).
        eig = cv2.cornerMinEigenVal(gray[s], 3)
        keep = eig[ys, xs] >= 0.001 * max(eig.max(), 1e-12)
        p = torch.from_numpy(np.stack([ys[keep], xs[keep]], 1).astype(np.float32))   # (N, 2) (y, x)
        track = [p]
        desc = torch.zeros(len(p), nt, 4, integral.shape[-1])
        inside = torch.ones(len(p), dtype=torch.bool)
        for k in range(L):
            yi = track[-1][:, 0].round().long().clamp(0, H - 1)
            xi = track[-1][:, 1].round().long().clamp(0, W - 1)
            # Descriptors are taken along the track: 2x2 cells around the current point,
            # summed over the frames of each of the n_t temporal cells.
            desc[:, k * nt // L] += cell_hists(integral[s + k], track[-1], cell)
            nxt = track[-1] + flows[s + k][yi, xi][:, [1, 0]]
            inside &= (nxt[:, 0] >= 0) & (nxt[:, 0] <= H - 1) & (nxt[:, 1] >= 0) & (nxt[:, 1] <= W - 1)
            track.append(nxt)
        pos = torch.stack(track, 1)                                # (N, L+1, 2)
        disp = pos[:, 1:] - pos[:, :-1]                            # (N, L, 2)
        steps = disp.norm(dim=-1)
        length = steps.sum(1)
        std = pos.std(1)                                           # (N, 2)
        static = (std < float(cfg["min_std"])).all(1)
        erratic = steps.max(1).values > 0.7 * length
        ok = inside & ~static & ~erratic & (length > 0)
        if not ok.any():
            continue
        shape = disp[ok][..., [1, 0]] / length[ok, None, None]    # (dx, dy) per step, Eq. 2
        out["traj"].append(shape.reshape(-1, 2 * L))
        d = desc[ok]
        for name, sl in (("hof", slice(0, 9)), ("mbhx", slice(9, 17)), ("mbhy", slice(17, 25))):
            block = d[..., sl].reshape(len(d), -1).clamp(min=0)  # integral-image round-off can dip below 0
            out[name].append(torch.sqrt(block / block.sum(1, keepdim=True).clamp(min=1e-8)))
        out["when"].append(torch.full((int(ok.sum()),), s / max(T - 1 - L, 1)))
    if not out["when"]:
        return empty
    return {k: torch.cat(v).numpy().astype(np.float32) for k, v in out.items()}


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if len(x) < k:
        raise ValueError(f"trajectory codebook: only {len(x)} descriptors to learn {k} words; fit on "
                         "more (or more moving) videos, or lower `codebook_size`")
    return KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(x).cluster_centers_.astype(np.float32)


class TrajectoryExtractor(Extractor):
    family = "dense_trajectory"
    needs_fit = True

    def __init__(self, cfg, device="cpu"):
        super().__init__(cfg, device)
        defaults = {"short_side": 112, "track_length": 8, "grid_step": 5, "temporal_cells": 2, "patch": 16,
                    "min_std": 0.8, "start_stride": None, "codebook_size": 512, "encoding": "bow",
                    "segments": 4, "max_fit_descriptors": 50_000}
        self.params = {**defaults, **{k: v for k, v in self.cfg.items() if k in defaults}}
        self.k = int(self.params["codebook_size"])
        self.encoding = self.params["encoding"]
        if self.encoding not in ("bow", "vlad"):
            raise ValueError(f"encoding must be bow or vlad, got {self.encoding!r}")
        L, nt = int(self.params["track_length"]), int(self.params["temporal_cells"])
        if L % nt:
            raise ValueError(f"track_length ({L}) must be a multiple of temporal_cells ({nt})")
        self.desc_dims = {"traj": 2 * L, "hof": 4 * nt * 9, "mbhx": 4 * nt * 8, "mbhy": 4 * nt * 8}
        self.dim = self.k * (len(TYPES) if self.encoding == "bow" else sum(self.desc_dims.values()))
        self.codebooks: dict[str, torch.Tensor] = {}

    def descriptors(self, clip) -> dict:
        return dense_trajectories(clip.frames, self.params)

    def fit(self, clips):
        rng = np.random.default_rng(self.seed)
        with one_thread(self.device):
            descs = [self.descriptors(c) for c in clips if c.frames is not None and len(c.frames)]
            self.codebooks = self._learn_codebooks(descs, rng)
        self.fitted = True

    def _learn_codebooks(self, descs, rng) -> dict:
        codebooks = {}
        for name in TYPES:
            x = np.concatenate([d[name] for d in descs]) if descs else np.zeros((0, self.desc_dims[name]))
            cap = int(self.params["max_fit_descriptors"])
            if len(x) > cap:
                x = x[rng.choice(len(x), cap, replace=False)]
            codebooks[name] = torch.from_numpy(kmeans(x, self.k, self.seed)).to(self.device)
        return codebooks

    def encode(self, d: dict, select: np.ndarray) -> np.ndarray:
        parts = []
        for name in TYPES:
            x = torch.from_numpy(d[name][select]).to(self.device)
            centres = self.codebooks[name]
            if len(x) == 0:
                parts.append(torch.zeros(self.k * (1 if self.encoding == "bow" else centres.shape[1])))
                continue
            word = torch.cdist(x, centres).argmin(1)
            if self.encoding == "bow":
                hist = torch.bincount(word, minlength=self.k).float() / len(x)
                parts.append(torch.sqrt(hist).cpu())
            else:
                v = torch.zeros_like(centres).index_add_(0, word, x - centres[word])
                v = torch.sign(v) * torch.sqrt(v.abs())
                v = torch.nn.functional.normalize(v, dim=1)               # intra-normalisation
                parts.append(torch.nn.functional.normalize(v.flatten(), dim=0).cpu())
        return torch.cat(parts).numpy().astype(np.float32)

    def extract(self, clips):
        self._check_fitted()
        with one_thread(self.device):
            return [self._extract_one(c) for c in clips]

    def _extract_one(self, c) -> Features | None:
        if c.frames is None or len(c.frames) < int(self.params["track_length"]) + 1:
            return None  # too few decoded frames to track anything: the modality is missing
        segments = int(self.params["segments"])
        d = self.descriptors(c)
        pooled = self.encode(d, np.ones(len(d["when"]), bool))
        seg = np.minimum((d["when"] * segments).astype(int), segments - 1)
        seq = np.stack([self.encode(d, seg == s) for s in range(segments)])
        return Features(pooled=pooled, sequence=seq)

    def state_dict(self):
        return {"params": dict(self.params), "codebooks": {k: v.cpu() for k, v in self.codebooks.items()}}

    def load_state_dict(self, state):
        for key in ("short_side", "track_length", "grid_step", "temporal_cells", "patch", "codebook_size"):
            if state["params"].get(key) != self.params.get(key):
                raise ValueError(f"saved trajectory codebook was fit with {key}={state['params'].get(key)}, "
                                 f"config asks for {self.params.get(key)}")
        self.codebooks = {k: v.to(self.device) for k, v in state["codebooks"].items()}
        self.fitted = True

    def metadata(self):
        return {**super().metadata(), "model": "dense trajectories (Farneback flow) + k-means codebook",
                "weights": "fitted on the corpus", "random_weights": False, "params": self.params,
                "descriptor_dims": self.desc_dims, "flow": "opencv farneback"}
