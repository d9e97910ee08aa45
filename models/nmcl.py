"""NMCL: Neural Multimodal Cooperative Learning (Wei et al., "Neural Multimodal Cooperative
Learning Toward Micro-Video Understanding", IEEE TIP 29, 2020; equation numbers below are the
paper's). Two variants, picked by `models.nmcl.variant` (docs/models-nmcl.md):

`paper` (the default, class `NMCL`): Eq. 2-20 as written.
* Eq. 2-3  for every modality m in turn, the host h = x^m and the guest g = the concatenation
           of the other modalities.
* Eq. 4-5  relation scores from two scorers on the concatenations, s^h = softmax(W_h [h; g])
           over the host's D_h features and s^g = softmax(W_g [g; h]) over the guest's.
           `relation_scale: dim` multiplies them by their dim count (mean 1): the literal
           softmax averages 1/D, and for D in the hundreds s - xi is then so small that the gate
           of Eq. 8 is the same for every feature (tests/test_nmcl.py shows it).
* Eq. 6-8  the hard threshold "consistent iff s > xi" (Eq. 6) made differentiable with a steep
           sigmoid (Eq. 7) and weighted by the score: gamma = s * sigmoid(w (s - xi)), one learned
           xi per host and per guest side, w = `gate_w`.
* Eq. 9    consistent beta = gamma * x, complementary alpha = (1 - gamma) * x (host and guest).
* Eq. 10   enhanced consistent vector beta~ = phi(W_beta [beta_h; beta_g]).
* Eq. 11   augmented vector x^ = [alpha_h; beta~; alpha_g].
* Eq. 12-14 p_h = softmax(U_h beta_h), p_g = softmax(U_g beta_g), their KL divergence (taken
           symmetric, KL(p_h||p_g) + KL(p_g||p_h)), summed over the hosts.
* Eq. 15-17 the attention network with a static memory (models/heads.py `MemoryAttention`):
           psi_k = omega_k * x^, theta_k = phi(W psi_k), p^m = softmax_k(z_k^T theta_k).
* Eq. 18   the prediction sums the hosts' probabilities, y = sum_m p^m. The model returns
           log(y / M) (M = hosts present) as its logits, so the trainer's softmax gives y / M
           back and its cross-entropy is Eq. 19's loss on the summed prediction (dividing by M
           changes no ranking).
* Eq. 20   loss = CE(y) (the trainer's task loss) + kl_weight * sum of Eq. 13 (kl_weight = 1)
           + l2 * ||Theta||^2, the L2 term on every parameter inside the loss (not the
           optimizer's decoupled weight decay; set train.weight_decay=0 to have only it).

`tuned` (class `NMCLTuned`, the project's earlier implementation, kept because it is what
scales to YouTube-8M's 3,862 classes): one bilinear relation matrix W with s^h = h * (W g) and
s^g = g * (W^T h), rescaled softmax (mean 1), gate sigmoid(w (s - xi)) without the factor s;
inputs first projected to `proj_dim` with Linear + LayerNorm; the input-dependent
`CategoryAttention` of models/heads.py instead of the static memory; host logits averaged
instead of probabilities summed; per-host losses added (`modality_loss_weight`) and
kl_weight 0.1. Each change bought GAP@20 on YouTube-8M (bench/models_tuned.yaml).

Both: multi-label tasks replace the softmax heads of Eq. 12 and 17 by per-class sigmoids, the
KL of Eq. 13 by the sum over classes of the Bernoulli KLs, and the sum of Eq. 18 by the mean of
the per-class probabilities. Absent modalities enter as zeros; their host prediction is left
out of Eq. 18 and their KL term out of Eq. 14.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import masked_mean, modality_names, pooled_dims, pooled_view, task_loss, zero
from .heads import ACTIVATIONS, CategoryAttention, MemoryAttention, fuse_probabilities, label_prior

__all__ = ["NMCL", "NMCLTuned", "CooperativeNet", "BilinearCooperativeNet", "symmetric_kl",
           "CategoryAttention", "label_prior"]   # the last two moved to models/heads.py; importable here too


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-sample KL(p_a||p_b) + KL(p_b||p_a) (Eq. 13): softmax categories, or, multi-label, the
    sum over classes of the Bernoulli KLs (the KL of the independent per-class distributions)."""
    if multilabel:
        la, lb = torch.stack([F.logsigmoid(logits_a), F.logsigmoid(-logits_a)]), \
                 torch.stack([F.logsigmoid(logits_b), F.logsigmoid(-logits_b)])
        return ((la.exp() - lb.exp()) * (la - lb)).sum(0).sum(-1)
    la, lb = F.log_softmax(logits_a, -1), F.log_softmax(logits_b, -1)
    return ((la.exp() - lb.exp()) * (la - lb)).sum(-1)


