"""Pretrained audio networks through Hugging Face transformers, one class for five kinds:

    kind      model class                     default weights (hub id)                      output
    ast       ASTForAudioClassification       MIT/ast-finetuned-audioset-10-10-0.4593       768 pooled CLS+dist / window
              (Gong et al., Interspeech 2021)   (`output: scores`: 527 AudioSet probabilities)
    wav2vec2  Wav2Vec2Model                   facebook/wav2vec2-base-960h                   768 / step
    hubert    HubertModel                     facebook/hubert-base-ls960                    768 / step
    whisper   WhisperModel's encoder          openai/whisper-base                           512 / step
    clap      ClapAudioModelWithProjection    laion/clap-htsat-unfused                      512 L2-normalised / window

Two ways of cutting the time axis, following how each network sees audio:
  * clip-level networks (ast, clap) take a fixed-length input: the audio is cut into windows of
    `window_s` every `hop_s` (default: the network's own input length, 10.24 s for AST, 10 s for
    CLAP; the last window is padded by the feature extractor), one embedding per window;
  * frame-level networks (wav2vec2, hubert, whisper) give a hidden state every 20 ms: the audio
    goes through in chunks of at most `chunk_s` (30 s, Whisper's fixed input) and the hidden
    states are averaged per `step_s` (1 s) step.
sequence = one row per window / step with its start/end seconds in `Features.times`;
pooled = mean of the rows. No audio track or digital silence (RMS below `silence_dbfs`) is a
missing modality. `output: scores` (ast only) gives sigmoid(logits) of the AudioSet head per
window and their mean: configs/extractors/audio_ast_scores.yaml, a second modality.

Weights: `from_pretrained(model, revision=...)` through the Hugging Face cache (`HF_HOME`,
default ~/.cache/huggingface/hub); a local folder is read without the network; offline and not
cached -> WeightsNotFound naming the repo and the folder. `weights: random` (only when asked;
recorded as random_weights) builds the architecture from the model's config.json when it is on
disk, else from the transformers default config of the kind (recorded as `architecture`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Extractor, Features, WeightsNotFound, _offline, autocast, resolve_precision, sha256_file
from .mfcc import rms_dbfs

# kind: (transformers model class, config class, feature extractor class). The weights each
# modality uses by default (the ids of the table above) are named in its YAML, audio_<kind>.yaml.
KINDS = {
    "ast": ("ASTForAudioClassification", "ASTConfig", "ASTFeatureExtractor"),
    "wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Config", "Wav2Vec2FeatureExtractor"),
    "hubert": ("HubertModel", "HubertConfig", "Wav2Vec2FeatureExtractor"),
    "whisper": ("WhisperModel", "WhisperConfig", "WhisperFeatureExtractor"),
    "clap": ("ClapAudioModelWithProjection", "ClapAudioConfig", "ClapFeatureExtractor"),
}
FRAME_LEVEL = ("wav2vec2", "hubert", "whisper")


# -- loading (shared with extractors/asr.py) ------------------------------------------------------
def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def load_pretrained(cls, name: str, revision: str | None, what: str = "model", **kw):
    """`cls.from_pretrained(name)` from a local folder or the HF cache (download only when not
    offline); a missing repo is WeightsNotFound naming the repo and the cache folder."""
    local = _is_local(name)
    try:
        return cls.from_pretrained(str(Path(name).expanduser()) if local else name,
                                   revision=None if local else (revision or "main"),
                                   local_files_only=local or _offline(), **kw)
    except OSError as e:
        where = f"folder {name}" if local else f"Hugging Face repo {name} (revision {revision or 'main'})"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsNotFound(
            f"{what} of {where} is not available ({reason}): fetch it on a machine with internet "
            f"(`run_pipeline.py weights fetch`, or huggingface-cli download {name}) into the cache "
            f"{hf_cache_dir()} (set HF_HOME to move it), point `model:` at a local folder, or set "
            f"`weights: random` in the extractor's YAML for untrained features.") from None


def build_random(model_cls, config_cls, name: str, revision: str | None, seed: int, **config_kw):
    """(model with seeded random weights, where its architecture came from): the model's own
    config.json when it is on disk, else the transformers default config of the class."""
    try:
        config = load_pretrained(config_cls, name, revision, "config")
        origin = f"config of {name}"
    except WeightsNotFound:
        config, origin = config_cls(**config_kw), f"default {config_cls.__name__}"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval(), origin


def weights_record(model, name: str) -> dict:
    """What the metadata says about the weights: the hub commit or the local file's sha256."""
    rec = {"revision": getattr(model.config, "_commit_hash", None), "sha256": None}
    if _is_local(name):
        for f in ("model.safetensors", "pytorch_model.bin"):
            if (Path(name).expanduser() / f).exists():
                rec["sha256"] = sha256_file(Path(name).expanduser() / f)
                break
    return rec


