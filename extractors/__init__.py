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

from .asr import ASRExtractor
from .audio_dae import AudioDAEExtractor
from .base import Extractor, Features, WeightsNotFound
from .doc2vec import Doc2VecExtractor
from .emotion import EmotionLexiconExtractor
from .hf_audio import HFAudioExtractor
from .i3d import I3DExtractor
from .image_text import ImageTextExtractor
from .mfcc import MFCCExtractor
from .resnet import ResNetExtractor
from .scene import SceneExtractor
from .subtitles import SubtitleExtractor
from .text import TextExtractor, embed_texts
from .trajectory import TrajectoryExtractor
from .vggish import VGGishExtractor
from .video3d import Video3DExtractor

FAMILIES = {
    "resnet": ResNetExtractor,
    "vggish": VGGishExtractor,
    "audio_dae": AudioDAEExtractor,
    "transformer_text": TextExtractor,
    "doc2vec": Doc2VecExtractor,
    "dense_trajectory": TrajectoryExtractor,
    "mfcc": MFCCExtractor,
    "hf_audio": HFAudioExtractor,
    "subtitles": SubtitleExtractor,
    "asr": ASRExtractor,
    "video3d": Video3DExtractor,
    "i3d": I3DExtractor,
    "image_text": ImageTextExtractor,
    "scene": SceneExtractor,
    "nrc_emotion": EmotionLexiconExtractor,
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
