"""Sun et al.: scene x action micro-video classification with NetVLAD (`variant: paper`).
docs/models-sun.md lists every equation and where it lives; the paper's text was not available
while this was written, so the reading of the steps below is that of issue #15.

Inputs are named in the YAML: `scene_modality` (scene scores per keyframe, Eq. 1-2: VGG16
global + VGG19 local scene scores fused; the `scene` extractor family) and `action_modality`
(two-stream action scores per clip, Eq. 3-5; the `i3d` family). Every other modality the
store gives is encoded the same way.

Eq. 6   joint feature J_t = (f^A_t)ᵀ f^S_t: the outer product of the action scores at step t and
        the scene scores of the same moment (scene step ⌊t L_S / L_A⌋), flattened to Da·Ds;
        `joint_dim` first projects both to that width (null = the scores as they are).
Eq. 7-9 NetVLAD per modality (models/netvlad.py: soft assignment, residual aggregation,
        intra + L2 normalisation), applied to each of `segments` temporal segments of the
        video (segment s covers steps ⌊sL/S⌋ ... ⌈(s+1)L/S⌉ - 1): segment-level features u_s.
Eq. 10-13 segment attention: e_s = wᵀu_s (linear; a bias cancels in the softmax), α_s = softmax over the video's
        non-empty segments, v = Σ_s α_s u_s; `attention: mean` gives α_s = 1/S (mean pooling).
Backward fusion: dropout 0.5 on every v_m, one classifier per modality, and the class scores
        of the modalities present in the video averaged (fusion after the per-modality
        predictions, not of their inputs).
"""
from __future__ import annotations

import torch
from torch import nn

from models.common import masked_softmax, modality_names, sequence_dims, sequence_view
from models.heads import start_at_prior
from models.netvlad import NetVLAD

MAX_CLASSIFIER_WEIGHTS = 2e8   # one branch's K * D x classes


def segment_masks(mask: torch.Tensor, segments: int) -> torch.Tensor:
    """[B, T] prefix mask of valid steps -> [B, S, T]: step t is in segment s when
    ⌊sL/S⌋ <= t < ⌈(s+1)L/S⌉ for the video's L valid steps (segments overlap by a step when S
    does not divide L; a video shorter than S repeats steps)."""
    lengths = mask.sum(1)[:, None, None]
    s = torch.arange(segments, device=mask.device)[None, :, None]
    t = torch.arange(mask.shape[1], device=mask.device)[None, None, :]
    start, end = (s * lengths) // segments, ((s + 1) * lengths + segments - 1) // segments
    return (t >= start) & (t < end) & mask[:, None, :]