# -- the paper's variant ----------------------------------------------------------------------
class CooperativeNet(nn.Module):
    """One host modality against its guest, Eq. 4-12. forward(h, g) returns every intermediate:
    s_h, s_g (Eq. 4-5), gamma_h, gamma_g (Eq. 8), beta_*, alpha_* (Eq. 9), enhanced (Eq. 10),
    augmented (Eq. 11), logits_host, logits_guest (Eq. 12, before the softmax)."""

    def __init__(self, host_dim: int, guest_dim: int, hidden: int, num_classes: int, gate_w: float = 50.0,
                 relation_scale: str = "none", activation: str = "relu"):
        super().__init__()
        if relation_scale not in ("none", "dim"):
            raise ValueError(f"models.nmcl.paper.relation_scale must be none or dim, got {relation_scale!r}")
        self.score_host = nn.Linear(host_dim + guest_dim, host_dim, bias=False)     # W_h, Eq. 4
        self.score_guest = nn.Linear(guest_dim + host_dim, guest_dim, bias=False)   # W_g, Eq. 5
        self.scale = relation_scale
        # xi starts at the mean score (1/D literal, 1 rescaled): about half the features consistent
        self.xi_host = nn.Parameter(torch.tensor(1.0 if relation_scale == "dim" else 1.0 / host_dim))
        self.xi_guest = nn.Parameter(torch.tensor(1.0 if relation_scale == "dim" else 1.0 / guest_dim))
        self.gate_w = float(gate_w)
        self.enhance = nn.Sequential(nn.Linear(host_dim + guest_dim, hidden), ACTIVATIONS[activation]())  # Eq. 10
        self.head_host = nn.Linear(host_dim, num_classes, bias=False)     # U_h, Eq. 12
        self.head_guest = nn.Linear(guest_dim, num_classes, bias=False)   # U_g
        self.out_dim = host_dim + hidden + guest_dim

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        s = torch.softmax(logits, dim=-1)                                 # Eq. 4-5
        return s * s.shape[-1] if self.scale == "dim" else s

    def forward(self, h: torch.Tensor, g: torch.Tensor) -> dict:
        s_h = self.scores(self.score_host(torch.cat([h, g], -1)))
        s_g = self.scores(self.score_guest(torch.cat([g, h], -1)))
        gamma_h = s_h * torch.sigmoid(self.gate_w * (s_h - self.xi_host))      # Eq. 8
        gamma_g = s_g * torch.sigmoid(self.gate_w * (s_g - self.xi_guest))
        beta_h, alpha_h = gamma_h * h, (1 - gamma_h) * h                        # Eq. 9
        beta_g, alpha_g = gamma_g * g, (1 - gamma_g) * g
        enhanced = self.enhance(torch.cat([beta_h, beta_g], -1))                # Eq. 10
        augmented = torch.cat([alpha_h, enhanced, alpha_g], -1)                 # Eq. 11
        return {"s_h": s_h, "s_g": s_g, "gamma_h": gamma_h, "gamma_g": gamma_g, "beta_h": beta_h,
                "alpha_h": alpha_h, "beta_g": beta_g, "alpha_g": alpha_g, "enhanced": enhanced,
                "augmented": augmented, "logits_host": self.head_host(beta_h), "logits_guest": self.head_guest(beta_g)}


