"""MART `variant: masking-only` (the earlier adaptation; models/mart.py is `variant: paper`):
a masked temporal model on cached per-step features.

MART (Zhang et al., "MART: Masked Affective RepresenTation Learning via Masked Temporal
Distribution Distillation", CVPR 2024) trains a video transformer by masking the temporal
segments that matter most for the label (found from the model's own attention), with a masking
ratio that grows during training, and asks the network to recover the masked content while it
classifies; the model cannot rely on the few most salient segments and has to use the rest.

This implementation keeps that recipe and adapts it to features cached in the store (there are
no raw frames or patch tokens here):

1. Segment tokens. Each modality's valid steps are resampled to S segments (segment s averages
   steps [floor(s L / S), ceil((s + 1) L / S)) of a video with L valid steps, like adaptive
   average pooling, per video), projected to d_model by a per-modality linear layer, and either
     fusion "sum":    token_s = sum over present modalities (W_m seg_m,s + E_mod[m]) + E_pos[s]
     fusion "tokens": one token per (modality, segment): W_m seg_m,s + E_mod[m] + E_pos[s]
   A learned CLS token is prepended. Absent modalities contribute nothing ("sum") or are removed
   by the key padding mask ("tokens"); a pooled-only modality (L = 1) is repeated over segments.
2. A pre-norm transformer encoder with key padding masks; logits from the CLS output.
3. Attention-guided masking (training only). A no-grad pass gives the CLS attention of the last
   layer (averaged over heads), summed per segment; the round(ratio * S) most-attended segments
   (at least one when ratio > 0) have all their tokens replaced by a learned mask token (plus
   their position / modality embeddings), and the real pass runs on that masked input.
4. Masking ratio schedule: ratio(p) = start + (end - start) * min(1, p / ramp), where p in [0, 1]
   is the training progress that the train loop sets with `set_progress` each epoch. Evaluation
   (model.eval()) never masks.
5. Reconstruction: a linear decoder per modality predicts the masked segments' input features
   from the encoder output (per-segment layer-normalised targets when `normalize_targets`,
   as MAE's normalised-pixel loss, so modalities of different scales weigh the same); the
   mean squared error over masked segments of present modalities is `aux_loss` (x
   `recon_weight`) and `losses["recon"]`. MART distils temporal emotion *distributions*; with
   cached features we reconstruct the features themselves, the closest target available.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.common import modality_names, sequence_dims, sequence_view, zero


def segment_pool(x: torch.Tensor, mask: torch.Tensor, segments: int) -> torch.Tensor:
    """[B, T, D] with a prefix mask [B, T] -> [B, S, D]: per video, segment s is the mean of valid
    steps [floor(s L / S), ceil((s + 1) L / S)); zeros when the video has no valid step."""
    lengths = mask.sum(1)[:, None, None]                                   # [B, 1, 1]
    s = torch.arange(segments, device=x.device)[None, :, None]            # [1, S, 1]
    t = torch.arange(x.shape[1], device=x.device)[None, None, :]          # [1, 1, T]
    start = (s * lengths) // segments
    end = ((s + 1) * lengths + segments - 1) // segments
    pool = ((t >= start) & (t < end)).to(x.dtype)                          # [B, S, T]
    pool = pool / pool.sum(-1, keepdim=True).clamp(min=1)
    return pool @ x


class Block(nn.Module):
    """Pre-norm transformer block (as nanoGPT's) that also returns its head-averaged attention."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(d, -1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = torch.softmax(scores.masked_fill(~valid[:, None, None, :], float("-inf")), dim=-1)  # key padding mask
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(y))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, att.mean(1)


def add_encoder(model: nn.Module, cfg, d: int) -> float:
    """The parameters both MART variants share: modality / position embeddings, the CLS and mask
    tokens and the transformer blocks (model.names and model.segments must be set). Returns the
    dropout rate."""
    model.mod_emb = nn.Parameter(0.02 * torch.randn(len(model.names), d))
    model.pos_emb = nn.Parameter(0.02 * torch.randn(model.segments, d))
    model.cls = nn.Parameter(0.02 * torch.randn(d))
    model.mask_token = nn.Parameter(0.02 * torch.randn(d))
    dropout = float(cfg["dropout"])
    model.blocks = nn.ModuleList(Block(d, int(cfg["heads"]), int(cfg["ff_dim"]), dropout) for _ in range(int(cfg["layers"])))
    return dropout


