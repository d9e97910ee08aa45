"""Speech transcripts with Whisper (Radford et al., "Robust speech recognition via large-scale weak
supervision", 2022) through transformers, embedded as the `speech_text` modality.

  audio -> 16 kHz -> WhisperFeatureExtractor log-mel (80 or 128 bands);
  clips up to one window (30 s) go through `generate` together, each padded to the window;
  longer clips are transcribed alone by transformers' sequential long-form decoding (the model
  moves its 30-s window to the last timestamp it predicted), so nothing is cut;
  `return_timestamps=True`: segments (start_s, end_s, text) from Whisper's timestamp tokens;
  language: `language: null` detects it per clip on the first window (`detect_language`, the
  argmax over the language tokens) and transcribes in it; it is recorded in Features.info
  ({"language": "en"}) and the list of them in the metadata; `language: en` forces it;
  segments -> the text encoder of text.py (extractors/subtitles.py: one row per segment, times,
  pooled mean), returned in Features.segments as well.
No audio track, digital silence (RMS below `silence_dbfs`) or a transcript with no text is a
missing modality, never the embedding of an empty string.

Weights: WhisperForConditionalGeneration + WhisperProcessor from an HF id (default
openai/whisper-base) or a local folder, through the HF cache; WeightsNotFound offline
(extractors/hf_audio.py:load_pretrained). `weights: random` keeps the tokenizer and config of
`model` (both must be on disk) with seeded random weights: speed tests only.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Extractor, autocast, resolve_precision
from .hf_audio import build_random, hf_cache_dir, load_pretrained, resample, weights_record, _is_local
from .mfcc import rms_dbfs
from .subtitles import clean_segments, embed_segments, text_encoder


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table: the byte-level BPE alphabet Whisper uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def save_random_whisper(folder, langs=("en", "de"), seed: int = 0, fe: dict | None = None, **config):
    """Save a seeded random Whisper with a byte-level tokenizer (256 bytes, Whisper's special
    tokens, 1,501 timestamps; no merges) and a generation config laid out like the released
    ones (language and task tokens, no-timestamps token): a local folder that loads and
    generates through the real path offline, for unit tests (tiny `config`) and speed
    benchmarks (whisper-base sizes; its vocabulary is smaller than the real 51,865)."""
    from pathlib import Path

    import transformers as T

    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{x}|>" for x in langs], "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tok = T.WhisperTokenizer(vocab={ch: i for i, ch in enumerate(_byte_alphabet())}, merges=[],
                             unk_token=specials[0], bos_token=specials[0], eos_token=specials[0], pad_token=specials[0])
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    cfg = T.WhisperConfig(**{**config, "vocab_size": len(tok), "pad_token_id": eot, "bos_token_id": eot,
                             "eos_token_id": eot, "decoder_start_token_id": sot})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T.WhisperForConditionalGeneration(cfg)
    model.generation_config = T.GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"], lang_to_id={f"<|{x}|>": ids[f"<|{x}|>"] for x in langs},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}, is_multilingual=True,
        max_initial_timestamp_index=50, max_length=cfg.max_target_positions, begin_suppress_tokens=[],
        suppress_tokens=[])
    folder = Path(folder)
    model.save_pretrained(folder)
    fe_ = T.WhisperFeatureExtractor(**{"feature_size": cfg.num_mel_bins, **(fe or {})})
    T.WhisperProcessor(feature_extractor=fe_, tokenizer=tok).save_pretrained(folder)
    return folder


class ASRExtractor(Extractor):
    family = "asr"
    defaults = "speech_text"
    reads = "audio"

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import hf_repo, local_file

        from .text import TextExtractor

        cfg = cls.resolved(cfg)
        name = str(cfg["model"])
        asr = [local_file(name)] if _is_local(name) else [hf_repo(name, cfg["revision"])]
        return asr + TextExtractor.weights_spec(cfg["text"])

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

        c = self.cfg
        self.model_name = str(c["model"])
        self.revision = c["revision"]
        self.weights = str(c["weights"])
        self.language = c["language"]
        self.task = str(c["task"])
        self.num_beams = int(c["num_beams"])
        self.max_new_tokens = int(c["max_new_tokens"])
        self.batch_clips = int(c["batch_clips"])
        self.silence_dbfs = float(c["silence_dbfs"])
        self.precision = resolve_precision(c["precision"], self.device)
        self.processor = load_pretrained(WhisperProcessor, self.model_name, self.revision, "tokenizer / feature extractor")
        if self.weights == "random":
            self.model, self.architecture = build_random(WhisperForConditionalGeneration, WhisperConfig,
                                                         self.model_name, self.revision, self.seed)
            self.model.generation_config = load_pretrained(GenerationConfig, self.model_name, self.revision,
                                                           "generation config")
        elif self.weights == "pretrained":
            self.model, self.architecture = load_pretrained(WhisperForConditionalGeneration, self.model_name,
                                                            self.revision), self.model_name
        else:
            raise ValueError(f"asr weights must be pretrained or random, got {self.weights!r}")
        self.model.to(self.device).eval()
        self.fe = self.processor.feature_extractor
        self.sample_rate = int(self.fe.sampling_rate)
        self.window_samples = int(self.fe.n_samples)
        gen = self.model.generation_config
        self.timestamp_begin = int(gen.no_timestamps_token_id) + 1
        self.id_to_lang = {v: k.strip("<|>") for k, v in getattr(gen, "lang_to_id", {}).items()}
        self.encoder = text_encoder(c["text"], self.device)
        self.dim = self.encoder.dim
        self.record = weights_record(self.model, self.model_name)
        self.languages_seen: dict[str, int] = {}

    # -- transcription -----------------------------------------------------------------------------
    def _features(self, waves: list[np.ndarray], long: bool):
        kw = dict(truncation=False, padding="longest", return_attention_mask=True) if long else {}
        inputs = self.fe(waves, sampling_rate=self.sample_rate, return_tensors="pt", **kw)
        return {k: v.to(self.device) for k, v in inputs.items() if k in ("input_features", "attention_mask")}

    def _languages(self, feats) -> list[str | None]:
        if self.language:
            return [str(self.language)] * len(feats["input_features"])
        if not self.id_to_lang:  # an English-only checkpoint: nothing to detect
            return [None] * len(feats["input_features"])
        frames = self.fe.nb_max_frames
        with autocast(self.device, self.precision):
            ids = self.model.detect_language(input_features=feats["input_features"][:, :, :frames])
        return [self.id_to_lang[int(i)] for i in ids]

    def _segment_text(self, tokens) -> str:
        ids = [int(t) for t in tokens if int(t) < self.timestamp_begin]
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def transcribe(self, waves: list[np.ndarray], long: bool) -> list[tuple[list, str | None]]:
        """[(segments [(start_s, end_s, text)], language)] per wave."""
        feats = self._features(waves, long)
        langs = self._languages(feats)
        # short-form: one generate call per 30-s window (Whisper's own short-form decoding), so a
        # clip costs at most max_new_tokens; long-form: transformers moves the window to the end
        kw = {"language": langs} if langs[0] is not None else {}
        kw["force_unique_generate_call"] = not long
        if self.id_to_lang:
            kw["task"] = self.task
        with autocast(self.device, self.precision):
            out = self.model.generate(**feats, return_timestamps=True, return_segments=True,
                                      num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, **kw)
        result = []
        for segs, lang in zip(out["segments"], langs):
            rows = [(float(s["start"]), float(s["end"]), self._segment_text(s["tokens"])) for s in segs]
            result.append(([r for r in rows if r[2]], lang))
        return result

    @torch.inference_mode()
    def extract(self, clips):
        waves = [None if c.audio is None or len(c.audio) == 0 or rms_dbfs(c.audio) < self.silence_dbfs
                 else resample(c.audio, c.sample_rate, self.sample_rate) for c in clips]
        found: list = [([], None)] * len(clips)
        short = [i for i, w in enumerate(waves) if w is not None and len(w) <= self.window_samples]
        for j in range(0, len(short), self.batch_clips):  # padded to one window: batch-independent
            part = short[j:j + self.batch_clips]
            for i, r in zip(part, self.transcribe([waves[i] for i in part], long=False)):
                found[i] = r
        for i, w in enumerate(waves):  # long-form: one clip at a time (its own padding)
            if w is not None and len(w) > self.window_samples:
                found[i] = self.transcribe([w], long=True)[0]
        durations = [len(w) / self.sample_rate if w is not None else c.duration for w, c in zip(waves, clips)]
        feats = embed_segments(self.encoder, [segs for segs, _ in found], durations)
        for f, (_, lang) in zip(feats, found):
            if f is not None:
                f.info = {"language": lang}
                self.languages_seen[str(lang)] = self.languages_seen.get(str(lang), 0) + 1
        return feats

    def missing_reason(self, clip):
        reason = super().missing_reason(clip)
        if reason.startswith(f"{self.modality}:"):   # audio there and not silent: Whisper wrote no words
            return "no speech: the transcript has no words"
        return reason

    def metadata(self):
        enc = self.encoder.metadata()
        return {**super().metadata(), "model": self.model_name, "weights": self.weights,
                "random_weights": self.weights == "random", "architecture": self.architecture,
                "revision_requested": self.revision, **self.record, "precision": self.precision,
                "language": self.language or "detected per clip", "languages_seen": dict(self.languages_seen),
                "task": self.task, "num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                "window_s": self.window_samples / self.sample_rate, "silence_dbfs": self.silence_dbfs,
                "text_encoder": {k: enc[k] for k in ("model", "sha256", "pooling")},
                "hf_cache": None if _is_local(self.model_name) else hf_cache_dir(),
                "rows": "one per transcript segment (times = Whisper's segment timestamps)"}


__all__ = ["ASRExtractor", "clean_segments"]
