"""MART (Zhang et al., "MART: Masked Affective RepresenTation Learning via Masked Temporal
Distribution Distillation", CVPR 2024), `variant: paper`, on cached multimodal features.
`variant: masking-only` (models/mart_masking.py) is the earlier adaptation. docs/models-mart.md
lists every step and where it lives.

1. Tokens: every input modality resampled to S segments (segment_pool), W_m seg + E_mod[m] +
   E_pos[s]: one token per (modality, segment), a CLS token first; pre-norm transformer blocks.
2. Affective cues: the `emotion_modality` (extractors/emotion.py: NRC lexicon counts of the
   time-aligned subtitles / transcript, title as the fallback; [S', 8 emotions + 2 sentiments])
   is the target, never an input. `verify_cues` verifies them hierarchically:
   (a) segment level, against the video: when `verify_text` and `verify_visual` (the text and
   frame embeddings of one image-text space, e.g. CLIP) are present, a segment's cue is kept
   only if cos(text_s, visual_s) >= `verify_threshold`; a segment needs a lexicon sentiment
   (positive != negative) to be kept;
   (b) emotion level: emotions whose polarity contradicts the segment's sentiment are removed
   (positive: anticipation, joy, surprise, trust; negative: anger, disgust, fear, sadness).
   p_s = the kept emotion counts normalised to a distribution; segments with none are unused.
3. Mask selection (training): a no-grad pass gives, per segment, the last layer's CLS
   self-attention and the cross-modal attention (tokens of one modality attending to the
   tokens of the others, received by the segment), mixed s = λ cross + (1 - λ) self
   (λ = `cross_weight`; the published code weighs its self-attention 0.9 and the text-to-visual
   attention 0.1). The round(ratio * S) top segments are masked (every modality's token) in a
   video picked with probability `mask_prob` (0.5 there); then round(hint_ratio * ratio * S)
   hints drawn among the top round(hint_top * S) segments are revealed again (AttMask-Hints).
4. Masked affective modelling: a head on the masked tokens' outputs predicts q_s; loss
   KL(p_s || q_s) over masked, verified segments (`kl_weight`).
5. Complementary contrastive loss (InfoNCE, temperature `tau`): the output at a masked token is
   pulled to the original (unmasked) content of the *other* modalities at that segment (the
   complementary part) and pushed from that of the other masked (video, segment) pairs of the
   batch; a training loss only (`nce_weight`).
Evaluation never masks; logits come from the CLS output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import modality_names, sequence_dims, sequence_view, zero
from models.heads import start_at_prior
from models.mart_masking import MaskedTemporalModel, add_encoder, segment_pool

POSITIVE = (1, 4, 6, 7)   # anticipation, joy, surprise, trust in extractors.emotion.EMOTIONS
NEGATIVE = (0, 2, 3, 5)   # anger, disgust, fear, sadness


def verify_cues(cues: torch.Tensor, similarity: torch.Tensor | None = None, threshold: float = 0.0):
    """Step 2: (p [B, S, 8] distributions, valid [B, S]) from cues [B, S, 10]."""
    emotions, pos, neg = cues[..., :8], cues[..., 8], cues[..., 9]
    sentiment = torch.sign(pos - neg)                                     # (a) sentiment first
    valid = sentiment != 0
    if similarity is not None:
        valid = valid & (similarity >= threshold)
    polarity = torch.zeros(8, device=cues.device)
    polarity[list(POSITIVE)], polarity[list(NEGATIVE)] = 1.0, -1.0
    keep = (polarity[None, None] * sentiment[..., None]) >= 0            # (b) then emotions
    kept = emotions * keep
    total = kept.sum(-1)
    valid = valid & (total > 0)
    return kept / total.clamp(min=1e-12)[..., None], valid


class MART(nn.Module):
    def __init__(self, cfg, dims: dict, num_classes: int, multilabel: bool, extra: dict | None = None):
        super().__init__()
        names = modality_names(dims)
        self.emotion = cfg["emotion_modality"]
        if self.emotion == "auto":   # the lexicon target when the store has it; else no KL term (losses say so)
            self.emotion = "emotion" if "emotion" in names else None
        if self.emotion is not None and self.emotion not in names:
            raise ValueError(f"mart: emotion_modality={self.emotion!r} is not among the modalities {names} "
                             "(extractors/emotion.py makes it; emotion_modality: null trains without the KL term)")
        self.verify = (cfg["verify_text"], cfg["verify_visual"])
        self.names = [m for m in names if m != self.emotion]
        if len(self.names) < 2:
            raise ValueError(f"mart needs at least 2 input modalities, got {self.names}")
        self.dims = sequence_dims(dims)
        d, self.segments = int(cfg["d_model"]), int(cfg["segments"])
        self.mask_ratio, self.mask_prob = float(cfg["mask_ratio"]), float(cfg["mask_prob"])
        self.hint_ratio, self.hint_top = float(cfg["hint_ratio"]), float(cfg["hint_top"])
        self.cross_weight, self.threshold = float(cfg["cross_weight"]), float(cfg["verify_threshold"])
        self.kl_weight, self.nce_weight, self.tau = float(cfg["kl_weight"]), float(cfg["nce_weight"]), float(cfg["tau"])
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], d) for m in self.names})
        dropout = add_encoder(self, cfg, d)
        self.ln_f, self.drop = nn.LayerNorm(d), nn.Dropout(dropout)
        self.head = nn.Linear(d, num_classes)
        if cfg["label_prior_bias"]:   # opt-in, not in the paper: see configs/models/mart.yaml
            start_at_prior([self.head], extra, multilabel)
        self.emotion_head = nn.Linear(d, 8) if self.emotion is not None else None   # q_s of step 4
        self.nce_q, self.nce_k = nn.Linear(d, d), nn.Linear(d, d)               # step 5 projections

    # -- tokens and encoder --------------------------------------------------------------------
    def tokenize(self, batch: dict):
        """(content [B, M*S, d], base embeddings [B, M*S, d], valid [B, M*S])."""
        content, valid = [], []
        for m in self.names:
            x, mask = sequence_view(batch, m)
            content.append(self.proj[m](segment_pool(x, mask, self.segments)))
            valid.append(mask.any(1)[:, None].expand(-1, self.segments))
        base = torch.cat([self.pos_emb + self.mod_emb[i] for i in range(len(self.names))], 0)
        return torch.cat(content, 1), base.expand(content[0].shape[0], -1, -1), torch.cat(valid, 1)

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor):
        """(outputs [B, 1 + N, d], last layer's attention [B, 1 + N, 1 + N])."""
        x = self.drop(torch.cat([self.cls.expand(tokens.shape[0], 1, -1), tokens], 1))
        valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], 1)
        for block in self.blocks:
            x, att = block(x, valid)
        return self.ln_f(x), att

    def selection_scores(self, att: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Step 3: [B, S] λ cross-modal + (1 - λ) CLS self-attention received per segment."""
        M, S = len(self.names), self.segments
        tok = att[:, 1:, 1:] * valid[:, None, :].to(att.dtype)               # token -> token
        modality = torch.arange(M, device=att.device).repeat_interleave(S)
        cross = (modality[:, None] != modality[None, :]).to(att.dtype)         # attention across modalities
        received = (tok * cross[None]).sum(1).view(-1, M, S).sum(1)            # [B, S]
        self_att = (att[:, 0, 1:] * valid.to(att.dtype)).view(-1, M, S).sum(1)
        norm = lambda x: x / x.sum(1, keepdim=True).clamp(min=1e-12)            # noqa: E731
        return self.cross_weight * norm(received) + (1 - self.cross_weight) * norm(self_att)

    def choose_masks(self, scores: torch.Tensor, seg_valid: torch.Tensor) -> torch.Tensor:
        """[B, S] bool, as the published code's AttMask-Hints: the top round(ratio * valid) segments
        by score; a video is masked at all only with probability `mask_prob`; then
        round(hint_ratio * ratio * valid) hints, drawn uniformly among the top round(hint_top *
        valid) segments, are revealed again (none when that rounds to 0, e.g. S = 8)."""
        n_valid = seg_valid.sum(1)
        n_mask = torch.minimum(torch.round(self.mask_ratio * n_valid).long().clamp(min=1), n_valid)
        order = scores.masked_fill(~seg_valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)                                       # 0 = most attended
        masked = (rank < n_mask[:, None]) & seg_valid
        masked &= (torch.rand(masked.shape[0], device=masked.device) < self.mask_prob)[:, None]
        n_hint = torch.round(self.hint_ratio * self.mask_ratio * n_valid).long()
        n_top = torch.round(self.hint_top * n_valid).long()
        for b in torch.nonzero((n_hint > 0) & (n_top > 0)).flatten().tolist():
            top = torch.nonzero((rank[b] < n_top[b]) & seg_valid[b]).flatten()
            pick = top[torch.randperm(len(top), device=top.device)[: int(n_hint[b])]]
            masked[b, pick] = False
        return masked

    # -- forward -------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        content, base, valid = self.tokenize(batch)
        if not self.training:
            out, _ = self.encode(content + base, valid)
            return {"logits": self.head(out[:, 0]), "aux_loss": zero(out), "losses": {}}
        M, S = len(self.names), self.segments
        seg_valid = valid.view(-1, M, S).any(1)
        with torch.no_grad():
            _, att = self.encode(content + base, valid)
            masked = self.choose_masks(self.selection_scores(att, valid), seg_valid)
        token_masked = masked.repeat(1, M) & valid                                 # [B, M*S]
        x = torch.where(token_masked[..., None], self.mask_token.expand_as(content), content)
        out, _ = self.encode(x + base, valid)
        logits = self.head(self.drop(out[:, 0]))
        kl = self.affective_loss(batch, out[:, 1:], masked)
        nce = self.complementary_loss(out[:, 1:], content, token_masked, valid)
        aux = self.kl_weight * kl + self.nce_weight * nce
        losses = {"kl": kl, "nce": nce} if self.emotion is not None else {"nce": nce}
        return {"logits": logits, "aux_loss": aux, "losses": losses}

    def targets(self, batch: dict):
        """(p [B, S, 8], valid [B, S]) of step 2, or None without an emotion modality."""
        if self.emotion is None:
            return None
        x, mask = sequence_view(batch, self.emotion)
        cues = segment_pool(x, mask, self.segments)
        sim = None
        if all(v in batch["present"] for v in self.verify):
            (t, tm), (v, vm) = (sequence_view(batch, m) for m in self.verify)
            sim = F.cosine_similarity(segment_pool(t, tm, self.segments), segment_pool(v, vm, self.segments), dim=-1)
            both = (tm.any(1) & vm.any(1))[:, None]
            sim = torch.where(both, sim, torch.ones_like(sim))   # no pair in this video: nothing to verify against
        return verify_cues(cues, sim, self.threshold)

    def affective_loss(self, batch: dict, out: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Step 4: mean KL(p_s || q_s) over masked verified segments; q from the masked tokens'
        outputs averaged over modalities."""
        target = self.targets(batch)
        if target is None:
            return zero(out)
        p, ok = target
        h = out.view(out.shape[0], len(self.names), self.segments, -1).mean(1)
        log_q = F.log_softmax(self.emotion_head(h), -1)
        kl = (p * (torch.log(p.clamp(min=1e-12)) - log_q)).sum(-1)
        where = masked & ok
        return (kl * where).sum() / where.sum().clamp(min=1)

    def complementary_loss(self, out, content, token_masked, valid) -> torch.Tensor:
        """Step 5: InfoNCE between masked outputs and their segment's other-modality content."""
        B, M, S = out.shape[0], len(self.names), self.segments
        c = (content * valid[..., None]).view(B, M, S, -1)
        n = valid.view(B, M, S).sum(1, keepdim=True)                              # [B, 1, S]
        others = (c.sum(1, keepdim=True) - c) / (n - valid.view(B, M, S).float()).clamp(min=1)[..., None]
        has_other = (n - valid.view(B, M, S).float()) > 0
        pick = token_masked.view(B, M, S) & has_other
        if pick.sum() < 2:
            return zero(out)
        q = F.normalize(self.nce_q(out.view(B, M, S, -1)[pick]), dim=-1)
        k = F.normalize(self.nce_k(others[pick]), dim=-1)
        logits = q @ k.T / self.tau
        return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


__all__ = ["MART", "MaskedTemporalModel", "segment_pool", "verify_cues"]
