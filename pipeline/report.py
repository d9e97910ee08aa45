"""`run_pipeline.py report [--run RUN]`: one self-contained HTML file about an output folder.

Images are inline (base64 PNG / JPEG), there is no script and no external resource, so the file
opens from disk anywhere, with no server. Sections:

  catalog      counts per stage, the failure table with reasons, thumbnails of what decoded
  data         durations, resolutions, fps, audio presence, class balance
  features     a 2-D map of each modality's pooled features (UMAP when installed, else PCA)
               coloured by label; the missing-modality pattern
  completion   the latest `complete` summary, its objective curve, held-out error when measured
  run          training curves, eval metrics, per-class AP, confusion matrix, precision-recall
               curves, the most confident errors with a frame of each
  config       the run's config, the extractors' weights and the library versions

A section with nothing to show says why (no run yet, no completion) instead of being left out.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .errors import NotFound
from .io import write_text

MAX_POINTS = 5000  # points per feature map (a seeded sample above this)
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;background:#fff}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}img{max-width:100%}.thumbs{display:flex;flex-wrap:wrap;gap:8px}
.thumbs figure{margin:0;width:150px;font-size:11px;word-break:break-all}.note{color:#666}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:420px;font-size:12px}"""


# -- small HTML helpers --------------------------------------------------------------------------
def esc(x) -> str:
    return html.escape(str(x))


def table(headers, rows) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Raw(str):
    """Already-escaped HTML (an image inside a table cell)."""


