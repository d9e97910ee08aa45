"""Visual features: torchvision ResNet, penultimate layer (2048-d for ResNet-50) per sampled
frame, mean-pooled per video (NMCL averages key-frame features; the VideoTag tagger consumes
the per-frame sequence).

Weights (YAML `weights:`):
  * a torchvision Weights enum name (default IMAGENET1K_V2) -> loaded from the torch hub cache,
    `torch.hub.get_dir()/checkpoints/<file>`, sha256 prefix checked; offline and absent -> a
    WeightsNotFound error that names the file and the folder to put it in;
  * a path to a .pth state dict (same keys as torchvision's model);
  * `random` -> untrained network (recorded as random_weights: true), for speed tests only.
Preprocessing always comes from the weights' own transforms (resize, centre crop, normalise),
applied batched on uint8 tensors on the device.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from .base import Extractor, Features, autocast, frame_spans, hub_checkpoint, resolve_precision, sha256_file


def build_resnet(depth: int, weights: str, seed: int = 0):
    """(model without its classifier, Weights enum used for preprocessing, weights id, file, sha256)."""
    arch = f"resnet{depth}"
    enum = torchvision.models.get_model_weights(arch)
    with torch.random.fork_rng():  # `weights: random` must be the same network on every run
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None)
    model.fc = torch.nn.Identity()  # penultimate features: global average pool output
    if weights == "random":
        return model, enum.DEFAULT, "random", None, None
    if weights in enum.__members__:
        w = enum[weights]
        path = hub_checkpoint(w.url)
        wid = f"{arch}.{weights}"
    else:  # a local state dict; preprocessing of the default weights (ImageNet statistics)
        path = Path(weights).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"weights: {weights!r} is neither a {enum.__name__} name "
                                    f"({', '.join(enum.__members__)}), 'random', nor an existing file")
        w, wid = enum.DEFAULT, str(path)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=True)
    return model, w, wid, str(path), sha256_file(path)


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm of a torchvision ResNet into the convolution before it (inference
    only): one op less per layer, 1.2-1.5x more images/s on CPU; same features up to rounding."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent, conv_name, bn_name):
        setattr(parent, conv_name, fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name)))
        setattr(parent, bn_name, torch.nn.Identity())

    fold(model, "conv1", "bn1")
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            for i in (1, 2, 3):
                if hasattr(block, f"conv{i}"):
                    fold(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")
    return model


class ResNetExtractor(Extractor):
    family = "resnet"
    defaults = "visual"

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import torchvision_weights

        cfg = cls.resolved(cfg)
        return torchvision_weights(f"resnet{int(cfg['depth'])}", cfg["weights"])

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        self.depth = int(self.cfg["depth"])
        self.weights = str(self.cfg["weights"])
        self.batch_frames = int(self.cfg["batch_frames"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        model, w, self.weights_id, self.weights_file, self.sha256 = build_resnet(self.depth, self.weights, self.seed)
        self.transform = w.transforms()
        self.dim = 2048 if self.depth >= 50 else 512
        self.model = fold_batchnorm(model.eval()).to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 of one clip -> (N, 3, 224, 224) float: the weights' transform."""
        x = torch.from_numpy(frames).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return self.transform(x)

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> (N, dim) float32, in chunks of `batch_frames`."""
        out = []
        for start in range(0, len(x), self.batch_frames):
            chunk = x[start:start + self.batch_frames].contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                out.append(self.model(chunk).float())
        return torch.cat(out).cpu()

    def extract(self, clips):
        # Clips differ in frame size; after the transform every frame is 224 x 224, so the
        # frames of all clips of the batch go through the network together.
        idx = [i for i, c in enumerate(clips) if c.frames is not None and len(c.frames)]
        results: list[Features | None] = [None] * len(clips)
        if not idx:
            return results
        feats = self.embed(torch.cat([self.preprocess(clips[i].frames) for i in idx])).numpy()
        start = 0
        for i in idx:
            n = len(clips[i].frames)
            seq = np.ascontiguousarray(feats[start:start + n], dtype=np.float32)
            results[i] = Features(pooled=seq.mean(0), sequence=seq,
                                  times=frame_spans(clips[i].frame_times, clips[i].duration))
            start += n
        return results

    def metadata(self):
        return {**super().metadata(), "model": f"torchvision.resnet{self.depth}", "layer": "avgpool (penultimate)",
                "weights": self.weights_id, "weights_file": self.weights_file, "sha256": self.sha256,
                "random_weights": self.weights_id == "random", "precision": self.precision,
                "preprocess": repr(self.transform).replace("\n", " ")}
