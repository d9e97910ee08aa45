"""Audio families: VGGish's hop and times, MFCCs against a direct librosa call, and the transformers
audio networks (AST, wav2vec2, HuBERT, Whisper encoder, CLAP) loaded through the real
from_pretrained path from tiny random models this file saves itself (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors import Features, WeightsNotFound, build_extractor
from extractors.hf_audio import save_random_model
from pipeline.decode import Clip
from pipeline.demo import tone


def audio_clip(seconds: float, i: int = 0, sample_rate: int = 16000, freq: float | None = None, silent=False,
               audio=True) -> Clip:
    wave = None
    if audio:
        wave = (np.zeros(int(seconds * sample_rate), np.float32) if silent
                else tone(seconds, sample_rate, freq or 300.0 + 70 * i, seed=i))
    return Clip(video_id=f"a{i}", frames=np.zeros((1, 8, 8, 3), np.uint8), frame_times=np.zeros(1),
                frame_indices=np.zeros(1, np.int64), audio=wave, sample_rate=sample_rate, title=None,
                duration=seconds, fps=25.0)


def check_times(f: Features, duration: float):
    assert f.times.shape == (len(f.sequence), 2) and f.times.dtype == np.float64
    assert (f.times[:, 0] >= 0).all() and (f.times[:, 1] <= duration + 1e-6).all()
    assert (f.times[:, 1] >= f.times[:, 0]).all() and (np.diff(f.times[:, 0]) > 0).all()


def check_same(a: Features, b: Features, atol=1e-5):
    np.testing.assert_allclose(a.pooled, b.pooled, atol=atol, rtol=1e-4)
    np.testing.assert_allclose(a.sequence, b.sequence, atol=atol, rtol=1e-4)
    np.testing.assert_array_equal(a.times, b.times)


@pytest.fixture(scope="module")
def clips():
    # 2.5 s, 0.4 s (shorter than every window), 1.3 s at 44.1 kHz (resampled), silent, no track
    return [audio_clip(2.5, 0), audio_clip(0.4, 1), audio_clip(1.3, 2, 44100), audio_clip(1.0, 3, silent=True),
            audio_clip(1.0, 4, audio=False)]


# -- VGGish hop --------------------------------------------------------------------------------
@pytest.mark.parametrize("hop_s", [0.96, 0.32])
def test_vggish_hop_and_times(hop_s, one_thread):
    ext = build_extractor("audio", {"family": "vggish", "weights": "random", "precision": "fp32", "hop_s": hop_s})
    long, short = audio_clip(3.0, 0), audio_clip(0.5, 1)
    f_long, f_short = ext.extract([long, short])
    # frames = (S - 400) // 160 + 1 = 298 for 3 s; examples = (298 - 96) // hop + 1
    assert len(f_long.sequence) == (298 - 96) // round(hop_s * 100) + 1
    check_times(f_long, 3.0)
    np.testing.assert_allclose(np.diff(f_long.times[:, 0]), hop_s)
    assert f_short.sequence.shape == (1, 128) and f_short.times.tolist() == [[0.0, 0.5]]  # padded to one example
    check_same(ext.extract([short])[0], f_short)
    silent = audio_clip(1.0, 2, silent=True)
    assert ext.extract([silent])[0] is not None  # silence_dbfs: null (default) embeds it, as before
    gated = build_extractor("audio", {"family": "vggish", "weights": "random", "hop_s": hop_s, "silence_dbfs": -70})
    assert gated.extract([silent, short])[0] is None


def test_vggish_overlapping_examples_are_the_original_ones_interleaved(one_thread):
    """With hop 0.32 s every third example is one of the non-overlapping (0.96 s) examples."""
    cfg = {"family": "vggish", "weights": "random", "precision": "fp32"}
    clip = audio_clip(4.0, 5)
    a = build_extractor("audio", {**cfg, "hop_s": 0.96}).extract([clip])[0]
    b = build_extractor("audio", {**cfg, "hop_s": 0.32}).extract([clip])[0]
    np.testing.assert_allclose(b.sequence[::3][: len(a.sequence)], a.sequence, atol=1e-4)
    with pytest.raises(ValueError, match="hop_s"):
        build_extractor("audio", {**cfg, "hop_s": 0.333})


# -- MFCC --------------------------------------------------------------------------------------
def test_mfcc_matches_direct_librosa_call():
    import librosa

    ext = build_extractor("audio_mfcc", {"family": "mfcc"})
    clip = audio_clip(2.5, 0, freq=440.0)
    f = ext.extract([clip])[0]
    y = librosa.resample(clip.audio, orig_sr=16000, target_sr=22050)
    m = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=40, n_fft=1024, hop_length=220, win_length=551)
    frames = np.concatenate([m, librosa.feature.delta(m)]).T            # (F, 80)
    assert ext.dim == 160 and f.pooled.shape == (160,) and f.pooled.dtype == np.float32
    np.testing.assert_allclose(f.pooled, np.concatenate([frames.mean(0), frames.std(0)]), rtol=1e-4, atol=1e-3)
    # 1-s windows: frame k's centre is at k * 220 / 22050 s
    centre = np.arange(len(frames)) * 220 / 22050
    assert f.sequence.shape == (3, 160) and f.times.tolist() == [[0, 1], [1, 2], [2, 2.5]]
    for w in range(3):
        sel = frames[(centre >= w) & (centre < w + 1)]
        np.testing.assert_allclose(f.sequence[w], np.concatenate([sel.mean(0), sel.std(0)]), rtol=1e-4, atol=1e-3)


def test_mfcc_separates_tones_missing_and_batch(clips):
    ext = build_extractor("audio_mfcc", {"family": "mfcc", "deltas": 2})
    assert ext.dim == 240
    low = [ext.extract([audio_clip(2.0, i, freq=300.0)])[0].pooled for i in (10, 11)]
    high = ext.extract([audio_clip(2.0, 12, freq=2500.0)])[0].pooled
    assert np.linalg.norm(low[0] - low[1]) < 0.2 * np.linalg.norm(low[0] - high)
    feats = ext.extract(clips)
    assert feats[3] is None and feats[4] is None       # silent track, no track
    for f, c in zip(feats[:3], clips[:3]):
        check_times(f, c.duration)
    check_same(ext.extract(clips[1:2])[0], feats[1])
    assert ext.metadata()["random_weights"] is False and ext.metadata()["n_mfcc"] == 40


# -- transformers audio networks -----------------------------------------------------------------
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
CONV = dict(conv_dim=(16, 16, 16), conv_stride=(5, 4, 16), conv_kernel=(10, 4, 16), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2)
TINY = {  # kind: (config overrides, feature extractor overrides): the sizes of transformers' own unit tests
    "ast": ({**SMALL, "num_mel_bins": 16, "max_length": 64, "frequency_stride": 10, "time_stride": 10, "num_labels": 5},
            {"num_mel_bins": 16, "max_length": 64}),                                   # 0.64-s windows
    "wav2vec2": ({**SMALL, **CONV}, {}),
    "hubert": ({**SMALL, **CONV}, {}),
    "whisper": ({"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37, "num_mel_bins": 16,
                 "max_source_positions": 100, "max_target_positions": 32, "vocab_size": 300, "pad_token_id": 0,
                 "bos_token_id": 1, "eos_token_id": 1, "decoder_start_token_id": 2},
                {"feature_size": 16, "chunk_length": 2}),                              # 2-s window
    "clap": ({"audio_config": dict(hidden_size=32, projection_dim=16, num_mel_bins=16, spec_size=64, window_size=4,
                                   patch_size=2, patch_stride=2, depths=[1, 1], num_attention_heads=[2, 2],
                                   patch_embeds_hidden_size=16, enable_fusion=False),
              "text_config": dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=37, projection_dim=16), "projection_dim": 16},
             {"feature_size": 16, "max_length_s": 1, "truncation": "rand_trunc"}),     # 1-s windows
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers.utils import logging

    logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("hf_audio")
    return {kind: save_random_model(kind, root / kind, fe=fe, **config) for kind, (config, fe) in TINY.items()}


STEPS = {"ast": 0.64, "wav2vec2": 1.0, "hubert": 1.0, "whisper": 1.0, "clap": 1.0}


@pytest.mark.parametrize("kind", ["ast", "wav2vec2", "hubert", "whisper", "clap"])
def test_hf_audio_tiny_models(kind, tiny, clips, one_thread):
    ext = build_extractor(f"audio_{kind}", {"family": "hf_audio", "kind": kind, "model": str(tiny[kind]),
                                            "precision": "fp32"})
    assert ext.dim == (16 if kind == "clap" else 32)
    feats = ext.extract(clips)
    assert feats[3] is None and feats[4] is None            # silent, no audio track
    for f, c in zip(feats[:3], clips[:3]):
        assert f.pooled.shape == (ext.dim,) and f.pooled.dtype == np.float32 and np.isfinite(f.sequence).all()
        check_times(f, c.duration)
        assert len(f.sequence) == int(np.ceil(c.duration / STEPS[kind] - 1e-9))
        np.testing.assert_allclose(f.pooled, f.sequence.mean(0), rtol=1e-5, atol=1e-6)
    check_same(ext.extract(clips[1:2])[0], feats[1])      # the same alone as in a batch
    meta = ext.metadata()
    assert meta["random_weights"] is False and meta["sha256"] and meta["kind"] == kind


def test_hf_audio_loads_the_saved_weights(tiny):
    """The extractor's numbers are the saved network's: AST's pooled output and CLAP's projected
    audio embedding computed directly with the transformers classes on the same input."""
    import transformers as T

    wave = tone(0.64, 16000, 500.0)
    clip = audio_clip(0.64, 0)
    clip.audio = wave
    fe = T.ASTFeatureExtractor.from_pretrained(tiny["ast"])
    net = T.ASTModel.from_pretrained(tiny["ast"]).eval()
    with torch.no_grad():
        ref = net(**fe([wave], sampling_rate=16000, return_tensors="pt")).pooler_output[0].numpy()
    got = build_extractor("a", {"family": "hf_audio", "kind": "ast", "model": str(tiny["ast"]),
                                "precision": "fp32"}).extract([clip])[0]
    np.testing.assert_allclose(got.pooled, ref, rtol=1e-4, atol=1e-5)

    wave48 = tone(1.0, 48000, 500.0)
    clip = audio_clip(1.0, 0, 48000)
    clip.audio = wave48
    fe = T.ClapFeatureExtractor.from_pretrained(tiny["clap"])
    full = T.ClapModel.from_pretrained(tiny["clap"]).eval()
    with torch.no_grad():
        ref = full.get_audio_features(**fe([wave48], sampling_rate=48000, return_tensors="pt"))
        ref = torch.nn.functional.normalize(getattr(ref, "pooler_output", ref), dim=-1)[0].numpy()
    got = build_extractor("c", {"family": "hf_audio", "kind": "clap", "model": str(tiny["clap"]),
                                "precision": "fp32"}).extract([clip])[0]
    np.testing.assert_allclose(got.pooled, ref, rtol=1e-4, atol=1e-5)


def test_ast_scores_are_label_probabilities(tiny, clips, one_thread):
    ext = build_extractor("audio_ast_scores", {"family": "hf_audio", "kind": "ast", "model": str(tiny["ast"]),
                                               "output": "scores", "precision": "fp32"})
    assert ext.dim == 5
    f = ext.extract(clips[:1])[0]
    assert f.sequence.shape == (4, 5) and ((f.sequence > 0) & (f.sequence < 1)).all()
    assert ext.metadata()["labels"] == [f"LABEL_{i}" for i in range(5)]
    with pytest.raises(ValueError, match="scores"):
        build_extractor("x", {"family": "hf_audio", "kind": "wav2vec2", "output": "scores",
                              "model": str(tiny["wav2vec2"])})


def test_hf_audio_missing_weights_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROVIDEO_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound) as err:
        build_extractor("audio_ast", {"family": "hf_audio", "kind": "ast", "model": "nobody/no-such-ast"})
    msg = str(err.value)
    assert "\n" not in msg and "nobody/no-such-ast" in msg and "weights: random" in msg
    with pytest.raises(WeightsNotFound, match="folder"):
        build_extractor("audio_ast", {"family": "hf_audio", "kind": "ast", "model": str(tmp_path)})


def test_hf_audio_random_weights_are_recorded_and_seeded(tiny, clips, one_thread):
    cfg = {"family": "hf_audio", "kind": "wav2vec2", "model": str(tiny["wav2vec2"]), "weights": "random",
           "precision": "fp32"}
    a = build_extractor("w", cfg).extract(clips[:1])[0]
    b = build_extractor("w", cfg)
    check_same(b.extract(clips[:1])[0], a)
    assert b.metadata()["random_weights"] is True and "config of" in b.metadata()["architecture"]
