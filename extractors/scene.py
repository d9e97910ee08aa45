"""Scene scores (Sun et al.): class-probability vectors of image classifiers over the whole frame
(global, torchvision VGG16) and over local regions (a grid of crops, VGG19), fused per frame.

For frame t with global probabilities g_t = softmax(VGG16(frame_t)) and the probabilities of its
R = rows x cols grid cells l_{t,r} = softmax(VGG19(cell_r(frame_t))):

    s^L_t = (1/R) sum_r l_{t,r}                                   (Eq. 1, the local scene score)
    s_t   = lambda_G g_t + lambda_L s^L_t,  lambda_G + lambda_L = 1  (Eq. 2, global-local fusion)

lambda from the YAML (`fusion: [lambda_G, lambda_L]`, normalised to sum 1 so s_t stays a
distribution); `local_pool: max` replaces Eq. 1's mean by the element-wise max over regions (a
variant, not the default). The paper's text was not available to this project offline: the
forms above are our reading of its description (global VGG16 + local VGG19 scene probabilities
fused with weights), checked against a direct formula in tests/test_extractors_image.py.

Output: s_t per frame (sequence, with each frame's times) and its mean over frames (pooled); the
dimension is the classifiers' class count (1000 for ImageNet, 365 for Places365). Frames are the
clip's uniform frames or the decode view named in `view:`. Each input (the whole frame, each
cell) is resized to `input_size` x `input_size` (no crop: the global branch sees the whole
frame), then normalised with the weights' mean / std.

Weights (`global_weights` / `local_weights`): a torchvision enum name (IMAGENET1K_V1 default; hub
cache, sha256 prefix checked, WeightsNotFound naming file and folder), a state-dict path with
torchvision's keys (e.g. a Places365 VGG16 converted to torchvision's names; the class count is
read from the file) with `classes: FILE` (one label per line), or `random`. Both branches must
share one label set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Extractor, autocast, resolve_precision
from .video3d import build_torchvision, enum_url, frames_and_times, rows_to_features, shared_model, weights_source


def grid_cells(x: torch.Tensor, rows: int, cols: int) -> list[torch.Tensor]:
    """(N, C, H, W) -> rows*cols tensors (N, C, h, w): the grid cells, row-major, edges split evenly."""
    h, w = x.shape[-2:]
    ys, xs = np.linspace(0, h, rows + 1).round().astype(int), np.linspace(0, w, cols + 1).round().astype(int)
    return [x[..., ys[i]:ys[i + 1], xs[j]:xs[j + 1]] for i in range(rows) for j in range(cols)]


def fuse(global_p: torch.Tensor, local_p: torch.Tensor, weights, pool: str = "mean") -> torch.Tensor:
    """Eq. 1-2: global (N, C) and local (R, N, C) probabilities -> fused (N, C)."""
    lam = torch.tensor([float(w) for w in weights], dtype=global_p.dtype)
    lam = lam / lam.sum()
    local = local_p.mean(0) if pool == "mean" else local_p.amax(0)   # Eq. 1
    return lam[0] * global_p + lam[1] * local                         # Eq. 2


class SceneExtractor(Extractor):
    family = "scene"
    defaults = "scene"

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import torchvision_weights

        cfg = cls.resolved(cfg)
        return [*torchvision_weights(cfg["global_arch"], cfg["global_weights"]),
                *torchvision_weights(cfg["local_arch"], cfg["local_weights"])]

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        c = self.cfg
        self.precision = resolve_precision(c["precision"], self.device)
        self.grid = [int(g) for g in c["grid"]]
        self.fusion = [float(w) for w in c["fusion"]]
        self.local_pool = str(c["local_pool"])
        if self.local_pool not in ("mean", "max") or len(self.grid) != 2 or len(self.fusion) != 2:
            raise ValueError("scene: grid must be [rows, cols], fusion [lambda_G, lambda_L], local_pool mean|max")
        self.input_size = int(c["input_size"])
        self.batch_frames = int(c["batch_frames"])
        self.view = c["view"]
        self.branches = {}
        for branch, arch in (("global", c["global_arch"]), ("local", c["local_arch"])):
            weights = str(c[f"{branch}_weights"])
            key = ("scene", arch, weights, self.seed, str(self.device), weights_source(weights, enum_url(arch, weights)))
            model, w, wid, path, sha = shared_model(key, lambda a=arch, wt=weights: build_torchvision(a, wt, self.seed))
            self.branches[branch] = {"model": model.to(self.device, memory_format=torch.channels_last),
                                     "arch": arch, "weights": wid, "file": path, "sha256": sha,
                                     "mean": w.transforms().mean, "std": w.transforms().std}
        self.labels = self._labels(w)
        self.dim = len(self.labels)

    def _labels(self, w) -> list[str]:
        """The label set: `classes:` file, else the weights' categories (ImageNet). Both branches must agree."""
        counts = {b["model"].state_dict()[[k for k in b["model"].state_dict() if k.endswith("weight")][-1]].shape[0]
                  for b in self.branches.values()}
        if len(counts) != 1:
            raise ValueError(f"scene: the global and local classifiers have different class counts {sorted(counts)}")
        n = counts.pop()
        classes = self.cfg["classes"]
        labels = (Path(classes).read_text().split("\n") if classes else list(w.meta["categories"]))
        labels = [s.strip() for s in labels if s.strip()]
        if len(labels) != n:
            raise ValueError(f"scene: {n} classes in the weights but {len(labels)} labels"
                             + (f" in {classes}" if classes else " (give `classes: FILE` for non-ImageNet weights)"))
        return labels

    def views(self):
        if not self.view:
            return {}
        from pipeline.decode import View

        return {"frames": View(**self.view)}

    def _probs(self, branch: str, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) uint8 -> (N, C) class probabilities of one branch."""
        b = self.branches[branch]
        x = F.interpolate(x.float() / 255.0, size=(self.input_size, self.input_size), mode="bilinear",
                          antialias=True, align_corners=False)
        x = (x - torch.tensor(b["mean"], device=x.device).view(1, 3, 1, 1)) / torch.tensor(b["std"], device=x.device).view(1, 3, 1, 1)
        with autocast(self.device, self.precision):
            logits = b["model"](x.contiguous(memory_format=torch.channels_last))
        return logits.float().softmax(-1)

    @torch.inference_mode()
    def scores(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, C) fused scene scores (Eq. 1-2)."""
        out = []
        for s in range(0, len(frames), self.batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + self.batch_frames])).to(self.device).permute(0, 3, 1, 2)
            cells = torch.stack([self._probs("local", c) for c in grid_cells(x, *self.grid)])
            out.append(fuse(self._probs("global", x).cpu(), cells.cpu(), self.fusion, self.local_pool))
        return torch.cat(out).numpy()

    def extract(self, clips):
        per_clip = [frames_and_times(c, self.views()["frames"] if self.view else None) for c in clips]
        idx = [i for i, (f, _) in enumerate(per_clip) if f is not None and len(f)]
        if not idx:
            return [None] * len(clips)
        values = np.concatenate([self.scores(per_clip[i][0]) for i in idx])
        return rows_to_features(clips, idx, values, [per_clip[i][1] for i in idx])

    def metadata(self):
        branches = {k: {kk: v for kk, v in b.items() if kk != "model"} for k, b in self.branches.items()}
        return {**super().metadata(), "model": "scene scores: global + local grid classifiers (Sun et al. Eq. 1-2)",
                "branches": branches, "grid": self.grid, "fusion": self.fusion, "local_pool": self.local_pool,
                "random_weights": any(b["weights"] == "random" for b in self.branches.values()),
                "precision": self.precision, "labels": self.labels, "view": self.view}
