"""MARNet: multimodal attentive representation network for micro-video multi-label
classification (Jing et al., ACM TOMM 2024), adapted to any modalities and label vocabulary.

The pieces, in the order of the forward pass:

1. Visual-centred groupings. The visual modality (`visual_modality`, `auto` = the first of
   visual / rgb / video that exists, else the first modality) is the centre; every other
   modality o forms a group (visual + o), and when there are two or more others one more group
   holds them all (visual + audio + trajectory in the paper's three-modality setting).
2. Complementary study: inside a group each non-visual member keeps what visual does not already
   say, c_o = h_o * (1 - sigmoid(W_c [h_v; h_o])), a per-sample gate. (The public code instead
   mixes samples across the batch here, so a video's prediction depends on its batch mates;
   this version never looks at another sample.)
3. Group MLPs give one vector per group; a CMD consistency loss (central moment discrepancy,
   first 3 moments, Zellinger et al. 2017) pulls the distributions of the visual vector and the
   group vectors together (every pair, so it also works with only two modalities). CMD is a
   batch-level *training loss* only: it never enters a prediction.
4. Autoencoder: the concatenated group vectors are encoded to a common representation z (plus a
   residual projection of the visual vector) and decoded back; reconstruction loss (MSE).
5. Attentive label GNN: class-name embeddings (the text extractor's MiniLM, or a fixed random
   matrix when `label_embeddings: random`) pass through graph-attention layers over the label
   co-occurrence graph built from the *training* labels (edge i->j when P(j | i) >= `adj_threshold`,
   as in ML-GCN, plus self loops).
6. Cross-modal multi-head attention: every label node queries the sample's tokens (z and the
   group vectors); the attended value is scored against the label node, giving label-aware
   logits, plus the ML-GCN style score z . W L_k.

Loss = BCE (cross-entropy when the dataset is multi-class) + rec_weight * reconstruction +
cmd_weight * CMD. The number of labels is whatever the dataset has (the public code fixes 63).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .common import masked_mean, mlp, modality_names, pooled_dims, pooled_view
from .nmcl import label_prior

VISUAL_NAMES = ("visual", "rgb", "video")


def pick_visual(names: list[str], wanted: str = "auto") -> str:
    if wanted and wanted != "auto":
        if wanted not in names:
            raise ValueError(f"visual_modality={wanted!r} is not among the modalities {names}")
        return wanted
    return next((n for n in VISUAL_NAMES if n in names), names[0])


def cmd(x: torch.Tensor, y: torch.Tensor, moments: int = 3) -> torch.Tensor:
    """Central moment discrepancy between two samples [N, H] and [N', H] (Zellinger et al.,
    ICLR 2017, Eq. 3): ||E x - E y|| + sum_k ||c_k(x) - c_k(y)||, with root-mean-square norms in
    place of the paper's bound normalisation so the scale does not grow with the width H."""
    if len(x) == 0 or len(y) == 0:
        return x.new_zeros(())
    mx, my = x.mean(0), y.mean(0)
    total = _rms(mx - my)
    cx, cy = x - mx, y - my
    for k in range(2, moments + 1):
        total = total + _rms(cx.pow(k).mean(0) - cy.pow(k).mean(0))
    return total


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().add(1e-12).sqrt()


