"""Attention-LSTM video tagger of PaddleVideo's MultimodalVideoTag (AttentionLstmErnie).

The original (applications/MultimodalVideoTag/scenario_lib/models/attention_lstm_ernie.py)
tags a video from RGB frame features, audio features and the title:

* each frame-sequence modality goes through a bidirectional LSTM (forward and backward
  `dynamic_lstm` over the unpadded LoD sequence, concatenated -> h_t of size 2H);
* the title's token states (ERNIE) go through a TextCNN: windows 2, 3 and 4 x 256 filters, tanh,
  max over the tokens (`sequence_conv_pool`), concatenated -> u (768-d);
* "text-guided" attention pooling of every LSTM output (Bahdanau-style, `lstm_pool_mode =
  text_guide`):
      e_t   = tanh(W [h_t; u] + b)          (size 2H)
      s_t   = v^T e_t
      a_t   = softmax over the valid steps t of s_t   (`sequence_softmax`)
      pool  = sum_t a_t h_t
  and with `lstm_pool_mode = self` the score is a single fc of h_t (s_t = w^T h_t + c);
* concatenation [pool_1; ...; pool_M; u] -> one fc -> sigmoid (multi-label) or softmax
  (a commented-out `add_bn` variant puts fc + BatchNorm + ReLU + dropout blocks first).

What this implementation adds or adapts (documented in docs/models_sequence.md):

* Any number of sequence modalities (all modalities except the text one), each with its own
  BiLSTM and its own attention. `text_modality: auto` picks "text" when it exists; `null`
  means no text (all modalities use self-attention, e.g. YouTube-8M rgb + audio).
* The text branch takes the cached token-level states of the text extractor (the store's
  "sequence" layout of the text modality) instead of fine-tuning ERNIE inside the model. When
  only a pooled text vector exists it is a 1-token sequence.
* Per sample, a video without text (present False) uses the self-attention score instead of
  the text-guided one, and its text vector u is zeroed in the concatenation, so an absent
  title can never change the prediction. (The original had no missing-text case.)
* nn.LSTM with packed sequences replaces Paddle's peephole `dynamic_lstm`: padded steps never
  enter the recurrence, so a video's output does not depend on the other videos of its batch.
* `head_hidden` turns on the `add_bn` head with LayerNorm in place of BatchNorm (per-sample
  statistics); null gives the released single-fc head.
* The model returns logits; the train loop applies sigmoid BCE or softmax cross-entropy.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.common import masked_softmax, mlp, modality_names, sequence_dims, sequence_view, zero


def resolve_text_modality(cfg, names: list[str]) -> str | None:
    """`text_modality` from the config: "auto" = "text" when present, null = none, else a name."""
    choice = cfg["text_modality"]
    if choice == "auto":
        return "text" if "text" in names else None
    if choice is not None and choice not in names:
        raise ValueError(f"text_modality={choice!r} is not one of the modalities {names}")
    return choice


class TextCNN(nn.Module):
    """Paddle `sequence_conv_pool` x len(windows): a 1-D convolution whose window of size k
    covers tokens [t - k//2, t - k//2 + k - 1] (zeros outside the sequence), tanh, then max over
    the valid tokens only."""

    def __init__(self, in_dim: int, windows=(2, 3, 4), filters: int = 256):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, filters, k, padding=k // 2) for k in windows)
        self.out_dim = filters * len(windows)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x [B, T, D] is zero on invalid steps (sequence_view), so the zero padding of the
        # convolution sees the same zeros whether the sample is alone or padded in a batch.
        steps = x.shape[1]
        x = x.transpose(1, 2)
        outs = []
        for conv in self.convs:
            y = torch.tanh(conv(x)[..., :steps])          # output j = window starting at j - k//2
            y = y.masked_fill(~mask[:, None, :], float("-inf")).amax(-1)
            outs.append(y)
        u = torch.cat(outs, dim=-1)
        return torch.where(mask.any(1, keepdim=True), u, torch.zeros_like(u))  # no tokens -> 0


class AttentionLSTMTagger(nn.Module):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        self.multilabel = multilabel
        seq_dims = sequence_dims(dims)
        names = modality_names(dims)
        if len(names) < 2:
            raise ValueError(f"videotag needs at least 2 modalities, got {names}")
        self.text = resolve_text_modality(cfg, names)
        self.seq_names = [m for m in names if m != self.text]
        sizes = dict(cfg["lstm_sizes"] or {})                   # per-modality hidden size, else lstm_size
        hidden = {m: int(sizes[m] if m in sizes else cfg["lstm_size"]) for m in self.seq_names}

        # A modality the store only has pooled (YouTube-8M video-level features) is always a
        # 1-step sequence: the BiLSTM would reduce to tanh-gated linear maps whose recurrent
        # weights never act, and attention over one step is 1. Such modalities get a plain
        # Linear + tanh to 2H and no attention, so every parameter is used.
        self.single_step = [m for m in names if m not in dims.get("sequence", {})]
        self.lstms = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(seq_dims[m], 2 * hidden[m]), nn.Tanh()) if m in self.single_step
            else nn.LSTM(seq_dims[m], hidden[m], batch_first=True, bidirectional=True) for m in self.seq_names})
        attended = [m for m in self.seq_names if m not in self.single_step]
        # Self-attention score s_t = w^T h_t + c (the `lstm_pool_mode = self` branch); used by
        # every video without text and by all videos when there is no text modality.
        self.self_score = nn.ModuleDict({m: nn.Linear(2 * hidden[m], 1) for m in attended})
        text_dim = 0
        if self.text is not None:
            filters, windows = int(cfg["textcnn_filters"]), tuple(cfg["textcnn_windows"])
            # Pooled-only text (one sentence vector): the TextCNN's window taps beyond the single
            # token would only see padding, so its 1-token equivalent, Linear + tanh, is used.
            self.textcnn = TextCNN(seq_dims[self.text], windows, filters) if self.text not in self.single_step \
                else nn.Sequential(nn.Linear(seq_dims[self.text], filters * len(windows)), nn.Tanh())
            text_dim = filters * len(windows)
            # e_t = tanh(W [h_t; u] + b) of size 2H, s_t = v^T e_t (no bias, as in the original)
            self.guide = nn.ModuleDict({m: nn.Linear(2 * hidden[m] + text_dim, 2 * hidden[m]) for m in attended})
            self.guide_score = nn.ModuleDict({m: nn.Linear(2 * hidden[m], 1, bias=False) for m in attended})
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        # The released model maps the concatenation to the classes with one fc; its `add_bn`
        # variant puts fc -> BatchNorm -> ReLU -> dropout blocks before it. `head_hidden` enables
        # that variant with LayerNorm instead of BatchNorm (no statistics shared across the batch):
        # without a hidden layer the modalities only add up in the logits, and a label that
        # depends on an interaction of two frame modalities (not the text) cannot be learnt.
        concat_dim = sum(2 * hidden[m] for m in self.seq_names) + text_dim
        head_hidden = cfg["head_hidden"]
        self.classifier = mlp(concat_dim, int(head_hidden), num_classes, float(cfg["dropout"])) if head_hidden \
            else nn.Linear(concat_dim, num_classes)

    def encode_sequence(self, m: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """BiLSTM over the valid steps only (packed): [B, T, 2H], zeros on invalid steps."""
        if m in self.single_step:
            return self.lstms[m](x) * mask[..., None].to(x.dtype)
        lengths = mask.sum(1)
        # pack_padded_sequence refuses length 0: run absent samples on one (zero) step and
        # zero their outputs afterwards; the attention mask removes them anyway.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstms[m](packed)[0], batch_first=True, total_length=x.shape[1])
        return h * mask[..., None].to(h.dtype)

    def attention_weights(self, m: str, h: torch.Tensor, mask: torch.Tensor, u: torch.Tensor | None,
                          has_text: torch.Tensor | None) -> torch.Tensor:
        """[B, T] pooling weights of modality m: text-guided where the video has text, else
        self-attention; softmax over the valid steps only (zero on padding)."""
        if m in self.single_step:
            return mask.to(h.dtype)
        scores = self.self_score[m](h).squeeze(-1)
        if u is not None:
            guided_in = torch.cat([h, u[:, None, :].expand(-1, h.shape[1], -1)], dim=-1)
            guided = self.guide_score[m](torch.tanh(self.guide[m](guided_in))).squeeze(-1)
            scores = torch.where(has_text[:, None], guided, scores)
        return masked_softmax(scores, mask, dim=1)

    def forward(self, batch: dict) -> dict:
        u = has_text = None
        if self.text is not None:
            tokens, token_mask = sequence_view(batch, self.text)
            has_text = token_mask.any(1)
            u = self.textcnn(tokens, token_mask) if self.text not in self.single_step else self.textcnn(tokens[:, 0])
            u = self.dropout(u)
        pooled = []
        for m in self.seq_names:
            x, mask = sequence_view(batch, m)
            h = self.dropout(self.encode_sequence(m, x, mask))
            a = self.attention_weights(m, h, mask, u, has_text)
            pooled.append((a[..., None] * h).sum(1))
        if u is not None:
            pooled.append(u * has_text[:, None].to(u.dtype))      # absent title: exact zeros
        logits = self.classifier(torch.cat(pooled, dim=-1))
        return {"logits": logits, "aux_loss": zero(logits), "losses": {}}
