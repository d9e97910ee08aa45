"""MARNet: multimodal attentive representation network for micro-video multi-label
classification (Jing, Liu, Zhang, Li, Liu, Su, ACM TOMM 20(6) 182, 2024).

`variant: paper` (the default, this file) follows the method of the authors' published code
(github.com/liuxianyi/MARNet; read, not copied), step by step. `variant: tuned` is the
adaptation in models/marnet_tuned.py. docs/models-marnet.md lists every step and where it lives.

1. Cross-correlation complementary study (`complementary_study`). For the visual vector v [B, Dv]
   and another modality o [B, Do] of the batch, R = vᵀ o is their [Dv, Do] cross-correlation
   (summed over the batch, as published); Rc = softmax over o's dims of every row, and
   õ = o Rcᵀ maps o into the visual space (õ_b,i = Σ_j Rc_ij o_b,j).
   R is a batch statistic, so it is treated like BatchNorm's: training uses the batch's R and
   updates a running estimate (mean per sample and batch size, momentum `corr_momentum`);
   evaluation uses the running R, so a prediction never depends on the other videos.
2. Visual-centred groups: (v, o) for every other modality o and, with two or more others,
   (v, [o_1; o_2; ...]) (visual + audio + trajectory in the paper); group g's vector
   h_g = tanh(BN(W2 tanh(BN(W1 [v; õ_g])))) (`fusion_style: concat`; `sum`: v + õ_g).
3. CMD (Zellinger et al. 2017) over the groups: mean over pairs (g, g') of
   ||E h_g − E h_g'||₂ + Σ_{k=2..K} ||c_k(h_g) − c_k(h_g')||₂ (the visual vector is not in it).
4. Autoencoder: H = sigmoid(W_e [h_1; ...; h_G]) (Dv wide), x̂ = ReLU(W_d2 tanh(W_d1 H));
   reconstruction loss MSE(x̂, [h_1; ...; h_G]). The sample's representation is v' = H + v.
5. Attentive label GNN (`AttentiveGNN`): from the label vectors L⁰ [C, Dl] (file, text encoder or
   random) and the adjacency A [C, C] (file or training co-occurrence), every layer l recomputes
   the correlation matrix from the current label representations,
       X = Lˡ Lˡᵀ,  N = (X − min X) / (max X − min X)   (`invert_similarity: true`: the published
       code's swapped names, (max X − X) / (max X − min X); docs/models-marnet.md),
       S = A ⊙ (√N / tr √N), rows normalised to sum 1 (empty rows left 0),
   then Lˡ⁺¹ = S ReLU(Lˡ Wˡ + bˡ). Two layers (Dl -> `gnn_hidden` -> Dv). S carries no gradient
   (the published code computes it in numpy). `label_graph()` returns S¹, S² and L¹, L².
6. Cosine label scoring and cross-modal attention (`label_scores`): β_c = cos(v', L²_c) [C];
   with Wq [d, Dv], Wk [d, C], Wv [d, Dv], wo [1, d] (d = `heads` x C as published, or
   `attention_dim`): head = (Wq v')(Wk β)ᵀ (Wv L²ᵀ) [d, C], y = wo head. (y = (wo·Wq v')
   ((Wk β)ᵀ Wv L²ᵀ) is computed in that factored order: the d x d product never materialises.)

Loss (published): λ1 BCE + λ2 reconstruction + λ3 CMD. The trainer adds the task loss once, so
aux_loss = (λ2 rec + λ3 CMD) / λ1: the same total divided by λ1, which Adam (scale invariant)
and SGD with lr / λ1 optimise identically.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import modality_names, pooled_dims, pooled_view
from .nmcl import label_prior

VISUAL_NAMES = ("visual", "rgb", "video")


def pick_visual(names: list[str], wanted: str = "auto") -> str:
    if wanted and wanted != "auto":
        if wanted not in names:
            raise ValueError(f"visual_modality={wanted!r} is not among the modalities {names}")
        return wanted
    return next((n for n in VISUAL_NAMES if n in names), names[0])


def visual_groups(dims: dict, wanted: str = "auto") -> tuple[str, list[str], list[list[str]]]:
    """(visual modality, [visual, others...], groups): the visual-centred groupings, (v, o) for
    every other modality o and, with two or more others, (v, all others)."""
    names = modality_names(dims)
    if len(names) < 2:
        raise ValueError(f"MARNet needs a visual modality and at least one other, got {names}")
    visual = pick_visual(names, wanted)
    others = [m for m in names if m != visual]
    return visual, [visual] + others, [[o] for o in others] + ([others] if len(others) > 1 else [])


def cmd(x: torch.Tensor, y: torch.Tensor, moments: int = 3, norm: str = "rms") -> torch.Tensor:
    """Central moment discrepancy between two samples [N, H] and [N', H] (Zellinger et al.,
    ICLR 2017, Eq. 3 without its bound normalisation): ||E x - E y|| + sum_k ||c_k(x) - c_k(y)||.
    norm "l2" is the Euclidean norm (the published MARNet code's `mmatch`); "rms" divides by
    sqrt(H), so the scale does not grow with the width (the tuned variant)."""
    if len(x) == 0 or len(y) == 0:
        return x.new_zeros(())
    size = (lambda d: d.pow(2).sum().add(1e-12).sqrt()) if norm == "l2" else (lambda d: d.pow(2).mean().add(1e-12).sqrt())
    mx, my = x.mean(0), y.mean(0)
    total = size(mx - my)
    cx, cy = x - mx, y - my
    for k in range(2, moments + 1):
        total = total + size(cx.pow(k).mean(0) - cy.pow(k).mean(0))
    return total


def cooccurrence_adjacency(counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary label graph from co-occurrence counts (counts[i, j] = videos with labels i and j,
    counts[i, i] = videos with label i): edge when P(j | i) >= threshold, plus self loops."""
    cond = counts / counts.diagonal().clamp(min=1)[:, None]
    adj = (cond >= threshold).float()
    adj.fill_diagonal_(1.0)
    return adj


def load_matrix(path: str | Path, key: str | None = None) -> torch.Tensor:
    """A 2-D float matrix from .npy, .pt / .pth (a tensor) or .mat (MATLAB, the published code's
    format; `key` names the variable, default: the only one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MARNet label file {path} does not exist")
    if path.suffix == ".npy":
        x = np.load(path)
    elif path.suffix in (".pt", ".pth"):
        x = torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".mat":
        from scipy.io import loadmat

        mat = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        if key is None and len(mat) != 1:
            raise ValueError(f"{path} holds {sorted(mat)}: name one with the *_key option")
        x = mat[key] if key else next(iter(mat.values()))
    else:
        raise ValueError(f"{path}: label files must be .npy, .pt or .mat")
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.dim() == 3:   # the published label file repeats the [C, D] matrix per sample
        x = x.mean(0)
    return x


def label_graph_inputs(cfg, extra: dict, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(label vectors [C, Dl], adjacency [C, C]). Label vectors: `label_embeddings: text` (the
    trainer embeds the class names with extractors.text.embed_texts into extra), `random` (fixed,
    seeded) or `file` (`label_file`, e.g. the published 300-d label vectorisation). Adjacency:
    `adjacency: cooccurrence` (ML-GCN: P(j | i) >= `adj_threshold` on the training labels, plus
    self loops) or `file` (`adjacency_file`)."""
    source = cfg["label_embeddings"]
    if source == "file":
        emb = load_matrix(cfg["label_file"], cfg["label_file_key"])
    elif extra.get("label_embeddings") is not None:
        emb = torch.as_tensor(extra["label_embeddings"], dtype=torch.float32)
    elif source == "random":  # recorded in the run's config; no text model needed
        emb = torch.randn(num_classes, int(cfg["label_dim"]), generator=torch.Generator().manual_seed(int(cfg["label_seed"])))
    else:
        raise ValueError("MARNet needs extra['label_embeddings'] (class names embedded with "
                         "extractors.text.embed_texts); set label_embeddings: random or file to train without them")
    if emb.shape[0] != num_classes:
        raise ValueError(f"{emb.shape[0]} label vectors for {num_classes} classes")
    if cfg["adjacency"] == "file":
        adj = load_matrix(cfg["adjacency_file"], cfg["adjacency_file_key"])
    else:
        counts = extra.get("label_cooccurrence")
        if counts is None:
            raise ValueError("MARNet needs extra['label_cooccurrence'] ([C, C] counts from the training labels)")
        adj = cooccurrence_adjacency(torch.as_tensor(counts, dtype=torch.float32), float(cfg["adj_threshold"]))
    if adj.shape != (num_classes, num_classes):
        raise ValueError(f"label adjacency has shape {tuple(adj.shape)}, expected ({num_classes}, {num_classes})")
    return emb, adj


# -- step 1: cross-correlation complementary study ---------------------------------------------
def complementary_study(v: torch.Tensor, o: torch.Tensor, corr: torch.Tensor | None = None):
    """(õ [B, Dv], R [Dv, Do]): R = vᵀ o over the batch unless `corr` is given, Rc = softmax
    over o's dims, õ = o Rcᵀ: the other modality mapped into the visual space."""
    R = v.T @ o if corr is None else corr
    return o @ torch.softmax(R, dim=1).T, R


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d (the published group MLPs use it) that falls back to the running statistics
    for a one-sample training batch instead of failing (the last batch of an epoch can be 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def group_mlp(in_dim: int, mid: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, mid), BatchNorm(mid), nn.Tanh(), nn.Linear(mid, out), BatchNorm(out), nn.Tanh())


# -- step 5: attentive label GNN ---------------------------------------------------------------
def correlation_matrix(labels: torch.Tensor, adj: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """S of step 5 from the current label representations [C, D] (no gradient)."""
    with torch.no_grad():
        x = labels @ labels.T
        hi, lo = x.max(), x.min()
        n = (hi - x) if invert else (x - lo)
        n = (n / (hi - lo).clamp(min=1e-12)).sqrt()
        s = adj * (n / n.trace().clamp(min=1e-12))
        rows = s.sum(1, keepdim=True)
        return s / torch.where(rows == 0, torch.ones_like(rows), rows)


class AttentiveGNN(nn.Module):
    """Layers L^{l+1} = S^l ReLU(L^l W^l + b^l), S^l recomputed from L^l (correlation_matrix)."""

    def __init__(self, dims: list[int], invert: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.invert = invert
        for layer in self.layers:   # the published init: U(±1/sqrt(fan_in)), zero bias
            nn.init.uniform_(layer.weight, -1 / math.sqrt(layer.in_features), 1 / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, labels: torch.Tensor, adj: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        reps, corrs = [], []
        for layer in self.layers:
            s = correlation_matrix(labels, adj, self.invert)
            labels = s @ F.relu(layer(labels))
            corrs.append(s)
            reps.append(labels)
        return reps, corrs


class MARNetPaper(nn.Module):
    uses_label_graph = True   # the trainer passes label vectors and co-occurrence counts in `extra`

    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        extra = extra or {}
        self.visual, self.names, self.groups = visual_groups(dims, cfg["visual_modality"])
        d = pooled_dims(dims)
        dv = d[self.visual]
        self.fusion_style = cfg["fusion_style"]
        if self.fusion_style not in ("concat", "sum"):
            raise ValueError(f"MARNet fusion_style must be concat or sum, got {self.fusion_style!r}")
        gd = int(cfg["group_dim"])
        self.group_net = nn.ModuleList(group_mlp(dv * (2 if self.fusion_style == "concat" else 1), dv, gd)
                                       for _ in self.groups)
        # running cross-correlation per group (step 1): mean per sample, and the mean batch size
        self.corr_momentum = float(cfg["corr_momentum"])
        for g, members in enumerate(self.groups):
            self.register_buffer(f"corr_{g}", torch.zeros(dv, sum(d[o] for o in members)))
        self.register_buffer("corr_batch", torch.zeros(()))
        width = gd * len(self.groups)
        self.encoder = nn.Linear(width, dv)                                     # step 4
        self.decoder = nn.Sequential(nn.Linear(dv, (dv + width) // 2), nn.Tanh(), nn.Linear((dv + width) // 2, width), nn.ReLU())
        for layer in (self.encoder, self.decoder[0], self.decoder[2]):
            nn.init.uniform_(layer.weight, -1 / math.sqrt(layer.in_features), 1 / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

        label_vecs, adj = label_graph_inputs(cfg, extra, num_classes)
        # Not in the state dict: rebuilt from `extra` / the files named in the config.
        self.register_buffer("label_vectors", label_vecs, persistent=False)
        self.register_buffer("adjacency", adj, persistent=False)
        self.gnn = AttentiveGNN([label_vecs.shape[1], int(cfg["gnn_hidden"]), dv], invert=bool(cfg["invert_similarity"]))
        att = int(cfg["attention_dim"] or int(cfg["heads"]) * num_classes)
        gain = nn.init.calculate_gain("relu")
        self.wq = nn.Parameter(nn.init.xavier_uniform_(torch.empty(att, dv), gain=gain))
        self.wk = nn.Parameter(nn.init.xavier_uniform_(torch.empty(att, num_classes), gain=gain))
        self.wv = nn.Parameter(nn.init.xavier_uniform_(torch.empty(att, dv), gain=gain))
        self.wo = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, att), gain=gain))
        self.bias = None
        if cfg["output_bias"]:   # not in the published code: an opt-in adaptation
            prior = label_prior(extra, multilabel)
            self.bias = nn.Parameter(prior.clone() if prior is not None else torch.zeros(num_classes))
        lam1 = float(cfg["lam1"])
        self.rec_weight, self.cmd_weight = float(cfg["lam2"]) / lam1, float(cfg["lam3"]) / lam1
        self.cmd_moments = int(cfg["cmd_moments"])

    # -- pieces (the tests call them one by one) --------------------------------------------
    def group_vectors(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(v [B, Dv], group vectors h_g [B, gd], cross-correlations R_g used)."""
        x = {m: pooled_view(batch, m) for m in self.names}
        v = x[self.visual]
        update = self.training and v.shape[0] > 1
        hs, corrs = [], []
        for g, (members, net) in enumerate(zip(self.groups, self.group_net)):
            o = torch.cat([x[m] for m in members], -1)
            running = getattr(self, f"corr_{g}")
            o_hat, R = complementary_study(v, o, None if update else running * self.corr_batch)
            if update:
                with torch.no_grad():
                    running.lerp_(R.detach() / v.shape[0], self.corr_momentum)
            hs.append(net(torch.cat([v, o_hat], -1) if self.fusion_style == "concat" else v + o_hat))
            corrs.append(R)
        if update:
            with torch.no_grad():
                self.corr_batch.copy_(float(v.shape[0]) if self.corr_batch == 0 else
                                      torch.lerp(self.corr_batch, torch.tensor(float(v.shape[0])), self.corr_momentum))
        return v, hs, corrs

    def label_graph(self) -> dict:
        """The attentive GNN's outputs, to be saved with a run: the correlation matrix of every
        layer and the label representations after every layer."""
        reps, corrs = self.gnn(self.label_vectors, self.adjacency)
        return {"correlation_matrices": corrs, "label_representations": reps}

    def artifacts(self) -> dict:
        """What the trainer saves in every checkpoint (CPU tensors). The correlation matrices are
        zero off the label graph's edges, so they are stored sparse (3,862 labels: 60 MB each
        dense); `.to_dense()` restores them."""
        with torch.no_grad():
            graph = self.label_graph()
            return {"correlation_matrices": [s.detach().cpu().to_sparse() for s in graph["correlation_matrices"]],
                    "label_representations": [t.detach().cpu() for t in graph["label_representations"]]}

    def label_scores(self, rep: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, C], cosine scores β [B, C]) of step 6."""
        # cos(v', L_c) for every pair as one product of unit vectors: the [B, C, D] broadcast of
        # F.cosine_similarity needs gigabytes with thousands of labels
        beta = F.normalize(rep, dim=-1) @ F.normalize(labels, dim=-1).T       # [B, C]
        scale = (rep @ self.wq.T) @ self.wo[0]                                  # wo . Wq v'   [B]
        label_side = self.wv @ labels.T                                         # Wv L^T       [d, C]
        logits = scale[:, None] * ((beta @ self.wk.T) @ label_side)             # (Wk β)^T Wv L^T
        return logits, beta

    def forward(self, batch: dict) -> dict:
        v, hs, _ = self.group_vectors(batch)
        cmd_loss = v.new_zeros(())
        pairs = list(itertools.combinations(range(len(hs)), 2))
        for i, j in pairs:   # step 3, the mean over pairs of groups
            cmd_loss = cmd_loss + cmd(hs[i], hs[j], self.cmd_moments, norm="l2") / len(pairs)
        flat = torch.cat(hs, -1)
        common = torch.sigmoid(self.encoder(flat))                              # step 4
        rec = F.mse_loss(self.decoder(common), flat)
        reps, _ = self.gnn(self.label_vectors, self.adjacency)
        logits, _ = self.label_scores(common + v, reps[-1])
        if self.bias is not None:
            logits = logits + self.bias
        aux = self.rec_weight * rec + self.cmd_weight * cmd_loss
        return {"logits": logits, "aux_loss": aux, "losses": {"reconstruction": rec, "cmd": cmd_loss}}


MARNet = MARNetPaper   # models.MODELS["marnet"]; models.VARIANTS["marnet"]["tuned"] is MARNetTuned


from .marnet_tuned import GraphAttention, MARNetTuned  # noqa: E402  (it imports the helpers above)

__all__ = ["MARNet", "MARNetPaper", "MARNetTuned", "GraphAttention", "cmd", "cooccurrence_adjacency",
           "complementary_study", "correlation_matrix", "label_graph_inputs", "pick_visual"]
