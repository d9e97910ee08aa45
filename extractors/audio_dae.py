"""NMCL's acoustic path (Liu et al., "Neural multimodal cooperative learning towards micro-video
understanding", TIP 2019): a magnitude spectrogram (22,050 Hz, 46 ms window = 1,024 samples,
50 % overlap) encoded frame by frame by a stacked denoising autoencoder trained on the corpus
itself (Vincent et al., "Stacked denoising autoencoders", JMLR 2010). No pretrained weights.

Architecture: log(1 + |STFT|) (513 bins), standardised with corpus statistics, then
513 -> 500 -> 400 -> 300 -> 200 (sigmoid units; the 200-d layer is the code).
Training (`fit`): greedy layer-wise pre-training, each layer a denoising autoencoder
    h = s(W x~ + b),  x^ = W' h + b',  loss = ||x^ - x||^2   (Vincent et al. Eq. 2-3)
where x~ is x with a random fraction `mask` of inputs set to 0 (masking noise), then a few
epochs of fine-tuning the whole encoder/decoder stack on the same denoising loss.
Output: the mean code over all frames (pooled) and the mean code per `segment_s` seconds
(sequence), so long videos do not store thousands of rows.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .base import Extractor, Features, one_thread

SAMPLE_RATE = 22050
N_FFT, HOP = 1024, 512  # 46 ms window, 50 % overlap


def spectrogram(audio: np.ndarray, sample_rate: int, device="cpu") -> torch.Tensor:
    """(S,) waveform -> (F, 513) log(1 + |STFT|) at 22,050 Hz (resampled with torchaudio)."""
    import torchaudio

    wave = torch.as_tensor(audio, dtype=torch.float32, device=device)
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, sample_rate, SAMPLE_RATE)
    if wave.shape[-1] < N_FFT:
        wave = nn.functional.pad(wave, (0, N_FFT - wave.shape[-1]))
    window = torch.hann_window(N_FFT, device=wave.device)
    spec = torch.stft(wave, N_FFT, HOP, window=window, center=False, return_complex=True).abs()
    return torch.log1p(spec.t())


def build_sdae(sizes: list[int]) -> tuple[nn.ModuleList, nn.ModuleList]:
    enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    dec = nn.ModuleList(nn.Linear(b, a) for a, b in zip(sizes[:-1], sizes[1:]))
    return enc, dec


class AudioDAEExtractor(Extractor):
    family = "audio_dae"
    needs_fit = True
    defaults = "audio_dae"
    reads = "audio"

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        c = self.cfg
        self.hidden = [int(h) for h in c["hidden"]]
        self.dim = int(c["code_dim"])
        self.sizes = [N_FFT // 2 + 1, *self.hidden, self.dim]
        self.mask = float(c["mask"])
        self.epochs = int(c["layer_epochs"])
        self.finetune_epochs = int(c["finetune_epochs"])
        self.lr = float(c["lr"])
        self.batch_size = int(c["batch_size"])
        self.max_frames = int(c["max_fit_frames"])
        self.segment_s = float(c["segment_s"])
        torch.manual_seed(self.seed)
        self.enc, self.dec = build_sdae(self.sizes)
        self.enc.to(self.device), self.dec.to(self.device)
        self.mean = torch.zeros(self.sizes[0], device=self.device)
        self.std = torch.ones(self.sizes[0], device=self.device)

    def encode(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        for layer in self.enc[:depth]:
            x = torch.sigmoid(layer(x))
        return x

    def decode(self, h: torch.Tensor, depth: int) -> torch.Tensor:
        for i in reversed(range(depth)):
            h = self.dec[i](h)
            if i > 0:  # the bottom reconstruction is linear (inputs are standardised reals)
                h = torch.sigmoid(h)
        return h

    def _train(self, data: torch.Tensor, params, forward, epochs: int, gen: torch.Generator):
        opt = torch.optim.Adam(params, lr=self.lr)
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), self.batch_size):
                x = data[order[start:start + self.batch_size]].to(self.device)
                keep = (torch.rand(x.shape, generator=gen) >= self.mask).to(self.device)
                loss = nn.functional.mse_loss(forward(x * keep), x)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return float(loss.detach())

    def fit(self, clips):
        with one_thread(self.device):
            self._fit(clips)
        self.fitted = True

    def _fit(self, clips):
        specs = [spectrogram(c.audio, c.sample_rate) for c in clips if c.audio is not None and len(c.audio)]
        if not specs:
            raise ValueError("audio_dae.fit: none of the fit clips has an audio track")
        data = torch.cat(specs)
        gen = torch.Generator().manual_seed(self.seed)
        if len(data) > self.max_frames:
            data = data[torch.randperm(len(data), generator=gen)[: self.max_frames]]
        self.mean, self.std = data.mean(0).to(self.device), (data.std(0) + 1e-5).to(self.device)
        data = (data - self.mean.cpu()) / self.std.cpu()
        self.losses = []
        # Greedy layer-wise pre-training: layer k learns to denoise the codes of layers < k.
        for k in range(len(self.enc)):
            with torch.no_grad():
                inputs = torch.cat([self.encode(b.to(self.device), k).cpu() for b in data.split(4096)])
            enc, dec = self.enc[k], self.dec[k]
            linear_out = k == 0

            def forward(x, enc=enc, dec=dec, linear_out=linear_out):
                y = dec(torch.sigmoid(enc(x)))
                return y if linear_out else torch.sigmoid(y)
            self.losses.append(self._train(inputs, [*enc.parameters(), *dec.parameters()], forward, self.epochs, gen))
        # Fine-tune the whole stack as one deep denoising autoencoder.
        depth = len(self.enc)
        self.losses.append(self._train(data, [*self.enc.parameters(), *self.dec.parameters()],
                                       lambda x: self.decode(self.encode(x), depth), self.finetune_epochs, gen))

    def extract(self, clips):
        self._check_fitted()
        with one_thread(self.device), torch.inference_mode():
            return [self._extract_one(c) for c in clips]

    def _extract_one(self, c) -> Features | None:
        if c.audio is None or len(c.audio) == 0:
            return None
        x = (spectrogram(c.audio, c.sample_rate, self.device) - self.mean) / self.std
        code = self.encode(x).float().cpu()
        per_segment = max(1, round(self.segment_s * SAMPLE_RATE / HOP))
        segs = torch.stack([s.mean(0) for s in code.split(per_segment)])
        # Segment k holds spectrogram frames [k, k+1) * per_segment; frame j covers samples
        # j * HOP .. j * HOP + N_FFT at SAMPLE_RATE (the resampled rate), from the clip's start.
        first = np.arange(len(segs)) * per_segment
        last = np.minimum(first + per_segment, len(code)) - 1
        times = np.stack([first * HOP, last * HOP + N_FFT], 1) / SAMPLE_RATE
        return Features(pooled=code.mean(0).numpy(), sequence=segs.numpy(), times=times.astype(np.float64))

    def state_dict(self):
        return {"sizes": self.sizes, "enc": {k: v.cpu() for k, v in self.enc.state_dict().items()},
                "dec": {k: v.cpu() for k, v in self.dec.state_dict().items()},
                "mean": self.mean.cpu(), "std": self.std.cpu()}

    def load_state_dict(self, state):
        if list(state["sizes"]) != self.sizes:
            raise ValueError(f"saved DAE has layer sizes {state['sizes']}, config asks for {self.sizes}")
        self.enc.load_state_dict(state["enc"])
        self.dec.load_state_dict(state["dec"])
        self.mean, self.std = state["mean"].to(self.device), state["std"].to(self.device)
        self.fitted = True

    def metadata(self):
        return {**super().metadata(), "model": "stacked denoising autoencoder (NMCL acoustic)",
                "weights": "fitted on the corpus", "random_weights": False, "layers": self.sizes,
                "spectrogram": {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP},
                "fit_losses": getattr(self, "losses", None)}
