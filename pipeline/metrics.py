"""Evaluation metrics, computed from scores (probabilities) and multi-hot labels.

Multi-class (one label per video): accuracy, micro / macro F1, micro / macro ROC-AUC, macro
precision / recall, Hit@k for every k of `hit_at` (VideoTag reports Hit@1 and Hit@2).
Multi-label: macro mAP, GAP@k (YouTube-8M; k = `top_k`, train.metric_k), Hit@k for every k of
`hit_at` (train.hit_at; independent of GAP's k), micro / macro F1, precision and recall (Sun et
al. Eq. 14-15) at a threshold, and MARNet's set: coverage, ranking loss, Hamming loss, one-error
(with mAP).

scikit-learn computes most of these; GAP, Hit@k, one-error, per-class AP (fast) and precision /
recall are written out here and checked against scikit-learn or the definitions in
tests/test_metrics.py. Classes with no positive (or no negative) example in the evaluated set
have no defined AP / ROC-AUC; they are left out of the macro averages, and `classes_scored`
says how many were used. Coverage is scikit-learn's `coverage_error` (how far down the ranking
one must go to cover every true label, counting from 1; Zhang & Zhou's coverage is this minus 1).
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def average_precision_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """sklearn's average_precision_score for every column at once, same tie handling (precision
    taken at the last row of each group of equal scores); NaN for a column with no positive.
    sklearn's multi-label path slices one column at a time: ~75 s on 2,952 x 3,862 here."""
    scores, y = np.asarray(scores, np.float64), np.asarray(labels) > 0
    n = len(scores)
    order = np.argsort(-scores, axis=0, kind="stable")
    s, hit = np.take_along_axis(scores, order, 0), np.take_along_axis(y, order, 0)
    tp = np.cumsum(hit, 0)
    last = np.vstack([s[1:] != s[:-1], np.ones((1, s.shape[1]), bool)])
    end = np.where(last, np.arange(n)[:, None], n)
    end = np.minimum.accumulate(end[::-1], 0)[::-1]          # last row of each row's tie group
    precision = np.take_along_axis(tp, end, 0) / (end + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hit * precision).sum(0) / y.sum(0)



def precision_recall(pred: np.ndarray, labels: np.ndarray, average: str = "micro") -> tuple[float, float]:
    """Precision = TP / (TP + FP) and recall = TP / (TP + FN) (Sun et al. Eq. 14-15) of 0/1
    predictions [N, C] against multi-hot labels: "micro" pools every (video, class) decision,
    "macro" averages the per-class values, "samples" the per-video ones. An empty denominator
    counts as 0 (scikit-learn's zero_division=0)."""
    pred, y = np.asarray(pred) > 0, np.asarray(labels) > 0
    axis = {"micro": None, "macro": 0, "samples": 1}[average]
    tp = (pred & y).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(pred.sum(axis) > 0, tp / pred.sum(axis), 0.0)
        r = np.where(y.sum(axis) > 0, tp / y.sum(axis), 0.0)
    return float(np.mean(p)), float(np.mean(r))


def _hits(scores: np.ndarray, labels: np.ndarray, hit_at) -> dict:
    return {f"hit@{int(k)}": hit_at_k(scores, labels, min(int(k), scores.shape[1])) for k in hit_at}


