"""Time-stamped text of a video (subtitles here, speech transcripts in asr.py) embedded by the
transformers text encoder of text.py, as the `subtitle_text` modality.

Input: `Clip.subtitles` = [(start_s, end_s, text), ...], filled at decode from a sidecar
.srt / .vtt / .ass beside the video (recorded at scan) or an embedded subtitle stream; None or no
non-blank segment = missing modality (never the embedding of an empty string).

sequence = one row per segment: the encoder's masked-mean embedding of its text (L2-normalised
           with `normalize: true`), times = the segment's start/end, clipped to the clip;
pooled   = the mean of the segment rows (L2-normalised again with `normalize: true`).
Segments are sorted by start time; whitespace is collapsed; no character cut (each segment is
cut at `max_tokens` tokens). Titles stay the `text` modality.

The sidecar files are parsed once, at scan, by pipeline/scan.py:read_subtitles (pysubs2); this
module only sees the segments.
"""
from __future__ import annotations

import numpy as np

from .base import Extractor, Features
from .text import TextExtractor

TEXT_KEYS = ("model", "max_tokens", "normalize", "precision", "batch_size", "revision")


def clean_segments(segments, duration: float | None) -> list[tuple[float, float, str]]:
    """Sorted, whitespace-collapsed, non-blank segments with times inside [0, duration]."""
    out = []
    for start, end, text in segments or []:
        text = " ".join(str(text).split())
        if not text:
            continue
        start, end = max(0.0, float(start)), max(0.0, float(end))
        if duration and duration > 0:
            if start >= duration:
                continue  # after the end of the video: belongs to something else
            start, end = min(start, duration), min(end, duration)
        out.append((start, max(start, end), text))
    return sorted(out, key=lambda s: (s[0], s[1]))


def text_encoder(cfg: dict, device) -> TextExtractor:
    """The title encoder of text.py with the segment options of `cfg` (every key of TEXT_KEYS,
    declared in subtitle_text.yaml and in speech_text.yaml's `text:` block); no character cut."""
    return TextExtractor({**{k: cfg[k] for k in TEXT_KEYS}, "max_chars": None}, str(device))


def embed_segments(encoder: TextExtractor, per_clip: list, durations: list) -> list[Features | None]:
    """[segments or None] per clip -> Features (one row per segment, times) or None."""
    cleaned = [clean_segments(s, d) for s, d in zip(per_clip, durations)]
    texts = [t for segs in cleaned for _, _, t in segs]
    if not texts:
        return [None] * len(per_clip)
    rows = encoder.encode(texts)[0]
    out, start = [], 0
    for segs in cleaned:
        if not segs:
            out.append(None)
            continue
        seq = rows[start:start + len(segs)]
        start += len(segs)
        pooled = seq.mean(0)
        if encoder.normalize:
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        out.append(Features(pooled=pooled.astype(np.float32), sequence=np.ascontiguousarray(seq),
                            times=np.asarray([(a, b) for a, b, _ in segs], np.float64),
                            segments=segs))
    return out


class SubtitleExtractor(Extractor):
    family = "subtitles"
    defaults = "subtitle_text"
    reads = "subtitles"

    @classmethod
    def weights_spec(cls, cfg):
        cfg = cls.resolved(cfg)
        return TextExtractor.weights_spec({k: cfg[k] for k in TEXT_KEYS})

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        self.encoder = text_encoder(self.cfg, self.device)
        self.dim = self.encoder.dim

    def extract(self, clips):
        return embed_segments(self.encoder, [c.subtitles for c in clips], [c.duration for c in clips])

    def metadata(self):
        enc = self.encoder.metadata()
        return {**super().metadata(), **{k: enc[k] for k in ("model", "weights", "sha256", "random_weights",
                                                             "precision", "pooling")},
                "rows": "one per subtitle segment (times = its start/end)"}
