"""Time-stamped text modalities: subtitles (Clip.subtitles -> subtitle_text; the sidecar parser is
pipeline/scan.py's, tested in tests/test_decode_inputs.py)
and speech transcripts (Whisper through transformers -> speech_text), with a tiny random Whisper
and a byte-level tokenizer this file saves itself (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import pytest

from extractors import WeightsNotFound, build_extractor, embed_texts
from extractors.asr import save_random_whisper
from extractors.subtitles import clean_segments
from pipeline.decode import Clip
from pipeline.demo import tone


def clip_with(i: int, subtitles=None, seconds=4.0, audio=None, sample_rate=16000) -> Clip:
    return Clip(video_id=f"s{i}", frames=np.zeros((1, 8, 8, 3), np.uint8), frame_times=np.zeros(1),
                frame_indices=np.zeros(1, np.int64), audio=audio, sample_rate=sample_rate, title="a title",
                duration=seconds, fps=25.0, subtitles=subtitles)


SUBS = [(2.0, 3.5, "the chef adds   salt"), (0.5, 1.8, "welcome to my kitchen"), (3.6, 9.0, "now we wait")]


@pytest.fixture(scope="module")
def subtitle_ext():
    return build_extractor("subtitle_text", {"family": "subtitles"})


def test_subtitle_rows_times_pooled(subtitle_ext):
    clips = [clip_with(0, SUBS), clip_with(1, None), clip_with(2, [(0.0, 1.0, "   ")]), clip_with(3, SUBS[:1])]
    feats = subtitle_ext.extract(clips)
    assert feats[1] is None and feats[2] is None          # no subtitle, only blank text
    assert subtitle_ext.missing_reason(clips[1]).startswith("no subtitles")   # what the catalog records
    f = feats[0]
    assert f.sequence.shape == (3, 384) and f.pooled.shape == (384,) and f.pooled.dtype == np.float32
    # sorted by start, whitespace collapsed, the last one clipped to the 4-s clip
    assert f.times.tolist() == [[0.5, 1.8], [2.0, 3.5], [3.6, 4.0]]
    assert [t for _, _, t in f.segments] == ["welcome to my kitchen", "the chef adds salt", "now we wait"]
    ref = embed_texts(["welcome to my kitchen", "the chef adds salt", "now we wait"])
    np.testing.assert_allclose(f.sequence, ref, atol=1e-5)
    mean = ref.mean(0)
    np.testing.assert_allclose(f.pooled, mean / np.linalg.norm(mean), atol=1e-5)
    alone = subtitle_ext.extract([clips[3]])[0]
    np.testing.assert_allclose(alone.sequence, feats[3].sequence, atol=1e-5)


def test_clean_segments_drops_what_is_after_the_video():
    assert clean_segments([(5.0, 6.0, "late"), (-1.0, 0.5, " early ")], 4.0) == [(0.0, 0.5, "early")]
    assert clean_segments(None, 4.0) == []


# -- ASR -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from transformers.utils import logging

    logging.set_verbosity_error()
    # 2 layers, 32 wide, a 2-s window (100 positions = 200 mel frames)
    return save_random_whisper(tmp_path_factory.mktemp("whisper"), d_model=32, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                               decoder_ffn_dim=37, num_mel_bins=16, max_source_positions=100,
                               max_target_positions=64, fe={"chunk_length": 2})


def test_asr_segments_language_and_missing(whisper_dir, one_thread):
    ext = build_extractor("speech_text", {"family": "asr", "model": str(whisper_dir), "precision": "fp32",
                                          "max_new_tokens": 12})
    clips = [clip_with(0, audio=tone(1.5, 16000, 300.0), seconds=1.5),
             clip_with(1, audio=None),                                           # no audio track
             clip_with(2, audio=np.zeros(16000, np.float32), seconds=1.0),      # digital silence
             clip_with(3, audio=tone(3.0, 44100, 500.0, seed=3), seconds=3.0, sample_rate=44100)]  # > window: long-form
    feats = ext.extract(clips)
    assert feats[1] is None and feats[2] is None
    assert ext.missing_reason(clips[1]) == "no audio track" and ext.missing_reason(clips[2]).startswith("silent")
    assert ext.missing_reason(clip_with(4, audio=tone(1.0, 16000, 300.0))) == "no speech: the transcript has no words"
    for f, c in zip((feats[0], feats[3]), (clips[0], clips[3])):
        assert f is not None, "the tiny random Whisper (seed 0) writes text for these tones"
        assert f.sequence.shape == (len(f.segments), 384) and f.pooled.shape == (384,)
        assert f.times.tolist() == [[a, b] for a, b, _ in f.segments]
        assert (f.times[:, 0] >= 0).all() and (f.times[:, 1] <= c.duration + 1e-9).all()
        assert (np.diff(f.times[:, 0]) >= 0).all() and all(t.strip() for _, _, t in f.segments)
        np.testing.assert_allclose(f.sequence, embed_texts([t for _, _, t in f.segments]), atol=1e-5)
        assert f.info["language"] in ("en", "de")
    meta = ext.metadata()
    assert sum(meta["languages_seen"].values()) == 2 and meta["language"] == "detected per clip"
    alone = ext.extract([clips[0]])[0]
    assert alone.segments == feats[0].segments
    np.testing.assert_allclose(alone.sequence, feats[0].sequence, atol=1e-5)


def test_asr_forced_language_and_missing_weights(whisper_dir, tmp_path, monkeypatch, one_thread):
    ext = build_extractor("speech_text", {"family": "asr", "model": str(whisper_dir), "precision": "fp32",
                                          "max_new_tokens": 8, "language": "de"})
    f = ext.extract([clip_with(0, audio=tone(1.5, 16000, 300.0), seconds=1.5)])[0]
    assert f is None or f.info["language"] == "de"
    monkeypatch.setenv("MICROVIDEO_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound) as err:
        build_extractor("speech_text", {"family": "asr", "model": "nobody/no-such-whisper"})
    assert "nobody/no-such-whisper" in str(err.value) and "\n" not in str(err.value)
