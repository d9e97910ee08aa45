"""Clip features from torchvision's video classification zoo (3D CNNs and video transformers),
one vector per window of consecutive frames, plus their mean.

    arch          clip   fps   dim   Kinetics-400 top-1   GFLOP/window (2 x torchvision _ops)
    r3d_18         16    15    512   63.2                 81
    mc3_18         16    15    512   64.0                 87
    r2plus1d_18    16    15    512   67.5  (default)      81
    s3d            32    15   1024   68.4 (clip_len 128)  36 per 128 frames' worth at 224 px
    mvit_v1_b      16   7.5    768   78.5                 141
    mvit_v2_s      16   7.5    768   80.8                 128
    swin3d_t/s/b   32    15   768/768/1024  77.7/79.5/79.4  88/166/281

`clip` and `fps` are the Kinetics-400 recipe of each weight (torchvision's weight docs), except
S3D, trained on 128-frame clips: micro-videos last 2-60 s, so 32 frames (2.1 s) per window.
Frames come from the decode pass as a `window` view (pipeline.decode.View): windows of `clip`
consecutive frames resampled to `fps`, a new one every `stride` frames (video_features'
`stack_size` / `step_size`), the last one shifted back to end at the clip's last frame so the
windows cover the whole clip; a clip shorter than one window is one window padded with its last
frame; `max_windows` caps a long clip's windows (spread evenly over it: bounded memory). The
windows stay uint8 until `batch_windows` of them are converted for the network. Each window gives the penultimate feature (the input of the classifier: global pooled
features) with the window's start/end time; the pooled vector is their mean.

Two modalities from one network (`output:`):
  * `features` (configs/extractors/video3d.yaml): penultimate features, `dim` above;
  * `scores` (configs/extractors/video3d_scores.yaml): 400-d Kinetics-400 class probabilities
    (softmax of the classifier) per window, mean over windows pooled.
Both modalities in one run compute the network once: the second reuses the first's forward pass
on the same batch (`once_per_batch`), and the network itself is built once per process.

Weights (YAML `weights:`): a torchvision Weights enum name (KINETICS400_V1 default) from the
torch hub cache (`torch.hub.get_dir()/checkpoints/<file>`, sha256 prefix checked, WeightsNotFound
naming the file and folder when offline); a path to a state dict with torchvision's keys; or
`random` (untrained, seeded, recorded as random_weights: true). Preprocessing is always the
weights' own `VideoClassification` transform (resize, centre crop, mean/std), batched on the
device; `crop_size:` overrides the crop (tests use tiny crops; recorded in metadata).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from .base import Extractor, Features, autocast, frame_spans, hub_checkpoint, resolve_precision, sha256_file

# arch -> (frames per window, frames per second, attribute holding the classifier)
ARCHS = {
    "r3d_18": (16, 15.0, "fc"), "mc3_18": (16, 15.0, "fc"), "r2plus1d_18": (16, 15.0, "fc"),
    "s3d": (32, 15.0, "classifier"),
    "mvit_v1_b": (16, 7.5, "head"), "mvit_v2_s": (16, 7.5, "head"),
    "swin3d_t": (32, 15.0, "head"), "swin3d_s": (32, 15.0, "head"), "swin3d_b": (32, 15.0, "head"),
}
OUTPUTS = ("features", "scores")


# -- pieces shared by the visual families (scene.py imports them) ------------------------------
def build_torchvision(arch: str, weights: str, seed: int = 0):
    """(model, Weights member for preprocessing and metadata, weights id, file, sha256) for any
    torchvision classification builder. `weights`: an enum name -> hub cache file (downloaded
    when online, sha256 prefix checked); a state-dict path with torchvision's keys (the default
    weights' preprocessing; the class count is the file's, e.g. 365 for a Places365 VGG16);
    `random` (seeded). Loaded with strict=True: a wrong file is an error, not half a model."""
    enum = torchvision.models.get_model_weights(arch)
    state, path = None, None
    if weights in enum.__members__:
        w, path, wid = enum[weights], hub_checkpoint(enum[weights].url), f"{arch}.{weights}"
    elif weights != "random":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights: {weights!r} is neither a {enum.__name__} name "
                                    f"({', '.join(enum.__members__)}), 'random', nor an existing file")
        w, wid = enum.DEFAULT, str(path)
    else:
        w, wid = enum.DEFAULT, "random"
    if path is not None:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    classes = [v for k, v in state.items() if k.endswith("weight")][-1].shape[0] if state else len(w.meta["categories"])
    with torch.random.fork_rng():  # `weights: random` must be the same network on every run
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval(), w, wid, (str(path) if path else None), (sha256_file(path) if path else None)


def view_of(clip, view) -> tuple[np.ndarray, np.ndarray]:
    """(frames, times) of `view` in `clip`; a clear error when the decode pass did not make it."""
    key = view.key()
    if key not in clip.views:
        raise KeyError(f"clip {clip.video_id} has no decoded view {key!r} (has {sorted(clip.views)}); "
                       "decode the clip with the extractors' views (pipeline.decode)")
    return clip.views[key], np.asarray(clip.view_times[key], dtype=np.float64)


def frames_and_times(clip, view=None) -> tuple[np.ndarray, np.ndarray]:
    """The frames a per-frame extractor embeds: `view` from the decode pass, or (view None) the
    clip's uniform frames with their spans on the timeline (`frame_spans`)."""
    if view is not None:
        return view_of(clip, view)
    return clip.frames, frame_spans(clip.frame_times, clip.duration)


