"""Scan a videos folder (plus an optional labels/titles sidecar) into the catalog.

Video ids are paths relative to the videos folder (`fight/fi001.mp4`): stable across re-scans
and moves of the whole folder. File names are ids, never features: text comes only from the
sidecar's title column.

Sidecar formats (all give file, title, labels and optionally split):
    .tsv/.txt   MultimodalVideoTag: `file<TAB>title<TAB>label1,label2` (no header needed)
    .csv        header with `file` (or `video`/`path`/`video_id`), `title`, `labels`, `split`
    .jsonl      one object per line with the same keys; labels a list or a comma string
Without labels in the sidecar, labels come from the first sub-folder (`fight/…` -> "fight")
when `scan.labels_from_folders` is auto or true.

Subtitles: a `.srt` / `.vtt` / `.ass` / `.ssa` file beside a video with the same stem
(`clip.srt`, or a language-tagged `clip.en.srt`) is read with pysubs2 into time-stamped text,
[(start_s, end_s, text), ...], stored in the catalog's `subtitles` column; decoding hands it to
the extractors as `Clip.subtitles` (an embedded subtitle stream is used when there is none).
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog, VideoRow


@dataclass
class SidecarEntry:
    title: str | None
    labels: list[str]
    split: str | None = None


@dataclass
class ScanSummary:
    found: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    labeled: int = 0
    titled: int = 0
    unmatched_sidecar: list[str] = field(default_factory=list)
    subtitled: int = 0
    subtitle_errors: list[str] = field(default_factory=list)   # "file: reason" of unreadable ones


SUBTITLE_EXTENSIONS = (".srt", ".vtt", ".ass", ".ssa")


def find_subtitle_file(video: Path) -> Path | None:
    """The subtitle file beside `video`: same stem (`clip.srt`) first, then a language-tagged
    one (`clip.en.srt`, the first in sorted order)."""
    for ext in SUBTITLE_EXTENSIONS:
        if (exact := video.with_suffix(ext)).is_file():
            return exact
    tagged = sorted(p for ext in SUBTITLE_EXTENSIONS for p in video.parent.glob(f"{glob.escape(video.stem)}.*{ext}")
                    if p.is_file())
    return tagged[0] if tagged else None


def read_subtitles(path: str | Path) -> list[tuple[float, float, str]]:
    """[(start_s, end_s, text), ...] of a subtitle file (pysubs2: SubRip, WebVTT, ASS/SSA),
    in time order, formatting tags removed, comment lines and empty events dropped."""
    import pysubs2

    subs = pysubs2.load(str(path), encoding="utf-8")
    events = [(round(e.start / 1000, 3), round(e.end / 1000, 3), e.plaintext.strip())
              for e in subs.events if not e.is_comment]
    return sorted(e for e in events if e[2])


def _split_labels(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).replace("|", ",").split(",") if v.strip()]


def _clean_title(value) -> str | None:
    value = (value or "").strip() if isinstance(value, str) or value is None else str(value)
    return value or None


def read_sidecar(path: str | Path) -> dict[str, SidecarEntry]:
    """{file key as written in the sidecar: entry}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    entries: dict[str, SidecarEntry] = {}
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from e
            key = next((obj[k] for k in ("file", "video", "path", "video_id") if k in obj), None)
            if key is None:
                raise ValueError(f"{path}:{n}: needs a 'file' key")
            entries[str(key)] = SidecarEntry(_clean_title(obj.get("title")), _split_labels(obj.get("labels", obj.get("label"))),
                                             obj.get("split"))
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = {c.lower(): c for c in reader.fieldnames or []}
            key_col = next((cols[k] for k in ("file", "video", "path", "video_id") if k in cols), None)
            if key_col is None:
                raise ValueError(f"{path}: needs a 'file' column, has {reader.fieldnames}")
            for row in reader:
                entries[row[key_col]] = SidecarEntry(
                    _clean_title(row.get(cols.get("title", ""), None)),
                    _split_labels(row.get(cols.get("labels", cols.get("label", "")), None)),
                    row.get(cols.get("split", ""), None) or None)
    else:  # MultimodalVideoTag TSV
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0].strip().lower() in ("file", "video", "path", "video_id"):
                continue  # header line
            title = parts[1] if len(parts) > 1 else None
            labels = parts[2] if len(parts) > 2 else None
            entries[parts[0].strip()] = SidecarEntry(_clean_title(title), _split_labels(labels))
    return entries


