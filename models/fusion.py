"""The four fusion baselines of NMCL §5.1.2 (Wei et al., TIP 2020):

* Early Fusion  - concatenate the modalities' vectors (NMCL Eq. 1, x = [x_v; x_a; x_t]) and
                  classify with an MLP.
* Late Fusion   - one MLP classifier per modality; the predictions are averaged.
* Early+Att     - the concatenated vector goes through NMCL's category attention network
                  (Eq. 15-16, `models.nmcl.CategoryAttention`).
* Late+Att      - one category attention network per modality, predictions averaged.

Absent modalities enter early fusion as zeros (they cannot change the output: their values are
never read); late fusion averages only the modalities that are present. Late fusion averages
logits, so (like any late fusion) it cannot express label rules that need an interaction
between modalities (an XOR across modalities), only rules where each modality adds evidence.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import ContextGating, MixtureOfExperts, masked_mean, mlp, pooled_dims, pooled_view, zero
from .nmcl import CategoryAttention, label_prior


class _Fusion(nn.Module):
    """Shared plumbing: read the pooled views, run `self.classify`, return the model dict."""

    def __init__(self, dims: dict):
        super().__init__()
        self.in_dims = pooled_dims(dims)
        self.names = list(self.in_dims)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        return {m: pooled_view(batch, m) for m in self.names}

    def present(self, batch: dict) -> torch.Tensor:
        return torch.stack([batch["present"][m] for m in self.names], 1)  # [B, M]

    @staticmethod
    def output(logits: torch.Tensor) -> dict:
        return {"logits": logits, "aux_loss": zero(logits), "losses": {}}


class EarlyFusion(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(dims)
        hidden, head = int(cfg.get("hidden", 512)), str(cfg.get("head", "linear"))
        body = mlp(sum(self.in_dims.values()), hidden, None, float(cfg.get("dropout", 0.0)), int(cfg.get("layers", 1)))
        gating = [ContextGating(hidden)] if cfg.get("context_gating", False) else []
        if head == "linear":
            classifier = nn.Linear(hidden, num_classes)
        elif head == "moe":
            classifier = MixtureOfExperts(hidden, num_classes, int(cfg.get("experts", 2)))
        else:
            raise ValueError(f"models.early_fusion.head must be linear or moe, got {head!r}")
        self.net = nn.Sequential(*body, *gating, classifier)

    def forward(self, batch):
        x = self.inputs(batch)
        return self.output(self.net(torch.cat([x[m] for m in self.names], -1)))


class LateFusion(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(dims)
        hidden, dropout, layers = int(cfg.get("hidden", 512)), float(cfg.get("dropout", 0.0)), int(cfg.get("layers", 1))
        self.nets = nn.ModuleDict({m: mlp(d, hidden, num_classes, dropout, layers) for m, d in self.in_dims.items()})

    def forward(self, batch):
        x = self.inputs(batch)
        per_modality = torch.stack([self.nets[m](x[m]) for m in self.names], 1)  # [B, M, C]
        return self.output(masked_mean(per_modality, self.present(batch)))


class EarlyAtt(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(dims)
        self.net = CategoryAttention(sum(self.in_dims.values()), num_classes, int(cfg.get("attn_dim", 128)),
                                     float(cfg.get("dropout", 0.0)), label_prior(extra, multilabel))

    def forward(self, batch):
        x = self.inputs(batch)
        return self.output(self.net(torch.cat([x[m] for m in self.names], -1)))


class LateAtt(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(dims)
        attn_dim, dropout = int(cfg.get("attn_dim", 128)), float(cfg.get("dropout", 0.0))
        prior = label_prior(extra, multilabel)
        self.nets = nn.ModuleDict({m: CategoryAttention(d, num_classes, attn_dim, dropout, prior)
                                   for m, d in self.in_dims.items()})

    def forward(self, batch):
        x = self.inputs(batch)
        per_modality = torch.stack([self.nets[m](x[m]) for m in self.names], 1)
        return self.output(masked_mean(per_modality, self.present(batch)))
