"""NetVLAD (the building block of Sun et al., models/sun.py) and `netvlad`, the earlier adaptation:
NetVLAD per modality + attention fusion across modalities.

Each frame-sequence modality m (x_1..x_N, D-dim) is encoded by its own NetVLAD layer with K
learned cluster centres c_k (Arandjelovic et al., CVPR 2016; Eq. 7-9 of Sun et al.):

    a_k(x_i) = exp(w_k^T x_i + b_k) / sum_k' exp(w_k'^T x_i + b_k')          (Eq. 7, soft assignment)
    V(j, k)  = sum_i a_k(x_i) (x_i(j) - c_k(j))                               (Eq. 8, residual aggregation)
    V        = L2( [ L2(V(:, 1)); ...; L2(V(:, K)) ] )                          (Eq. 9, intra + L2 normalisation)

The K*D vector is projected to a common size H (z_m = ReLU(LN(W_m vec(V) + b_m))), then the
modalities are weighted by attention (not in Sun et al., whose attention, Eq. 10-13, is a linear
softmax over segments: models/sun.py):

    s_m     = q^T tanh(W_a z_m + b_a),   alpha_m = softmax over the modalities present in the video
    fused   = [alpha_1 z_1; ...; alpha_M z_M]

and the concatenation goes to the classifier, an MLP with one hidden layer (logits; sigmoid BCE or softmax cross-entropy in
the train loop).

Adaptations (docs/models-sun.md): only the valid (unpadded) steps are summed in Eq. 8, so
padding never changes V; an absent modality has V = 0 and alpha = 0, so it contributes exact zeros;
an optional linear `input_dim` reduction before NetVLAD keeps K*D small for 2048-d frame features;
a modality that only has a pooled vector (YouTube-8M video-level features) is a 1-step sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import masked_softmax, mlp, modality_names, sequence_dims, sequence_view, zero


class NetVLAD(nn.Module):
    """Eq. 7-9 over the valid steps of a padded batch: [B, T, D] + mask [B, T] -> [B, K*D]."""

    def __init__(self, dim: int, clusters: int):
        super().__init__()
        self.assign = nn.Linear(dim, clusters)                        # w_k, b_k of Eq. 7
        self.centers = nn.Parameter(torch.randn(clusters, dim) / dim ** 0.5)   # c_k of Eq. 8

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.assign(x), dim=-1) * mask[..., None].to(x.dtype)   # [B, T, K], 0 on padding
        # sum_i a_k(x_i) x_i(j) - c_k(j) sum_i a_k(x_i)  ==  Eq. 8, computed as two matrix products
        v = torch.einsum("btk,btd->bkd", a, x) - a.sum(1)[..., None] * self.centers
        v = F.normalize(v, dim=-1)                                  # intra-normalisation (per cluster)
        return F.normalize(v.flatten(1), dim=-1)                    # L2 of the whole vector (Eq. 9)


class NetVLADFusion(nn.Module):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        self.multilabel = multilabel
        self.names = modality_names(dims)
        if len(self.names) < 2:
            raise ValueError(f"netvlad needs at least 2 modalities, got {self.names}")
        seq_dims = sequence_dims(dims)
        clusters, hidden = int(cfg["clusters"]), int(cfg["hidden"])
        # Optional linear reduction of wide frame features first (K*D grows with D); null = raw.
        reduce_to = cfg["input_dim"]
        in_dims = {m: min(int(reduce_to), d) if reduce_to else d for m, d in seq_dims.items()}
        self.reduce = nn.ModuleDict({m: nn.Linear(seq_dims[m], in_dims[m]) if in_dims[m] < seq_dims[m] else nn.Identity()
                                     for m in self.names})
        self.vlad = nn.ModuleDict({m: NetVLAD(in_dims[m], clusters) for m in self.names})
        # VLAD vectors have unit norm over K*D entries (each ~ 1/sqrt(K*D)): a LayerNorm after the
        # projection (per sample; the BatchNorm of Miech et al.'s NetVLAD head would share batch
        # statistics) brings z_m to unit scale, without it training barely moves on 3,862 labels.
        self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(clusters * in_dims[m], hidden), nn.LayerNorm(hidden))
                                      for m in self.names})
        att = int(cfg["attention_dim"])
        self.att = nn.Sequential(nn.Linear(hidden, att), nn.Tanh(), nn.Linear(att, 1, bias=False))
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        # Classifier on the concatenation: one hidden block (Linear, LayerNorm, ReLU, dropout) so
        # that labels depending on an interaction of modalities can be learnt; 0 = linear.
        head_hidden = int(cfg["head_hidden"] or 0)
        self.classifier = mlp(hidden * len(self.names), head_hidden, num_classes, float(cfg["dropout"])) \
            if head_hidden else nn.Linear(hidden * len(self.names), num_classes)

    def modality_attention(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, M] weights, softmax over the present modalities (0 for absent ones)."""
        return masked_softmax(self.att(z).squeeze(-1), present, dim=1)

    def forward(self, batch: dict) -> dict:
        z, present = [], []
        for m in self.names:
            x, mask = sequence_view(batch, m)
            v = self.vlad[m](self.reduce[m](x), mask)
            z.append(self.dropout(F.relu(self.project[m](v))))
            present.append(mask.any(1))
        z, present = torch.stack(z, 1), torch.stack(present, 1)    # [B, M, H], [B, M]
        alpha = self.modality_attention(z, present)
        logits = self.classifier((alpha[..., None] * z).flatten(1))
        return {"logits": logits, "aux_loss": zero(logits), "losses": {}}