def content_hash(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_videos(root: Path, extensions) -> list[Path]:
    exts = {e.lower() for e in extensions}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                out.append(Path(dirpath) / name)
    return sorted(out)


def _match(entries: dict[str, SidecarEntry], rel: str) -> tuple[str, SidecarEntry] | None:
    p = Path(rel)
    for key in (rel, str(p.with_suffix("")), p.name, p.stem):
        if key in entries:
            return key, entries[key]
    return None


def scan_folder(catalog: Catalog, videos_dir: str | Path, labels_file: str | Path | None = None,
                extensions=(".mp4",), labels_from_folders="auto") -> ScanSummary:
    """Add new files, re-hash changed ones (and forget their outputs when the content differs),
    mark vanished ones deleted; attach titles/labels. Safe to run again at any time."""
    root = Path(videos_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"videos folder not found: {root}")
    entries = read_sidecar(labels_file) if labels_file else {}
    sidecar_has_labels = any(e.labels for e in entries.values())
    use_folders = labels_from_folders is True or (labels_from_folders == "auto" and not sidecar_has_labels)
    known = {v["video_id"]: v for v in catalog.videos(include_deleted=True)}
    summary = ScanSummary()
    rows, changed_ids, used_keys = [], [], set()
    for path in find_videos(root, extensions):
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        summary.found += 1
        old = known.get(rel)
        if old and old["path"] == str(path) and old["size"] == st.st_size and old["mtime"] == st.st_mtime:
            digest = old["content_hash"]
            summary.unchanged += 1
        else:
            digest = content_hash(path)
            if old is None:
                summary.new += 1
            elif old["content_hash"] != digest:
                summary.changed += 1
                changed_ids.append(rel)
            else:
                summary.unchanged += 1
        hit = _match(entries, rel)
        entry = hit[1] if hit else SidecarEntry(None, [])
        if hit:
            used_keys.add(hit[0])
        labels = entry.labels
        if not labels and use_folders and "/" in rel:
            labels = [rel.split("/", 1)[0]]
        summary.labeled += bool(labels)
        summary.titled += entry.title is not None
        subtitles = None
        if (sub_file := find_subtitle_file(path)) is not None:
            try:
                subtitles = read_subtitles(sub_file)
                summary.subtitled += 1
            except Exception as e:  # a broken sidecar costs only its subtitles, never the scan
                summary.subtitle_errors.append(f"{sub_file.relative_to(root)}: {type(e).__name__}: {e}")
        rows.append(VideoRow(rel, str(path), st.st_size, st.st_mtime, digest, entry.title, labels, entry.split,
                             subtitles))
    found_ids = {r.video_id for r in rows}
    vanished = [vid for vid, v in known.items()
                if not v["deleted"] and v["path"] and vid not in found_ids and Path(v["path"]).is_relative_to(root)]
    if changed_ids:
        catalog.forget_outputs(changed_ids)
    catalog.upsert_videos(rows)
    if vanished:
        catalog.mark_deleted(vanished)
    summary.deleted = len(vanished)
    summary.unmatched_sidecar = sorted(set(entries) - used_keys)
    return summary


def run_scan(cfg, out_dir: str | Path, videos_dir: str | Path, labels_file=None) -> ScanSummary:
    """The scan stage: `videos_dir` (+ `labels_file`) into OUT/catalog.sqlite, with the config's
    `scan.extensions` and `scan.labels_from_folders`. Opens only the catalog (no store, no torch),
    so `run_pipeline.py scan` starts fast."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        from .errors import UsageError

        raise UsageError(f"--videos {videos_dir}: no such folder")
    catalog = Catalog(Path(out_dir) / "catalog.sqlite")
    try:
        return scan_folder(catalog, videos_dir, labels_file, cfg.scan.extensions, cfg.scan.labels_from_folders)
    finally:
        catalog.close()
