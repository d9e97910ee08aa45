"""Both variants of MARNet, Sun et al. and MART on real features (short runs on a shared CPU).

    python bench/models_b.py                                   # YouTube-8M then CMU-MOSI, every row
    python bench/models_b.py --datasets mosi --rows marnet marnet:tuned
    python bench/models_b.py --datasets yt8m --yt8m-train-shards 10   # shorter: train on shards 0-9

Rows: `model` is its default variant (`paper`), `model:variant` another one (marnet:tuned,
mart:masking-only); `netvlad` is the earlier adaptation of Sun et al. Data and protocol are those
of bench/models.py (its import and `model_row` are reused): YouTube-8M video-level shards 0-49
train, 50-59 val (figures on val, the only held-out shards here); MOSI train (val carved by
speaker) and the official test split. What the inputs lack is said in the results, not hidden:
neither dataset has scene / action score modalities (Sun et al.), time-aligned text for MART's
lexicon cues, or frame sequences (YouTube-8M video-level features are one step per video).

Results: bench/results/models_b.json (every figure, settings, load average) and models_b.md.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import bench.models as bm  # noqa: E402  (bench/ is a namespace package under ROOT)

from pipeline.importers import import_features, import_yt8m  # noqa: E402
from pipeline.io import write_json, write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ROWS = ["marnet", "marnet:tuned", "sun", "netvlad", "mart", "mart:masking-only"]
# Per dataset and row: what makes a row affordable / possible there (chosen before any result).
SETTINGS = {
    "yt8m": {
        # roles: YouTube-8M has no scene / action scores; rgb stands in for the action stream and
        # audio for the scene stream so the structure (Eq. 6 joint, NetVLAD, fusion) runs.
        # joint_dim 16: the full 1,024 x 128 outer product would be 131k wide per step.
        # K = 8 clusters of 128-d inputs: 3 branches x (8 x 128) x 3,862 classifier weights.
        "sun": ["models.sun.action_modality=rgb", "models.sun.scene_modality=audio", "models.sun.joint_dim=16",
                "models.sun.input_dim=128", "models.sun.clusters=8"],
        # heads x classes = 11,586-wide attention for 3,862 labels: 1,024 keeps the epoch affordable
        "marnet": ["models.marnet.paper.attention_dim=1024"],
    },
    "mosi": {
        "sun": ["models.sun.action_modality=video", "models.sun.scene_modality=text", "models.sun.input_dim=64",
                "models.sun.clusters=8"],
        # the published widths are for 2,048-d inputs; MOSI's are 73-100 wide (and the CPU is shared)
        "marnet": ["models.marnet.paper.group_dim=256", "models.marnet.paper.gnn_hidden=256"],
    },
}
METRICS = {"yt8m": [("val", "gap@20"), ("val", "map"), ("val", "hit@1"), ("val", "coverage"), ("val", "ranking_loss"),
                    ("val", "hamming_loss"), ("val", "one_error")],
           "mosi": [("val", "accuracy"), ("test", "accuracy"), ("test", "macro_f1")]}


def import_data(name: str, out_dir: Path, train_shards: int = 50) -> dict:
    if name == "yt8m":
        shards = sorted(glob.glob(str(bm.SHARED / "yt8m" / "tfrecord" / "*.tfrecord")))
        vocab = bm.SHARED / "yt8m" / "vocabulary.csv"
        out = [import_yt8m(shards[:train_shards], out_dir, vocabulary=vocab, split="train"),
               import_yt8m(shards[50:60], out_dir, vocabulary=vocab, split="val")]
        for s in out:
            s.pop("per_file", None)
        return {"import": out}
    return {"import": import_features(ROOT / "configs" / "importers" / "mosi.yaml", out_dir, root=bm.SHARED / "mosi")}


def markdown(results: dict) -> str:
    lines = ["# MARNet, Sun et al., MART: both variants (bench/models_b.py)", ""]
    for name, section in results.items():
        if not isinstance(section, dict) or "rows" not in section:
            continue
        cols = METRICS[name]
        lines += [f"## {name}", "", f"settings: `{section['settings']}`; load average {section['loadavg']}", "",
                  "| row | " + " | ".join(f"{s} {k}" for s, k in cols) + " | params | train s | epochs (best) |",
                  "|---|" + "---:|" * (len(cols) + 3)]
        for r in section["rows"]:
            vals = [r.get(s, {}).get(k) for s, k in cols]
            lines.append(f"| {r['row']} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals)
                         + f" | {r['params']:,} | {r['train_s']} | {r['epochs']} ({r['best_epoch']}) |")
        for f in section.get("failed", []):
            lines.append(f"| {f['row']} | FAILED: {f['error']} |")
        lines.append("")
    return "\n".join(lines)


def save(results: dict, name: str, stem: str = "models_b") -> None:
    """Write dataset `name`'s section into bench/results/<stem>.json, keeping the other sections
    and the rows other processes wrote as they are on disk (processes can run side by side)."""
    path = RESULTS / f"{stem}.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    rows = {r["row"]: r for r in merged.get(name, {}).get("rows", [])}
    rows.update({r["row"]: r for r in results[name]["rows"]})
    merged[name] = {**results[name], "rows": list(rows.values())}
    write_json(path, merged)
    write_text(RESULTS / f"{stem}.md", markdown(merged))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["yt8m", "mosi"], choices=["yt8m", "mosi"])
    p.add_argument("--rows", nargs="+", default=ROWS)
    p.add_argument("--yt8m-epochs", type=int, default=2)
    p.add_argument("--yt8m-train-shards", type=int, default=50, help="train on shards 0..N-1 (val: 50-59 always)")
    p.add_argument("--mosi-epochs", type=int, default=6)
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder, removed after)")
    p.add_argument("--results", default="models_b", help="bench/results/<name>.json / .md")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides added to every row (e.g. models.sun.label_prior_bias=true); use another --results")
    a = p.parse_args()
    if not bm.SHARED.is_dir():
        sys.exit(f"{bm.SHARED} is absent: the benchmark needs ../shared/data")
    path = RESULTS / f"{a.results}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    work = a.out or Path(tempfile.mkdtemp(prefix="bench-models-b-"))
    common = ["device=cpu", "seed=0", "train.progress=false", "train.num_workers=0"]
    settings = {"yt8m": common + [f"train.epochs={a.yt8m_epochs}", "train.batch_size=256", "train.lr=2e-3",
                                  "train.warmup_epochs=0.5", "train.patience=3", "train.eval_batch_size=1024"],
                "mosi": common + [f"train.epochs={a.mosi_epochs}", "train.batch_size=64", "train.lr=1e-3", "train.patience=8"]}
    try:
        for name in a.datasets:
            out_dir = work / name
            shutil.rmtree(out_dir, ignore_errors=True)
            modalities = ["rgb", "audio"] if name == "yt8m" else ["text", "audio", "video"]
            old = {r["row"]: r for r in results.get(name, {}).get("rows", [])}
            note = f" train shards 0-{a.yt8m_train_shards - 1}" if name == "yt8m" else ""
            section = results[name] = {"settings": " ".join(settings[name] + a.set) + note, "rows": list(old.values()),
                                       "loadavg": [round(x, 2) for x in os.getloadavg()],
                                       **import_data(name, out_dir, a.yt8m_train_shards)}
            for row in a.rows:
                print(f"== {name}: {row}", flush=True)
                model, variant = bm.row_model(row)
                extra = SETTINGS[name].get(row, [])
                try:
                    r = bm.model_row(settings[name] + variant + extra + a.set, out_dir, model, modalities, row,
                                     test_split=name == "mosi")
                except Exception as e:   # reported in the results, not hidden
                    section.setdefault("failed", []).append({"row": row, "error": f"{type(e).__name__}: {e}"})
                    print(f"   FAILED: {e}", flush=True)
                    save(results, name, a.results)
                    continue
                section["rows"] = [x for x in section["rows"] if x["row"] != row] + [r]
                section["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                section["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                save(results, name, a.results)
            print(markdown(results), flush=True)
    finally:
        if a.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