def weights_source(weights: str, url: str | None = None):
    """What a cached network would be loaded from: (file, mtime) for a state-dict path or for the
    hub-cache file of `url` (an enum name), so a network is reused only when the same file would
    be read again (an absent file is never cached: loading it raises)."""
    if weights == "random":
        return None
    path = Path(weights).expanduser()
    if not path.is_file() and url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return (str(path), path.stat().st_mtime if path.is_file() else None)


def enum_url(arch: str, weights: str) -> str | None:
    """The download URL of torchvision weights `weights` of `arch` (None for random / a file)."""
    enum = torchvision.models.get_model_weights(arch)
    return enum[weights].url if weights in enum.__members__ else None


def window_cap(value) -> int | None:
    """The YAML `max_windows` (windows per clip at most; null = no cap), checked."""
    if value is None:
        return None
    if int(value) < 1:
        raise ValueError(f"max_windows must be a positive number of windows or null, got {value!r}")
    return int(value)


def window_chunks(arrays: list, size: int):
    """Chunks of at most `size` rows over the rows of several uint8 arrays in order (windows of
    several clips; a chunk never spans two clips): only one chunk at a time becomes float."""
    for a in arrays:
        for s in range(0, len(a), size):
            yield a[s:s + size]


def in_chunks(fn, x: torch.Tensor, size: int) -> torch.Tensor:
    """fn over `x` in chunks of `size` rows, concatenated (bounded activation memory)."""
    return torch.cat([fn(x[s:s + size]) for s in range(0, len(x), size)])


def last_layer(head: nn.Module) -> nn.Module:
    """The Linear or Conv layer that makes a classifier's logits."""
    layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]
    return layers[-1]


_MODELS: dict = {}   # model key -> what `build` returned: one network per process for all its modalities
_LAST: dict = {}     # model key -> (batch key, forward outputs) of the last batch


def shared_model(key, build):
    """One network per (arch, weights, device, precision ...) in this process: the features and
    the scores modalities of a family load it once."""
    if key not in _MODELS:
        _MODELS[key] = build()
    return _MODELS[key]


def once_per_batch(model_key, clips, compute):
    """`compute()` for this batch of clips, or its result when another modality of the same
    network already computed it (the extract stage gives every extractor the same batch)."""
    batch_key = tuple((c.video_id, id(c)) for c in clips)
    last = _LAST.get(model_key)
    if last is None or last[0] != batch_key:
        _LAST[model_key] = last = (batch_key, compute())
    return last[1]


def rows_to_features(clips, idx, values: np.ndarray, times: list) -> list:
    """Split the concatenated rows `values` (windows or frames) back into one Features per clip of
    `idx` (sequence with the rows' times, mean pooled); None for the other clips."""
    results: list[Features | None] = [None] * len(clips)
    start = 0
    for i, t in zip(idx, times):
        seq = np.ascontiguousarray(values[start:start + len(t)], dtype=np.float32)
        results[i] = Features(pooled=seq.mean(0), sequence=seq, times=t)
        start += len(t)
    return results


def extract_windows(ext, clips, forward) -> list:
    """`extract` of the window families (video3d, i3d): `forward(batch)` -> (features, probabilities,
    times) of every window of the clips that have frames, once per batch for both outputs; each
    clip's rows as Features (None for a clip whose view has no frames: a missing modality)."""
    view = ext.views()["windows"]
    idx = [i for i, c in enumerate(clips) if len(view_of(c, view)[0])]
    if not idx:
        return [None] * len(clips)
    batch = [clips[i] for i in idx]
    feats, probs, times = once_per_batch(ext._key, batch, lambda: forward(batch))
    return rows_to_features(clips, idx, probs if ext.output == "scores" else feats, times)


# -- the extractor ------------------------------------------------------------------------------


