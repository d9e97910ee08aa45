"""Tests of the sequence models (models/videotag.py, models/netvlad.py, models/sun.py, models/mart.py,
models/mart_masking.py): the
shared requirements (batch invariance, absent modalities, gradients, checkpoints, learning a
two-modality task) and each model's own equations. Small dims so the whole file runs in seconds."""
from __future__ import annotations

import math

import pytest
from conftest import mark_presence
import torch
import torch.nn.functional as F
from test_models import flat_cfg

from models.common import masked_softmax, sequence_view
from models.mart import MART
from models.mart_masking import MaskedTemporalModel, segment_pool
from models.sun import SunNet
from models.netvlad import NetVLAD, NetVLADFusion
from models.videotag import AttentionLSTMTagger
from pipeline.dataset import collate_batch

DIMS = {"pooled": {"rgb": 10}, "sequence": {"audio": 6, "text": 8}}   # rgb: pooled only (YT8M-like)
# name -> (class, small settings, (model, variant) whose YAML fills in the rest)
SMALL = {
    "videotag": (AttentionLSTMTagger, {"lstm_size": 8, "textcnn_filters": 6, "head_hidden": 16, "dropout": 0.1}),
    "netvlad": (NetVLADFusion, {"clusters": 4, "hidden": 12, "attention_dim": 8, "input_dim": 5, "head_hidden": 16,
                                  "dropout": 0.1}),
    "mart": (MaskedTemporalModel, {"d_model": 16, "segments": 4, "heads": 2, "layers": 2, "ff_dim": 32}),
    "mart_tokens": (MaskedTemporalModel, {"d_model": 16, "segments": 4, "heads": 2, "layers": 1, "ff_dim": 32,
                                          "fusion": "tokens"}),
    "mart_paper": (MART, {"d_model": 16, "segments": 4, "heads": 2, "layers": 2, "ff_dim": 32, "emotion_modality": None}),
    "sun": (SunNet, {"clusters": 4, "segments": 2, "input_dim": 5, "dropout": 0.1}),
}


MODEL_OF = {AttentionLSTMTagger: ("videotag", None), NetVLADFusion: ("netvlad", None), SunNet: ("sun", None),
            MaskedTemporalModel: ("mart", "masking-only"), MART: ("mart", "paper")}


def small_cfg(cls, cfg: dict) -> dict:
    return flat_cfg(*MODEL_OF[cls][:1], cfg, MODEL_OF[cls][1])


def build(name, dims=DIMS, num_classes=5, multilabel=True, **over):
    cls, cfg = SMALL[name]
    torch.manual_seed(0)
    return cls(small_cfg(cls, {**cfg, **over}), dims, num_classes, multilabel, {})


