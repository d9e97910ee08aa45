"""Classifier heads several models share: the label prior of multi-label output biases, NMCL's
attention network as the paper writes it (`MemoryAttention`, Eq. 15-17), the input-dependent
category attention of the tuned variants (`CategoryAttention`) and the late combination that
sums per-modality probabilities (`fuse_probabilities`, NMCL Eq. 18).

NMCL = Wei et al., "Neural Multimodal Cooperative Learning Toward Micro-Video Understanding",
IEEE TIP 29, 2020; equation numbers are the paper's. Users: models/nmcl.py (both variants),
models/fusion.py (Early+Att, Late+Att), models/marnet.py (label_prior).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def label_prior(extra: dict | None, multilabel: bool) -> torch.Tensor | None:
    """Log-odds of the training label frequencies (pipeline/task.py puts them in `extra`), the
    starting value of multi-label output biases: with thousands of rare sigmoid classes
    (YouTube-8M: most under 0.1 %) an output that starts at p = 0.5 spends its first epochs only
    walking to the prior. None for multi-class tasks or when the trainer gave no prior."""
    prior = (extra or {}).get("label_prior") if multilabel else None
    return None if prior is None else torch.logit(torch.as_tensor(prior).float().clamp(1e-4, 1 - 1e-4))


def start_at_prior(layers, extra: dict | None, multilabel: bool) -> None:
    """Set the biases of output `layers` (nn.Linear) to `label_prior`; nothing for multi-class
    tasks. The opt-in `label_prior_bias` of models whose papers start their heads at zero."""
    prior = label_prior(extra, multilabel)
    if prior is not None:
        with torch.no_grad():
            for layer in layers:
                layer.bias.copy_(prior)


def fuse_probabilities(host_logits: torch.Tensor, present: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Eq. 18: y = sum over the present hosts of p^m, returned as logits of y / M.
    host_logits [B, M, C], present [B, M] bool. Multi-class: log(mean_m softmax(l^m)), whose
    softmax is the mean itself; multi-label: logit(mean_m sigmoid(l^m)). Samples with no
    present host get zeros."""
    w = present.to(host_logits.dtype)[..., None]                                  # [B, M, 1]
    count = w.sum(1).clamp(min=1)
    if multilabel:
        p = (torch.sigmoid(host_logits.float()) * w).sum(1) / count
        p = p.clamp(1e-7, 1 - 1e-7)
        out = torch.log(p) - torch.log1p(-p)
    else:
        logp = F.log_softmax(host_logits.float(), -1).masked_fill(w == 0, -1e4)   # finite: no NaN gradient
        out = torch.logsumexp(logp, 1) - torch.log(count)
    return torch.where(present.any(1, keepdim=True), out, torch.zeros_like(out)).to(host_logits.dtype)


class MemoryAttention(nn.Module):
    """NMCL's attention network (Eq. 15-17) on an input vector x^ of width D:

        psi_k   = omega_k * x^                      Eq. 15  (static memory Omega [K, D], one row per category)
        theta_k = phi(W psi_k)                      Eq. 16  (W [d, D] shared by the categories)
        y_k     = z_k^T theta_k                     Eq. 17  (softmax_k of y is the host's prediction)

    `layers` > 1 inserts further shared layers theta <- phi(W_l theta) before z (the Early+Att
    baseline's 3-layer network after the attention: layers=2 plus z). Returns the category
    scores y [B, K] (logits: the trainer's softmax / sigmoid turns them into Eq. 17's
    probabilities); `forward(x, intermediates=True)` also returns {"theta": [B, K, d]}.

    With more categories than theta features, W (omega_k * x^) is computed as ((x^ * W) @ Omega^T),
    a [B, d, D] by [D, K] product that never forms the [B, K, D] tensor of psi, so thousands of
    categories fit in memory; with few (K <= d) psi itself is the smaller tensor. Multi-label tasks get
    an output bias started at the label prior (`prior`); the paper's softmax head has none."""

    def __init__(self, in_dim: int, num_classes: int, theta_dim: int = 64, layers: int = 1,
                 activation: str = "tanh", dropout: float = 0.0, prior: torch.Tensor | None = None):
        super().__init__()
        self.memory = nn.Parameter(1 + 0.1 * torch.randn(num_classes, in_dim))        # Omega, Eq. 15
        self.weight = nn.Parameter(torch.randn(theta_dim, in_dim) / in_dim ** 0.5)    # W, Eq. 16
        self.bias = nn.Parameter(torch.zeros(theta_dim))
        self.act = ACTIVATIONS[activation]()
        self.hidden = nn.ModuleList(nn.Linear(theta_dim, theta_dim) for _ in range(layers - 1))
        self.drop = nn.Dropout(dropout)
        self.readout = nn.Parameter(torch.randn(num_classes, theta_dim) / theta_dim ** 0.5)  # z_k, Eq. 17
        self.out_bias = None if prior is None else nn.Parameter(prior.clone().float())

    def forward(self, x: torch.Tensor, intermediates: bool = False):
        if self.memory.shape[0] <= self.weight.shape[0]:   # few categories: psi itself, [B, K, D]
            t = (x[:, None, :] * self.memory[None]) @ self.weight.T             # W psi_k, Eq. 15-16
        else:                                                # many: never form psi, [B, d, D] @ [D, K]
            t = ((x[:, None, :] * self.weight[None]) @ self.memory.T).transpose(1, 2)
        theta = self.act(t + self.bias)                                         # [B, K, d], Eq. 16
        for layer in self.hidden:
            theta = self.act(layer(self.drop(theta)))
        y = (self.drop(theta) * self.readout[None]).sum(-1)                     # z_k^T theta_k, Eq. 17
        if self.out_bias is not None:
            y = y + self.out_bias
        return (y, {"theta": theta}) if intermediates else y


class CategoryAttention(nn.Module):
    """The tuned variants' attention network (an adaptation of NMCL Eq. 15-16): category k owns
    a memory row M_k that, added to the sample's feature saliency s = W_s z, gives attention
    weights over the features of z = relu(LN(W_z x)), a_k = softmax_d(M_kd + s_d); the
    category's score is y_k = r sum_d a_kd U_kd z_d + b_k (r = the width of z; see forward).

    Because the attention logit is a sum, exp(M_kd + s_d) = exp(M_kd) exp(s_d) and both sums
    over d are matrix products: the cost is two (B x r) @ (r x C) products instead of a
    B x C x r tensor, which matters with thousands of categories."""

    def __init__(self, in_dim: int, num_classes: int, attn_dim: int = 128, dropout: float = 0.0,
                 prior: torch.Tensor | None = None):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, attn_dim), nn.LayerNorm(attn_dim), nn.ReLU(),
                                     nn.Dropout(dropout))
        self.saliency = nn.Linear(attn_dim, attn_dim)                                   # W_s
        self.memory = nn.Parameter(torch.randn(num_classes, attn_dim) * 0.1)             # M
        self.attn_dim = attn_dim
        self.readout = nn.Parameter(torch.randn(num_classes, attn_dim) / attn_dim ** 0.5)  # U
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
        return self.attn_dim * numerator / denominator + self.bias