def cooccurrence_adjacency(counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary label graph from co-occurrence counts (counts[i, j] = videos with labels i and j,
    counts[i, i] = videos with label i): edge when P(j | i) >= threshold, plus self loops."""
    cond = counts / counts.diagonal().clamp(min=1)[:, None]
    adj = (cond >= threshold).float()
    adj.fill_diagonal_(1.0)
    return adj


class GraphAttention(nn.Module):
    """One graph-attention layer (Velickovic et al. 2018) with a residual: node i aggregates
    its neighbours j (edges i -> j) with weights softmax_j(leaky_relu(a_dst . W l_i + a_src . W l_j)).
    Computed over the edge list, so the cost follows the number of edges, not classes^2."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.att_src = nn.Parameter(torch.randn(dim) * 0.1)
        self.att_dst = nn.Parameter(torch.randn(dim) * 0.1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        i, j = edges                                                            # [E] each
        h = self.linear(nodes)                                                  # [C, H]
        scores = F.leaky_relu((h @ self.att_dst)[i] + (h @ self.att_src)[j], 0.2)
        top = torch.full((len(nodes),), float("-inf"), device=h.device).scatter_reduce(0, i, scores, "amax")
        w = torch.exp(scores - top[i])               # softmax over each node's edges (self loops: never empty)
        total = torch.zeros(len(nodes), device=h.device, dtype=w.dtype).index_add(0, i, w)
        agg = torch.zeros_like(h).index_add(0, i, w[:, None] * h[j]) / total[:, None]
        return self.norm(nodes + F.elu(agg))


class MARNet(nn.Module):
    uses_label_graph = True   # the trainer passes label embeddings and co-occurrence counts in `extra`

    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        extra = extra or {}
        names = modality_names(dims)
        if len(names) < 2:
            raise ValueError(f"MARNet needs a visual modality and at least one other, got {names}")
        self.visual = pick_visual(names, cfg.get("visual_modality", "auto"))
        self.names = [self.visual] + [m for m in names if m != self.visual]
        others = self.names[1:]
        self.groups = [[o] for o in others] + ([others] if len(others) > 1 else [])
        hidden, dropout = int(cfg.get("hidden", 256)), float(cfg.get("dropout", 0.0))
        self.rec_weight, self.cmd_weight = float(cfg.get("rec_weight", 1.0)), float(cfg.get("cmd_weight", 0.1))
        self.cmd_moments = int(cfg.get("cmd_moments", 3))
        self.heads = int(cfg.get("heads", 4))
        if hidden % self.heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={self.heads}")

        in_dims = pooled_dims(dims)
        self.encode = nn.ModuleDict({m: mlp(d, hidden, None, dropout) for m, d in in_dims.items()})
        self.complement = nn.ModuleDict({o: nn.Linear(2 * hidden, hidden) for o in others})  # W_c, step 2
        self.group_mlp = nn.ModuleList([mlp(hidden * (1 + len(g)), hidden, None, dropout) for g in self.groups])
        width = hidden * len(self.groups)
        self.encoder = mlp(width, hidden, None, dropout)                      # step 4
        self.decoder = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.residual = nn.Linear(hidden, hidden)

        label_emb = self._label_embeddings(cfg, extra, num_classes)
        counts = extra.get("label_cooccurrence")
        if counts is None:
            raise ValueError("MARNet needs extra['label_cooccurrence'] ([C, C] counts from the training labels)")
        counts = torch.as_tensor(counts, dtype=torch.float32)
        if counts.shape != (num_classes, num_classes):
            raise ValueError(f"label_cooccurrence has shape {tuple(counts.shape)}, expected ({num_classes}, {num_classes})")
        # Not in the state dict: rebuilt from `extra`, which the checkpoint carries (sparse).
        self.register_buffer("label_emb", label_emb, persistent=False)
        adj = cooccurrence_adjacency(counts, float(cfg.get("adj_threshold", 0.4)))
        self.register_buffer("edges", adj.nonzero().T.contiguous(), persistent=False)   # [2, E]: i -> j
        self.label_in = nn.Linear(label_emb.shape[1], hidden)
        self.gnn = nn.ModuleList([GraphAttention(hidden) for _ in range(int(cfg.get("gnn_layers", 2)))])

        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.classifier = nn.Linear(hidden, hidden, bias=False)   # z . W L_k
        self.bias = nn.Parameter(torch.zeros(num_classes))
        prior = label_prior(extra, multilabel)
        if prior is not None:  # start at the training label frequencies, as NMCL's heads do
            self.bias.data = prior.clone()

    @staticmethod
    def _label_embeddings(cfg, extra: dict, num_classes: int) -> torch.Tensor:
        source = cfg.get("label_embeddings", "text")
        emb = extra.get("label_embeddings")
        if emb is not None:
            emb = torch.as_tensor(emb, dtype=torch.float32)
        elif source == "random":  # recorded in the run's config; no text model needed
            emb = torch.randn(num_classes, int(cfg.get("label_dim", 64)),
                              generator=torch.Generator().manual_seed(int(cfg.get("label_seed", 0))))
        else:
            raise ValueError("MARNet needs extra['label_embeddings'] (class names embedded with "
                             "extractors.text.embed_texts); set label_embeddings: random to train without them")
        if emb.shape[0] != num_classes:
            raise ValueError(f"{emb.shape[0]} label embeddings for {num_classes} classes")
        return emb

    def label_nodes(self) -> torch.Tensor:
        nodes = self.label_in(self.label_emb)
        for layer in self.gnn:
            nodes = layer(nodes, self.edges)
        return nodes                                                            # [C, H]

    def forward(self, batch: dict) -> dict:
        present = {m: batch["present"][m] for m in self.names}
        h = {m: self.encode[m](pooled_view(batch, m)) * present[m][:, None].float() for m in self.names}
        hv = h[self.visual]

        group_vecs, group_mask = [], []
        for members, net in zip(self.groups, self.group_mlp):
            parts = [hv]
            for o in members:   # complementary study, step 2
                gate = torch.sigmoid(self.complement[o](torch.cat([hv, h[o]], -1)))
                parts.append(h[o] * (1 - gate))
            group_vecs.append(net(torch.cat(parts, -1)))
            group_mask.append(torch.stack([present[m] for m in [self.visual] + members], 1).any(1))
        groups = torch.stack(group_vecs, 1)                                     # [B, G, H]
        gmask = torch.stack(group_mask, 1)                                      # [B, G]

        flat = groups.flatten(1)
        z = self.encoder(flat) + self.residual(hv)                              # step 4
        recon = self.decoder(z)
        any_present = gmask.any(1)
        rec = masked_mean(F.mse_loss(recon, flat, reduction="none").mean(-1), any_present, dim=0)
        # CMD between every pair of {visual, group_1, ..., group_G}, over samples having both
        reps = torch.cat([hv[:, None], groups], 1)
        rmask = torch.cat([present[self.visual][:, None], gmask], 1)
        cmd_loss = z.new_zeros(())
        for i, j in itertools.combinations(range(reps.shape[1]), 2):
            both = rmask[:, i] & rmask[:, j]
            cmd_loss = cmd_loss + cmd(reps[both, i], reps[both, j], self.cmd_moments)

        # step 6: label nodes attend over the sample's tokens (z and the groups)
        labels = self.label_nodes()                                             # [C, H]
        tokens = torch.cat([z[:, None], groups], 1)                             # [B, 1+G, H]
        tmask = torch.cat([torch.ones_like(gmask[:, :1]), gmask], 1)
        B, T, H = tokens.shape
        d = H // self.heads
        q = self.q(labels).view(-1, self.heads, d)                              # [C, h, d]
        k = self.k(tokens).view(B, T, self.heads, d)
        v = self.v(tokens).view(B, T, self.heads, d)
        scores = torch.einsum("chd,bthd->bhct", q, k) / d ** 0.5
        attn = torch.softmax(scores.masked_fill(~tmask[:, None, None, :], float("-inf")), dim=-1)
        # score of label k = <W_o attended_k, L_k>; folding W_o into the label side keeps the
        # cost at B x C x T instead of B x C x H x H.
        key = (labels @ self.out.weight).view(-1, self.heads, d)                # [C, h, d]
        value_scores = torch.einsum("bthd,chd->bhct", v, key)
        # both scores are dot products over H dims: / sqrt(H) keeps the initial logits near 0
        # (with thousands of labels, saturated sigmoids at the start cost epochs of training)
        logits = ((attn * value_scores).sum((1, 3)) + z @ self.classifier(labels).T) / H ** 0.5 + self.bias
        aux = self.rec_weight * rec + self.cmd_weight * cmd_loss
        return {"logits": logits, "aux_loss": aux, "losses": {"reconstruction": rec, "cmd": cmd_loss}}