class _Hosts(nn.Module):
    """What both variants share: the modality list, the inputs and the per-host loop."""

    def setup(self, dims: dict, multilabel: bool) -> dict[str, int]:
        self.names = modality_names(dims)
        if len(self.names) < 2:
            raise ValueError(f"NMCL needs at least two modalities (host and guest), got {self.names}")
        self.multilabel = multilabel
        return pooled_dims(dims)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        x = {}
        for m in self.names:
            v = pooled_view(batch, m)
            if getattr(self, "project", None) is not None:
                v = self.project[m](v) * batch["present"][m][:, None].to(v.dtype)
            x[m] = self.drop(v)
        return x

    def kl_term(self, i: int, present: torch.Tensor, logits_host, logits_guest) -> torch.Tensor:
        both = present[:, i] & (present.sum(1) > 1)   # KL only where the host and a guest exist
        return masked_mean(symmetric_kl(logits_host, logits_guest, self.multilabel), both, dim=0)


class NMCL(_Hosts):
    """The paper's NMCL (module docstring). `forward(batch, intermediates=True)` adds
    {"intermediates": {host: {...CooperativeNet outputs, "theta", "host_logits"}}}."""

    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()   # cfg: models.resolved_config("nmcl", ...), the paper block lifted
        in_dims = self.setup(dims, multilabel)
        self.project = None
        self.kl_weight, self.l2 = float(cfg["kl_weight"]), float(cfg["l2"])
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        self.drop = nn.Dropout(dropout)
        self.coop, self.attend = nn.ModuleDict(), nn.ModuleDict()
        prior = label_prior(extra, multilabel)
        for m in self.names:
            guest = sum(d for o, d in in_dims.items() if o != m)
            self.coop[m] = CooperativeNet(in_dims[m], guest, hidden, num_classes, float(cfg["gate_w"]),
                                          str(cfg["relation_scale"]), str(cfg["activation"]))
            self.attend[m] = MemoryAttention(self.coop[m].out_dim, num_classes, int(cfg["theta_dim"]), 1,
                                             str(cfg["attention_activation"]), dropout, prior)

    def forward(self, batch: dict, intermediates: bool = False) -> dict:
        present = torch.stack([batch["present"][m] for m in self.names], 1)   # [B, M]
        x = self.inputs(batch)
        host_logits, kl_terms, inter = [], [], {}
        for i, m in enumerate(self.names):
            guest = torch.cat([x[o] for o in self.names if o != m], -1)         # Eq. 2-3
            parts = self.coop[m](x[m], guest)
            y, att = self.attend[m](parts["augmented"], intermediates=True)     # Eq. 15-17
            host_logits.append(y)
            kl_terms.append(self.kl_term(i, present, parts["logits_host"], parts["logits_guest"]))
            if intermediates:
                inter[m] = {**parts, **att, "host_logits": y}
        logits = fuse_probabilities(torch.stack(host_logits, 1), present, self.multilabel)   # Eq. 18
        kl = torch.stack(kl_terms).sum()                                                     # Eq. 14
        l2 = sum(p.pow(2).sum() for p in self.parameters()) if self.l2 > 0 else zero(logits)
        out = {"logits": logits, "aux_loss": self.kl_weight * kl + self.l2 * l2 + zero(logits),   # Eq. 20
               "losses": {"kl": kl, "l2": l2 + zero(logits)}}
        if intermediates:
            out["intermediates"] = inter
        return out


