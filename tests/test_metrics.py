"""pipeline/metrics.py against scikit-learn on random data, and GAP / Hit@k / one-error against
direct implementations of their definitions (YouTube-8M's for GAP)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.metrics import (compute_metrics, gap_at_k, hit_at_k, multiclass_metrics, multilabel_metrics,
                              precision_recall)


def random_multiclass(n=300, c=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]   # better than chance, not perfect
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def random_multilabel(n=200, c=12, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.2).astype(int)
    y[np.arange(n), rng.integers(0, c, n)] = 1   # every video has a label
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 2 * y - 1)))
    return y, p


def yt8m_gap(predictions, actuals, top_k=20):
    """The YouTube-8M starter code's calculate_gap: top-k per video, pooled, AP with the total
    number of positives as denominator, written as plainly as possible."""
    pairs, positives = [], 0
    for scores, labels in zip(predictions, actuals):
        positives += int(labels.sum())
        for j in np.argsort(-scores)[:top_k]:
            pairs.append((scores[j], labels[j]))
    pairs.sort(key=lambda t: -t[0])
    hits, ap = 0, 0.0
    for i, (_, label) in enumerate(pairs, start=1):
        if label:
            hits += 1
            ap += hits / i
    return ap / positives


def test_multiclass_matches_sklearn():
    y, p = random_multiclass()
    got = multiclass_metrics(p, np.eye(6)[y])
    pred = p.argmax(1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert got["micro_roc_auc"] == pytest.approx(skm.roc_auc_score(np.eye(6)[y], p, average="micro"))
    assert got["num_videos"] == 300 and got["classes_scored"] == 6


def test_binary_task_roc_auc_is_the_usual_one():
    y, p = random_multiclass(c=2, seed=3)
    got = compute_metrics(p, np.eye(2)[y], multilabel=False)
    assert got["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))


def test_multiclass_leaves_out_classes_absent_from_the_labels():
    y, p = random_multiclass(c=5, seed=1)
    y[y == 4] = 0   # class 4 never occurs: its ROC-AUC is undefined
    got = multiclass_metrics(p, np.eye(5)[y])
    assert got["classes_scored"] == 4
    want = np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in range(4)])
    assert got["macro_roc_auc"] == pytest.approx(want)


def test_multilabel_matches_sklearn():
    y, p = random_multilabel()
    got = multilabel_metrics(p, y, threshold=0.5, top_k=20)
    pred = (p >= 0.5).astype(int)
    assert got["map"] == pytest.approx(skm.average_precision_score(y, p, average="macro"))
    assert got["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert got["coverage"] == pytest.approx(skm.coverage_error(y, p))
    assert got["ranking_loss"] == pytest.approx(skm.label_ranking_loss(y, p))
    top1 = p.argmax(1)
    assert got["one_error"] == pytest.approx(np.mean(y[np.arange(len(y)), top1] == 0))
    assert got["hit@1"] == pytest.approx(1 - got["one_error"])


@pytest.mark.parametrize("top_k", [1, 3, 20])
def test_gap_matches_the_youtube8m_definition(top_k):
    y, p = random_multilabel(n=150, c=30, seed=top_k)
    assert gap_at_k(p, y, top_k) == pytest.approx(yt8m_gap(p, y, top_k))


def test_gap_and_hit_extremes():
    y = np.array([[1, 0, 0], [0, 1, 1]])
    perfect = y * 0.9 + 0.05
    assert gap_at_k(perfect, y, 20) == pytest.approx(1.0)
    assert hit_at_k(perfect, y, 1) == 1.0
    worst = 1 - perfect
    assert hit_at_k(worst, y, 1) == 0.0 and hit_at_k(worst, y, 3) == 1.0


def test_hit_at_k_definition():
    y, p = random_multilabel(seed=5)
    top5 = np.argsort(-p, 1)[:, :5]
    want = np.mean([y[i, top5[i]].any() for i in range(len(y))])
    assert hit_at_k(p, y, 5) == pytest.approx(want)


def test_multilabel_map_skips_classes_without_positives():
    y, p = random_multilabel(c=8, seed=2)
    y[:, 7] = 0
    got = multilabel_metrics(p, y)
    assert got["classes_scored"] == 7
    assert got["map"] == pytest.approx(skm.average_precision_score(y[:, :7], p[:, :7], average="macro"))


@pytest.mark.parametrize("average", ["micro", "macro", "samples"])
def test_precision_recall_match_sklearn(average):
    """Sun et al. Eq. 14-15, P = TP / (TP + FP) and R = TP / (TP + FN), written out in numpy."""
    y, p = random_multilabel(seed=7)
    pred = (p >= 0.5).astype(int)
    pred[3] = 0                       # a video with no predicted label: zero_division=0
    got = precision_recall(pred, y, average)
    assert got[0] == pytest.approx(skm.precision_score(y, pred, average=average, zero_division=0))
    assert got[1] == pytest.approx(skm.recall_score(y, pred, average=average, zero_division=0))


def test_precision_recall_in_the_reports_match_sklearn():
    y, p = random_multilabel(seed=8)
    got, pred = multilabel_metrics(p, y, threshold=0.4), (p >= 0.4).astype(int)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, average="micro"))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, average="micro"))
    assert got["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert got["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    yc, pc = random_multiclass(seed=9)
    mc = multiclass_metrics(pc, np.eye(6)[yc])
    assert mc["macro_precision"] == pytest.approx(skm.precision_score(yc, pc.argmax(1), average="macro", zero_division=0))
    assert mc["macro_recall"] == pytest.approx(skm.recall_score(yc, pc.argmax(1), average="macro", zero_division=0))


def test_marnet_metric_set_matches_sklearn_on_ties_and_sparse_labels():
    """MARNet's report: mAP, coverage, ranking loss, Hamming loss, one-error; here with tied
    scores and a video without labels (left out of the ranking metrics)."""
    y, p = random_multilabel(n=120, c=9, seed=10)
    p = np.round(p, 1)                 # many ties
    y[5] = 0
    got, rows = multilabel_metrics(p, y, threshold=0.5), y.sum(1) > 0
    keep = y.sum(0) > 0
    assert got["map"] == pytest.approx(skm.average_precision_score(y[:, keep], p[:, keep], average="macro"))
    assert got["coverage"] == pytest.approx(skm.coverage_error(y[rows], p[rows]))
    assert got["ranking_loss"] == pytest.approx(skm.label_ranking_loss(y[rows], p[rows]))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(y, (p >= 0.5).astype(int)))
    first = np.argsort(-p[rows], 1, kind="stable")[:, 0]
    assert got["one_error"] == pytest.approx(np.mean(y[rows][np.arange(rows.sum()), first] == 0))


def test_hit_at_is_a_list_independent_of_gap_k():
    y, p = random_multilabel(seed=11)
    a = compute_metrics(p, y, True, top_k=20, hit_at=[1, 2])
    b = compute_metrics(p, y, True, top_k=20, hit_at=[1, 3, 5])
    assert a["gap@20"] == b["gap@20"] and "hit@2" in a and "hit@2" not in b and "hit@3" in b
    assert a["hit@2"] == pytest.approx(hit_at_k(p, y, 2))
    c = compute_metrics(p, y, True, top_k=3, hit_at=[1, 2])
    assert c["hit@2"] == a["hit@2"] and "gap@3" in c    # GAP@k changes, Hit@k does not
    yc, pc = random_multiclass(seed=12)
    mc = compute_metrics(pc, np.eye(6)[yc], False, hit_at=[1, 2])
    assert mc["hit@1"] == pytest.approx(mc["accuracy"]) and mc["hit@2"] == pytest.approx(hit_at_k(pc, np.eye(6)[yc], 2))