def make_items(n, dims=DIMS, num_classes=5, seed=0, absent=None):
    """Dataset items as FeatureDataset returns them: random lengths 2..7, some modalities absent
    (absent[m][i] True) with the store's convention (zeros, length 0, present False)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        it = {"video_id": f"v{i}", "pooled": {}, "sequence": {}, "present": {},
              "labels": (torch.rand(num_classes, generator=g) < 0.3).float()}
        for m, d in dims["pooled"].items():
            it["pooled"][m] = torch.randn(d, generator=g)
        for m, d in dims["sequence"].items():
            it["sequence"][m] = torch.randn(int(torch.randint(2, 8, (1,), generator=g)), d, generator=g)
        mark_presence(it, {**dims["pooled"], **dims["sequence"]}, lambda m: absent and absent.get(m, [False] * n)[i],
                      dims["sequence"])
        items.append(it)
    return items


# every modality missing somewhere, text missing in several videos, never all three at once
ABSENT = {"rgb": [0, 0, 1, 0, 0, 0, 0, 0], "audio": [0, 1, 0, 0, 0, 1, 0, 0],
          "text": [0, 0, 0, 1, 1, 0, 1, 0]}
ABSENT = {m: [bool(v) for v in vs] for m, vs in ABSENT.items()}
MODELS = list(SMALL)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting


# -- shared requirements ------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_output_contract_and_gradients(name):
    model = build(name).train()
    model.set_progress(0.5) if hasattr(model, "set_progress") else None
    out = model(collate_batch(make_items(8, absent=ABSENT)))
    assert out["logits"].shape == (8, 5) and out["aux_loss"].dim() == 0
    loss = F.binary_cross_entropy_with_logits(out["logits"], torch.ones_like(out["logits"])) + out["aux_loss"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_sample_alone_equals_sample_in_batch(name):
    model = build(name).eval()
    items = make_items(8, absent=ABSENT)
    with torch.no_grad():
        together = model(collate_batch(items))["logits"]
        for i, it in enumerate(items):
            alone = model(collate_batch([it]))["logits"][0]
            torch.testing.assert_close(alone, together[i], atol=1e-5, rtol=1e-5)
        # a different batch order and different neighbours (longer padding) change nothing
        order = [7, 3, 0, 5]
        others = model(collate_batch([items[i] for i in order] + make_items(4, seed=9)))["logits"][:4]
        torch.testing.assert_close(others, together[order], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_absent_modality_cannot_change_output(name):
    model = build(name).eval()
    batch = collate_batch(make_items(8, absent=ABSENT))
    with torch.no_grad():
        ref = model(batch)["logits"]
        for m in ABSENT:  # fill what the store left for absent videos with large garbage
            absent = ~batch["present"][m]
            if m in batch["pooled"]:
                batch["pooled"][m][absent] = 100 * torch.randn_like(batch["pooled"][m][absent])
            if m in batch["sequence"]:
                batch["sequence"][m][absent] = 100 * torch.randn_like(batch["sequence"][m][absent])
                batch["lengths"][m][absent] = batch["sequence"][m].shape[1]
        torch.testing.assert_close(model(batch)["logits"], ref)
        # and changing a *present* modality does change it (the test above is not vacuous)
        batch["sequence"]["audio"] += 1.0
        assert not torch.allclose(model(batch)["logits"], ref)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(name, tmp_path):
    model = build(name)
    batch = collate_batch(make_items(6, absent=ABSENT))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(123)  # a fresh model with different weights, then loaded
    cls, cfg = SMALL[name]
    other = cls(small_cfg(cls, cfg), DIMS, 5, True, {})
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(batch)["logits"], other(batch)["logits"])


@pytest.mark.parametrize("name", MODELS)
def test_any_number_of_modalities_and_labels(name):
    dims = {"pooled": {}, "sequence": {"a": 3, "b": 4, "c": 5, "d": 2}}
    model = build(name, dims=dims, num_classes=2, multilabel=False).eval()
    out = model(collate_batch(make_items(3, dims=dims, num_classes=2)))
    assert out["logits"].shape == (3, 2) and torch.isfinite(out["logits"]).all()


def xor_items(n, seed, dim=4):
    """Label = sign of modality a XOR sign of modality b: either modality alone is at chance."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        sa, sb = (torch.randint(0, 2, (2,), generator=g) * 2 - 1).tolist()
        la, lb = (int(x) for x in torch.randint(2, 6, (2,), generator=g))
        a = 0.5 * torch.randn(la, dim, generator=g) + sa
        b = 0.5 * torch.randn(lb, dim, generator=g) + sb
        label = torch.tensor([float(sa == sb), float(sa != sb)])
        items.append({"video_id": str(i), "pooled": {}, "sequence": {"a": a, "b": b},
                      "present": {"a": True, "b": True},
                      "observed": {"a": True, "b": True}, "labels": label})
    return items