class MaskedTemporalModel(nn.Module):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        self.multilabel = multilabel
        self.names = modality_names(dims)
        if len(self.names) < 2:
            raise ValueError(f"mart needs at least 2 modalities, got {self.names}")
        self.dims = sequence_dims(dims)
        d, self.segments = int(cfg["d_model"]), int(cfg["segments"])
        self.fusion = cfg["fusion"]
        if self.fusion not in ("sum", "tokens"):
            raise ValueError(f"mart fusion must be 'sum' or 'tokens', got {self.fusion!r}")
        self.ratio_start, self.ratio_end = float(cfg["mask_ratio_start"]), float(cfg["mask_ratio_end"])
        self.ramp = float(cfg["mask_ramp"])
        if not 0 <= self.ratio_start <= 1 or not 0 <= self.ratio_end <= 1:
            raise ValueError("mask ratios must lie in [0, 1]")
        self.recon_weight = float(cfg["recon_weight"])
        self.normalize_targets = bool(cfg["normalize_targets"])
        self.progress = 0.0

        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], d) for m in self.names})
        self.decode = nn.ModuleDict({m: nn.Linear(d, self.dims[m]) for m in self.names})
        dropout = add_encoder(self, cfg, d)
        self.ln_f = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, num_classes)

    # -- masking schedule -------------------------------------------------------------------
    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (the train loop calls this each epoch)."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def mask_ratio(self) -> float:
        if not self.training:
            return 0.0
        ramp = min(1.0, self.progress / self.ramp) if self.ramp > 0 else 1.0
        return self.ratio_start + (self.ratio_end - self.ratio_start) * ramp

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, batch: dict):
        """Returns content [B, N, d], base embeddings [B, N, d] (position (+ modality)), valid
        [B, N], segment index of every token [N], and the per-modality segment features
        {m: ([B, S, D], present [B])} (the reconstruction targets). N excludes the CLS token."""
        segs, content, valid = {}, [], []
        for i, m in enumerate(self.names):
            x, mask = sequence_view(batch, m)
            present = mask.any(1)
            segs[m] = (segment_pool(x, mask, self.segments), present)
            # averaging and the linear projection commute (pool rows sum to 1): project the
            # shorter of the two, e.g. a pooled-only modality once instead of S times
            seg_tokens = segment_pool(self.proj[m](x), mask, self.segments) if x.shape[1] < self.segments \
                else self.proj[m](segs[m][0])
            # "sum": the modality embedding is summed with the content of present modalities;
            # "tokens": it goes into `base`, which a masked token keeps
            content.append(seg_tokens + self.mod_emb[i] if self.fusion == "sum" else seg_tokens)
            valid.append(present[:, None].expand(-1, self.segments))
        if self.fusion == "sum":
            keep = torch.stack(valid, 0)[..., None].to(content[0].dtype)          # [M, B, S, 1]
            content = [(torch.stack(content, 0) * keep).sum(0)]
            valid = [torch.stack(valid, 0).any(0)]
        b = content[0].shape[0]
        base = self.pos_emb.expand(b, -1, -1)
        if self.fusion == "tokens":  # the masked token keeps its modality so the decoder knows it
            base = torch.cat([base + self.mod_emb[i] for i in range(len(self.names))], 1)
        segment_of = torch.arange(self.segments, device=base.device).repeat(len(content))
        return torch.cat(content, 1), base, torch.cat(valid, 1), segment_of, segs

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepend CLS, run the encoder; returns outputs [B, 1 + N, d] and the last layer's CLS
        attention over the N tokens [B, N]."""
        x = torch.cat([self.cls.expand(tokens.shape[0], 1, -1), tokens], 1)
        valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], 1)      # CLS is always valid
        x = self.drop(x)
        for block in self.blocks:
            x, att = block(x, valid)
        return self.ln_f(x), att[:, 0, 1:]

    def most_attended(self, cls_att: torch.Tensor, valid: torch.Tensor, segment_of: torch.Tensor,
                      ratio: float) -> torch.Tensor:
        """[B, S] bool: the round(ratio * valid segments) segments with the most CLS attention
        (at least one when ratio > 0)."""
        b = cls_att.shape[0]
        per_segment = cls_att.new_zeros(b, self.segments).index_add_(1, segment_of, cls_att * valid)
        seg_valid = cls_att.new_zeros(b, self.segments).index_add_(1, segment_of, valid.to(cls_att.dtype)) > 0
        n_valid = seg_valid.sum(1)
        n_mask = torch.round(ratio * n_valid.to(cls_att.dtype)).long().clamp(min=1 if ratio > 0 else 0)
        n_mask = torch.minimum(n_mask, n_valid)
        order = per_segment.masked_fill(~seg_valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)                                             # rank of each segment
        return (rank < n_mask[:, None]) & seg_valid

    def forward(self, batch: dict) -> dict:
        content, base, valid, segment_of, segs = self.tokenize(batch)
        ratio = self.mask_ratio()
        masked = None
        if ratio > 0:
            with torch.no_grad():  # which segments does the model currently rely on?
                _, cls_att = self.encode(content + base, valid)
            masked = self.most_attended(cls_att, valid, segment_of, ratio)         # [B, S]
            token_masked = masked[:, segment_of] & valid                           # [B, N]
            content = torch.where(token_masked[..., None], self.mask_token.expand_as(content), content)
        out, _ = self.encode(content + base, valid)
        logits = self.head(self.drop(out[:, 0]))
        if masked is None:
            return {"logits": logits, "aux_loss": zero(logits), "losses": {}}
        recon = self.reconstruction_loss(out[:, 1:], masked, segs)
        return {"logits": logits, "aux_loss": self.recon_weight * recon, "losses": {"recon": recon}}

    def reconstruction_loss(self, out: torch.Tensor, masked: torch.Tensor, segs: dict) -> torch.Tensor:
        """Mean squared error of the masked segments of every present modality."""
        total, count = out.new_zeros(()), out.new_zeros(())
        for i, m in enumerate(self.names):
            target, present = segs[m]
            h = out if self.fusion == "sum" else out[:, i * self.segments:(i + 1) * self.segments]
            where = masked & present[:, None]                                     # [B, S]
            target = target[where]
            if self.normalize_targets:
                target = F.layer_norm(target, target.shape[-1:])
            total = total + (self.decode[m](h[where]) - target).pow(2).mean(-1).sum()
            count = count + where.sum()
        return total / count.clamp(min=1)
