"""NMCL: Neural Multimodal Cooperative Learning (Wei et al., "Neural Multimodal Cooperative
Learning Toward Micro-Video Understanding", IEEE TIP 29, 2020; equation numbers below are the
paper's).

For every modality m in turn (the *host*), the *guest* is the concatenation of all the other
modalities. The cooperative net splits host and guest into a consistent part (information both
sides carry) and a complementary part (information only one side carries), rebuilds an augmented
host vector from them, and an attention network with one memory row per category turns it into
a prediction; the per-host predictions are fused late.

* Eq. 4-5  relation scores. The relation matrix between host dim i and guest dim j is
           S_ij = h_i W_ij g_j; a host dim's score is its row sum, s^h = h * (W g), a guest dim's
           its column sum, s^g = g * (W^T h) (computed without forming S). Each score vector is
           normalised with a softmax over its dims, rescaled by the dim count so that "average
           relation" is 1 whatever the width.
* Eq. 8    learned threshold with a steep sigmoid gate: tau = sigmoid(w (s - eps)), w = 50, one
           learned eps per host and per guest side (a differentiable step).
* Eq. 9    consistent beta = tau * x, complementary alpha = (1 - tau) * x, for host and guest.
* Eq. 10   enhanced consistent vector beta~ = phi(W_beta [beta_h; beta_g]).
* Eq. 11   augmented vector x^ = [alpha_h; beta~; alpha_g].
* Eq. 12-14 category distributions p_h = softmax(U_h beta_h), p_g = softmax(U_g beta_g) and a
           symmetric KL divergence between them, summed over hosts (consistency loss).
* Eq. 15-16 attention network with a memory matrix: category k has a memory row M_k; the
           attention over the features of z = relu(W_z x^) is a_k = softmax(M_k + W_s z), and
           the score is y_k = sum_d a_kd U_kd z_d + b_k (`CategoryAttention`).
* Eq. 17-18 one prediction per host modality, fused by averaging the hosts that are present.
* Eq. 20   loss = sum over hosts of the prediction losses + lambda * consistency loss; the L2 term
           is the optimizer's weight decay. Here the fused prediction is also trained (the
           pipeline adds its loss), the per-host terms are the model's `aux_loss`.

Multi-label: the paper's softmax heads are per-class sigmoids (Eq. 12 and 17), the KL of Eq. 13
becomes the sum over classes of the symmetric KL between the per-class Bernoulli distributions,
and the prediction loss is BCE summed over classes.

Adaptations: `proj_dim` first maps every modality through Linear + LayerNorm to a common width
so features of very different scales and widths (1,024-d RGB and 128-d audio, 2,048-d ResNet and
a 100-d paragraph vector) meet on equal terms; `proj_dim: null` uses the raw features as in the
paper. The attention network attends over `attn_dim` projected features of the augmented vector, with
additive attention logits (memory row + feature saliency) so that it runs as two matrix products
for thousands of categories. Absent
modalities enter as zeros and their host prediction is left out of the fusion.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import masked_mean, modality_names, pooled_dims, pooled_view, task_loss, zero


def label_prior(extra: dict | None, multilabel: bool) -> torch.Tensor | None:
    """Log-odds of the training label frequencies (from pipeline/train.py), the starting value of
    multi-label output biases: with thousands of rare sigmoid classes (YouTube-8M: most under
    0.1 %) an output that starts at p = 0.5 spends its first epochs only walking to the prior."""
    prior = (extra or {}).get("label_prior") if multilabel else None
    return None if prior is None else torch.logit(torch.as_tensor(prior).float().clamp(1e-4, 1 - 1e-4))


class CategoryAttention(nn.Module):
    """The attention network of NMCL (Eq. 15-16): category k owns a memory row M_k that, added
    to the sample's feature saliency s = W_s z, gives attention weights over the features,
    a_k = softmax_d(M_kd + s_d); the category's score is y_k = sum_d a_kd U_kd z_d + b_k, here
    times r (the width of z; see forward). Also used by the Early+Att and Late+Att baselines (models/fusion.py).

    Because the attention logit is a sum, exp(M_kd + s_d) = exp(M_kd) exp(s_d) and both sums
    over d are matrix products: the cost is two (B x r) @ (r x C) products instead of a
    B x C x r tensor, which matters with thousands of categories."""

    def __init__(self, in_dim: int, num_classes: int, attn_dim: int = 128, dropout: float = 0.0,
                 prior: torch.Tensor | None = None):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, attn_dim), nn.LayerNorm(attn_dim), nn.ReLU(),
                                     nn.Dropout(dropout))
        self.saliency = nn.Linear(attn_dim, attn_dim)                                   # W_s
        self.memory = nn.Parameter(torch.randn(num_classes, attn_dim) * 0.1)             # M, Eq. 15
        self.attn_dim = attn_dim
        self.readout = nn.Parameter(torch.randn(num_classes, attn_dim) / attn_dim ** 0.5)  # U, Eq. 16
        self.bias = nn.Parameter(torch.zeros(num_classes))
        if prior is not None:  # log-odds of the training label frequencies (label_prior)
            self.bias.data = prior.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.project(x)                                                    # [B, r]
        s = self.saliency(z)
        e = torch.exp(s - s.max(-1, keepdim=True).values)                      # exp(s_d), rescaled
        m = torch.exp(self.memory - self.memory.max(-1, keepdim=True).values)   # exp(M_kd), rescaled
        numerator = (e * z) @ (m * self.readout).T                             # sum_d exp(M+s) U z
        denominator = e @ m.T                                                  # sum_d exp(M+s)
        # Times r: with uniform attention the readout is then the plain linear U_k . z that an
        # nn.Linear computes, instead of its mean over d. Same functions (U' = r U), but Adam's
        # per-entry steps on U now move the logits as fast as a Linear layer's weights do; the
        # mean form needs U to grow r-fold and left NMCL far below Early Fusion on 3,862 classes.
        return self.attn_dim * numerator / denominator + self.bias            # Eq. 15-16


class CooperativeNet(nn.Module):
    """One host modality against its guest (Eq. 4-14): returns the augmented vector x^ and the
    category logits of the host's and the guest's consistent parts."""

    def __init__(self, host_dim: int, guest_dim: int, hidden: int, num_classes: int, gate_w: float):
        super().__init__()
        self.relation = nn.Parameter(torch.randn(host_dim, guest_dim) / (host_dim * guest_dim) ** 0.25)  # W, Eq. 4
        self.eps_host = nn.Parameter(torch.ones(()))   # learned thresholds, Eq. 8
        self.eps_guest = nn.Parameter(torch.ones(()))
        self.gate_w = gate_w
        self.enhance = nn.Sequential(nn.Linear(host_dim + guest_dim, hidden), nn.ReLU())  # Eq. 10
        self.head_host = nn.Linear(host_dim, num_classes)    # U_h, Eq. 12
        self.head_guest = nn.Linear(guest_dim, num_classes)  # U_g
        self.out_dim = host_dim + hidden + guest_dim

    @staticmethod
    def _normalise(s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(s, dim=-1) * s.shape[-1]   # Eq. 5, mean 1 across dims

    def forward(self, h: torch.Tensor, g: torch.Tensor):
        s_h = self._normalise(h * (g @ self.relation.T))   # row sums of S, Eq. 4-5
        s_g = self._normalise(g * (h @ self.relation))     # column sums of S
        tau_h = torch.sigmoid(self.gate_w * (s_h - self.eps_host))   # Eq. 8
        tau_g = torch.sigmoid(self.gate_w * (s_g - self.eps_guest))
        beta_h, alpha_h = tau_h * h, (1 - tau_h) * h      # Eq. 9
        beta_g, alpha_g = tau_g * g, (1 - tau_g) * g
        enhanced = self.enhance(torch.cat([beta_h, beta_g], -1))          # Eq. 10
        augmented = torch.cat([alpha_h, enhanced, alpha_g], -1)           # Eq. 11
        return augmented, self.head_host(beta_h), self.head_guest(beta_g)  # Eq. 12 (logits)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-sample KL(p_a||p_b) + KL(p_b||p_a) (Eq. 13): softmax categories, or, multi-label, the
    sum over classes of the Bernoulli KLs (the KL of the independent per-class distributions)."""
    if multilabel:
        la, lb = torch.stack([F.logsigmoid(logits_a), F.logsigmoid(-logits_a)]), \
                 torch.stack([F.logsigmoid(logits_b), F.logsigmoid(-logits_b)])
        return ((la.exp() - lb.exp()) * (la - lb)).sum(0).sum(-1)
    la, lb = F.log_softmax(logits_a, -1), F.log_softmax(logits_b, -1)
    return ((la.exp() - lb.exp()) * (la - lb)).sum(-1)