def resample(audio: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    if sample_rate == target:
        return np.asarray(audio, np.float32)
    import torchaudio

    return torchaudio.functional.resample(torch.as_tensor(audio, dtype=torch.float32), sample_rate, target).numpy()


def window_starts(duration: float, window_s: float, hop_s: float) -> np.ndarray:
    """Starts of windows of `window_s` every `hop_s` that cover [0, duration] (at least one)."""
    starts = [0.0]
    while starts[-1] + window_s < duration - 1e-6:
        starts.append(starts[-1] + hop_s)
    return np.asarray(starts)


def mean_per_step(hidden: np.ndarray, frame_s: float, duration: float, step_s: float):
    """Frame-level states (F, D), one every `frame_s`, -> (mean per step (T, D), times (T, 2))."""
    n = max(1, int(np.ceil(duration / step_s - 1e-9)))
    index = np.minimum((np.arange(len(hidden)) * frame_s // step_s).astype(np.int64), n - 1)
    rows, times = [], []
    for k in range(n):
        sel = hidden[index == k]
        if len(sel):
            rows.append(sel.mean(0))
            times.append((k * step_s, min((k + 1) * step_s, duration)))
    return np.stack(rows).astype(np.float32), np.asarray(times, np.float64)


def save_random_model(kind: str, folder: str | Path, seed: int = 0, fe: dict | None = None, **config) -> Path:
    """Save a seeded random network of `kind` (the transformers config of the kind with `config`
    overrides; a full ClapModel for clap, as the released checkpoints are) and its feature
    extractor (`fe` overrides) with save_pretrained: a local folder that loads through the real
    path, for unit tests (tiny sizes) and speed benchmarks (default sizes) offline."""
    import transformers as T

    model_cls, config_cls, fe_cls = KINDS[kind]
    if kind == "clap":
        model_cls, cfg = "ClapModel", T.ClapConfig(**config)
    else:
        cfg = getattr(T, config_cls)(**config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(T, model_cls)(cfg)
    folder = Path(folder)
    model.save_pretrained(folder)
    getattr(T, fe_cls)(**(fe or {})).save_pretrained(folder)
    return folder


# -- the extractor --------------------------------------------------------------------------------
class HFAudioExtractor(Extractor):
    family = "hf_audio"
    defaults = "audio_ast"   # declares the keys of every kind; audio_<kind>.yaml set their own values
    reads = "audio"

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import hf_repo, local_file

        cfg = cls.resolved(cfg)
        if str(cfg["weights"]) == "random":
            return []
        name = str(cfg["model"])
        return [local_file(name)] if _is_local(name) else [hf_repo(name, cfg["revision"])]

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        import transformers

        c = self.cfg
        self.kind = str(c["kind"])
        if self.kind not in KINDS:
            raise ValueError(f"hf_audio kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if not c["model"]:
            raise ValueError(f"hf_audio ({self.kind}): `model:` is empty; name an HF id or a local folder "
                             f"(configs/extractors/audio_{self.kind}.yaml names the published one)")
        model_cls, config_cls, fe_cls = (getattr(transformers, n) for n in KINDS[self.kind])
        self.model_name = str(c["model"])
        self.revision = c["revision"]
        self.weights = str(c["weights"])
        self.output = str(c["output"])
        if self.output not in ("embedding", "scores") or (self.output == "scores" and self.kind != "ast"):
            raise ValueError(f"hf_audio output must be embedding, or scores with kind ast; got {self.output!r} "
                             f"with kind {self.kind!r}")
        self.precision = resolve_precision(c["precision"], self.device)
        self.batch_windows = int(c["batch_windows"])
        self.silence_dbfs = float(c["silence_dbfs"])
        self.architecture = self.model_name
        if self.weights == "random":
            extra = {"num_labels": 527} if self.kind == "ast" else {}
            self.model, self.architecture = build_random(model_cls, config_cls, self.model_name, self.revision,
                                                         self.seed, **extra)
        elif self.weights == "pretrained":
            self.model, info = load_pretrained(model_cls, self.model_name, self.revision, output_loading_info=True)
            if self.output == "scores" and any(k.startswith("classifier") for k in info.get("missing_keys", [])):
                raise ValueError(f"{self.model_name} has no AudioSet classifier head: `output: scores` needs a "
                                 "fine-tuned AST checkpoint (e.g. MIT/ast-finetuned-audioset-10-10-0.4593)")
        else:
            raise ValueError(f"hf_audio weights must be pretrained or random, got {self.weights!r}")
        try:
            self.fe = load_pretrained(fe_cls, self.model_name, self.revision, "feature extractor")
        except WeightsNotFound:
            if self.weights != "random":
                raise
            self.fe = fe_cls()  # random weights: the default front end of the kind
        if self.kind == "clap":  # the front end must match the tower: 4 stacked mels only for fusion
            fusion = bool(getattr(self.model.config, "enable_fusion", False))
            if fusion != (self.fe.truncation == "fusion"):
                self.fe.truncation = "fusion" if fusion else "rand_trunc"  # windows never exceed max_length_s
        if self.kind == "whisper":
            self.model = self.model.get_encoder()  # the encoder alone; the decoder is the ASR's (asr.py)
        self.model.to(self.device).eval()
        self.sample_rate = int(self.fe.sampling_rate)
        self.record = weights_record(self.model, self.model_name)
        self._set_geometry()

    def _set_geometry(self):
        c = self.cfg
        if self.kind in FRAME_LEVEL:
            self.chunk_s = float(c["chunk_s"])
            self.step_s = float(c["step_s"])
            if self.kind == "whisper":  # input padded to chunk_length s; 2x conv stride over 10 ms frames
                self.chunk_s = min(self.chunk_s, float(self.fe.chunk_length))
                self.frame_s = 2 * self.fe.hop_length / self.sample_rate
            else:
                self.frame_s = float(np.prod(self.model.config.conv_stride)) / self.sample_rate
            self.dim = int(self.model.config.d_model if self.kind == "whisper" else self.model.config.hidden_size)
        else:
            native = (self.fe.max_length * 0.01 if self.kind == "ast" else float(self.fe.max_length_s))
            self.window_s = float(c["window_s"] or native)     # null = the network's input length
            self.hop_s = float(c["hop_s"] or self.window_s)    # null = non-overlapping
            if self.output == "scores":
                self.dim = int(self.model.config.num_labels)
            elif self.kind == "ast":
                self.dim = int(self.model.config.hidden_size)
            else:
                self.dim = int(self.model.config.projection_dim)

    # -- forward passes ---------------------------------------------------------------------------
    def _forward(self, waves: list[np.ndarray]) -> np.ndarray:
        """One network call on equal-role inputs -> (N, D) (clip-level) or (N, F, D) (frame-level)."""
        inputs = self.fe(waves, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if self.kind == "whisper":
            inputs = {"input_features": inputs["input_features"]}
        with autocast(self.device, self.precision):
            if self.kind == "ast" and self.output == "scores":
                out = torch.sigmoid(self.model(**inputs).logits.float())
            elif self.kind == "ast":
                out = self.model.audio_spectrogram_transformer(**inputs).pooler_output
            elif self.kind == "clap":
                out = torch.nn.functional.normalize(self.model(**inputs).audio_embeds.float(), dim=-1)
            else:
                out = self.model(**inputs).last_hidden_state
        return out.float().cpu().numpy()

    def _clip_level(self, waves: list[np.ndarray]) -> list[Features]:
        pieces, owner, times = [], [], []
        for i, w in enumerate(waves):
            duration = len(w) / self.sample_rate
            for s in window_starts(duration, self.window_s, self.hop_s):
                a, b = int(round(s * self.sample_rate)), int(round((s + self.window_s) * self.sample_rate))
                piece = w[a:b]  # a last window of a few ms is padded to 0.1 s (front ends need >= 25 ms)
                pieces.append(np.pad(piece, (0, max(0, self.sample_rate // 10 - len(piece)))))
                owner.append(i)
                times.append((s, min(s + self.window_s, duration)))
        rows = np.concatenate([self._forward(pieces[j:j + self.batch_windows])
                               for j in range(0, len(pieces), self.batch_windows)])
        owner, times = np.asarray(owner), np.asarray(times, np.float64)
        return [Features(pooled=rows[owner == i].mean(0), sequence=np.ascontiguousarray(rows[owner == i]),
                         times=times[owner == i]) for i in range(len(waves))]

    def _frame_level(self, wave: np.ndarray) -> Features:
        duration = len(wave) / self.sample_rate
        per_chunk = int(round(self.chunk_s * self.sample_rate))
        hidden = []
        # wav2vec2 / HuBERT normalise each input and have no padding mask in the base models:
        # each chunk goes alone at its own length, so a clip's features never depend on its batch.
        for a in range(0, len(wave), per_chunk):
            piece = wave[a:a + per_chunk]
            h = self._forward([piece])[0]
            hidden.append(h[: max(1, int(np.ceil(len(piece) / self.sample_rate / self.frame_s)))])
        seq, times = mean_per_step(np.concatenate(hidden), self.frame_s, duration, self.step_s)
        return Features(pooled=seq.mean(0), sequence=seq, times=times)

    @torch.inference_mode()
    def extract(self, clips):
        waves = [None if c.audio is None or len(c.audio) == 0 or rms_dbfs(c.audio) < self.silence_dbfs
                 else resample(c.audio, c.sample_rate, self.sample_rate) for c in clips]
        idx = [i for i, w in enumerate(waves) if w is not None]
        out: list[Features | None] = [None] * len(clips)
        if not idx:
            return out
        if self.kind in FRAME_LEVEL:
            feats = [self._frame_level(waves[i]) for i in idx]
        else:
            feats = self._clip_level([waves[i] for i in idx])
        for i, f in zip(idx, feats):
            out[i] = f
        return out

    def metadata(self):
        geometry = ({"chunk_s": self.chunk_s, "step_s": self.step_s, "frame_s": self.frame_s}
                    if self.kind in FRAME_LEVEL else {"window_s": self.window_s, "hop_s": self.hop_s})
        labels = None
        if self.output == "scores":
            id2label = self.model.config.id2label
            labels = [id2label[i] for i in range(self.dim)]
        return {**super().metadata(), "model": self.model_name, "kind": self.kind, "weights": self.weights,
                "random_weights": self.weights == "random", "architecture": self.architecture,
                "revision_requested": self.revision, **self.record, "precision": self.precision,
                "output": self.output, "sample_rate": self.sample_rate, **geometry,
                "silence_dbfs": self.silence_dbfs, "labels": labels,
                "hf_cache": None if _is_local(self.model_name) else hf_cache_dir()}
