"""Hand-crafted audio features: MFCCs and their deltas with librosa, summarised per window.

The acoustic input of the MARNet line of work on micro-videos, and a strong cheap baseline where
no pretrained audio network is available (no weights at all, nothing to fit).

  mono audio resampled to `sample_rate` (22,050 Hz) with librosa (soxr);
  per frame (`win_ms` 25 ms window = 551 samples, `hop_ms` 10 ms = 220 samples, n_fft = the
  next power of two, centred frames): `n_mfcc` (40) coefficients of `n_mels` (128) mel bands
  (`librosa.feature.mfcc`, DCT-II ortho of the log-power mel spectrogram), then their deltas
  (`librosa.feature.delta`, width 9; `deltas: 2` adds the delta-deltas too);
  frame f (centre at f * hop / sr) belongs to window floor(centre / window_s);
  sequence = per `window_s` (1 s) window, [mean, std] over its frames  -> (T, 2 * C)
  pooled   = [mean, std] over all frames of the clip                  -> (2 * C,)
with C = n_mfcc * (1 + deltas) (defaults: 80 per frame, 160-d outputs). The last window is
shorter when the clip is; its end time is the audio's end.

No audio track, or a track whose RMS is below `silence_dbfs` (digital silence), is a missing
modality (None): MFCCs of silence are log(0) floor values, not a description of the clip.
Audio shorter than 8 hops (80 ms) is zero-padded to that, so the width-9 deltas are defined.
"""
from __future__ import annotations

import numpy as np

from .base import Extractor, Features

DELTA_WIDTH = 9


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for all zeros)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else -np.inf


def window_summary(frames: np.ndarray, frame_t: np.ndarray, window_s: float, duration: float):
    """frames (F, C), frame centre times (F,) -> ([mean, std] per window (T, 2C), times (T, 2)).
    Windows without a frame (none at these rates) are skipped."""
    index = np.minimum((frame_t // window_s).astype(np.int64), max(0, int(np.ceil(duration / window_s)) - 1))
    rows, times = [], []
    for k in np.unique(index):
        sel = frames[index == k]
        rows.append(np.concatenate([sel.mean(0), sel.std(0)]))
        times.append((k * window_s, min((k + 1) * window_s, duration)))
    return np.stack(rows).astype(np.float32), np.asarray(times, np.float64)


class MFCCExtractor(Extractor):
    family = "mfcc"
    defaults = "audio_mfcc"
    reads = "audio"

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        c = self.cfg
        self.sample_rate = int(c["sample_rate"])
        self.n_mfcc = int(c["n_mfcc"])
        self.n_mels = int(c["n_mels"])
        self.deltas = int(c["deltas"])
        if self.deltas not in (0, 1, 2):
            raise ValueError(f"mfcc deltas must be 0, 1 or 2, got {self.deltas}")
        self.win_length = int(round(float(c["win_ms"]) * self.sample_rate / 1000))
        self.hop_length = int(round(float(c["hop_ms"]) * self.sample_rate / 1000))
        self.n_fft = int(c["n_fft"] or 1 << (self.win_length - 1).bit_length())   # null = next power of two
        self.window_s = float(c["window_s"])
        self.silence_dbfs = float(c["silence_dbfs"])
        self.dim = 2 * self.n_mfcc * (1 + self.deltas)

    def frames(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(F, C) MFCCs [+ deltas] per frame of mono `audio`."""
        import librosa

        y = np.asarray(audio, np.float32)
        if sample_rate != self.sample_rate:
            y = librosa.resample(y, orig_sr=sample_rate, target_sr=self.sample_rate)
        min_len = (DELTA_WIDTH - 1) * self.hop_length
        if len(y) < min_len:  # deltas need DELTA_WIDTH frames
            y = np.pad(y, (0, min_len - len(y)))
        m = librosa.feature.mfcc(y=y, sr=self.sample_rate, n_mfcc=self.n_mfcc, n_fft=self.n_fft,
                                 hop_length=self.hop_length, win_length=self.win_length, n_mels=self.n_mels)
        parts = [m] + [librosa.feature.delta(m, width=DELTA_WIDTH, order=k) for k in range(1, self.deltas + 1)]
        return np.concatenate(parts).T.astype(np.float32)

    def extract_one(self, clip) -> Features | None:
        audio = clip.audio
        if audio is None or len(audio) == 0 or rms_dbfs(audio) < self.silence_dbfs:
            return None
        feats = self.frames(audio, clip.sample_rate)
        duration = len(audio) / clip.sample_rate
        frame_t = np.minimum(np.arange(len(feats)) * self.hop_length / self.sample_rate, duration)
        seq, times = window_summary(feats, frame_t, self.window_s, duration)
        pooled = np.concatenate([feats.mean(0), feats.std(0)]).astype(np.float32)
        return Features(pooled=pooled, sequence=seq, times=times)

    def extract(self, clips):
        # librosa works per signal; a clip's features never depend on its batch.
        return [self.extract_one(c) for c in clips]

    def metadata(self):
        import librosa

        return {**super().metadata(), "model": "mfcc (librosa)", "weights": None, "random_weights": False,
                "librosa": librosa.__version__, "sample_rate": self.sample_rate, "n_mfcc": self.n_mfcc,
                "n_mels": self.n_mels, "deltas": self.deltas, "win_length": self.win_length,
                "hop_length": self.hop_length, "n_fft": self.n_fft, "window_s": self.window_s,
                "layout": "[mean, std] of [mfcc, delta, (delta2)] per window / over the clip",
                "silence_dbfs": self.silence_dbfs}