class Video3DExtractor(Extractor):
    family = "video3d"
    defaults = "video3d"   # configs/extractors/video3d.yaml declares every key read below

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import torchvision_weights

        cfg = cls.resolved(cfg)
        return torchvision_weights(cfg["arch"], cfg["weights"])

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed=seed)
        self.arch = str(self.cfg["arch"])
        if self.arch not in ARCHS:
            raise ValueError(f"video3d arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        self.output = str(self.cfg["output"])
        if self.output not in OUTPUTS:
            raise ValueError(f"video3d output must be one of {OUTPUTS}, got {self.output!r}")
        clip_len, fps, self._head_attr = ARCHS[self.arch]   # null in the YAML = the weights' recipe
        self.clip_len = int(self.cfg["clip_len"] or clip_len)
        self.fps = float(self.cfg["fps"] or fps)
        self.stride = int(self.cfg["stride"] or self.clip_len)
        self.max_windows = window_cap(self.cfg["max_windows"])
        self.weights = str(self.cfg["weights"])
        self.batch_windows = int(self.cfg["batch_windows"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        key = (self.arch, self.weights, self.seed, str(self.device), self.precision,
               weights_source(self.weights, enum_url(self.arch, self.weights)))
        self.body, self.head, w, self.weights_id, self.weights_file, self.sha256 = shared_model(key, self._build)
        self.labels = list(w.meta["categories"])
        self.transform = w.transforms()
        crop = self.cfg["crop_size"]
        if crop:  # same resize / normalisation, a smaller centre crop (tests, quick runs)
            self.transform.crop_size = [int(crop), int(crop)]
            self.transform.resize_size = [int(crop)]
        self._key = (*key, tuple(self.transform.crop_size), self.clip_len, self.fps, self.stride, self.max_windows)
        self.feature_dim = self._feature_dim()
        self.dim = len(self.labels) if self.output == "scores" else self.feature_dim

    def _build(self):
        model, w, wid, path, sha = build_torchvision(self.arch, self.weights, self.seed)
        head = getattr(model, self._head_attr)
        setattr(model, self._head_attr, nn.Identity())  # the body now ends at the pooled features
        body = model.to(self.device, memory_format=torch.channels_last_3d)
        return body, head.eval().to(self.device), w, wid, path, sha

    def _feature_dim(self) -> int:
        layer = last_layer(self.head)
        return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels

    def views(self):
        from pipeline.decode import View

        # Decode at the transform's short resize side; the transform resizes and crops exactly.
        return {"windows": View(kind="window", num_frames=self.clip_len, fps=self.fps, stride=self.stride,
                                short_side=min(self.transform.resize_size), max_windows=self.max_windows)}

    @torch.inference_mode()
    def preprocess(self, windows: np.ndarray) -> torch.Tensor:
        """(N, T, H, W, 3) uint8 -> (N, 3, T, crop, crop) float, the weights' transform."""
        x = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)
        return self.transform(x.permute(0, 1, 4, 2, 3).contiguous())

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, T, h, w) -> (penultimate features (N, feature_dim), class probabilities (N, 400))."""
        def run(chunk):
            with autocast(self.device, self.precision):
                f = self.body(chunk.contiguous(memory_format=torch.channels_last_3d)).float()
            layer = last_layer(self.head)  # S3D's classifier is a 1x1x1 conv: the same map on (N, D, 1, 1, 1)
            logits = self.head(f[:, :, None, None, None]).flatten(1) if isinstance(layer, nn.Conv3d) else self.head(f)
            return torch.cat([f, logits.float().softmax(-1)], 1)

        out = in_chunks(run, x, self.batch_windows).cpu()
        return out[:, :self.feature_dim], out[:, self.feature_dim:]

    def _forward_clips(self, clips, view):
        """Features, probabilities and times of every window of `clips` (concatenated). Windows
        stay uint8 until their chunk of `batch_windows` is converted (bounded float memory)."""
        windows = [view_of(c, view) for c in clips]
        feats, probs = zip(*(self.forward(self.preprocess(chunk))
                             for chunk in window_chunks([w for w, _ in windows], self.batch_windows)))
        return torch.cat(feats).numpy(), torch.cat(probs).numpy(), [t for _, t in windows]

    def extract(self, clips):
        return extract_windows(self, clips, lambda batch: self._forward_clips(batch, self.views()["windows"]))

    def metadata(self):
        meta = {**super().metadata(), "model": f"torchvision.{self.arch}", "output": self.output,
                "layer": "classifier softmax" if self.output == "scores" else "penultimate (classifier input)",
                "weights": self.weights_id, "weights_file": self.weights_file, "sha256": self.sha256,
                "random_weights": self.weights_id == "random", "precision": self.precision,
                "window": {"frames": self.clip_len, "fps": self.fps, "stride": self.stride,
                           "max_windows": self.max_windows},
                "preprocess": repr(self.transform).replace("\n", " ")}
        if self.output == "scores":
            meta["labels"] = self.labels
        return meta
