"""NMCL `variant: paper` equation by equation (Wei et al., TIP 2020, Eq. 2-20), and the paper
depths of the fusion baselines: every intermediate the module exposes is recomputed with numpy
from the module's (seeded, fixed) weights on a tiny input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from models import build_model
from models.fusion import EarlyAtt, EarlyFusion, LateFusion
from models.heads import MemoryAttention
from models.nmcl import NMCL, NMCLTuned, CooperativeNet
from pipeline.config import load_config
from pipeline.dataset import collate_batch

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = load_config()
DIMS = {"pooled": {"alpha": 4, "beta": 3, "gamma": 2}, "sequence": {}}


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def npy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def nmcl(multilabel=False, num_classes=3, **paper):
    torch.manual_seed(0)
    cfg = OmegaConf.merge(CFG.models.nmcl, {"dropout": 0.0, "hidden": 5, "paper": {"theta_dim": 4, **paper}})
    return build_model("nmcl", cfg, DIMS, num_classes, multilabel, {}).eval()


def batch(n=3, seed=1, num_classes=3, absent=None):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        present = {m: not (absent and absent.get(m) == i) for m in DIMS["pooled"]}
        items.append({"video_id": f"v{i}", "sequence": {}, "present": present, "observed": present,
                      "pooled": {m: torch.randn(d, generator=g) * present[m] for m, d in DIMS["pooled"].items()},
                      "labels": torch.eye(num_classes)[i % num_classes]})
    return collate_batch(items)


def test_defaults_are_the_papers():
    assert CFG.models.nmcl.variant == "paper" and CFG.models.nmcl.paper.kl_weight == 1.0
    assert CFG.models.nmcl.paper.relation_scale == "none"
    model = nmcl()
    assert isinstance(model, NMCL) and model.kl_weight == 1.0 and model.project is None   # raw features
    tuned = build_model("nmcl", OmegaConf.merge(CFG.models.nmcl, {"variant": "tuned"}), DIMS, 3, False, {})
    assert isinstance(tuned, NMCLTuned)
    with pytest.raises(ValueError, match="variant"):
        build_model("nmcl", OmegaConf.merge(CFG.models.nmcl, {"variant": "faithful"}), DIMS, 3, False, {})


@pytest.mark.parametrize("scale", ["none", "dim"])
def test_eq_2_to_11_cooperative_net(scale):
    """Host / guest (Eq. 2-3), the two relation scorers (Eq. 4-5), the gate (Eq. 8), the split
    (Eq. 9), the enhanced consistent vector (Eq. 10) and the augmented vector (Eq. 11)."""
    model = nmcl(relation_scale=scale)
    b = batch()
    out = model(b, intermediates=True)["intermediates"]
    x = {m: npy(b["pooled"][m]) for m in DIMS["pooled"]}
    for m in model.names:
        coop, got = model.coop[m], out[m]
        h = x[m]
        g = np.concatenate([x[o] for o in model.names if o != m], 1)                              # Eq. 2-3
        s_h = softmax(np.concatenate([h, g], 1) @ npy(coop.score_host.weight).T)                 # Eq. 4
        s_g = softmax(np.concatenate([g, h], 1) @ npy(coop.score_guest.weight).T)                # Eq. 5
        if scale == "dim":
            s_h, s_g = s_h * h.shape[1], s_g * g.shape[1]
        np.testing.assert_allclose(npy(got["s_h"]), s_h, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(npy(got["s_g"]), s_g, rtol=1e-5, atol=1e-7)
        gamma_h = s_h * sigmoid(50.0 * (s_h - coop.xi_host.item()))                               # Eq. 8
        gamma_g = s_g * sigmoid(50.0 * (s_g - coop.xi_guest.item()))
        np.testing.assert_allclose(npy(got["gamma_h"]), gamma_h, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(npy(got["gamma_g"]), gamma_g, rtol=1e-4, atol=1e-6)
        beta_h, alpha_h, beta_g, alpha_g = gamma_h * h, (1 - gamma_h) * h, gamma_g * g, (1 - gamma_g) * g  # Eq. 9
        for k, want in {"beta_h": beta_h, "alpha_h": alpha_h, "beta_g": beta_g, "alpha_g": alpha_g}.items():
            np.testing.assert_allclose(npy(got[k]), want, rtol=1e-4, atol=1e-6)
        lin = coop.enhance[0]
        enhanced = np.maximum(0, np.concatenate([beta_h, beta_g], 1) @ npy(lin.weight).T + npy(lin.bias))  # Eq. 10
        np.testing.assert_allclose(npy(got["enhanced"]), enhanced, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(npy(got["augmented"]), np.concatenate([alpha_h, enhanced, alpha_g], 1),
                                   rtol=1e-4, atol=1e-6)                                            # Eq. 11


@pytest.mark.parametrize("multilabel", [False, True])
def test_eq_12_to_14_consistency_loss(multilabel):
    """p_h = softmax(U_h beta_h), p_g = softmax(U_g beta_g) (Eq. 12), their KL divergence
    (Eq. 13, symmetric) summed over the hosts (Eq. 14); Bernoulli KLs per class when multi-label."""
    model = nmcl(multilabel=multilabel)
    b = batch()
    with torch.no_grad():
        out = model(b, intermediates=True)
    total = 0.0
    for m in model.names:
        got, coop = out["intermediates"][m], model.coop[m]
        lh = npy(got["beta_h"]) @ npy(coop.head_host.weight).T                                     # Eq. 12
        lg = npy(got["beta_g"]) @ npy(coop.head_guest.weight).T
        np.testing.assert_allclose(npy(got["logits_host"]), lh, rtol=1e-4, atol=1e-6)
        if multilabel:
            ph, pg = sigmoid(lh), sigmoid(lg)
            kl = (ph * np.log(ph / pg) + (1 - ph) * np.log((1 - ph) / (1 - pg))
                  + pg * np.log(pg / ph) + (1 - pg) * np.log((1 - pg) / (1 - ph))).sum(1)
        else:
            ph, pg = softmax(lh), softmax(lg)
            kl = (ph * np.log(ph / pg)).sum(1) + (pg * np.log(pg / ph)).sum(1)                      # Eq. 13
        total += kl.mean()
    assert out["losses"]["kl"].item() == pytest.approx(total, rel=1e-4, abs=1e-7)                  # Eq. 14


@pytest.mark.parametrize("classes,theta_dim", [(5, 3), (2, 6)])   # both ways of computing W psi_k
@pytest.mark.parametrize("layers", [1, 2])
def test_eq_15_to_17_static_memory_attention(layers, classes, theta_dim):
    """psi_k = omega_k * x^ (Eq. 15), theta_k = tanh(W psi_k + b) (Eq. 16), y_k = z_k^T theta_k
    (Eq. 17), with one more shared layer for layers=2 (Early+Att's network), computed category
    by category on the full [B, K, D] tensor."""
    torch.manual_seed(0)
    att = MemoryAttention(7, classes, theta_dim=theta_dim, layers=layers)
    x = torch.randn(4, 7)
    y, inter = att(x, intermediates=True)
    omega, w, bias, z = npy(att.memory), npy(att.weight), npy(att.bias), npy(att.readout)
    psi = omega[None, :, :] * npy(x)[:, None, :]                                                   # Eq. 15 [B, K, D]
    theta = np.tanh(psi @ w.T + bias)                                                              # Eq. 16 [B, K, d]
    for layer in att.hidden:
        theta = np.tanh(theta @ npy(layer.weight).T + npy(layer.bias))
    np.testing.assert_allclose(npy(inter["theta"]), theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(npy(y), (theta * z[None]).sum(-1), rtol=1e-4, atol=1e-6)            # Eq. 17


@pytest.mark.parametrize("multilabel", [False, True])
def test_eq_18_sums_the_hosts_probabilities(multilabel):
    """The fused prediction is the sum of the host probabilities (the model's logits give it back
    divided by the number of present hosts); an absent host is left out."""
    model = nmcl(multilabel=multilabel)
    b = batch(absent={"beta": 1})
    out = model(b, intermediates=True)
    act = sigmoid if multilabel else softmax
    hosts = np.stack([act(npy(out["intermediates"][m]["host_logits"])) for m in model.names], 1)  # [B, M, C]
    present = np.stack([b["present"][m].numpy() for m in model.names], 1)
    fused = (hosts * present[..., None]).sum(1)                                                   # Eq. 18
    np.testing.assert_allclose(act(npy(out["logits"])), fused / present.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert np.array_equal(npy(out["logits"]).argmax(1), fused.argmax(1))


def test_eq_20_loss_is_ce_plus_kl_plus_l2():
    model = nmcl(l2=1e-3)
    b = batch()
    with torch.no_grad():
        out = model(b)
    l2 = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert float(out["losses"]["l2"]) == pytest.approx(l2, rel=1e-5)
    assert float(out["aux_loss"]) == pytest.approx(1.0 * float(out["losses"]["kl"]) + 1e-3 * l2, rel=1e-5)
    assert set(out["losses"]) == {"kl", "l2"}   # no per-host prediction losses (the tuned variant's)


def test_literal_softmax_leaves_the_gate_constant_and_dim_rescaling_does_not():
    """With D in the hundreds the literal softmax scores of Eq. 4-5 are all close to 1/D, so
    sigmoid(w (s - xi)) of Eq. 8 hardly differs between features: every feature gets the same
    split. Rescaled by D (mean 1) the same scores spread the gate over (0, 1)."""
    torch.manual_seed(0)
    h, g = torch.randn(64, 512), torch.randn(64, 128)
    spread = {}
    for scale in ("none", "dim"):
        torch.manual_seed(1)
        coop = CooperativeNet(512, 128, 16, 3, gate_w=50.0, relation_scale=scale)
        with torch.no_grad():
            out = coop(h, g)
        gate = out["gamma_h"] / out["s_h"]                        # sigmoid(w (s - xi)) per feature
        spread[scale] = float(gate.std(dim=1).mean())
    assert spread["none"] < 0.03, spread     # about one gate value for every feature: hardly a split
    assert spread["dim"] > 0.3 and spread["dim"] > 10 * spread["none"], spread


def test_baselines_have_the_papers_depths():
    dims = {"pooled": {"text": 4, "audio": 3, "visual": 5}, "sequence": {}}
    c = CFG.models
    linears = lambda net: sum(isinstance(m, torch.nn.Linear) for m in net.modules())   # noqa: E731
    early = build_model("early_fusion", c.early_fusion, dims, 3, False, {})
    assert isinstance(early, EarlyFusion) and linears(early) == 3                      # three FC layers
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in early.modules())
    late = build_model("late_fusion", c.late_fusion, dims, 3, False, {})
    assert isinstance(late, LateFusion)
    assert {m: linears(late.nets[m]) - 1 for m in dims["pooled"]} == {"text": 1, "audio": 2, "visual": 3}
    att = build_model("early_att", c.early_att, dims, 3, False, {})
    assert isinstance(att, EarlyAtt) and isinstance(att.net, MemoryAttention)
    assert len(att.net.hidden) == 1    # W1 (Eq. 16) + one shared hidden layer + z: three layers after psi
    tuned = build_model("early_fusion", OmegaConf.merge(c.early_fusion, {"variant": "tuned"}), dims, 3, False, {})
    assert any(isinstance(m, torch.nn.LayerNorm) for m in tuned.modules())
