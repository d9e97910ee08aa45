"""Feature extractors, one family per file. `build_extractor(name, cfg, device)` picks the class
named by the YAML's `family:` (configs/extractors/<name>.yaml); <name> is the modality in the store.

    family             class                  file           output (pooled / sequence)
    resnet             ResNetExtractor        resnet.py      2048 / per frame
    vggish             VGGishExtractor        vggish.py      128 / per 0.96 s example
    audio_dae          AudioDAEExtractor      audio_dae.py   200 / per second      (fit)
    transformer_text   TextExtractor          text.py        384 (MiniLM) / per token
    doc2vec            Doc2VecExtractor       doc2vec.py     100 / none            (fit)
    dense_trajectory   TrajectoryExtractor    trajectory.py  2048 / per segment    (fit)
    mfcc               MFCCExtractor          mfcc.py        160 mean+std / per 1 s window
    hf_audio           HFAudioExtractor       hf_audio.py    AST / wav2vec2 / HuBERT / Whisper enc. / CLAP per window
    subtitles          SubtitleExtractor      subtitles.py   384 (MiniLM) / per subtitle segment
    asr                ASRExtractor           asr.py         384 (MiniLM) / per Whisper transcript segment
    video3d            Video3DExtractor       video3d.py     512-1024 (R(2+1)D, S3D, MViT, Swin3D) or 400 scores / per window
    i3d                I3DExtractor           i3d.py         1024 per stream (RGB, flow) or 400 scores / per window
    image_text         ImageTextExtractor     image_text.py  CLIP / SigLIP / OpenCLIP / timm / per frame (+ embed_texts)
    scene              SceneExtractor         scene.py       1000 (ImageNet) scene scores, global + local (Sun Eq. 1-2) / per frame
    nrc_emotion        EmotionLexiconExtractor emotion.py    10 NRC lexicon counts (MART's target) / per temporal segment
"""
from __future__ import annotations

import importlib

from .base import Extractor, Features, WeightsNotFound, _plain
from .text import embed_texts   # cheap: transformers is imported when a text encoder is built

# family (YAML `family:`) -> "module:Class", imported on first use: a run that extracts `visual`
# alone never imports transformers, open_clip, timm, PySceneDetect or librosa (nor the other
# families' modules). Each class names its reference YAML in `defaults`.
FAMILIES: dict[str, str] = {
    "resnet": "extractors.resnet:ResNetExtractor",
    "vggish": "extractors.vggish:VGGishExtractor",
    "audio_dae": "extractors.audio_dae:AudioDAEExtractor",
    "transformer_text": "extractors.text:TextExtractor",
    "doc2vec": "extractors.doc2vec:Doc2VecExtractor",
    "dense_trajectory": "extractors.trajectory:TrajectoryExtractor",
    "mfcc": "extractors.mfcc:MFCCExtractor",
    "hf_audio": "extractors.hf_audio:HFAudioExtractor",
    "subtitles": "extractors.subtitles:SubtitleExtractor",
    "asr": "extractors.asr:ASRExtractor",
    "video3d": "extractors.video3d:Video3DExtractor",
    "i3d": "extractors.i3d:I3DExtractor",
    "image_text": "extractors.image_text:ImageTextExtractor",
    "scene": "extractors.scene:SceneExtractor",
    "nrc_emotion": "extractors.emotion:EmotionLexiconExtractor",
}


def family_class(family: str) -> type[Extractor]:
    """The class of a YAML `family:` name (imports its module)."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {sorted(FAMILIES)}")
    module, attr = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), attr)


def build_extractor(name: str, cfg, device: str = "cpu", seed: int | None = None) -> Extractor:
    """The extractor for modality `name` from its config section (`cfg.extractors.<name>`), merged
    strictly over its family's reference YAML; `seed` = the run's seed (random weights, fitting)."""
    family = cfg.get("family") if cfg is not None else None
    if family not in FAMILIES:
        raise ValueError(f"extractor {name!r}: family {family!r} is not one of {sorted(FAMILIES)}")
    return family_class(family)({**_plain(cfg), "modality": name}, device, seed=seed)


__all__ = ["Extractor", "Features", "WeightsNotFound", "FAMILIES", "family_class", "build_extractor",
           "embed_texts"]
