"""Audio features: VGGish (Hershey et al., "CNN architectures for large-scale audio
classification", ICASSP 2017), 128-d per 0.96 s example plus their mean.

The log-mel front end is the one of the original `mel_features.py`, written in torch so it runs
on the GPU too:
  16 kHz mono; frames of 25 ms (400 samples) every 10 ms (160), periodic Hann window,
  |rfft| with n_fft = 512 (magnitude, not power); 64 triangular mel bands 125-7500 Hz built
  on the HTK mel scale  mel(f) = 1127 ln(1 + f / 700)  with the DC bin zeroed;
  log(mel + 0.01); examples of 96 frames x 64 bands (0.96 s), one every `hop_s` seconds
  (0.96 = non-overlapping, the original; 0.32 = the overlapping hop that temporal-localisation
  work uses: 3 examples per 0.96 s).
Audio shorter than one example (0.975 s) is zero-padded to one example, so every clip with an
audio track gives at least one embedding (the original would give none). Each example's
start/end seconds go to `Features.times` (the end is clipped to the audio's length).
`silence_dbfs: -70` makes a track of digital silence a missing modality, as the newer audio
families do; the default (null) embeds it, as the original and earlier runs did.

The network mirrors the published PyTorch port (harritaylor/torchvggish): parameter names
features.{0,3,6,8,11,13}.* and embeddings.{0,2,4}.*, so `vggish-10086976.pth` loads with
strict=True. The optional post-processing of the original (PCA with whitening, clip to
[-2, 2], 8-bit quantisation; `vggish_pca_params-970ea276.pth`) gives values 0..255 like the
released AudioSet / YouTube-8M embeddings.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .base import Extractor, Features, autocast, hub_checkpoint, resolve_precision, sha256_file
from .mfcc import rms_dbfs

VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
PCA_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth"

SAMPLE_RATE = 16000
WINDOW, HOP, N_FFT = 400, 160, 512
NUM_MELS, FMIN, FMAX, LOG_OFFSET = 64, 125.0, 7500.0, 0.01
EXAMPLE_FRAMES = 96
MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 15,600 samples = one example


def hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_matrix(num_mels=NUM_MELS, num_bins=N_FFT // 2 + 1, sample_rate=SAMPLE_RATE, fmin=FMIN, fmax=FMAX):
    """(num_bins, num_mels) triangular weights in the mel domain, as in VGGish's
    spectrogram_to_mel_matrix (triangles are linear in mel, not in Hz; DC bin zeroed)."""
    bins_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lower) / (center - lower)
    down = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    weights[0, :] = 0.0
    return torch.from_numpy(weights.astype(np.float32))


class LogMel(nn.Module):
    """waveform (S,) float at 16 kHz -> log-mel examples (N, 96, 64), one every `hop_frames`
    10-ms frames."""

    def __init__(self, hop_frames: int = EXAMPLE_FRAMES):
        super().__init__()
        self.hop_frames = int(hop_frames)
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.register_buffer("window", (0.5 - 0.5 * torch.cos(2 * math.pi * n / WINDOW)).float(), persistent=False)
        self.register_buffer("mel", mel_matrix(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.shape[-1] < MIN_SAMPLES:
            wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - wave.shape[-1]))
        frames = wave.unfold(-1, WINDOW, HOP) * self.window          # (F, 400)
        spec = torch.fft.rfft(frames, n=N_FFT).abs()                 # (F, 257) magnitude
        logmel = torch.log(spec @ self.mel + LOG_OFFSET)             # (F, 64)
        # (N, 64, 96) windows of 96 frames every hop_frames -> (N, 96, 64); hop 96 = the original
        return logmel.unfold(0, EXAMPLE_FRAMES, self.hop_frames).transpose(1, 2)

    def times(self, num_samples: int) -> np.ndarray:
        """(N, 2) start/end seconds of the examples `forward` makes from `num_samples` samples."""
        frames = (max(num_samples, MIN_SAMPLES) - WINDOW) // HOP + 1
        n = (frames - EXAMPLE_FRAMES) // self.hop_frames + 1
        start = np.arange(n) * self.hop_frames * HOP / SAMPLE_RATE
        end = np.minimum(start + MIN_SAMPLES / SAMPLE_RATE, num_samples / SAMPLE_RATE)
        return np.stack([start, end], 1).astype(np.float64)


class VGGish(nn.Module):
    """The VGGish network with the torchvggish port's module layout (names must match)."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True),
            nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, 128), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) log-mel -> (N, 128)."""
        x = self.features(x)
        # The TF original flattens in (H, W, C) order; the port's fc weights expect that order.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


def postprocess(emb: torch.Tensor, eigen: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """PCA (with whitening) + clip to [-2, 2] + 8-bit quantisation (0..255), as released."""
    pca = (eigen @ (emb.t() - means.reshape(-1, 1))).t()
    return torch.round((pca.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))


def _weights_path(spec: str, url: str) -> Path:
    """`spec` = 'published' (the hub cache file of `url`) or a path to a .pth file."""
    if spec in ("published", Path(url).name):
        return hub_checkpoint(url)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return path


class VGGishExtractor(Extractor):
    family = "vggish"
    defaults = "audio"
    reads = "audio"
    dim = 128

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import local_file, torch_file

        cfg = cls.resolved(cfg)
        pairs = [(cfg["weights"], VGGISH_URL)]
        if cfg["postprocess"]:
            pairs.append((cfg["pca_weights"], PCA_URL))
        return [torch_file(url) if str(spec) in ("published", Path(url).name) else local_file(spec)
                for spec, url in pairs if str(spec) != "random"]

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        self.weights = str(self.cfg["weights"])
        self.use_pca = bool(self.cfg["postprocess"])
        self.batch_examples = int(self.cfg["batch_examples"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        self.hop_s = float(self.cfg["hop_s"])
        silence = self.cfg["silence_dbfs"]  # None: embed every track, silent ones too (the original)
        self.silence_dbfs = None if silence is None else float(silence)
        hop_frames = round(self.hop_s * SAMPLE_RATE / HOP)
        if hop_frames < 1 or abs(hop_frames * HOP / SAMPLE_RATE - self.hop_s) > 1e-6:
            raise ValueError(f"vggish hop_s must be a positive multiple of 0.01 s, got {self.hop_s}")
        self.frontend = LogMel(hop_frames).to(self.device)
        with torch.random.fork_rng():  # `weights: random` must be the same network on every run
            torch.manual_seed(self.seed)
            self.model = VGGish().eval()
        self.weights_file = self.sha256 = self.pca_sha256 = None
        if self.weights != "random":
            path = _weights_path(self.weights, VGGISH_URL)
            self.model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=True)
            self.weights_file, self.sha256 = str(path), sha256_file(path)
        self.model.to(self.device, memory_format=torch.channels_last)
        if self.use_pca:
            path = _weights_path(str(self.cfg["pca_weights"]), PCA_URL)
            # The published PCA file holds numpy arrays, which weights_only refuses; hub_checkpoint
            # verified its sha256 prefix (or it is the user's own file), so a full load is safe.
            pca = torch.load(str(path), map_location="cpu", weights_only=False)
            self.pca_eigen = torch.as_tensor(np.asarray(pca["pca_eigen_vectors"]), dtype=torch.float32).to(self.device)
            self.pca_means = torch.as_tensor(np.asarray(pca["pca_means"]), dtype=torch.float32).to(self.device)
            self.pca_sha256 = sha256_file(path)

    def _silent(self, audio: np.ndarray) -> bool:
        return self.silence_dbfs is not None and rms_dbfs(audio) < self.silence_dbfs

    def examples(self, audio: np.ndarray, sample_rate: int) -> tuple[torch.Tensor, np.ndarray]:
        """(log-mel examples (N, 96, 64), their (N, 2) start/end seconds)."""
        wave = torch.as_tensor(audio, dtype=torch.float32, device=self.device)
        if sample_rate != SAMPLE_RATE:
            import torchaudio

            wave = torchaudio.functional.resample(wave, sample_rate, SAMPLE_RATE)
        return self.frontend(wave), self.frontend.times(wave.shape[-1])

    @torch.inference_mode()
    def extract(self, clips):
        per_clip = [None if c.audio is None or len(c.audio) == 0 or self._silent(c.audio)
                    else self.examples(c.audio, c.sample_rate) for c in clips]
        present = [x[0] for x in per_clip if x is not None]
        if not present:
            return [None] * len(clips)
        # All examples of the batch of clips go through the network together.
        batch = torch.cat(present)[:, None]
        emb = []
        for start in range(0, len(batch), self.batch_examples):
            x = batch[start:start + self.batch_examples].contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                emb.append(self.model(x).float())
        emb = torch.cat(emb)
        if self.use_pca:
            emb = postprocess(emb, self.pca_eigen, self.pca_means)
        emb = emb.cpu().numpy().astype(np.float32)
        out, start = [], 0
        for x in per_clip:
            if x is None:
                out.append(None)
                continue
            examples, times = x
            seq = emb[start:start + len(examples)]
            start += len(examples)
            out.append(Features(pooled=seq.mean(0), sequence=np.ascontiguousarray(seq), times=times))
        return out

    def metadata(self):
        return {**super().metadata(), "model": "vggish (torchvggish layout)", "weights": self.weights,
                "weights_file": self.weights_file, "sha256": self.sha256,
                "random_weights": self.weights == "random", "postprocess_pca": self.use_pca,
                "pca_sha256": self.pca_sha256, "precision": self.precision,
                "frontend": {"sample_rate": SAMPLE_RATE, "window": WINDOW, "hop": HOP, "n_fft": N_FFT,
                             "mels": NUM_MELS, "fmin": FMIN, "fmax": FMAX, "log_offset": LOG_OFFSET,
                             "example_frames": EXAMPLE_FRAMES, "hop_s": self.hop_s},
                "silence_dbfs": self.silence_dbfs}
