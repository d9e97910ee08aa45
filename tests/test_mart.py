"""MART `variant: paper` (models/mart.py) and its lexicon cues (extractors/emotion.py): every step
against a direct formula on tiny inputs. The generic model properties run in
tests/test_models.py ("mart") and tests/test_models_sequence.py ("mart_paper")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_models import flat_cfg

from extractors.emotion import COLUMNS, EMOTIONS, lexicon, segment_emotions, text_emotions
from models import model_class
from models.mart import MART, MaskedTemporalModel, verify_cues
from pipeline.dataset import collate_batch

DIMS = {"pooled": {}, "sequence": {"video": 4, "audio": 3, "emotion": 10}}
pytestmark = pytest.mark.usefixtures("one_thread")


def build(**over):
    torch.manual_seed(0)
    cfg = {"d_model": 8, "segments": 4, "heads": 2, "layers": 1, "ff_dim": 16, "dropout": 0.0, "hint_ratio": 0.0,
           "mask_prob": 1.0, **over}
    return MART(flat_cfg("mart", cfg), DIMS, 3, False, {})


def items(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        emo = torch.zeros(4, 10)
        emo[:, 4], emo[:, 8] = 2.0, 1.0              # joy, positive
        emo[1, 0] = 1.0                              # anger in a positive segment: removed by (b)
        emo[2, 8:] = 1.0                             # positive == negative: no sentiment, unused
        out.append({"video_id": str(i), "pooled": {}, "labels": F.one_hot(torch.tensor(i % 3), 3).float(),
                    "sequence": {"video": torch.randn(5 + i, 4, generator=g), "audio": torch.randn(3, 3, generator=g), "emotion": emo},
                    "present": {"video": True, "audio": True, "emotion": True}})
        out[-1]["observed"] = dict(out[-1]["present"])
    return out


def test_variants():
    assert model_class("mart") is MART and model_class("mart", "masking-only") is MaskedTemporalModel
    assert build().names == ["video", "audio"]      # the emotion cues are a target, not an input


# -- affective cues ------------------------------------------------------------------------------
def test_lexicon_counts_and_time_alignment():
    lex = lexicon()
    assert len(lex) > 5000 and set(COLUMNS[:8]) == set(EMOTIONS)
    happy = lex["happy"]
    assert happy[COLUMNS.index("joy")] == 1 and happy[COLUMNS.index("positive")] == 1
    np.testing.assert_array_equal(text_emotions("Happy, HAPPY day!"), 2 * happy + lex.get("day", 0 * happy))
    segs = [(0.0, 1.0, "happy"), (1.0, 3.0, "happy")]
    got = segment_emotions(segs, 4.0, 2)                      # segments [0, 2) and [2, 4)
    np.testing.assert_allclose(got[0], happy * (1 + 0.5))     # all of the first, half of the second
    np.testing.assert_allclose(got[1], happy * 0.5)
    np.testing.assert_allclose(segment_emotions([], 4.0, 2, title="happy"), np.stack([happy / 2] * 2))
    assert not segment_emotions([], None, 3).any()


def test_hierarchical_verification_direct():
    cues = torch.zeros(1, 3, 10)
    cues[0, 0, [4, 0, 8]] = torch.tensor([2.0, 1.0, 3.0])     # joy 2, anger 1, positive 3
    cues[0, 1, [3, 9]] = torch.tensor([1.0, 2.0])             # fear, negative
    cues[0, 2, [4, 8, 9]] = 1.0                               # no sentiment
    p, valid = verify_cues(cues)
    assert valid.tolist() == [[True, True, False]]
    want0 = torch.zeros(8)
    want0[4] = 1.0                                            # anger contradicts the positive sentiment
    torch.testing.assert_close(p[0, 0], want0)
    assert p[0, 1, 3] == 1.0
    _, valid = verify_cues(cues, similarity=torch.tensor([[0.1, 0.5, 0.9]]), threshold=0.3)
    assert valid.tolist() == [[False, True, False]]           # segment 0 fails the text-visual check


def test_text_visual_similarity_gates_the_target():
    dims = {"pooled": {}, "sequence": {"clip_text": 4, "clip_frames": 4, "emotion": 10}}
    model = MART(flat_cfg("mart", {"d_model": 8, "segments": 2, "heads": 2, "layers": 1, "ff_dim": 16,
                                   "verify_text": "clip_text", "verify_visual": "clip_frames", "verify_threshold": 0.5}),
                 dims, 3, False, {})
    t = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    emo = torch.zeros(2, 10)
    emo[:, 4], emo[:, 8] = 1.0, 1.0
    it = {"video_id": "a", "pooled": {}, "labels": torch.tensor([1.0, 0, 0]),
          "sequence": {"clip_text": t, "clip_frames": torch.stack([t[0], -t[1]]), "emotion": emo},
          "present": {m: True for m in dims["sequence"]}}
    it["observed"] = dict(it["present"])
    _, valid = model.targets(collate_batch([it]))
    assert valid.tolist() == [[True, False]]                 # cos = 1 then -1


# -- mask selection, losses --------------------------------------------------------------------
def test_selection_mixes_cross_modal_and_self_attention():
    model = build(cross_weight=0.3)
    torch.manual_seed(1)
    att = torch.softmax(torch.randn(2, 9, 9), -1)           # CLS + 2 modalities x 4 segments
    valid = torch.ones(2, 8, dtype=torch.bool)
    got = model.selection_scores(att, valid)
    for b in range(2):
        cross, selfa = torch.zeros(4), torch.zeros(4)
        for i in range(8):
            for j in range(8):
                if i // 4 != j // 4:
                    cross[j % 4] += att[b, 1 + i, 1 + j]     # attention received from the other modality
            selfa[i % 4] += att[b, 0, 1 + i]
        torch.testing.assert_close(got[b], 0.3 * cross / cross.sum() + 0.7 * selfa / selfa.sum())
    masked = model.choose_masks(got, torch.ones(2, 4, dtype=torch.bool))
    for b in range(2):                                       # ratio 0.5 of 4: the top 2
        assert set(torch.nonzero(masked[b]).flatten().tolist()) == set(got[b].topk(2).indices.tolist())
    hinted = build(hint_ratio=1.0, hint_top=0.5).choose_masks(got, torch.ones(2, 4, dtype=torch.bool))
    assert not hinted.any()                                   # round(1 * 0.5 * 4) = 2 hints among the top 2


def test_mask_hints_and_mask_probability_follow_attmask_hints():
    """AttMask-Hints of the published code: round(hint_ratio * ratio * S) hints among the top
    round(hint_top * S) segments; a video is masked only with probability mask_prob."""
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    ones = torch.ones(1, 4, dtype=torch.bool)
    got = build(hint_ratio=0.5, hint_top=0.25).choose_masks(scores, ones)   # 1 hint, among the top 1
    assert got.tolist() == [[False, True, False, False]]
    assert build(hint_ratio=0.1).choose_masks(scores, ones).tolist() == [[True, True, False, False]]  # rounds to 0
    assert not build(mask_prob=0.0).choose_masks(scores.repeat(8, 1), ones.repeat(8, 1)).any()
    torch.manual_seed(0)
    share = build(mask_prob=0.5).choose_masks(scores.repeat(4000, 1), ones.repeat(4000, 1)).any(1).float().mean()
    assert abs(float(share) - 0.5) < 0.03


def test_training_losses_match_direct_formulas():
    model = build().train()
    batch = collate_batch(items())
    torch.manual_seed(3)
    out = model(batch)
    assert set(out["losses"]) == {"kl", "nce"} and out["losses"]["kl"] > 0
    torch.testing.assert_close(out["aux_loss"], out["losses"]["kl"] + 0.1 * out["losses"]["nce"])
    # KL(p || q) by hand from the same masked pass
    content, base, valid = model.tokenize(batch)
    with torch.no_grad():
        _, att = model.encode(content + base, valid)
        masked = model.choose_masks(model.selection_scores(att, valid), valid.view(4, 2, 4).any(1))
    tm = masked.repeat(1, 2) & valid
    h, _ = model.encode(torch.where(tm[..., None], model.mask_token.expand_as(content), content) + base, valid)
    h = h[:, 1:]
    p, ok = model.targets(batch)
    q = torch.softmax(model.emotion_head(h.view(4, 2, 4, -1).mean(1)), -1).detach()
    pn, qn = p.numpy(), q.numpy()
    kl = [sum(pn[b, s, e] * np.log(pn[b, s, e] / qn[b, s, e]) for e in range(8) if pn[b, s, e] > 0)
          for b in range(4) for s in range(4) if masked[b, s] and ok[b, s]]
    np.testing.assert_allclose(float(model.affective_loss(batch, h, masked).detach()), np.mean(kl), rtol=1e-5)
    # InfoNCE: masked output vs the other modality's content at the same segment
    c = content.view(4, 2, 4, -1)
    rows = [(b, m, s) for b in range(4) for m in range(2) for s in range(4) if tm.view(4, 2, 4)[b, m, s]]
    q = F.normalize(model.nce_q(torch.stack([h.view(4, 2, 4, -1)[b, m, s] for b, m, s in rows])), dim=-1)
    k = F.normalize(model.nce_k(torch.stack([c[b, 1 - m, s] for b, m, s in rows])), dim=-1)
    logits = q @ k.T / 0.1
    want = -torch.log_softmax(logits, 1).diagonal().mean()
    torch.testing.assert_close(model.complementary_loss(h, content, tm, valid), want)


def test_emotion_cues_never_change_a_prediction():
    model = build().eval()
    its = items()
    with torch.no_grad():
        ref = model(collate_batch(its))["logits"]
        for it in its:
            it["sequence"]["emotion"] = 5 * torch.rand(4, 10)
        assert torch.equal(model(collate_batch(its))["logits"], ref)


def test_unknown_emotion_modality_is_a_clear_error():
    with pytest.raises(ValueError, match="emotion_modality"):
        build(emotion_modality="feelings")


def test_emotion_extractor_writes_time_aligned_cues_or_a_missing_modality():
    from types import SimpleNamespace

    from extractors import build_extractor

    ext = build_extractor("emotion", {"family": "nrc_emotion", "segments": 2})
    subs = SimpleNamespace(subtitles=[(0.0, 1.0, "happy"), (3.0, 4.0, "awful fear")], title=None, duration=4.0)
    titled = SimpleNamespace(subtitles=None, title="a happy day", duration=2.0)
    nothing = SimpleNamespace(subtitles=None, title="  ", duration=2.0)
    a, b, c = ext.extract([subs, titled, nothing])
    np.testing.assert_allclose(a.sequence, segment_emotions(subs.subtitles, 4.0, 2))
    np.testing.assert_allclose(a.times, [[0.0, 2.0], [2.0, 4.0]])
    assert a.sequence[0, COLUMNS.index("joy")] == 1 and a.sequence[1, COLUMNS.index("fear")] >= 1
    np.testing.assert_allclose(b.pooled, text_emotions("a happy day"), rtol=1e-6)
    assert c is None and ext.metadata()["columns"] == list(COLUMNS)
