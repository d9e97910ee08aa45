"""Small pieces every model shares: reading a modality from the collated batch as a pooled
vector or as a sequence, masked pooling / softmax, an MLP block, and the task loss.

The collated batch (docs/CONTRACTS.md) holds, per modality m, `pooled[m]` [B, D] and/or
`sequence[m]` [B, T, D] with `lengths[m]` [B], plus `present[m]` [B] bool. A model asks for the
view it wants and these helpers adapt what the store has:

* `pooled_view`: the pooled vector, or the masked mean of the sequence when only that exists.
* `sequence_view`: the sequence and its step mask, or the pooled vector as a length-1 sequence
  when only that exists (e.g. YouTube-8M video-level features).

Both multiply by `present`, so an absent modality reaches the model as exact zeros whatever the
store held for it: its (zero) features can never change a prediction. Models that pool or
attend across modalities additionally use `present` to leave absent modalities out.
Nothing here looks at other samples of the batch: a sample's output is the same alone or in any
batch (the tests check this for every model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# -- dims ------------------------------------------------------------------------------------
def modality_names(dims: dict) -> list[str]:
    """Every modality the builder was given, in a stable order (pooled ones first, as given)."""
    names = list(dims.get("pooled", {}))
    return names + [m for m in dims.get("sequence", {}) if m not in names]


def pooled_dims(dims: dict) -> dict[str, int]:
    """{m: D} of the pooled view of every modality (pooled dim, else the sequence dim)."""
    return {m: int(dims.get("pooled", {}).get(m) or dims["sequence"][m]) for m in modality_names(dims)}


def sequence_dims(dims: dict) -> dict[str, int]:
    """{m: D} of the sequence view of every modality (sequence dim, else the pooled dim)."""
    return {m: int(dims.get("sequence", {}).get(m) or dims["pooled"][m]) for m in modality_names(dims)}


# -- views of the batch -----------------------------------------------------------------------
def pooled_view(batch: dict, m: str) -> torch.Tensor:
    """[B, D] pooled features of modality m, zeros where the modality is absent."""
    present = batch["present"][m]
    if m in batch.get("pooled", {}):
        x = batch["pooled"][m]
    else:
        seq, mask = _sequence(batch, m)
        x = masked_mean(seq, mask)
    return x * present[:, None].to(x.dtype)


def sequence_view(batch: dict, m: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T, D] steps, [B, T] bool mask of valid steps) of modality m. Absent modalities have
    zero steps and an all-False mask."""
    present = batch["present"][m]
    if m in batch.get("sequence", {}):
        x, mask = _sequence(batch, m)
    else:  # only pooled in the store: a length-1 sequence
        x, mask = batch["pooled"][m][:, None, :], torch.ones_like(present)[:, None]
    mask = mask & present[:, None]
    return x * mask[..., None].to(x.dtype), mask


def _sequence(batch: dict, m: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch["sequence"][m]
    steps = torch.arange(x.shape[1], device=x.device)
    return x, steps[None, :] < batch["lengths"][m].to(x.device)[:, None]


# -- masked ops -------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean of x over `dim` where mask is True; zeros where nothing is valid."""
    w = mask.to(x.dtype).unsqueeze(-1) if x.dim() == mask.dim() + 1 else mask.to(x.dtype)
    return (x * w).sum(dim) / w.sum(dim).clamp(min=1)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over `dim` restricted to mask=True; all-zero weights where nothing is valid
    (not NaN), so an empty set contributes nothing."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=dim) * mask.to(scores.dtype)
    return weights


# -- blocks -----------------------------------------------------------------------------------
def mlp(in_dim: int, hidden: int, out_dim: int | None = None, dropout: float = 0.0, layers: int = 1,
        norm: bool = True) -> nn.Sequential:
    """`layers` x (Linear -> LayerNorm -> ReLU -> Dropout), then an optional Linear to `out_dim`.
    LayerNorm (not BatchNorm) normalises each sample on its own, so no statistics cross the batch;
    `norm=False` leaves it out (the plain fully connected layers of the papers' baselines)."""
    blocks: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(d, hidden), *([nn.LayerNorm(hidden)] if norm else []), nn.ReLU(), nn.Dropout(dropout)]
        d = hidden
    if out_dim is not None:
        blocks.append(nn.Linear(d, out_dim))
    return nn.Sequential(*blocks)


class ContextGating(nn.Module):
    """Context gating (Miech, Laptev, Sivic, "Learnable pooling with Context Gating for video
    classification", 2017, Eq. 2): Y = sigmoid(W X + b) * X, each feature re-weighted by a gate
    computed from all of them, so co-occurring concepts can boost or mute each other."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))


class MixtureOfExperts(nn.Module):
    """Per-class mixture of logistic experts, the video-level classifier of the YouTube-8M
    starter code (MoeModel) used by Miech et al. 2017 (Sec. 3.2):
        p(y_c = 1 | x) = sum_e softmax_e(G_c x)_e * sigmoid(W_{c,e} x),
    the softmax running over `experts` gates plus one for a dummy expert that always says 0
    (so a class can be switched off). Returns the log-odds of that probability, so the trainer's
    sigmoid BCE and every metric apply unchanged; probabilities are clamped to [1e-6, 1 - 1e-6]
    to keep the log-odds finite."""

    def __init__(self, in_dim: int, num_classes: int, experts: int = 2):
        super().__init__()
        self.num_classes, self.experts = num_classes, experts
        self.gates = nn.Linear(in_dim, num_classes * (experts + 1))
        self.expert = nn.Linear(in_dim, num_classes * experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], self.num_classes)
        gates = self.gates(x).view(*shape, self.experts + 1).float().softmax(-1)[..., :self.experts]
        p = (gates * torch.sigmoid(self.expert(x).view(*shape, self.experts).float())).sum(-1)
        p = p.clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)


# -- losses -----------------------------------------------------------------------------------
def task_loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool, reduction: str = "mean") -> torch.Tensor:
    """Sigmoid BCE summed over the classes (multi-label, as the YouTube-8M starter code: a mean
    over thousands of classes would make the task loss tiny next to the auxiliary losses) or
    softmax cross-entropy (multi-class). `labels` is one-hot / multi-hot [B, C], or soft targets
    (mixup); the result is the mean over the batch (or per sample with reduction="none")."""
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").sum(-1)
    else:   # class probabilities as targets: the same as the class index for one-hot labels
        loss = F.cross_entropy(logits, labels.to(logits.dtype), reduction="none")
    return loss.mean() if reduction == "mean" else loss


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


def zero(ref: torch.Tensor) -> torch.Tensor:
    """A scalar 0 on ref's device that still joins the graph (for aux_loss when there is none)."""
    return ref.new_zeros(())
