"""Motion features: dense trajectories (Wang, Klaser, Schmid, Liu, "Dense trajectories and motion
boundary descriptors for action recognition", IJCV 2013), encoded per video by a codebook
learned on the corpus (bag of words by default, VLAD optional), 2,048-d like MARNet's
trajectory modality.

Per clip, at reduced resolution (short side `short_side`, 112 by default: the cost is in the
flow, and micro-videos are small):
  1. optical flow between consecutive decoded frames (`flow:` farneback = OpenCV on the CPU,
     torch = pyramidal Lucas-Kanade on the GPU or CPU, raft = torchvision RAFT, auto; see
     extractors/optical_flow.py), median-filtered 3x3 as in the paper;
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

import functools

import numpy as np
import torch

from .base import Extractor, Features, frame_spans, one_thread
from .optical_flow import compute_flows, load_raft, resolve_method, to_gray

TYPES = ("traj", "hof", "mbhx", "mbhy")
# The keys of configs/extractors/trajectory.yaml the descriptors and the codebook depend on
# (saved with the codebook; `fit_videos` is the extract stage's).
PARAMS = ("short_side", "track_length", "grid_step", "temporal_cells", "patch", "start_stride", "min_std",
          "codebook_size", "encoding", "segments", "max_fit_descriptors", "flow", "raft_model", "raft_weights")
FLOW_NAMES = {"farneback": "OpenCV Farneback", "torch": "torch pyramidal Lucas-Kanade", "raft": "torchvision RAFT"}


def small_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, h, w, 3) uint8 RGB with the short side at `short_side`
    (area interpolation; frames already smaller are left as they are)."""
    import cv2

    t, h, w, _ = frames.shape
    scale = min(1.0, short_side / min(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    if size == (w, h):
        return frames
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


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
    y = p[:, 0].round().long()[:, None] + torch.tensor([-cell, -cell, 0, 0], device=p.device)  # cell top rows
    x = p[:, 1].round().long()[:, None] + torch.tensor([-cell, 0, -cell, 0], device=p.device)  # cell left columns
    y0, y1 = y.clamp(0, h), (y + cell).clamp(0, h)
    x0, x1 = x.clamp(0, w), (x + cell).clamp(0, w)
    return (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]).float()


def dense_trajectories(frames: np.ndarray, cfg: dict, device: str | torch.device = "cpu",
                       raft: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Descriptors of the surviving tracks of one clip: {"traj": (N, 2L), "hof", "mbhx", "mbhy",
    "when": (N,) where the track sits in the clip, 0 = first possible start, 1 = last}.
    `cfg` holds the trajectory keys of configs/extractors/trajectory.yaml (TrajectoryExtractor's
    `params`); cfg["flow"] picks the flow back-end; the flow and the tracking run on `device`;
    `raft` is the loaded network when the flow is raft."""
    L, nt, patch = int(cfg["track_length"]), int(cfg["temporal_cells"]), int(cfg["patch"])
    device = torch.device(device)
    small = small_frames(frames, int(cfg["short_side"]))
    gray = to_gray(small)
    T = len(gray)
    if T < L + 1:
        return _no_tracks(L, nt)
    method = resolve_method(cfg["flow"], device, cfg["raft_model"], cfg["raft_weights"])
    # `small` is RGB: compute_flows turns it gray for farneback / torch, RAFT takes it as it is.
    flows = compute_flows(small, method, device, raft)              # (T-1, H, W, 2) on device
    integral = integral_maps(flows)                                # (T-1, H+1, W+1, 25)
    out = {k: [] for k in (*TYPES, "when")}
    for s in track_starts(T, L, cfg["start_stride"]):
        points = grid_points(gray[s], int(cfg["grid_step"]), patch // 2, device)
        pos, desc, inside = follow_tracks(points, flows[s:s + L], integral[s:s + L], nt, max(2, patch // 2))
        kept = track_descriptors(pos, desc, inside, float(cfg["min_std"]))
        if kept is None:
            continue
        for name, rows in kept.items():
            out[name].append(rows)
        out["when"].append(torch.full((len(kept["traj"]),), s / max(T - 1 - L, 1), device=device))
    if not out["when"]:
        return _no_tracks(L, nt)
    return {k: torch.cat(v).cpu().numpy().astype(np.float32) for k, v in out.items()}


def _no_tracks(L: int, nt: int) -> dict[str, np.ndarray]:
    dims = {"traj": 2 * L, "hof": 4 * nt * 9, "mbhx": 4 * nt * 8, "mbhy": 4 * nt * 8}
    return {**{k: np.zeros((0, d), np.float32) for k, d in dims.items()}, "when": np.zeros(0, np.float32)}


def track_starts(T: int, L: int, stride: int | None) -> list[int]:
    """Frames where a fresh grid of points starts: every `stride` frames (null = L / 4), and the
    last possible start too, so the end of the clip is covered."""
    stride = max(1, int(stride or L // 4))
    starts = list(range(0, T - L, stride))
    if starts[-1] != T - 1 - L:
        starts.append(T - 1 - L)
    return starts


def grid_points(gray: np.ndarray, step: int, margin: int, device) -> torch.Tensor:
    """(N, 2) (y, x) points every `step` px, `margin` px inside the frame, without the points of
    textureless areas (Sec. 3.1: minimum eigenvalue below 0.001 x the frame's maximum)."""
    import cv2

    H, W = gray.shape
    ys, xs = np.mgrid[margin:H - margin:step, margin:W - margin:step]
    eig = cv2.cornerMinEigenVal(gray, 3)
    keep = eig[ys, xs] >= 0.001 * max(eig.max(), 1e-12)
    return torch.from_numpy(np.stack([ys[keep], xs[keep]], 1).astype(np.float32)).to(device)


def follow_tracks(p: torch.Tensor, flows: torch.Tensor, integral: torch.Tensor, nt: int, cell: int):
    """Track the points p (N, 2) through the L = len(flows) flows, P_{t+1} = P_t + w|_{P_t} (Eq. 1;
    the flows are median-filtered already), summing the histograms of the 2x2 cells around the
    current point over the frames of each of the n_t temporal cells. Returns the positions
    (N, L+1, 2), the descriptors (N, nt, 4, 25) and whether each track stayed inside the frame."""
    L, H, W = flows.shape[:3]
    track = [p]
    desc = torch.zeros(len(p), nt, 4, integral.shape[-1], device=p.device)
    inside = torch.ones(len(p), dtype=torch.bool, device=p.device)
    for k in range(L):
        yi = track[-1][:, 0].round().long().clamp(0, H - 1)
        xi = track[-1][:, 1].round().long().clamp(0, W - 1)
        desc[:, k * nt // L] += cell_hists(integral[k], track[-1], cell)
        nxt = track[-1] + flows[k][yi, xi][:, [1, 0]]
        inside &= (nxt[:, 0] >= 0) & (nxt[:, 0] <= H - 1) & (nxt[:, 1] >= 0) & (nxt[:, 1] <= W - 1)
        track.append(nxt)
    return torch.stack(track, 1), desc, inside


def track_descriptors(pos: torch.Tensor, desc: torch.Tensor, inside: torch.Tensor, min_std: float) -> dict | None:
    """Pruning (Sec. 3.2: tracks that left the frame, static ones, erratic ones with one step over
    70 % of the whole length), then the descriptors of the survivors: the normalised shape
    (Eq. 2) and the RootSIFT-normalised HOF / MBHx / MBHy blocks. None when nothing survives."""
    disp = pos[:, 1:] - pos[:, :-1]                            # (N, L, 2)
    steps = disp.norm(dim=-1)
    length = steps.sum(1)
    static = (pos.std(1) < min_std).all(1)
    erratic = steps.max(1).values > 0.7 * length
    ok = inside & ~static & ~erratic & (length > 0)
    if not ok.any():
        return None
    shape = disp[ok][..., [1, 0]] / length[ok, None, None]    # (dx, dy) per step, Eq. 2
    out = {"traj": shape.reshape(len(shape), -1)}
    d = desc[ok]
    for name, sl in (("hof", slice(0, 9)), ("mbhx", slice(9, 17)), ("mbhy", slice(17, 25))):
        block = d[..., sl].reshape(len(d), -1).clamp(min=0)  # integral-image round-off can dip below 0
        out[name] = torch.sqrt(block / block.sum(1, keepdim=True).clamp(min=1e-8))
    return out


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if len(x) < k:
        raise ValueError(f"trajectory codebook: only {len(x)} descriptors to learn {k} words; fit on "
                         "more (or more moving) videos, or lower `codebook_size`")
    return KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(x).cluster_centers_.astype(np.float32)


def cpu_descriptors(clip, cfg: dict) -> dict[str, np.ndarray]:
    """`dense_trajectories` on one thread, as the decode workers run it (TrajectoryExtractor.worker_fn)."""
    with one_thread(torch.device("cpu")):
        return dense_trajectories(clip.frames, cfg)


class TrajectoryExtractor(Extractor):
    family = "dense_trajectory"
    defaults = "trajectory"
    needs_fit = True

    @classmethod
    def weights_spec(cls, cfg):
        """RAFT's file for `flow: raft`; for `flow: auto` too, as optional (used on CUDA when present)."""
        from pipeline.weights import torchvision_weights

        cfg = cls.resolved(cfg)
        if cfg["flow"] not in ("raft", "auto"):
            return []
        return torchvision_weights(cfg["raft_model"], cfg["raft_weights"], optional=cfg["flow"] == "auto")

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        self.params = {k: self.cfg[k] for k in PARAMS}
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
        # The flow back-end actually used ("auto" resolved here, once, and recorded in metadata).
        self.flow = resolve_method(self.params["flow"], self.device, self.params["raft_model"],
                                   self.params["raft_weights"])
        self.raft, self.raft_info = None, None
        if self.flow == "raft":
            net, self.raft_info = load_raft(self.params["raft_model"], self.params["raft_weights"], self.seed)
            self.raft = net.to(self.device)
        # What the codebook depends on: the method, and for RAFT which network and weights.
        self.flow_id = self.flow if self.raft_info is None else f"raft ({self.raft_info['weights']})"

    def descriptors(self, clip) -> dict:
        prepared = clip.meta.get("prepared", {}).get(self.modality)   # computed by a decode worker
        if isinstance(prepared, Exception):
            raise prepared
        if prepared is not None:
            return prepared
        return dense_trajectories(clip.frames, {**self.params, "flow": self.flow}, self.device, self.raft)

    def worker_fn(self):
        # CPU flow (Farneback, or the torch flow on a CPU) and the tracking loop are per-video,
        # single-threaded work: done by the decode workers they overlap with the networks of
        # the main process instead of running after them. RAFT and anything on the GPU stay here.
        if self.device.type != "cpu" or self.flow == "raft":
            return None
        return functools.partial(cpu_descriptors, cfg={**self.params, "flow": self.flow})

    def fit(self, clips):
        rng = np.random.default_rng(self.seed)
        with one_thread(self.device):
            descs = []
            for c in clips:
                try:
                    descs.append(self.descriptors(c))
                except Exception:  # this clip fails again, and is recorded, when it is extracted
                    continue
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
        # Segment s holds the tracks starting in the s-th equal part of the sampled frames' span.
        span = frame_spans(c.frame_times, c.duration)
        edges = span[0, 0] + (span[-1, 1] - span[0, 0]) * np.arange(segments + 1) / segments
        return Features(pooled=pooled, sequence=seq, times=np.stack([edges[:-1], edges[1:]], 1))

    def missing_reason(self, clip):
        n, need = 0 if clip.frames is None else len(clip.frames), int(self.params["track_length"]) + 1
        return f"{n} decoded frames, tracking needs track_length + 1 = {need}" if n < need else super().missing_reason(clip)

    def state_dict(self):
        return {"params": dict(self.params), "flow": self.flow_id,
                "codebooks": {k: v.cpu() for k, v in self.codebooks.items()}}

    def load_state_dict(self, state):
        # Words learnt on one flow's descriptors do not describe another flow's: refuse the mix.
        saved = state.get("flow", "farneback")  # states saved before `flow` existed: farneback
        if saved != self.flow_id:
            raise ValueError(f"saved trajectory codebook was fit on {saved} flow, this extractor computes "
                             f"{self.flow_id} flow (flow={self.params['flow']!r}); configure that flow or refit")
        for key in ("short_side", "track_length", "grid_step", "temporal_cells", "patch", "codebook_size"):
            if state["params"].get(key) != self.params.get(key):
                raise ValueError(f"saved trajectory codebook was fit with {key}={state['params'].get(key)}, "
                                 f"config asks for {self.params.get(key)}")
        self.codebooks = {k: v.to(self.device) for k, v in state["codebooks"].items()}
        self.fitted = True

    def metadata(self):
        raft = self.raft_info or {}
        return {**super().metadata(), "model": f"dense trajectories ({FLOW_NAMES[self.flow]} flow) + k-means codebook",
                "weights": "fitted on the corpus", "random_weights": bool(raft.get("random_weights", False)),
                "params": self.params, "descriptor_dims": self.desc_dims,
                "flow": self.flow, "flow_weights": raft or None}