def fig_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def jpeg(frame: np.ndarray, alt: str = "frame") -> Raw:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=80)
    return Raw(f'<img alt="{esc(alt)}" width="150" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes.ravel()


def thumbnail(path: str | None, video_id: str) -> Raw | str:
    """The middle frame of what decodes of a video, or the reason nothing does."""
    from .decode import DecodeOptions, decode_video

    if not path:
        return "no path"
    try:
        clip = decode_video(path, DecodeOptions(num_frames=1, short_side=96, audio=False), video_id=video_id)
    except Exception as e:  # a hopeless file: its reason is the thumbnail
        return f"nothing decodes ({type(e).__name__})"
    if clip.frames is None or not len(clip.frames):
        return "no frames"
    return jpeg(clip.frames[len(clip.frames) // 2], video_id)


# -- sections ------------------------------------------------------------------------------------
def catalog_section(catalog: Catalog, videos: list[dict], thumbs: int) -> str:
    counts = catalog.stage_counts()
    rows = [("scan", len(videos), "", "", "")]
    for stage in sorted(counts, key=lambda s: (s != "decode", s)):
        c = counts[stage]
        rows.append((stage, c.get("done", 0), c.get("missing", 0), c.get("failed", 0),
                     max(len(videos) - sum(c.values()), 0)))
    parts = ["<h2>Catalog</h2>", table(["stage", "done", "missing", "failed", "pending"], rows)]
    failures = catalog.failures()
    if failures:
        shown = failures[:thumbs]
        parts.append(f"<h3>{len(failures)} failures</h3>")
        parts.append(table(["video", "stage", "reason", "what decodes"],
                           [(vid, stage, err or "", thumbnail(path, vid)) for vid, path, stage, err in shown]))
        if len(failures) > thumbs:
            parts.append(note(f"thumbnails for the first {thumbs}; the other {len(failures) - thumbs} "
                              "are in `run_pipeline.py status`"))
    else:
        parts.append(note("no failures"))
    salvaged = [v for v in videos if v.get("decode_warnings")]  # decoded with losses (corrupt packets)
    if salvaged:
        parts.append(f"<h3>{len(salvaged)} salvaged on decode</h3>")
        parts.append(table(["video", "what was lost", "what decodes"],
                           [(v["video_id"], v["decode_warnings"], thumbnail(v["path"], v["video_id"]))
                            for v in salvaged[:thumbs]]))
    failed = {f[0] for f in failures}
    ok = [v for v in videos if v["video_id"] not in failed]
    if ok and thumbs:
        pick = [ok[int(i)] for i in np.linspace(0, len(ok) - 1, min(thumbs, len(ok))).round()]
        cells = "".join(f"<figure>{thumbnail(v['path'], v['video_id'])}<figcaption>{esc(v['video_id'])}"
                        f"<br>{esc(', '.join(v['labels']))}</figcaption></figure>" for v in pick)
        parts.append(f"<h3>Decoded samples</h3><div class='thumbs'>{cells}</div>")
    return "\n".join(parts)


def data_section(videos: list[dict]) -> str:
    if not videos:
        return "<h2>Data</h2>" + note("the catalog has no videos")
    fig, ax = figure(3, 2, width=4.2, height=3.0)
    num = lambda key: np.array([v.get(key) for v in videos if v.get(key) is not None], float)  # noqa: E731
    for a, key, unit in ((ax[0], "duration", "seconds"), (ax[1], "fps", "frames/s")):
        x = num(key)
        a.hist(x, bins=30, color="#4c72b0") if len(x) else a.text(0.5, 0.5, "not probed yet", ha="center")
        a.set_title(f"{key} ({len(x)} videos)")
        a.set_xlabel(unit)
    w, h = num("width"), num("height")
    n = min(len(w), len(h))
    ax[2].scatter(w[:n], h[:n], s=8, alpha=0.5)
    ax[2].set_title("resolution")
    ax[2].set_xlabel("width")
    ax[2].set_ylabel("height")
    audio = [v.get("has_audio") for v in videos]
    ax[3].bar(["audio", "silent", "unknown"], [audio.count(1), audio.count(0), audio.count(None)],
              color=["#55a868", "#c44e52", "#999"])
    ax[3].set_title("audio track")
    classes: dict[str, int] = {}
    for v in videos:
        for lab in v["labels"] or ["(unlabeled)"]:
            classes[lab] = classes.get(lab, 0) + 1
    top = sorted(classes.items(), key=lambda kv: -kv[1])[:30]
    ax[4].barh([k for k, _ in top][::-1], [c for _, c in top][::-1], color="#8172b2")
    ax[4].set_title(f"class balance ({len(classes)} labels" + (", top 30)" if len(classes) > 30 else ")"))
    splits: dict[str, int] = {}
    for v in videos:
        splits[str(v.get("split"))] = splits.get(str(v.get("split")), 0) + 1
    ax[5].bar(list(splits), list(splits.values()), color="#937860")
    ax[5].set_title("split")
    fig.tight_layout()
    return f"<h2>Data</h2><p>{len(videos)} videos.</p>{fig_png(fig)}"


def embed_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) map of `x`: UMAP when umap-learn is installed, else PCA."""
    x = np.asarray(x, np.float32)
    try:
        import umap

        return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        if x.shape[0] < 2 or x.shape[1] < 2:
            return np.zeros((len(x), 2)), "PCA (too few points)"
        pca = PCA(n_components=2, random_state=seed).fit(x)
        share = pca.explained_variance_ratio_.sum()
        return pca.transform(x), f"PCA ({share:.0%} of the variance)"


def features_section(store, videos: list[dict], seed: int = 0) -> str:
    infos = {m: i for m, i in store.modalities().items() if "pooled" in i.layouts}
    if not infos:
        return "<h2>Features</h2>" + note("the store has no pooled features yet (run extract or import)")
    ids = [v["video_id"] for v in videos]
    first_label = {v["video_id"]: (v["labels"][0] if v["labels"] else "(unlabeled)") for v in videos}
    names = sorted(infos)
    fig, ax = figure(min(3, len(names)), (len(names) + 2) // 3, width=4.2, height=3.6)
    presence = {}
    rng = np.random.default_rng(seed)
    for a, m in zip(ax, names):
        got, x, present = store.read_pooled(m, ids)
        presence[m] = present
        keep = np.flatnonzero(present)
        if len(keep) > MAX_POINTS:
            keep = np.sort(rng.choice(keep, MAX_POINTS, replace=False))
        xy, how = embed_2d(x[keep].astype(np.float32), seed)
        labels = [first_label[got[i]] for i in keep]
        for k, lab in enumerate(sorted(set(labels))[:20]):
            sel = np.array([lab2 == lab for lab2 in labels])
            a.scatter(xy[sel, 0], xy[sel, 1], s=7, alpha=0.7, label=lab, color=f"C{k % 10}")
        a.set_title(f"{m}: {len(keep)} videos, {how}", fontsize=9)
        if len(set(labels)) <= 12:
            a.legend(fontsize=7, markerscale=2)
    for a in ax[len(names):]:
        a.axis("off")
    fig.tight_layout()
    observed = {m: p for m, p in presence.items() if "@" not in m}  # completed copies are never missing
    parts = ["<h2>Features</h2>", fig_png(fig), "<h3>Missing-modality pattern</h3>", pattern_table(observed)]
    return "\n".join(parts)


def pattern_table(presence: dict[str, np.ndarray]) -> str:
    names = sorted(presence)
    if not names:
        return ""
    matrix = np.stack([presence[m] for m in names], 1)
    patterns: dict[tuple, int] = {}
    for row in map(tuple, matrix):
        patterns[row] = patterns.get(row, 0) + 1
    rows = [tuple("✓" if p else "—" for p in pat) + (n,) for pat, n in sorted(patterns.items(), key=lambda kv: -kv[1])]
    share = {m: f"{presence[m].mean():.0%}" for m in names}
    return table(names + ["videos"], rows) + note("present: " + ", ".join(f"{m} {s}" for m, s in share.items()))


def completion_section(out_dir: Path) -> str:
    summaries = sorted((out_dir / "summaries").glob("complete-*.json"))
    if not summaries:
        return "<h2>Completion</h2>" + note("not run on this folder (run_pipeline.py complete)")
    data = json.loads(summaries[-1].read_text())
    s = data.get("summary", {})
    if s.get("skipped"):
        return "<h2>Completion</h2>" + note(f"skipped: {s.get('reason', 'nothing to complete')}")
    rows = [(m, v.get("rows"), v.get("imputed_rows")) for m, v in s.get("modalities", {}).items()]
    parts = ["<h2>Completion</h2>", table(["modality", "rows", "imputed rows"], rows),
             note(f"{s.get('method')} rank {s.get('rank')}, lambda {s.get('lambda')}, {s.get('iterations')} "
                  f"iterations, converged: {s.get('converged')}")]
    held = s.get("heldout") or s.get("held_out") or data.get("heldout")
    parts.append(table(["held-out", "value"], list(held.items())) if isinstance(held, dict) else
                 note("held-out reconstruction error: not measured by this completion run"))
    history = data.get("history") or []
    ys = [h.get("objective") for h in history if isinstance(h, dict) and h.get("objective") is not None]
    if ys:
        fig, ax = figure(1, 1)
        ax[0].plot(range(1, len(ys) + 1), ys, marker=".")
        ax[0].set_xlabel("iteration")
        ax[0].set_ylabel("objective")
        ax[0].set_yscale("log" if min(ys) > 0 else "linear")
        parts.append(fig_png(fig))
    return "\n".join(parts)


def config_section(store, run_meta: dict | None, run_dir: Path | None) -> str:
    from .config import versions

    rows = []
    for m, info in sorted(store.modalities().items()):
        meta = info.meta or {}
        rows.append((m, ", ".join(f"{k} {d}" for k, d in info.layouts.items()), meta.get("model") or meta.get("family", ""),
                     meta.get("weights", meta.get("source", "")), "yes" if meta.get("random_weights") else "",
                     (meta.get("sha256") or "")[:16]))
    parts = ["<h2>Configuration and versions</h2>", "<h3>Features</h3>",
             table(["modality", "layouts", "model", "weights", "random weights", "sha256"], rows)]
    cfg = (run_meta or {}).get("config")
    if cfg is not None:
        parts.append(f"<h3>Config of run {esc(run_dir.name)}</h3><pre>{esc(json.dumps(cfg, indent=1, default=str))}</pre>")
    vers = (run_meta or {}).get("versions") or versions()
    parts.append("<h3>Versions</h3>" + table(["library", "version"], sorted(vers.items())))
    return "\n".join(parts)


# -- the whole file ------------------------------------------------------------------------------
def latest_run(out_dir: Path) -> Path | None:
    runs = [p.parent for p in (out_dir / "runs").glob("*/metrics.json")]
    return max(runs, key=lambda p: (p / "metrics.json").stat().st_mtime) if runs else None


def write_report(out_dir: str | Path, run: str | None = None, output: str | Path | None = None, cfg=None,
                 thumbs: int = 12) -> Path:
    """Write OUT/report.html (or `output`) and return its path. `run`: a run folder name under
    OUT/runs (default: the latest run with a metrics.json; none = no run section)."""
    from .report_run import run_section
    from .store import FeatureStore

    out_dir = Path(out_dir)
    if not (out_dir / "catalog.sqlite").exists():
        raise NotFound(f"{out_dir} has no catalog.sqlite: nothing to report (run scan first)")
    if cfg is None:
        from .config import load_config

        cfg = load_config()
    run_dir = (out_dir / "runs" / run) if run else latest_run(out_dir)
    if run and not (run_dir / "metrics.json").exists():
        raise NotFound(f"{run_dir} has no metrics.json (train it first, or pick one of "
                                f"{sorted(p.parent.name for p in (out_dir / 'runs').glob('*/metrics.json'))})")
    catalog = Catalog(out_dir / "catalog.sqlite", readonly=True)
    try:
        store = FeatureStore(out_dir, catalog)
        videos = catalog.videos()
        run_meta = json.loads((run_dir / "metrics.json").read_text()) if run_dir else None
        body = [catalog_section(catalog, videos, thumbs), data_section(videos),
                features_section(store, videos, int(cfg.seed)), completion_section(out_dir),
                run_section(cfg, out_dir, run_dir, run_meta, {v["video_id"]: v for v in videos}, thumbs),
                config_section(store, run_meta, run_dir)]
    finally:
        catalog.close()
    title = f"microvideo-pipeline report: {out_dir.resolve().name}"
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<link rel='icon' href='data:,'><style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
           f"<p class='note'>{esc(out_dir.resolve())} · written {time.strftime('%Y-%m-%d %H:%M:%S')}"
           f"{' · run ' + esc(run_dir.name) if run_dir else ''}</p>" + "\n".join(body) + "</body></html>")
    return write_text(Path(output) if output else out_dir / "report.html", doc)
