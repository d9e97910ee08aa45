"""Per-segment emotion cues from the NRC emotion lexicon (Mohammad & Turney 2013), the affective
target of MART (models/mart.py). The lexicon ships with the `nrclex` package (nrc_en.json:
word -> its emotions); it is read directly and text is tokenised with a regex (nrclex's own
pipeline needs TextBlob corpora, which cannot be downloaded here).

`segment_emotions(text_segments, duration, segments)` turns time-aligned text (subtitles from
the `subtitle_text` extractor, speech transcripts from `speech_text`: [(start_s, end_s, text)])
into a [S, 10] array of lexicon counts per temporal segment: the 8 emotions of EMOTIONS, then
the 2 sentiments of SENTIMENTS. A text segment's words count in every video segment it
overlaps, weighted by the overlapping share of its duration. Without timed text the title is
the fallback: its counts are spread evenly over the segments. Store the result as the `emotion`
modality (sequence layout, one row per segment) and MART reads it as its target.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Extractor, Features

EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")
SENTIMENTS = ("positive", "negative")
COLUMNS = EMOTIONS + SENTIMENTS
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=1)
def lexicon() -> dict[str, np.ndarray]:
    """word -> [10] 0/1 vector over COLUMNS, from nrclex's bundled nrc_en.json."""
    import nrclex

    path = Path(nrclex.__file__).parent / "data" / "nrc_en.json"
    if not path.is_file():
        raise FileNotFoundError(f"NRC lexicon not found: {path} (reinstall the nrclex package)")
    index = {c: i for i, c in enumerate(COLUMNS)}
    out = {}
    for word, tags in json.loads(path.read_text()).items():
        v = np.zeros(len(COLUMNS), np.float32)
        for t in tags:
            if t in index:
                v[index[t]] = 1.0
        out[word.lower()] = v
    return out


def text_emotions(text: str) -> np.ndarray:
    """[10] lexicon counts of a text (every token found in the lexicon adds its vector)."""
    lex = lexicon()
    total = np.zeros(len(COLUMNS), np.float32)
    for token in WORD.findall((text or "").lower()):
        if token in lex:
            total += lex[token]
    return total


def segment_emotions(text_segments, duration: float | None, segments: int, title: str | None = None) -> np.ndarray:
    """[segments, 10] counts per temporal segment (see the module docstring)."""
    out = np.zeros((segments, len(COLUMNS)), np.float32)
    timed = [(float(s), float(e), t) for s, e, t in (text_segments or []) if t and e >= s]
    if timed:
        end = max(duration or 0.0, max(e for _, e, _ in timed)) or 1.0
        edges = np.linspace(0.0, end, segments + 1)
        for start, stop, text in timed:
            counts = text_emotions(text)
            span = max(stop - start, 1e-6)
            for s in range(segments):
                overlap = min(stop, edges[s + 1]) - max(start, edges[s])
                if stop == start and edges[s] <= start < edges[s + 1]:
                    overlap = span   # an instant (a zero-length cue) counts where it is
                if overlap > 0:
                    out[s] += counts * min(1.0, overlap / span)
    elif title:
        out += text_emotions(title) / segments
    return out



class EmotionLexiconExtractor(Extractor):
    """Family `nrc_emotion` (modality `emotion`, 10 columns): segment_emotions over the clip's
    subtitles (sidecar or embedded stream, `Clip.subtitles`), the title as the fallback, a missing
    modality when the clip has neither. One row per temporal segment (`segments` in the YAML),
    times = the segment's span; pooled = the counts summed over the clip. Speech transcripts are
    made by another extractor (`speech_text`) in the same pass, so they are not read here."""

    family = "nrc_emotion"
    modality = "emotion"
    defaults = "emotion"
    reads = "text"
    dim = len(COLUMNS)

    def extract(self, clips):
        n = int(self.cfg["segments"])
        out = []
        for clip in clips:
            subs, title = getattr(clip, "subtitles", None), getattr(clip, "title", None)
            if not subs and not (title and str(title).strip()):
                out.append(None)   # no text at all: the modality is missing, not "no emotion"
                continue
            seq = segment_emotions(subs, clip.duration, n, title=title)
            edges = np.linspace(0.0, float(clip.duration or 0.0), n + 1)
            out.append(Features(pooled=seq.sum(0), sequence=seq, times=np.stack([edges[:-1], edges[1:]], 1)))
        return out

    def metadata(self):
        return {**super().metadata(), "columns": list(COLUMNS), "lexicon": "NRC Emotion Lexicon (nrclex nrc_en.json)"}