# -- the tuned variant ------------------------------------------------------------------------
class BilinearCooperativeNet(nn.Module):
    """The tuned variant's cooperative net: one bilinear relation matrix S_ij = h_i W_ij g_j, a
    host dim's score its row sum s^h = h * (W g), a guest dim's its column sum s^g = g * (W^T h)
    (computed without forming S), each softmax-normalised times its dim count; gate
    tau = sigmoid(w (s - xi)) without Eq. 8's factor s. Returns (x^, host logits, guest logits)."""

    def __init__(self, host_dim: int, guest_dim: int, hidden: int, num_classes: int, gate_w: float):
        super().__init__()
        self.relation = nn.Parameter(torch.randn(host_dim, guest_dim) / (host_dim * guest_dim) ** 0.25)
        self.eps_host = nn.Parameter(torch.ones(()))
        self.eps_guest = nn.Parameter(torch.ones(()))
        self.gate_w = gate_w
        self.enhance = nn.Sequential(nn.Linear(host_dim + guest_dim, hidden), nn.ReLU())
        self.head_host = nn.Linear(host_dim, num_classes)
        self.head_guest = nn.Linear(guest_dim, num_classes)
        self.out_dim = host_dim + hidden + guest_dim

    @staticmethod
    def _normalise(s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(s, dim=-1) * s.shape[-1]   # mean 1 across dims

    def forward(self, h: torch.Tensor, g: torch.Tensor):
        s_h = self._normalise(h * (g @ self.relation.T))   # row sums of S
        s_g = self._normalise(g * (h @ self.relation))     # column sums of S
        tau_h = torch.sigmoid(self.gate_w * (s_h - self.eps_host))
        tau_g = torch.sigmoid(self.gate_w * (s_g - self.eps_guest))
        beta_h, alpha_h = tau_h * h, (1 - tau_h) * h
        beta_g, alpha_g = tau_g * g, (1 - tau_g) * g
        enhanced = self.enhance(torch.cat([beta_h, beta_g], -1))
        augmented = torch.cat([alpha_h, enhanced, alpha_g], -1)
        return augmented, self.head_host(beta_h), self.head_guest(beta_g)


class NMCLTuned(_Hosts):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()   # cfg: models.resolved_config("nmcl", ...), the tuned block lifted
        in_dims = self.setup(dims, multilabel)
        self.kl_weight = float(cfg["kl_weight"])
        self.modality_loss_weight = float(cfg["modality_loss_weight"])
        proj = cfg["proj_dim"]
        self.project = None
        if proj:
            self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, proj), nn.LayerNorm(proj))
                                          for m, d in in_dims.items()})
            in_dims = {m: int(proj) for m in self.names}
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        self.drop = nn.Dropout(dropout)
        self.coop, self.attend = nn.ModuleDict(), nn.ModuleDict()
        for m in self.names:
            guest = sum(d for o, d in in_dims.items() if o != m)
            self.coop[m] = BilinearCooperativeNet(in_dims[m], guest, hidden, num_classes, float(cfg["gate_w"]))
            self.attend[m] = CategoryAttention(self.coop[m].out_dim, num_classes, int(cfg["attn_dim"]), dropout,
                                               label_prior(extra, multilabel))

    def forward(self, batch: dict) -> dict:
        present = torch.stack([batch["present"][m] for m in self.names], 1)   # [B, M]
        x = self.inputs(batch)
        host_logits, kl_terms = [], []
        for i, m in enumerate(self.names):
            guest = torch.cat([x[o] for o in self.names if o != m], -1)
            augmented, p_host, p_guest = self.coop[m](x[m], guest)
            host_logits.append(self.attend[m](augmented))
            kl_terms.append(self.kl_term(i, present, p_host, p_guest))
        stacked = torch.stack(host_logits, 1)                                          # [B, M, C]
        logits = masked_mean(stacked, present)                                         # host logits averaged
        kl = torch.stack(kl_terms).sum()
        losses = {"kl": kl}
        aux = self.kl_weight * kl
        if "labels" in batch:   # per-host prediction losses (training and evaluation)
            per_host = torch.stack([task_loss(stacked[:, i], batch["labels"], self.multilabel, reduction="none")
                                    for i in range(len(self.names))], 1)                 # [B, M]
            modality = (per_host * present).sum() / present.sum().clamp(min=1)
            losses["modality"] = modality
            aux = aux + self.modality_loss_weight * modality
        return {"logits": logits, "aux_loss": aux + zero(logits), "losses": losses}
