"""Generic properties every model of `models.MODELS` must have (parametrized over all names, so
the sequence models in their own files are covered too), plus unit checks of the fusion
baselines', NMCL's and MARNet's own pieces.

Small dims and short training keep the file fast; modality names are deliberately unusual
("alpha", "beta", "gamma") so nothing can lean on dataset names.
"""
from __future__ import annotations

import io

import pytest
from conftest import mark_presence
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from models import MODELS, build_model, resolved_config
from models.common import masked_softmax, pooled_view, sequence_view, task_loss
from models.marnet import cmd, cooccurrence_adjacency, pick_visual
from models.nmcl import symmetric_kl
from pipeline.config import CONFIG_DIR, load_config
from pipeline.dataset import collate_batch

# Small versions of each model (keys each model's YAML documents); a model not listed here is
# built from its YAML as is.
SMALL = {
    "early_fusion": {"hidden": 32, "dropout": 0.0},
    "late_fusion": {"hidden": 32, "dropout": 0.0},
    "early_att": {"dropout": 0.0, "paper": {"theta_dim": 16}},
    "late_att": {"dropout": 0.0, "paper": {"theta_dim": 16}},
    "nmcl": {"hidden": 16, "dropout": 0.0, "paper": {"theta_dim": 16, "relation_scale": "dim", "l2": 0.0}},
    # variant paper (the default) cannot learn this file's XOR (centred, uncorrelated modalities): tests/test_marnet.py
    "marnet": {"variant": "tuned", "label_embeddings": "random", "label_dim": 8, "tuned": {"hidden": 32, "heads": 2, "dropout": 0.0}},
    "videotag": {"lstm_size": 16, "lstm_sizes": {"audio": 16}, "textcnn_filters": 8, "head_hidden": 32, "dropout": 0.0},
    "netvlad": {"clusters": 4, "input_dim": 8, "hidden": 16, "attention_dim": 8, "head_hidden": 32, "dropout": 0.0},
    "mart": {"d_model": 32, "segments": 3, "heads": 2, "layers": 1, "ff_dim": 64, "dropout": 0.0},
    "sun": {"clusters": 4, "segments": 2, "dropout": 0.0},
}
# Other configurations of a model, put through the same tests: name -> (model, small config). The
# models' default variant is `paper` (with l2 = 0 here: an L2 term would give every parameter a
# gradient and hide one the data path never reaches).
VARIANTS = {
    "early_fusion[moe+gating]": ("early_fusion", {"variant": "tuned", "hidden": 32, "dropout": 0.0,
                                                  "tuned": {"head": "moe", "experts": 2, "context_gating": True}}),
    "early_fusion[tuned]": ("early_fusion", {"variant": "tuned", "hidden": 32, "dropout": 0.0}),
    "late_fusion[tuned]": ("late_fusion", {"variant": "tuned", "hidden": 32, "dropout": 0.0}),
    "early_att[tuned]": ("early_att", {"variant": "tuned", "dropout": 0.0, "tuned": {"attn_dim": 16}}),
    "late_att[tuned]": ("late_att", {"variant": "tuned", "dropout": 0.0, "tuned": {"attn_dim": 16}}),
    "nmcl[tuned]": ("nmcl", {"variant": "tuned", "hidden": 16, "dropout": 0.0, "tuned": {"proj_dim": 16, "attn_dim": 16}}),
    "nmcl[literal softmax]": ("nmcl", {"hidden": 16, "dropout": 0.0, "paper": {"theta_dim": 16, "l2": 0.0}}),
}
NAMES = list(MODELS) + list(VARIANTS)
CFG = load_config()


def model_cfg(name: str):
    model, small = VARIANTS.get(name, (name, SMALL.get(name, {})))
    return OmegaConf.merge(CFG.models.get(model, OmegaConf.create({})), small)


