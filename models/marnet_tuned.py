"""MARNet, `variant: tuned`: the adaptation this project shipped before the published method was
implemented (models/marnet.py has `variant: paper`, the default). Kept because it is the better
model on YouTube-8M's 3,862 rare labels (docs/models-marnet.md has the figures); what it changes:

1. Complementary study: a per-sample gate c_o = h_o * (1 - sigmoid(W_c [h_v; h_o])) on encoded
   modalities instead of mapping the other modality into the visual space through the batch's
   cross-correlation matrix (no batch statistics at all, no running estimate).
2. Group MLPs with LayerNorm (not BatchNorm); CMD (RMS norms, 3 moments) between every pair of
   {visual vector, group vectors}, over the samples that have both.
3. Autoencoder: group vectors -> common z (+ a residual projection of the visual vector) -> back.
4. Label GNN: graph attention (Velickovic et al. 2018) over the fixed co-occurrence graph
   (ML-GCN threshold) instead of the attentive GNN that recomputes the correlation matrix.
5. Cross-modal multi-head attention: label nodes query the tokens {z, groups}; the attended value
   is scored against the label node, plus z . W L_k, plus a per-class bias at the label prior.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .common import masked_mean, mlp, pooled_dims, pooled_view
from .marnet import cmd, label_graph_inputs, visual_groups
from .nmcl import label_prior


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


class MARNetTuned(nn.Module):
    uses_label_graph = True

    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        extra = extra or {}
        self.visual, self.names, self.groups = visual_groups(dims, cfg["visual_modality"])
        others = self.names[1:]
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        self.rec_weight, self.cmd_weight = float(cfg["rec_weight"]), float(cfg["cmd_weight"])
        self.cmd_moments = int(cfg["cmd_moments"])
        self.heads = int(cfg["heads"])
        if hidden % self.heads:
            raise ValueError(f"models.marnet.tuned.hidden={hidden} must be divisible by models.marnet.tuned.heads={self.heads}")

        in_dims = pooled_dims(dims)
        self.encode = nn.ModuleDict({m: mlp(d, hidden, None, dropout) for m, d in in_dims.items()})
        self.complement = nn.ModuleDict({o: nn.Linear(2 * hidden, hidden) for o in others})  # W_c, step 2
        self.group_mlp = nn.ModuleList([mlp(hidden * (1 + len(g)), hidden, None, dropout) for g in self.groups])
        width = hidden * len(self.groups)
        self.encoder = mlp(width, hidden, None, dropout)                      # step 4
        self.decoder = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.residual = nn.Linear(hidden, hidden)

        label_emb, adj = label_graph_inputs(cfg, extra, num_classes)
        # Not in the state dict: rebuilt from `extra`, which the checkpoint carries (sparse).
        self.register_buffer("label_emb", label_emb, persistent=False)
        self.register_buffer("edges", adj.nonzero().T.contiguous(), persistent=False)   # [2, E]: i -> j
        self.label_in = nn.Linear(label_emb.shape[1], hidden)
        self.gnn = nn.ModuleList([GraphAttention(hidden) for _ in range(int(cfg["gnn_layers"]))])

        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.classifier = nn.Linear(hidden, hidden, bias=False)   # z . W L_k
        self.bias = nn.Parameter(torch.zeros(num_classes))
        prior = label_prior(extra, multilabel)
        if prior is not None:  # start at the training label frequencies, as NMCL's heads do
            self.bias.data = prior.clone()

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
