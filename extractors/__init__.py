"""Feature extractors, one family per file. `build_extractor(name, cfg, device)` picks the class
named by the YAML's `family:` (configs/extractors/<name>.yaml); <name> is the modality in the store.

    family             class                  file           output (pooled / sequence)
    resnet             ResNetExtractor        resnet.py      2048 / per frame
    vggish             VGGishExtractor        vggish.py      128 / per 0.96 s example
    audio_dae          AudioDAEExtractor      audio_dae.py   200 / per second      (fit)
    transformer_text   TextExtractor          text.py        384 (MiniLM) / per token
    doc2vec            Doc2VecExtractor       doc2vec.py     100 / none            (fit)
    dense_trajectory   TrajectoryExtractor    trajectory.py  2048 / per segment    (fit)
"""
from __future__ import annotations

from .audio_dae import AudioDAEExtractor
from .base import Extractor, Features, WeightsNotFound
from .doc2vec import Doc2VecExtractor
from .resnet import ResNetExtractor
from .text import TextExtractor, embed_texts
from .trajectory import TrajectoryExtractor
from .vggish import VGGishExtractor

FAMILIES = {
    "resnet": ResNetExtractor,
    "vggish": VGGishExtractor,
    "audio_dae": AudioDAEExtractor,
    "transformer_text": TextExtractor,
    "doc2vec": Doc2VecExtractor,
    "dense_trajectory": TrajectoryExtractor,
}


def build_extractor(name: str, cfg, device: str = "cpu") -> Extractor:
    """The extractor for modality `name` from its config section (`cfg.extractors.<name>`)."""
    family = cfg.get("family") if cfg is not None else None
    if family not in FAMILIES:
        raise ValueError(f"extractor {name!r}: family {family!r} is not one of {sorted(FAMILIES)}")
    ext = FAMILIES[family](cfg, device)
    ext.modality = name
    return ext


__all__ = ["Extractor", "Features", "WeightsNotFound", "FAMILIES", "build_extractor", "embed_texts"]