@pytest.mark.parametrize("name", ["videotag", "netvlad", "mart", "mart_paper", "sun"])
def test_learns_a_task_that_needs_both_modalities(name):
    dims = {"pooled": {}, "sequence": {"a": 4, "b": 4}}
    model = build(name, dims=dims, num_classes=2, multilabel=False, dropout=0.0)
    train, test = xor_items(256, seed=1), collate_batch(xor_items(128, seed=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(25):
        model.train()
        if hasattr(model, "set_progress"):
            model.set_progress(epoch / 25)
        for k in range(0, len(train), 32):
            batch = collate_batch(train[k:k + 32])
            out = model(batch)
            loss = F.cross_entropy(out["logits"], batch["labels"].argmax(1)) + out["aux_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test)["logits"].argmax(1) == test["labels"].argmax(1)).float().mean().item()
    assert acc > 0.9, f"{name}: held-out accuracy {acc:.2f} on XOR of two modalities (one alone: 0.5)"
    # the model does use both: without modality b it is back near chance
    test["present"]["b"][:] = False
    with torch.no_grad():
        acc_a = (model(test)["logits"].argmax(1) == test["labels"].argmax(1)).float().mean().item()
    assert acc_a < 0.7, f"{name}: {acc_a:.2f} with modality a alone"


# -- VideoTag -----------------------------------------------------------------------------------
def videotag_weights(model, batch, m="audio"):
    model.eval()
    tokens, token_mask = sequence_view(batch, "text")
    u, has_text = model.textcnn(tokens, token_mask), token_mask.any(1)
    x, mask = sequence_view(batch, m)
    h = model.encode_sequence(m, x, mask)
    return model.attention_weights(m, h, mask, u, has_text), h, mask, has_text


def test_videotag_text_guided_attention():
    model = build("videotag")
    batch = collate_batch(make_items(8, absent=ABSENT))
    with torch.no_grad():
        a, h, mask, has_text = videotag_weights(model, batch)
        # weights sum to 1 over the valid steps of present sequences, exactly 0 on padding
        assert torch.all(a[~mask] == 0)
        present = mask.any(1)
        torch.testing.assert_close(a.sum(1)[present], torch.ones(int(present.sum())))
        # e_t = tanh(W [h_t; u] + b), s_t = v^T e_t, by hand for one video with text
        i = int(torch.nonzero(has_text & present)[0])
        tokens, token_mask = sequence_view(batch, "text")
        u = model.textcnn(tokens[i:i + 1], token_mask[i:i + 1])
        n = int(mask[i].sum())
        e = torch.tanh(model.guide["audio"](torch.cat([h[i, :n], u.expand(n, -1)], -1)))
        torch.testing.assert_close(a[i, :n], torch.softmax(model.guide_score["audio"](e).squeeze(-1), 0))
        # different text -> different weights for the same frames
        batch["sequence"]["text"] = batch["sequence"]["text"].flip(0)
        batch["lengths"]["text"] = batch["lengths"]["text"].flip(0)
        batch["present"]["text"] = batch["present"]["text"].flip(0)
        a2, _, _, has_text2 = videotag_weights(model, batch)
        both = has_text & has_text2 & present
        assert not torch.allclose(a2[both], a[both])


def test_videotag_textless_video_uses_self_attention():
    model = build("videotag")
    batch = collate_batch(make_items(8, absent=ABSENT))
    with torch.no_grad():
        a, h, mask, has_text = videotag_weights(model, batch)
        self_w = masked_softmax(model.self_score["audio"](h).squeeze(-1), mask, dim=1)
        no_text = ~has_text
        assert no_text.sum() >= 2
        torch.testing.assert_close(a[no_text], self_w[no_text])
        assert not torch.allclose(a[has_text & mask.any(1)], self_w[has_text & mask.any(1)])


def test_videotag_textcnn_matches_paddle_windows():
    """Window k at token t covers tokens t - k//2 ... t - k//2 + k - 1 (zeros outside), tanh,
    max over the valid tokens: checked against a loop."""
    model = build("videotag")
    cnn = model.textcnn
    x, n = torch.randn(1, 6, 8), 4
    mask = torch.arange(6)[None] < n
    x = x * mask[..., None]
    with torch.no_grad():
        got = cnn(x, mask)[0]
        want = []
        for conv in cnn.convs:
            k = conv.kernel_size[0]
            padded = torch.cat([torch.zeros(k, 8), x[0, :n], torch.zeros(k, 8)])
            outs = [torch.tanh(conv.bias + torch.einsum("fdk,kd->f", conv.weight, padded[k + t - k // 2: k + t - k // 2 + k]))
                    for t in range(n)]
            want.append(torch.stack(outs).amax(0))
    torch.testing.assert_close(got, torch.cat(want))


def test_videotag_without_text_modality():
    dims = {"pooled": {"rgb": 10, "audio": 4}, "sequence": {}}   # YouTube-8M video-level features
    model = build("videotag", dims=dims)
    assert model.text is None
    out = model(collate_batch(make_items(3, dims=dims)))
    assert out["logits"].shape == (3, 5)
    with pytest.raises(ValueError):
        build("videotag", text_modality="title")


# -- NetVLAD ------------------------------------------------------------------------------------
def test_netvlad_matches_equations_7_to_9_loop():
    torch.manual_seed(0)
    vlad = NetVLAD(dim=3, clusters=4)
    x = torch.randn(2, 5, 3)
    lengths = [5, 3]
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        got = vlad(x * mask[..., None], mask)
        for b, n in enumerate(lengths):
            V = torch.zeros(3, 4)                                   # V(j, k)
            for i in range(n):
                logits = vlad.assign.weight @ x[b, i] + vlad.assign.bias
                a = torch.exp(logits) / torch.exp(logits).sum()       # Eq. 7
                for k in range(4):
                    for j in range(3):
                        V[j, k] += a[k] * (x[b, i, j] - vlad.centers[k, j])   # Eq. 8
            V = V / V.norm(dim=0, keepdim=True)                       # intra-normalisation
            flat = V.t().reshape(-1)
            torch.testing.assert_close(got[b], flat / flat.norm(), atol=1e-6, rtol=1e-5)   # Eq. 9


def test_netvlad_normalisation_and_padding():
    torch.manual_seed(0)
    vlad = NetVLAD(dim=6, clusters=3)
    x, mask = torch.randn(4, 7, 6), torch.ones(4, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3] = False                                                # absent: no valid step
    out = vlad(x, mask)
    assert out.shape == (4, 18)
    torch.testing.assert_close(out[:3].norm(dim=1), torch.ones(3))
    blocks = out[:3].view(3, 3, 6).norm(dim=-1)                    # each cluster block has the same norm
    torch.testing.assert_close(blocks, torch.full_like(blocks, 1 / math.sqrt(3)))
    assert torch.all(out[3] == 0)
    # padded steps, whatever they hold, never count
    torch.testing.assert_close(vlad(x, mask)[1], vlad(x[1:2, :4], mask[1:2, :4])[0])


def test_netvlad_modality_attention_eq13():
    model = build("netvlad").eval()
    z = torch.randn(3, 3, 12)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    alpha = model.modality_attention(z, present)
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    assert torch.all(alpha[~present] == 0)
    s = model.att[2](torch.tanh(model.att[0](z[0]))).squeeze(-1)   # q^T tanh(W_a z_m + b_a)
    torch.testing.assert_close(alpha[0], torch.softmax(s, 0))


# -- MART ---------------------------------------------------------------------------------------
def test_mart_masking_ratio_ramp():
    model = build("mart", mask_ratio_start=0.1, mask_ratio_end=0.5, mask_ramp=0.5).train()
    ratios = []
    for p in (0.0, 0.25, 0.5, 1.0):
        model.set_progress(p)
        ratios.append(model.mask_ratio())
    assert ratios == pytest.approx([0.1, 0.3, 0.5, 0.5])
    model.eval()
    assert model.mask_ratio() == 0.0
    out = model(collate_batch(make_items(4)))
    assert out["aux_loss"].item() == 0.0 and out["losses"] == {}


def test_mart_segment_pool_per_video():
    x = torch.arange(1.0, 8.0)[None, :, None].expand(2, 7, 1).clone()   # steps 1..7
    mask = torch.tensor([[True] * 7, [True] * 2 + [False] * 5])
    seg = segment_pool(x, mask, 4)[..., 0]
    # 7 steps -> [0,2) [1,4) [3,6) [5,7); 2 steps -> each step repeated
    torch.testing.assert_close(seg[0], torch.tensor([1.5, 3.0, 5.0, 6.5]))
    torch.testing.assert_close(seg[1], torch.tensor([1.0, 1.0, 2.0, 2.0]))


@pytest.mark.parametrize("name", ["mart", "mart_tokens"])
def test_mart_masks_the_most_attended_segments(name):
    model = build(name, dropout=0.0).train()
    model.set_progress(1.0)                                        # ratio 0.5 of 4 segments -> 2
    batch = collate_batch(make_items(6, absent=ABSENT))
    content, base, valid, segment_of, _ = model.tokenize(batch)
    with torch.no_grad():
        _, cls_att = model.encode(content + base, valid)
        masked = model.most_attended(cls_att, valid, segment_of, model.mask_ratio())
    per_segment = torch.zeros(6, 4).index_add_(1, segment_of, cls_att * valid)
    for b in range(6):
        chosen = set(torch.nonzero(masked[b]).flatten().tolist())
        assert len(chosen) == 2
        assert chosen == set(per_segment[b].topk(2).indices.tolist())
    # the classification pass sees the mask token exactly there, and the loss is on those segments
    out = model(batch)
    assert out["aux_loss"] > 0 and set(out["losses"]) == {"recon"}
    # with a tiny ratio at least one segment is still masked
    few = model.most_attended(cls_att, valid, segment_of, 0.01)
    assert torch.all(few.sum(1) == 1)
