"""The report's run section (pipeline/report.py): training curves from metrics.json, the eval
metrics, and the scores of the run's own validation videos -> per-class AP, confusion matrix,
precision-recall curves and the most confident errors with a frame of each.

The scores come from the same functions `evaluate` uses (pipeline/evaluate.py), on the video
ids the checkpoint recorded as its validation split.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .report import Raw, esc, fig_png, figure, note, table, thumbnail

MAX_PR_CLASSES = 8
MAX_CONFUSION = 30


def split_scores(cfg, out_dir: Path, run_dir: Path, split: str = "val") -> dict:
    """{"ids", "scores" [N, C], "labels" [N, C], "class_names", "multilabel", "split"} of a run."""
    from .config import resolve_device
    from .evaluate import ensemble_scores, load_runs, split_ids
    from .output import open_output
    from .task import load_labels

    device = resolve_device(cfg.device)
    catalog, store = open_output(cfg, out_dir, readonly=True)
    try:
        loaded = load_runs([run_dir], device, store)
        task = load_labels(catalog)
        ids = split_ids(task, loaded, split)
        row = {vid: i for i, vid in enumerate(task["video_ids"])}
        labels = task["labels"][[row[v] for v in ids]]
        got, scores, _ = ensemble_scores(loaded, store, ids, labels, cfg, device)
        ckpt = loaded[0][1]
        return {"ids": list(got), "scores": np.asarray(scores), "labels": np.asarray(labels),
                "class_names": list(ckpt["class_names"]), "multilabel": bool(ckpt["multilabel"]), "split": split}
    finally:
        catalog.close()


def curves(history: list[dict]) -> str:
    if not history:
        return note("metrics.json has no history")
    epochs = [h["epoch"] for h in history]
    metric_keys = [k for k in history[0] if k not in ("epoch", "train_loss", "val_loss", "lr", "seconds")
                   and isinstance(history[0][k], (int, float))]
    fig, ax = figure(2, 1)
    for key in ("train_loss", "val_loss"):
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            ax[0].plot(epochs, ys, marker=".", label=key)
    ax[0].set_xlabel("epoch")
    ax[0].set_title("loss")
    ax[0].legend()
    for key in metric_keys[:6]:
        ax[1].plot(epochs, [h.get(key) for h in history], marker=".", label=key)
    ax[1].set_xlabel("epoch")
    ax[1].set_title("validation metrics")
    if metric_keys:
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    return fig_png(fig)


def per_class_ap(s: dict) -> tuple[str, np.ndarray]:
    from sklearn.metrics import average_precision_score

    y, p, names = s["labels"], s["scores"], s["class_names"]
    ap = np.array([average_precision_score(y[:, c], p[:, c]) if y[:, c].any() else np.nan for c in range(len(names))])
    order = [c for c in np.argsort(-np.nan_to_num(ap, nan=-1)) if not np.isnan(ap[c])][:40]
    fig, ax = figure(1, 1, width=7, height=max(2.5, 0.22 * len(order) + 1))
    ax[0].barh([names[c] for c in order][::-1], [ap[c] for c in order][::-1], color="#4c72b0")
    ax[0].set_xlim(0, 1)
    ax[0].set_title(f"average precision per class ({s['split']}, {len(s['ids'])} videos"
                    + (", best 40)" if len(order) == 40 else ")"))
    return fig_png(fig), ap


def confusion(s: dict) -> str:
    from sklearn.metrics import confusion_matrix

    names = s["class_names"]
    if s["multilabel"] or len(names) > MAX_CONFUSION:
        return note("confusion matrix: shown for single-label tasks of at most 30 classes")
    cm = confusion_matrix(s["labels"].argmax(1), s["scores"].argmax(1), labels=range(len(names)))
    fig, ax = figure(1, 1, width=1.0 + 0.45 * len(names), height=0.8 + 0.45 * len(names))
    ax[0].imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax[0].text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black", fontsize=8)
    ax[0].set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax[0].set_yticks(range(len(names)), names)
    ax[0].set_xlabel("predicted")
    ax[0].set_ylabel("true")
    ax[0].set_title("confusion matrix")
    return fig_png(fig)


def pr_curves(s: dict) -> str:
    from sklearn.metrics import precision_recall_curve

    y, p, names = s["labels"], s["scores"], s["class_names"]
    common = [c for c in np.argsort(-y.sum(0)) if y[:, c].any()][:MAX_PR_CLASSES]
    fig, ax = figure(1, 1, width=5.5, height=4)
    for c in common:
        prec, rec, _ = precision_recall_curve(y[:, c], p[:, c])
        ax[0].plot(rec, prec, label=names[c])
    ax[0].set_xlabel("recall")
    ax[0].set_ylabel("precision")
    ax[0].set_title("precision-recall" + (f" ({MAX_PR_CLASSES} most frequent classes)" if len(names) > MAX_PR_CLASSES else ""))
    ax[0].legend(fontsize=7)
    return fig_png(fig)


def confident_errors(s: dict, videos: dict, thumbs: int) -> str:
    """Videos whose top prediction is wrong, most confident first, with a frame of each."""
    y, p, names = s["labels"], s["scores"], s["class_names"]
    top = p.argmax(1)
    wrong = [i for i in range(len(top)) if not y[i, top[i]]]
    wrong.sort(key=lambda i: -p[i, top[i]])
    rows = []
    for i in wrong[:thumbs]:
        vid = s["ids"][i]
        truth = ", ".join(names[c] for c in np.flatnonzero(y[i]))
        rows.append((thumbnail((videos.get(vid) or {}).get("path"), vid), vid, truth,
                     f"{names[top[i]]} ({p[i, top[i]]:.2f})"))
    if not rows:
        return note(f"no errors on {s['split']}: the top prediction is right for every video")
    return f"<h3>Most confident errors ({len(wrong)} of {len(top)} wrong)</h3>" + \
        table(["frame", "video", "true", "predicted (p)"], rows)


def run_section(cfg, out_dir: Path, run_dir: Path | None, meta: dict | None, videos: dict, thumbs: int) -> str:
    if run_dir is None:
        return "<h2>Run</h2>" + note("no trained run in this folder (run_pipeline.py train)")
    parts = [f"<h2>Run {esc(run_dir.name)}</h2>",
             table(["model", "best epoch", "epochs", "videos", "monitor"],
                   [(meta.get("model"), meta.get("best_epoch"), meta.get("epochs_run"),
                     json.dumps(meta.get("videos")), meta.get("monitor"))]),
             curves(meta.get("history") or [])]
    evals = sorted(run_dir.glob("eval-*.json"))
    for path in evals:
        e = json.loads(path.read_text())
        parts.append(f"<h3>evaluate on {esc(e.get('split'))} ({e.get('videos')} videos)</h3>" + table(
            ["metric", "value"], [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in e.get("metrics", {}).items()]))
    try:
        s = split_scores(cfg, out_dir, run_dir, "val")
    except Exception as e:  # shown in the report: a run that cannot be scored is worth knowing about
        parts.append(note(f"could not score the validation videos: {type(e).__name__}: {e}"))
        return "\n".join(parts)
    ap_png, _ = per_class_ap(s)
    parts += [f"<h3>Per-class average precision on {esc(s['split'])}</h3>", ap_png,
              "<h3>Confusion matrix</h3>", confusion(s), "<h3>Precision-recall curves</h3>", pr_curves(s),
              confident_errors(s, videos, thumbs)]
    return "\n".join(str(x) if isinstance(x, Raw) else x for x in parts)