def flat_cfg(model: str, flat: dict, variant: str | None = None) -> dict:
    """What build_model gives the class, from a test's flat dict of small settings: each key goes
    where configs/models/<model>.yaml declares it (the top level, else the variant's block), then
    models.resolved_config merges it strictly. For tests that build a model class directly."""
    top = OmegaConf.load(CONFIG_DIR / "models" / f"{model}.yaml")
    variant = variant or flat.get("variant") or top.get("variant") or "paper"
    given: dict = {"variant": variant} if "variant" in top else {}
    for k, v in flat.items():
        (given if k in top else given.setdefault(variant, {}))[k] = v
    return resolved_config(model, given)


def build(name, dims, num_classes=4, multilabel=False, labels=None, seed=0):
    name_cfg, name = name, VARIANTS.get(name, (name,))[0]
    torch.manual_seed(seed)
    if labels is None:   # a label graph with edges (co-occurring labels), whatever the task
        labels = (torch.rand(40, num_classes, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    extra = {"class_names": [f"class {i}" for i in range(num_classes)],
             "label_cooccurrence": labels.T @ labels}
    return build_model(name, model_cfg(name_cfg), dims, num_classes, multilabel, extra)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting


# -- synthetic data ---------------------------------------------------------------------------
DIMS = {"pooled": {"alpha": 6, "beta": 5}, "sequence": {"alpha": 6, "beta": 5}}


def make_items(n, seed=0, dims=DIMS, absent=None, num_classes=4):
    """FeatureDataset-style items. Label = 2 [alpha_0 > 0] + [beta_0 > 0] (4 classes): each
    modality alone decides only one of the two bits, so no single-modality classifier can beat
    50 % accuracy, while both together decide the class exactly. Sequences are 2-4 noisy steps
    around the pooled vector."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        base = {m: torch.randn(d, generator=g) for m, d in {**dims["pooled"], **dims["sequence"]}.items()}
        y = 2 * int(base["alpha"][0] > 0) + int(base["beta"][0] > 0)
        it = {"video_id": f"v{i}", "pooled": {}, "sequence": {}, "present": {},
              "labels": F.one_hot(torch.tensor(y % num_classes), num_classes).float()}
        for m in dims["pooled"]:
            it["pooled"][m] = base[m]
        for m in dims["sequence"]:
            steps = int(torch.randint(2, 5, (1,), generator=g))
            it["sequence"][m] = base[m] + 0.1 * torch.randn(steps, len(base[m]), generator=g)
        mark_presence(it, base, lambda m: absent is not None and absent.get(m) is not None and absent[m][i],
                      dims["sequence"])
        items.append(it)
    return items


def batches(items, size, generator=None):
    order = torch.randperm(len(items), generator=generator) if generator is not None else torch.arange(len(items))
    for i in range(0, len(items), size):
        yield collate_batch([items[j] for j in order[i:i + size]])


def accuracy(model, batch):
    with torch.no_grad():
        return float((model(batch)["logits"].argmax(1) == batch["labels"].argmax(1)).float().mean())


# -- generic properties -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_learns_a_task_that_needs_two_modalities(name):
    """Trained on a label that needs both modalities, the model beats the 50 % ceiling of any
    single-modality model by far, and hiding one modality at test time drops it back."""
    model = build(name, DIMS)
    train, test = make_items(512, seed=1), collate_batch(make_items(256, seed=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(25):
        if hasattr(model, "set_progress"):
            model.set_progress(epoch / 25)
        model.train()
        for batch in batches(train, 32, g):
            out = model(batch)
            loss = task_loss(out["logits"], batch["labels"], False) + out["aux_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    fused = accuracy(model, test)
    assert fused >= 0.8, f"{name}: {fused:.3f} accuracy with both modalities"
    only_alpha = collate_batch(make_items(256, seed=2, absent={"beta": [True] * 256}))
    assert accuracy(model, only_alpha) <= 0.62, "without beta the label is undecidable (50 % Bayes rate)"


@pytest.mark.parametrize("name", NAMES)
def test_prediction_is_the_same_alone_or_in_any_batch(name):
    absent = {"alpha": [i % 5 == 3 for i in range(9)], "beta": [i % 4 == 1 for i in range(9)]}
    items = make_items(9, seed=3, absent=absent)
    model = build(name, DIMS).eval()
    with torch.no_grad():
        full = model(collate_batch(items))["logits"]
        shuffled_order = [4, 0, 8, 2, 6, 1, 7, 3, 5]
        shuffled = model(collate_batch([items[i] for i in shuffled_order]))["logits"]
        for pos, i in enumerate(shuffled_order):
            torch.testing.assert_close(shuffled[pos], full[i], rtol=1e-5, atol=1e-5)
        for i, it in enumerate(items):   # alone: padded to its own length, not the batch's
            torch.testing.assert_close(model(collate_batch([it]))["logits"][0], full[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_masked_modality_cannot_change_the_output(name):
    absent = {"beta": [i % 2 == 0 for i in range(8)]}
    items = make_items(8, seed=4, absent=absent)
    model = build(name, DIMS).eval()
    with torch.no_grad():
        clean = model(collate_batch(items))["logits"]
        g = torch.Generator().manual_seed(9)
        for it in items:   # garbage where beta is marked absent: values and lengths
            if not it["present"]["beta"]:
                it["pooled"]["beta"] = 100 * torch.randn(5, generator=g)
                it["sequence"]["beta"] = 100 * torch.randn(6, 5, generator=g)
        noisy = model(collate_batch(items))["logits"]
    torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("multilabel", [False, True])
def test_every_parameter_gets_a_gradient(name, multilabel):
    items = make_items(16, seed=5)
    batch = collate_batch(items)
    labels = batch["labels"]
    if multilabel:   # a second label on some videos
        labels = (labels + torch.roll(labels, 1, dims=1) * (torch.arange(16) % 2)[:, None]).clamp(max=1)
        batch["labels"] = labels
    model = build(name, DIMS, multilabel=multilabel, labels=labels if multilabel else None).train()
    out = model(batch)
    assert out["logits"].shape == (16, 4)
    assert out["aux_loss"].dim() == 0 and torch.isfinite(out["aux_loss"])
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out["losses"].values())
    (task_loss(out["logits"], batch["labels"], multilabel) + out["aux_loss"]).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_gives_identical_outputs(name):
    items = make_items(12, seed=6, absent={"alpha": [i == 2 for i in range(12)]})
    batch = collate_batch(items)
    model = build(name, DIMS, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):   # move away from the initialisation
        out = model(batch)
        opt.zero_grad()
        (task_loss(out["logits"], batch["labels"], False) + out["aux_loss"]).backward()
        opt.step()
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = build(name, DIMS, seed=123)   # different initialisation, then the saved weights
    again.load_state_dict(torch.load(buffer, weights_only=True))
    again.eval()
    with torch.no_grad():
        assert torch.equal(model(batch)["logits"], again(batch)["logits"])


@pytest.mark.parametrize("name", NAMES)
def test_pooled_only_store_any_modality_count_and_labels(name):
    """YouTube-8M-like input (pooled vectors only), three modalities, 11 labels, multi-label."""
    dims = {"pooled": {"alpha": 7, "beta": 3, "gamma": 4}, "sequence": {}}
    g = torch.Generator().manual_seed(7)
    items = [{"video_id": f"v{i}", "sequence": {},
              "pooled": {m: torch.randn(d, generator=g) for m, d in dims["pooled"].items()},
              "present": {"alpha": True, "beta": i != 1, "gamma": i != 2}, "observed": {},
              "labels": (torch.rand(11, generator=g) < 0.3).float()} for i in range(5)]
    batch = collate_batch(items)
    model = build(name, dims, num_classes=11, multilabel=True, labels=batch["labels"]).eval()
    with torch.no_grad():
        out = model(batch)
    assert out["logits"].shape == (5, 11) and torch.isfinite(out["logits"]).all()


# -- the shared helpers -----------------------------------------------------------------------
def test_views_adapt_the_layout_and_zero_absent_modalities():
    items = make_items(3, seed=8, absent={"beta": [False, True, False]})
    batch = collate_batch(items)
    pooled_only = {**batch, "sequence": {}, "lengths": {}}
    x, mask = sequence_view(pooled_only, "alpha")          # pooled as a length-1 sequence
    assert x.shape == (3, 1, 6) and mask.all()
    seq_only = {**batch, "pooled": {}}
    means = torch.stack([it["sequence"]["alpha"].mean(0) for it in items])
    torch.testing.assert_close(pooled_view(seq_only, "alpha"), means)   # masked mean over the valid steps
    assert (pooled_view(batch, "beta")[1] == 0).all() and not sequence_view(batch, "beta")[1][1].any()


def test_masked_softmax_ignores_masked_entries_and_handles_empty_rows():
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    w = masked_softmax(scores, mask)
    torch.testing.assert_close(w[0], torch.tensor([1 / (1 + torch.e ** 2), 0.0, torch.e ** 2 / (1 + torch.e ** 2)]))
    assert (w[1] == 0).all()


# -- NMCL and MARNet pieces -------------------------------------------------------------------
def test_nmcl_symmetric_kl_matches_the_definition():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    pa, pb = a.softmax(-1), b.softmax(-1)
    want = (pa * (pa / pb).log()).sum(-1) + (pb * (pb / pa).log()).sum(-1)
    torch.testing.assert_close(symmetric_kl(a, b, multilabel=False), want)
    qa, qb = a.sigmoid(), b.sigmoid()
    bern = lambda p, q: p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()   # noqa: E731
    torch.testing.assert_close(symmetric_kl(a, b, multilabel=True), (bern(qa, qb) + bern(qb, qa)).sum(-1))
    assert torch.allclose(symmetric_kl(a, a, multilabel=False), torch.zeros(4), atol=1e-6)


def test_nmcl_tuned_gate_splits_each_vector_into_consistent_plus_complementary():
    model = build("nmcl[tuned]", {"pooled": {"alpha": 6, "beta": 5}, "sequence": {}})
    coop = model.coop["alpha"]
    assert coop.gate_w == 50.0
    h, g = torch.randn(3, 16), torch.randn(3, 16)
    augmented, _, _ = coop(h, g)
    assert augmented.shape == (3, coop.out_dim)


def test_marnet_label_graph_and_cmd():
    counts = torch.tensor([[10.0, 5.0, 0.0], [5.0, 5.0, 1.0], [0.0, 1.0, 4.0]])
    adj = cooccurrence_adjacency(counts, 0.4)
    # P(1|0) = 0.5, P(0|1) = 1.0, P(2|1) = 0.2, P(1|2) = 0.25
    assert adj.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    x = torch.randn(50, 4)
    assert float(cmd(x, x.clone())) < 1e-5
    assert float(cmd(x, x * 2 + 1)) > 0.5
    assert pick_visual(["audio", "rgb"]) == "rgb" and pick_visual(["text", "audio"]) == "text"
    with pytest.raises(ValueError):
        pick_visual(["audio"], "visual")


def test_marnet_asks_for_label_embeddings_unless_random():
    dims = {"pooled": {"alpha": 6, "beta": 5}, "sequence": {}}
    cfg = OmegaConf.merge(model_cfg("marnet"), {"label_embeddings": "text"})
    with pytest.raises(ValueError, match="label_embeddings"):
        build_model("marnet", cfg, dims, 4, True, {"label_cooccurrence": torch.eye(4)})
    with pytest.raises(ValueError, match="label_cooccurrence"):
        build_model("marnet", model_cfg("marnet"), dims, 4, True, {})


def test_category_attention_equals_its_direct_formula():
    """The matrix-product form of the tuned attention equals r softmax_d(M_kd + s_d) . (U_kd z_d)
    computed on the full B x C x r tensor."""
    from models.heads import CategoryAttention

    torch.manual_seed(0)
    att = CategoryAttention(7, 5, attn_dim=6)
    x = torch.randn(4, 7)
    z = att.project(x)
    s = att.saliency(z)
    a = torch.softmax(att.memory[None] + s[:, None, :], dim=-1)            # [B, C, r]
    direct = 6 * (a * att.readout[None] * z[:, None, :]).sum(-1) + att.bias   # r = 6: see forward()
    torch.testing.assert_close(att(x), direct, rtol=1e-5, atol=1e-6)


def test_mixture_of_experts_equals_its_direct_formula():
    """log-odds of sum_e softmax(G_c x)_e sigmoid(W_ce x) over the real experts, the dummy
    expert's gate taking its share of the mass, computed class by class."""
    from models.common import MixtureOfExperts

    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, experts=2)
    x = torch.randn(4, 6)
    gates, experts = moe.gates(x).view(4, 3, 3), moe.expert(x).view(4, 3, 2)
    for c in range(3):
        g = torch.softmax(gates[:, c], -1)
        p = g[:, 0] * torch.sigmoid(experts[:, c, 0]) + g[:, 1] * torch.sigmoid(experts[:, c, 1])
        torch.testing.assert_close(torch.sigmoid(moe(x)[:, c]), p, rtol=1e-5, atol=1e-6)


def test_marnet_graph_attention_equals_the_dense_formula():
    from models.marnet import GraphAttention

    torch.manual_seed(0)
    layer = GraphAttention(6)
    nodes = torch.randn(5, 6)
    adj = cooccurrence_adjacency((torch.rand(30, 5) < 0.4).float().T @ (torch.rand(30, 5) < 0.4).float() + 5 * torch.eye(5), 0.3)
    h = layer.linear(nodes)
    scores = F.leaky_relu((h @ layer.att_dst)[:, None] + (h @ layer.att_src)[None, :], 0.2)
    weights = torch.softmax(scores.masked_fill(adj == 0, float("-inf")), dim=-1)
    dense = layer.norm(nodes + F.elu(weights @ h))
    torch.testing.assert_close(layer(nodes, adj.nonzero().T), dense, rtol=1e-5, atol=1e-6)


# -- presets ----------------------------------------------------------------------------------
def test_videotag_paper_preset_has_the_released_settings():
    """PaddleVideo's released VideoTag training: RMSProp lr 7e-4, L2 8e-4, dropout 0.5, one fc
    layer, threshold 0.5, Hit@1 / Hit@2."""
    from pipeline.config import CONFIG_DIR
    from pipeline.train import make_optimizer

    cfg = load_config(CONFIG_DIR / "presets" / "videotag_paper.yaml")
    t = cfg.train
    assert (t.optimizer, t.lr, t.weight_decay, t.threshold, list(t.hit_at)) == ("rmsprop", 7e-4, 8e-4, 0.5, [1, 2])
    assert cfg.run.model == "videotag" and cfg.models.videotag.dropout == 0.5
    model = build_model("videotag", cfg.models.videotag, DIMS, 4, True, {})
    assert isinstance(model.classifier, torch.nn.Linear)          # one fully connected layer
    opt = make_optimizer(model.parameters(), t)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["weight_decay"] == 8e-4 and opt.defaults["lr"] == 7e-4


def test_nmcl_paper_preset_uses_keyframe_resnet_and_the_paper_variant():
    from pipeline.config import CONFIG_DIR

    cfg = load_config(CONFIG_DIR / "presets" / "nmcl_paper.yaml")
    assert cfg.decode.sampling == "keyframes" and cfg.run.model == "nmcl" and cfg.models.nmcl.variant == "paper"
    assert list(cfg.extract.modalities) == ["visual", "audio_dae", "text_doc2vec"]
    assert cfg.train.weight_decay == 0.0      # the L2 term is inside NMCL's loss (Eq. 20)
