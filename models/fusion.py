"""The four fusion baselines of NMCL §5.1.2 (Wei et al., TIP 2020), each with the paper's
depths as `variant: paper` (the default) and the project's earlier adaptation as `variant: tuned`:

* Early Fusion - concatenate the modalities' vectors (NMCL Eq. 1, x = [x_v; x_a; x_t]) and
                 classify. paper: three fully connected layers (two hidden of `hidden` units with
                 ReLU, then the output layer). tuned: `tuned.layers` blocks of Linear -> LayerNorm
                 -> ReLU -> Dropout, optional context gating, linear or mixture-of-experts head.
* Late Fusion  - one classifier per modality, logits averaged. paper: 1 / 2 / 3 hidden layers
                 for text / audio / visual (`paper.layers`, by modality name), plain ReLU layers.
                 tuned: `tuned.layers` LayerNorm blocks per modality.
* Early+Att    - the concatenated vector through an attention network. paper: NMCL's static
                 memory attention psi_k = omega_k * x (Eq. 15) followed by a 3-layer network
                 theta = phi(W2 phi(W1 psi_k)), y_k = z_k^T theta (models/heads.py MemoryAttention,
                 layers=2). tuned: the input-dependent CategoryAttention.
* Late+Att     - one attention network per modality, logits averaged. paper: NMCL's attention
                 network (Eq. 15-17) per modality. tuned: CategoryAttention per modality.

Absent modalities enter early fusion as zeros (they cannot change the output: their values are
never read); late fusion averages only the modalities that are present. Late fusion cannot
express label rules that need an interaction between modalities (an XOR across modalities),
only rules where each modality adds evidence.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import ContextGating, MixtureOfExperts, masked_mean, mlp, pooled_dims, pooled_view, zero
from .heads import CategoryAttention, MemoryAttention, label_prior


class _Fusion(nn.Module):
    """Shared plumbing: the variant and its settings (models.resolved_config: flat and complete,
    the variant's block already lifted), the pooled views, the late combination."""

    def __init__(self, cfg, dims: dict):
        super().__init__()
        self.variant, self.cfg = cfg["variant"], cfg
        self.in_dims = pooled_dims(dims)
        self.names = list(self.in_dims)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        return {m: pooled_view(batch, m) for m in self.names}

    def combine(self, per_modality: torch.Tensor, batch: dict) -> torch.Tensor:
        """[B, M, C] per-modality logits -> [B, C], the mean over the present modalities. The
        paper does not say how its late baselines combine; the mean logit (a product of experts)
        can express a label that is the conjunction of what each modality decides, which the
        mean probability learns much more slowly (tests/test_models.py's two-bit task)."""
        present = torch.stack([batch["present"][m] for m in self.names], 1)  # [B, M]
        return masked_mean(per_modality, present)

    @staticmethod
    def output(logits: torch.Tensor) -> dict:
        return {"logits": logits, "aux_loss": zero(logits), "losses": {}}


class EarlyFusion(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(cfg, dims)
        c = self.cfg
        hidden, dropout, width = int(c["hidden"]), float(c["dropout"]), sum(self.in_dims.values())
        if self.variant == "paper":   # three fully connected layers
            self.net = mlp(width, hidden, num_classes, dropout, layers=2, norm=False)
            return
        head = str(c["head"])
        body = mlp(width, hidden, None, dropout, int(c["layers"]))
        gating = [ContextGating(hidden)] if c["context_gating"] else []
        if head == "linear":
            classifier = nn.Linear(hidden, num_classes)
        elif head == "moe":
            classifier = MixtureOfExperts(hidden, num_classes, int(c["experts"]))
        else:
            raise ValueError(f"models.early_fusion.tuned.head must be linear or moe, got {head!r}")
        self.net = nn.Sequential(*body, *gating, classifier)

    def forward(self, batch):
        x = self.inputs(batch)
        return self.output(self.net(torch.cat([x[m] for m in self.names], -1)))


def paper_depth(layers, modality: str) -> int:
    """Hidden layers of a Late Fusion branch: `layers` is a number or {modality: n} with an
    optional `default` (the paper: text 1, audio 2, visual 3)."""
    if not hasattr(layers, "get"):
        return int(layers)
    if modality not in layers and "default" not in layers:
        raise ValueError(f"models.late_fusion layers {dict(layers)} has no entry for {modality!r} and no `default`")
    return int(layers[modality] if modality in layers else layers["default"])


class LateFusion(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(cfg, dims)
        c = self.cfg
        hidden, dropout, paper = int(c["hidden"]), float(c["dropout"]), self.variant == "paper"
        self.nets = nn.ModuleDict({m: mlp(d, hidden, num_classes, dropout, paper_depth(c["layers"], m), norm=not paper)
                                   for m, d in self.in_dims.items()})

    def forward(self, batch):
        x = self.inputs(batch)
        per_modality = torch.stack([self.nets[m](x[m]) for m in self.names], 1)  # [B, M, C]
        return self.output(self.combine(per_modality, batch))


def _attention(c: dict, variant: str, in_dim: int, num_classes: int, layers: int, prior) -> nn.Module:
    dropout = float(c["dropout"])
    if variant == "paper":
        return MemoryAttention(in_dim, num_classes, int(c["theta_dim"]), layers, str(c["activation"]), dropout, prior)
    return CategoryAttention(in_dim, num_classes, int(c["attn_dim"]), dropout, prior)


class EarlyAtt(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(cfg, dims)
        # paper: the attention (psi_k = omega_k * x), then a 3-layer network (W1, W2, z)
        self.net = _attention(self.cfg, self.variant, sum(self.in_dims.values()), num_classes, 2,
                              label_prior(extra, multilabel))

    def forward(self, batch):
        x = self.inputs(batch)
        return self.output(self.net(torch.cat([x[m] for m in self.names], -1)))


class LateAtt(_Fusion):
    def __init__(self, cfg, dims, num_classes, multilabel, extra=None):
        super().__init__(cfg, dims)
        prior = label_prior(extra, multilabel)
        self.nets = nn.ModuleDict({m: _attention(self.cfg, self.variant, d, num_classes, 1, prior)
                                   for m, d in self.in_dims.items()})

    def forward(self, batch):
        x = self.inputs(batch)
        per_modality = torch.stack([self.nets[m](x[m]) for m in self.names], 1)
        return self.output(self.combine(per_modality, batch))