def joint_feature(action: torch.Tensor, a_mask: torch.Tensor, scene: torch.Tensor, s_mask: torch.Tensor):
    """Eq. 6 on time-aligned steps: ([B, T_A, Da·Ds], mask [B, T_A]). The scene step of action
    step t is ⌊t L_S / L_A⌋ of the video's own lengths; a video lacking either has no step."""
    la, ls = a_mask.sum(1, keepdim=True), s_mask.sum(1, keepdim=True)
    t = torch.arange(action.shape[1], device=action.device)[None]
    idx = (t * ls // la.clamp(min=1)).clamp(max=scene.shape[1] - 1)
    aligned = scene.gather(1, idx[..., None].expand(-1, -1, scene.shape[-1]))     # [B, T_A, Ds]
    joint = torch.einsum("bta,bts->btas", action, aligned).flatten(2)
    mask = a_mask & (ls > 0)
    return joint * mask[..., None].to(joint.dtype), mask


def pick_role(names: list[str], wanted: str, defaults: tuple[str, ...], fallback: int, key: str) -> str:
    """The modality named in the YAML; `auto` = the first of `defaults` present, else names[fallback]."""
    if wanted and wanted != "auto":
        if wanted not in names:
            raise ValueError(f"sun: {key}={wanted!r} is not among the input modalities {names}")
        return wanted
    return next((n for n in defaults if n in names), names[fallback])


class SunNet(nn.Module):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        names = modality_names(dims)
        if len(names) < 2:
            raise ValueError(f"sun needs a scene and an action modality, got {names}")
        self.scene = pick_role(names, cfg["scene_modality"], ("scene",), 0, "scene_modality")
        self.action = pick_role([m for m in names if m != self.scene], cfg["action_modality"],
                                ("action", "i3d"), 0, "action_modality")
        seq = sequence_dims(dims)
        self.inputs = names
        jd = cfg["joint_dim"]
        self.joint_proj = nn.ModuleDict()
        if jd:   # project the score vectors before the outer product (Da·Ds can be large)
            self.joint_proj = nn.ModuleDict({"a": nn.Linear(seq[self.action], int(jd)), "s": nn.Linear(seq[self.scene], int(jd))})
        widths = dict(seq)
        widths["joint"] = int(jd) ** 2 if jd else seq[self.action] * seq[self.scene]
        self.branches = names + ["joint"]
        reduce_to = cfg["input_dim"]
        in_dims = {m: min(int(reduce_to), d) if reduce_to else d for m, d in widths.items()}
        self.reduce = nn.ModuleDict({m: nn.Linear(widths[m], in_dims[m]) if in_dims[m] < widths[m] else nn.Identity()
                                     for m in self.branches})
        k = int(cfg["clusters"])
        for m in self.branches:   # a clear error instead of an out-of-memory crash
            if k * in_dims[m] * num_classes > MAX_CLASSIFIER_WEIGHTS:
                raise ValueError(f"sun: the {m} branch would need a {k} x {in_dims[m]} x {num_classes} classifier "
                                 f"(> {MAX_CLASSIFIER_WEIGHTS:.0e} weights); set models.sun.joint_dim and/or "
                                 "models.sun.input_dim (e.g. 16 and 256) or fewer clusters")
        self.vlad = nn.ModuleDict({m: NetVLAD(in_dims[m], k) for m in self.branches})
        self.segments = int(cfg["segments"])
        self.attention = cfg["attention"]
        if self.attention not in ("linear", "mean"):
            raise ValueError(f"sun attention must be linear or mean, got {self.attention!r}")
        # e_s = w^T u_s: a bias b would cancel in the softmax over segments (and get no gradient)
        # A pooled-only modality (YouTube-8M video-level features) is one step: one segment, nothing to attend.
        timed = set(dims.get("sequence", {}))
        timed |= {"joint"} if {self.scene, self.action} & timed else set()
        self.n_segments = {m: self.segments if m in timed else 1 for m in self.branches}
        self.att = nn.ModuleDict({m: nn.Linear(k * in_dims[m], 1, bias=False) for m in self.branches
                                  if self.attention == "linear" and m in timed})
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        self.classifier = nn.ModuleDict({m: nn.Linear(k * in_dims[m], num_classes) for m in self.branches})
        if cfg["label_prior_bias"]:   # opt-in, not in the paper: see configs/models/sun.yaml
            start_at_prior(self.classifier.values(), extra, multilabel)

    # -- pieces (the tests call them one by one) --------------------------------------------
    def branch_inputs(self, batch: dict) -> dict:
        """{branch: ([B, T, D] steps, [B, T] mask)} including the joint feature (Eq. 6)."""
        out = {m: sequence_view(batch, m) for m in self.inputs}
        (a, am), (s, sm) = out[self.action], out[self.scene]
        if len(self.joint_proj):
            a, s = self.joint_proj["a"](a) * am[..., None], self.joint_proj["s"](s) * sm[..., None]
        out["joint"] = joint_feature(a, am, s, sm)
        return out

    def segment_features(self, m: str, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 7-9 per segment: ([B, S, K·D], [B, S] non-empty)."""
        x = self.reduce[m](x)
        seg = segment_masks(mask, self.n_segments[m])
        u = torch.stack([self.vlad[m](x, seg[:, s]) for s in range(self.n_segments[m])], 1)
        return u, seg.any(-1)

    def segment_attention(self, m: str, u: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10-13: (v [B, K·D], α [B, S])."""
        scores = self.att[m](u).squeeze(-1) if m in self.att else torch.zeros_like(valid, dtype=u.dtype)
        alpha = masked_softmax(scores, valid, dim=1)
        return (alpha[..., None] * u).sum(1), alpha

    def forward(self, batch: dict) -> dict:
        logits, present = [], []
        for m, (x, mask) in self.branch_inputs(batch).items():
            u, valid = self.segment_features(m, x, mask)
            v, _ = self.segment_attention(m, u, valid)
            logits.append(self.classifier[m](self.dropout(v)))
            present.append(mask.any(1))
        logits, present = torch.stack(logits, 1), torch.stack(present, 1).to(logits[0].dtype)   # [B, M, C], [B, M]
        fused = (logits * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1)   # backward fusion
        return {"logits": fused, "aux_loss": fused.new_zeros(()), "losses": {}}