class NMCL(nn.Module):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        self.names = modality_names(dims)
        if len(self.names) < 2:
            raise ValueError(f"NMCL needs at least two modalities (host and guest), got {self.names}")
        self.multilabel = multilabel
        self.kl_weight = float(cfg.get("kl_weight", 0.1))
        self.modality_loss_weight = float(cfg.get("modality_loss_weight", 1.0))
        in_dims = pooled_dims(dims)
        proj = cfg.get("proj_dim")
        if proj:
            self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, proj), nn.LayerNorm(proj))
                                          for m, d in in_dims.items()})
            in_dims = {m: int(proj) for m in self.names}
        else:
            self.project = None
        hidden, dropout = int(cfg.get("hidden", 256)), float(cfg.get("dropout", 0.0))
        self.drop = nn.Dropout(dropout)
        self.coop = nn.ModuleDict()
        self.attend = nn.ModuleDict()
        for m in self.names:
            guest = sum(d for o, d in in_dims.items() if o != m)
            self.coop[m] = CooperativeNet(in_dims[m], guest, hidden, num_classes, float(cfg.get("gate_w", 50.0)))
            self.attend[m] = CategoryAttention(self.coop[m].out_dim, num_classes, int(cfg.get("attn_dim", 128)), dropout,
                                               label_prior(extra, multilabel))

    def forward(self, batch: dict) -> dict:
        present = torch.stack([batch["present"][m] for m in self.names], 1)   # [B, M]
        x = {}
        for m in self.names:
            v = pooled_view(batch, m)
            if self.project is not None:
                v = self.project[m](v) * batch["present"][m][:, None].to(v.dtype)
            x[m] = self.drop(v)
        host_logits, kl_terms = [], []
        for i, m in enumerate(self.names):
            guest = torch.cat([x[o] for o in self.names if o != m], -1)
            augmented, p_host, p_guest = self.coop[m](x[m], guest)
            host_logits.append(self.attend[m](augmented))                              # Eq. 17
            both = present[:, i] & (present.sum(1) > 1)   # KL only where host and a guest exist
            kl_terms.append(masked_mean(symmetric_kl(p_host, p_guest, self.multilabel), both, dim=0))
        stacked = torch.stack(host_logits, 1)                                          # [B, M, C]
        logits = masked_mean(stacked, present)                                         # Eq. 18
        kl = torch.stack(kl_terms).sum()                                               # Eq. 14
        losses = {"kl": kl}
        aux = self.kl_weight * kl
        if "labels" in batch:   # per-host prediction losses of Eq. 20 (training and evaluation)
            per_host = torch.stack([task_loss(stacked[:, i], batch["labels"], self.multilabel, reduction="none")
                                    for i in range(len(self.names))], 1)                 # [B, M]
            modality = (per_host * present).sum() / present.sum().clamp(min=1)
            losses["modality"] = modality
            aux = aux + self.modality_loss_weight * modality
        return {"logits": logits, "aux_loss": aux + zero(logits), "losses": losses}
