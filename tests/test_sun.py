"""Sun et al. (models/sun.py): Eq. 6, the per-segment NetVLAD (Eq. 7-9), the segment attention
(Eq. 10-13) and the backward fusion against direct formulas on tiny inputs. The generic model
properties run in tests/test_models.py and tests/test_models_sequence.py ("sun")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import flat_cfg

from models.netvlad import NetVLAD
from models.sun import SunNet, joint_feature, segment_masks
from pipeline.dataset import collate_batch

DIMS = {"pooled": {}, "sequence": {"scene": 3, "action": 2}}
pytestmark = pytest.mark.usefixtures("one_thread")


def build(**over):
    torch.manual_seed(0)
    cfg = {"clusters": 3, "segments": 2, "dropout": 0.0, **over}
    return SunNet(flat_cfg("sun", cfg), DIMS, 4, True, {})


def items(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        out.append({"video_id": str(i), "pooled": {}, "labels": torch.zeros(4),
                    "sequence": {"scene": torch.rand(2 + i, 3, generator=g), "action": torch.rand(3 + 2 * i, 2, generator=g)},
                    "present": {"scene": True, "action": True}, "observed": {"scene": True, "action": True}})
    return out


def test_joint_feature_is_the_outer_product_of_time_aligned_scores():
    batch = collate_batch(items())
    a, am = batch["sequence"]["action"], torch.arange(7)[None] < batch["lengths"]["action"][:, None]
    s, sm = batch["sequence"]["scene"], torch.arange(4)[None] < batch["lengths"]["scene"][:, None]
    joint, mask = joint_feature(a, am, s, sm)
    for b in range(3):
        la, ls = int(am[b].sum()), int(sm[b].sum())
        for t in range(la):
            want = np.outer(a[b, t].numpy(), s[b, t * ls // la].numpy()).ravel()   # (f^A)^T f^S, Eq. 6
            np.testing.assert_allclose(joint[b, t].numpy(), want, rtol=1e-6)
        assert mask[b].sum() == la and (joint[b, la:] == 0).all()


def test_segment_masks_split_each_video_by_its_own_length():
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    seg = segment_masks(mask, 2)
    assert seg[0].int().tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]]   # [0, 3) and [2, 5)
    assert seg[1].int().tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]


def test_segment_level_netvlad_and_attention_eq_7_to_13():
    model = build().eval()
    batch = collate_batch(items())
    x, mask = model.branch_inputs(batch)["action"]
    u, valid = model.segment_features("action", x, mask)
    seg = segment_masks(mask, 2)
    vlad: NetVLAD = model.vlad["action"]
    for b in range(3):
        for s in range(2):
            steps = x[b][seg[b, s]]
            a = torch.softmax(steps @ vlad.assign.weight.T + vlad.assign.bias, -1)          # Eq. 7
            V = (a[:, :, None] * (steps[:, None, :] - vlad.centers[None])).sum(0)             # Eq. 8
            V = V / V.norm(dim=-1, keepdim=True)
            V = V.flatten() / V.flatten().norm()                                               # Eq. 9
            torch.testing.assert_close(u[b, s], V, rtol=1e-5, atol=1e-6)
    v, alpha = model.segment_attention("action", u, valid)
    e = u @ model.att["action"].weight[0]                                                      # Eq. 10
    want_alpha = torch.exp(e) / torch.exp(e).sum(1, keepdim=True)                              # Eq. 11
    torch.testing.assert_close(alpha, want_alpha)
    torch.testing.assert_close(v, (want_alpha[..., None] * u).sum(1))                          # Eq. 12
    mean = build(attention="mean").eval()
    v_mean, alpha_mean = mean.segment_attention("action", u, valid)
    torch.testing.assert_close(v_mean, u.mean(1))                                              # Eq. 13
    assert torch.all(alpha_mean == 0.5)


def test_backward_fusion_averages_the_present_modalities_scores():
    model = build().eval()
    its = items()
    its[1]["present"]["scene"] = False
    its[1]["sequence"]["scene"] = torch.zeros(0, 3)
    batch = collate_batch(its)
    with torch.no_grad():
        out = model(batch)["logits"]
        per = {}
        for m, (x, mask) in model.branch_inputs(batch).items():
            v, _ = model.segment_attention(m, *model.segment_features(m, x, mask))
            per[m] = model.classifier[m](v)
    torch.testing.assert_close(out[0], (per["scene"][0] + per["action"][0] + per["joint"][0]) / 3)
    torch.testing.assert_close(out[1], per["action"][1])           # no scene: no scene and no joint branch


def test_named_roles_and_joint_projection():
    model = build(joint_dim=2, scene_modality="scene", action_modality="action")
    assert model.vlad["joint"].centers.shape == (3, 4)              # 2 x 2 outer product
    with pytest.raises(ValueError, match="scene_modality"):
        build(scene_modality="places")
    out = model(collate_batch(items()))
    assert out["logits"].shape == (3, 4)


def test_an_unaffordable_joint_width_is_a_clear_error():
    dims = {"pooled": {"rgb": 1024, "audio": 128}, "sequence": {}}     # YouTube-8M video-level
    with pytest.raises(ValueError, match="joint_dim"):
        SunNet(flat_cfg("sun", {"action_modality": "rgb", "scene_modality": "audio"}), dims, 3862, True, {})