def multiclass_metrics(scores: np.ndarray, labels: np.ndarray, hit_at=(1,)) -> dict:
    """scores [N, C] class probabilities, labels [N, C] one-hot (or [N] class indices)."""
    scores = np.asarray(scores, np.float64)
    n, c = scores.shape
    y = labels.argmax(1) if np.ndim(labels) == 2 else np.asarray(labels)
    pred = scores.argmax(1)
    out = {"accuracy": skm.accuracy_score(y, pred),
           "micro_f1": skm.f1_score(y, pred, average="micro", zero_division=0),
           "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0)}  # classes seen in y or pred
    onehot = np.eye(c)[y]
    seen = (onehot.sum(0) > 0) | (np.eye(c)[pred].sum(0) > 0)    # as scikit-learn's macro: labels in y or pred
    out["macro_precision"], out["macro_recall"] = precision_recall(np.eye(c)[pred][:, seen], onehot[:, seen], "macro")
    out.update(_hits(scores, onehot, hit_at))
    keep = (onehot.sum(0) > 0) & (onehot.sum(0) < n)   # ROC-AUC needs positives and negatives
    out["classes_scored"] = int(keep.sum())
    if keep.sum() >= 1:
        out["macro_roc_auc"] = skm.roc_auc_score(onehot[:, keep], scores[:, keep], average="macro")
        out["micro_roc_auc"] = skm.roc_auc_score(onehot, scores, average="micro")
    else:
        out["macro_roc_auc"] = out["micro_roc_auc"] = float("nan")
    out["num_videos"] = n
    return {k: float(v) if not isinstance(v, int) else v for k, v in out.items()}


def gap_at_k(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Global Average Precision (YouTube-8M): each video's top-k (score, correct) pairs are
    pooled across videos and sorted by score; GAP = sum_i precision@i * [i correct] / P, where
    P is the total number of positive labels (counted over all classes, not only the top k)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(scores, top, 1).ravel()
    hit = np.take_along_axis(labels, top, 1).ravel()
    total = labels.sum()
    if total == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    hit = hit[order]
    precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
    return float((precision * hit).sum() / total)


def hit_at_k(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of videos with at least one true label among their k best-scored classes."""
    labels = np.asarray(labels) > 0
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(labels, top, 1).any(1).mean())


def multilabel_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5, top_k: int = 20,
                       hit_at=(1, 5)) -> dict:
    """scores [N, C] per-class probabilities, labels [N, C] multi-hot. GAP at `top_k`, Hit@k at
    every k of `hit_at`."""
    scores = np.asarray(scores, np.float64)
    y = (np.asarray(labels) > 0).astype(int)
    pred = (scores >= threshold).astype(int)
    has_pos = y.sum(0) > 0
    out = {
        "map": float(np.mean(average_precision_per_class(scores[:, has_pos], y[:, has_pos])))
        if has_pos.any() else float("nan"),
        f"gap@{top_k}": gap_at_k(scores, y, top_k),
        **_hits(scores, y, hit_at),
        "micro_f1": skm.f1_score(y, pred, average="micro", zero_division=0),
        "macro_f1": skm.f1_score(y[:, has_pos], pred[:, has_pos], average="macro", zero_division=0)
        if has_pos.any() else float("nan"),
        "hamming_loss": skm.hamming_loss(y, pred),
    }
    out["precision"], out["recall"] = precision_recall(pred, y, "micro")
    out["macro_precision"], out["macro_recall"] = precision_recall(pred[:, has_pos], y[:, has_pos], "macro") \
        if has_pos.any() else (float("nan"), float("nan"))
    rows = y.sum(1) > 0   # ranking metrics are undefined for a video without labels
    out["coverage"] = skm.coverage_error(y[rows], scores[rows]) if rows.any() else float("nan")
    out["ranking_loss"] = skm.label_ranking_loss(y[rows], scores[rows]) if rows.any() else float("nan")
    out["one_error"] = 1.0 - hit_at_k(scores[rows], y[rows], 1) if rows.any() else float("nan")
    out = {k: float(v) for k, v in out.items()}
    out.update(classes_scored=int(has_pos.sum()), num_videos=int(len(y)), threshold=float(threshold))
    return out


def compute_metrics(scores: np.ndarray, labels: np.ndarray, multilabel: bool, threshold: float = 0.5,
                    top_k: int = 20, hit_at=None) -> dict:
    """Every metric of the task; `top_k` is GAP's k (train.metric_k), `hit_at` the list of Hit@k
    (train.hit_at; default [1, 5] multi-label, [1] multi-class)."""
    if multilabel:
        return multilabel_metrics(scores, labels, threshold, top_k, (1, 5) if hit_at is None else hit_at)
    return multiclass_metrics(scores, labels, (1,) if hit_at is None else hit_at)


def default_monitor(multilabel: bool, top_k: int = 20) -> str:
    """The validation metric early stopping follows (higher is better)."""
    return f"gap@{top_k}" if multilabel else "accuracy"
