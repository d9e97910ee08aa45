"""MARNet `variant: paper` (models/marnet.py): every step against a direct formula written from
the published code's operations, on tiny inputs; plus the generic model properties of
tests/test_models.py for this variant (not its XOR test, which this variant does not pass:
docs/models-marnet.md explains why)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import test_models as tm
from models import build_model, model_class
from models.marnet import (MARNetPaper, MARNetTuned, complementary_study, correlation_matrix, cmd,
                           label_graph_inputs, load_matrix)
from pipeline.dataset import collate_batch

PAPER = {"variant": "paper", "label_embeddings": "random", "label_dim": 5, "paper": {"group_dim": 8, "gnn_hidden": 12}}
tm.VARIANTS["marnet[paper]"] = ("marnet", PAPER)
pytestmark = pytest.mark.usefixtures("one_thread")


def build(dims=tm.DIMS, num_classes=4, multilabel=True, **over):
    return tm.build("marnet[paper]", dims, num_classes=num_classes, multilabel=multilabel) if not over else \
        build_model("marnet", OmegaConf.merge(tm.model_cfg("marnet[paper]"), {"paper": over}), dims, num_classes, multilabel,
                    {"label_cooccurrence": torch.eye(num_classes) * 3 + 1})


def test_variants_are_distinct_classes():
    assert model_class("marnet") is MARNetPaper and model_class("marnet", "tuned") is MARNetTuned
    assert isinstance(build(), MARNetPaper)


# -- step 1: cross-correlation complementary study ---------------------------------------------
def test_complementary_study_maps_the_other_modality_into_visual_space():
    g = np.random.default_rng(0)
    v, o = g.normal(size=(5, 3)), g.normal(size=(5, 4))
    R = np.zeros((3, 4))
    for b in range(5):
        R += np.outer(v[b], o[b])                                   # R = v^T o summed over the batch
    Rc = np.exp(R) / np.exp(R).sum(1, keepdims=True)
    want = np.stack([[sum(Rc[i, j] * o[b, j] for j in range(4)) for i in range(3)] for b in range(5)])
    got, R_t = complementary_study(torch.tensor(v), torch.tensor(o))
    np.testing.assert_allclose(R_t.numpy(), R, rtol=1e-10)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_evaluation_uses_the_running_cross_correlation():
    model = build().train()
    items = tm.make_items(16, seed=1)
    batch = collate_batch(items)
    v, _, corrs = model.group_vectors(batch)
    torch.testing.assert_close(model.corr_0, 0.1 * corrs[0].detach() / 16)   # momentum 0.1 from zero
    assert float(model.corr_batch) == 16.0
    model.eval()
    x = {m: batch["pooled"][m] for m in ("alpha", "beta")}
    R = model.corr_0 * 16
    want = model.group_net[0](torch.cat([x["alpha"], x["beta"] @ torch.softmax(R, 1).T], -1))
    _, hs, used = model.group_vectors(batch)
    torch.testing.assert_close(used[0], R)
    torch.testing.assert_close(hs[0], want)


# -- steps 3, 4 and the loss ------------------------------------------------------------------
def test_cmd_l2_matches_the_published_mmatch():
    g = np.random.default_rng(1)
    x, y = g.normal(size=(7, 3)), g.normal(size=(7, 3)) * 2 + 1
    want = np.linalg.norm(x.mean(0) - y.mean(0))
    for k in (2, 3):
        want += np.linalg.norm(((x - x.mean(0)) ** k).mean(0) - ((y - y.mean(0)) ** k).mean(0))
    np.testing.assert_allclose(float(cmd(torch.tensor(x), torch.tensor(y), 3, norm="l2")), want, rtol=1e-10)


def test_loss_terms_groups_autoencoder_and_weights():
    dims = {"pooled": {"rgb": 6, "audio": 5, "text": 4}, "sequence": {}}
    model = build(dims, lam1=2.0, lam2=1.0, lam3=0.5).eval()
    assert model.groups == [["audio"], ["text"], ["audio", "text"]]      # visual-centred groups
    g = torch.Generator().manual_seed(2)
    items = [{"video_id": str(i), "sequence": {}, "pooled": {m: torch.randn(d, generator=g) for m, d in dims["pooled"].items()},
              "present": {m: True for m in dims["pooled"]}, "observed": {m: True for m in dims["pooled"]},
              "labels": torch.tensor([1.0, 0, 0, 1])} for i in range(6)]
    batch = collate_batch(items)
    out = model(batch)
    v, hs, _ = model.group_vectors(batch)
    want_cmd = (cmd(hs[0], hs[1], 3, "l2") + cmd(hs[0], hs[2], 3, "l2") + cmd(hs[1], hs[2], 3, "l2")) / 3
    flat = torch.cat(hs, -1)
    common = torch.sigmoid(model.encoder(flat))
    want_rec = ((model.decoder(common) - flat) ** 2).mean()
    torch.testing.assert_close(out["losses"]["cmd"], want_cmd)
    torch.testing.assert_close(out["losses"]["reconstruction"], want_rec)
    torch.testing.assert_close(out["aux_loss"], (1.0 * want_rec + 0.5 * want_cmd) / 2.0)   # (λ2 rec + λ3 CMD) / λ1
    reps = model.label_graph()["label_representations"]
    torch.testing.assert_close(out["logits"], model.label_scores(common + v, reps[-1])[0])


# -- step 5: attentive GNN ---------------------------------------------------------------------
def published_S(L: np.ndarray, adj: np.ndarray, invert: bool = False) -> np.ndarray:
    """Inverse_covariance_S of the published code; invert=True keeps its min / max order."""
    x = L @ L.T
    lo_named, hi_named = (x.max(), x.min()) if invert else (x.min(), x.max())   # Min = np.max(x) there
    n = np.sqrt((x - lo_named) / (hi_named - lo_named))
    s = adj * (n / np.trace(n))
    rows = s.sum(1, keepdims=True)
    rows[rows == 0] = 1
    return s / rows


def test_correlation_matrix_and_gnn_layers_match_the_direct_formula():
    g = np.random.default_rng(3)
    L = g.normal(size=(4, 5))
    adj = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], float)
    for invert in (False, True):
        S = correlation_matrix(torch.tensor(L), torch.tensor(adj), invert)
        np.testing.assert_allclose(S.numpy(), published_S(L, adj, invert), rtol=1e-10)
    model = build(num_classes=4)
    model.adjacency = torch.tensor(adj, dtype=torch.float32)
    out = model.label_graph()
    L0 = model.label_vectors.double().numpy()
    layers = model.gnn.layers
    reps = [L0]
    for i, layer in enumerate(layers):
        S_i = published_S(reps[-1], adj)
        np.testing.assert_allclose(out["correlation_matrices"][i].numpy(), S_i, rtol=1e-4, atol=1e-6)
        W, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
        reps.append(S_i @ np.maximum(reps[-1] @ W.T + b, 0))    # L^{l+1} = S ReLU(L W + b)
        np.testing.assert_allclose(out["label_representations"][i].detach().numpy(), reps[-1], rtol=1e-4, atol=1e-6)
    saved = model.artifacts()
    assert [t.shape for t in saved["label_representations"]] == [(4, 12), (4, 6)]
    torch.testing.assert_close(saved["correlation_matrices"][0].to_dense(), out["correlation_matrices"][0])


# -- step 6: cosine label scoring + cross-modal attention ---------------------------------------
def test_label_scores_match_the_published_matrix_products():
    model = build(num_classes=4)
    torch.manual_seed(4)
    h, L = torch.randn(3, 6), torch.randn(4, 6)
    logits, beta = model.label_scores(h, L)
    B = 3
    h3, L3 = h.reshape(B, 1, -1), L[None].repeat(B, 1, 1)
    beta_p = F.cosine_similarity(h3, L3, dim=2)                            # [B, C]
    h_ = model.wq @ h3.permute(0, 2, 1)                                    # [B, d, 1]
    beta_ = model.wk @ beta_p.reshape(B, -1, 1)                            # [B, d, 1]
    label_ = model.wv @ L3.permute(0, 2, 1)                                # [B, d, C]
    head = (h_ @ beta_.permute(0, 2, 1)) @ label_                          # [B, d, C]
    want = (model.wo @ head).squeeze(1)
    torch.testing.assert_close(beta, beta_p)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-6)
    assert model.wk.shape == (3 * 4, 4)                                    # d = heads x classes


# -- label inputs from files -------------------------------------------------------------------
def test_label_vectors_and_adjacency_from_files(tmp_path):
    from scipy.io import savemat

    vecs, adj = np.random.default_rng(5).normal(size=(4, 7)).astype(np.float32), np.eye(4, dtype=np.float32)
    np.save(tmp_path / "labels.npy", vecs)
    savemat(tmp_path / "adj.mat", {"adj_less": adj})
    cfg = tm.flat_cfg("marnet", {"label_embeddings": "file", "label_file": str(tmp_path / "labels.npy"),
                                 "adjacency": "file", "adjacency_file": str(tmp_path / "adj.mat")})
    emb, A = label_graph_inputs(cfg, {}, 4)
    np.testing.assert_array_equal(emb.numpy(), vecs)
    np.testing.assert_array_equal(A.numpy(), adj)
    torch.save(torch.from_numpy(vecs)[None].repeat(3, 1, 1), tmp_path / "per_sample.pt")   # [N, C, D] as published
    np.testing.assert_allclose(load_matrix(tmp_path / "per_sample.pt").numpy(), vecs, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        label_graph_inputs({**cfg, "label_file": str(tmp_path / "missing.npy")}, {}, 4)
    with pytest.raises(ValueError, match="3 classes"):
        label_graph_inputs(cfg, {}, 3)


# -- generic properties (the functions of tests/test_models.py, on this variant) -----------------
def test_generic_batch_invariance():
    tm.test_prediction_is_the_same_alone_or_in_any_batch("marnet[paper]")


def test_generic_masked_modality():
    tm.test_masked_modality_cannot_change_the_output("marnet[paper]")


@pytest.mark.parametrize("multilabel", [False, True])
def test_generic_gradients(multilabel):
    tm.test_every_parameter_gets_a_gradient("marnet[paper]", multilabel)


def test_generic_checkpoint_round_trip():
    tm.test_checkpoint_round_trip_gives_identical_outputs("marnet[paper]")


def test_generic_pooled_only_three_modalities():
    tm.test_pooled_only_store_any_modality_count_and_labels("marnet[paper]")

