"""`run_pipeline.py verify`: check an output folder the way `git fsck` or a ZFS scrub does.

    problems = verify_output(OUT)            # read-only: never takes the output lock
    problems = verify_output(OUT, repair=True)  # under the lock (the CLI takes it)

Checks, in order:
  1. the catalog: sqlite's own `PRAGMA integrity_check` (a truncated or overwritten file stops
     here: nothing below can be trusted, and `--repair` refuses to touch it);
  2. every committed shard: the file exists, its shape and dtype are the recorded ones, its
     sha256 (and those of a sequence shard's offsets / times files) is the one recorded when it
     was committed (catalogs older than checksums: reported as "not recorded", not as damage);
     a sequence shard's offsets are monotonic and end at its row count;
  3. every feature row points inside its shard (and at a shard that exists);
  4. no video is `done` for `extract:<m>` without a feature row of every layout of <m>;
  5. orphan files: anything under OUT/store that no live feature row points to (leftovers of a
     killed run, temp files, shards every video has moved away from).

`repair=True` removes the orphans and marks the broken videos pending for the modality that is
broken (their feature rows are forgotten, their extract status cleared), so the next `extract`
redoes exactly them. Nothing else is deleted: a damaged shard's file goes only once no video
points to it any more, i.e. as an orphan. Run it when no `extract` is writing the folder (the
CLI's `--repair` holds the lock); a plain `verify` beside a running writer may list that
writer's not yet committed files as orphans.
"""
from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .store import COMPANIONS, FeatureStore


@dataclass
class Problem:
    kind: str        # catalog | missing | shape | dtype | checksum | offsets | row | undone | orphan
    where: str       # a file (relative to OUT/store) or a video id
    detail: str
    videos: list[tuple[str, str]] = field(default_factory=list)  # (video_id, modality) it breaks


@dataclass
class VerifyReport:
    out_dir: str
    integrity: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked_shards: int = 0
    checked_rows: int = 0
    repaired: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def broken_videos(self) -> set[tuple[str, str]]:
        return {pair for p in self.problems for pair in p.videos}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file(root: Path, rel: str, sha: str | None, report: VerifyReport) -> np.ndarray | None:
    """The array of one shard file (memory-mapped) when it exists, loads and matches its checksum."""
    path = root / rel
    if not path.is_file():
        report.problems.append(Problem("missing", rel, "the file does not exist"))
        return None
    if sha and _sha256(path) != sha:
        report.problems.append(Problem("checksum", rel, f"sha256 differs from the one recorded at commit ({sha[:12]}…)"))
        return None
    try:
        return np.load(path, mmap_mode="r")
    except Exception as e:  # not an .npy any more: a truncated or overwritten file
        report.problems.append(Problem("shape", rel, f"cannot be read as .npy: {type(e).__name__}: {e}"))
        return None


def _check_shard(root: Path, shard: dict, report: VerifyReport) -> bool:
    rel = shard["file"]
    array = _check_file(root, rel, shard["sha256"], report)
    if array is None:
        return False
    if not shard["sha256"]:
        report.notes.append(f"{rel}: no checksum recorded (committed by an older version)")
    want_dtype = shard["dtype"] or "float16"
    if str(array.dtype) != want_dtype:
        report.problems.append(Problem("dtype", rel, f"dtype {array.dtype}, recorded {want_dtype}"))
        return False
    if shard["layout"] == "pooled":
        if array.shape != (shard["rows"], shard["dim"]):
            report.problems.append(Problem("shape", rel, f"shape {array.shape}, recorded ({shard['rows']}, {shard['dim']})"))
            return False
        return True
    if array.ndim != 2 or array.shape[1] != shard["dim"]:
        report.problems.append(Problem("shape", rel, f"shape {array.shape}, recorded (T, {shard['dim']})"))
        return False
    aux = shard["aux"] or {}
    offsets_rel = rel.replace(".npy", COMPANIONS[0])
    offsets = _check_file(root, offsets_rel, aux.get(offsets_rel), report)
    if offsets is None:
        return False
    if (offsets.shape != (shard["rows"] + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0)
            or offsets[-1] != len(array)):
        report.problems.append(Problem("offsets", offsets_rel, f"offsets do not split {len(array)} rows into "
                                                               f"{shard['rows']} videos"))
        return False
    times_rel = rel.replace(".npy", COMPANIONS[1])
    if times_rel in aux:
        times = _check_file(root, times_rel, aux[times_rel], report)
        if times is None:
            return False
        if times.shape != (len(array), 2):
            report.problems.append(Problem("shape", times_rel, f"times shape {times.shape}, want ({len(array)}, 2)"))
            return False
    return True


def _check_rows(catalog: Catalog, shards: dict[str, dict], bad: dict[str, Problem], report: VerifyReport) -> None:
    """Every feature row inside a known shard; the videos of a bad shard join its problem."""
    for vid, modality, layout, shard_id, row in catalog.feature_rows():
        report.checked_rows += 1
        shard = shards.get(shard_id)
        if shard is None:
            report.problems.append(Problem("row", vid, f"{modality}/{layout} points at shard {shard_id}, which is not "
                                                       "in the catalog", [(vid, modality)]))
        elif not 0 <= row < shard["rows"]:
            report.problems.append(Problem("row", vid, f"{modality}/{layout} row {row} is outside {shard['file']} "
                                                       f"({shard['rows']} rows)", [(vid, modality)]))
        elif shard_id in bad:
            bad[shard_id].videos.append((vid, modality))


def _check_done(catalog: Catalog, report: VerifyReport) -> None:
    layouts: dict[str, set[str]] = {}
    for m, layout, _dim, _meta in catalog.modality_rows():
        layouts.setdefault(m, set()).add(layout)
    have: dict[tuple[str, str], set[str]] = {}
    for vid, m, layout, _sid, _row in catalog.feature_rows():
        have.setdefault((vid, m), set()).add(layout)
    for m, want in layouts.items():
        for vid, status in catalog.stage_status(f"extract:{m}").items():
            if status == "done" and not want <= have.get((vid, m), set()):
                lacking = sorted(want - have.get((vid, m), set()))
                report.problems.append(Problem("undone", vid, f"extract:{m} is done but it has no {'/'.join(lacking)} "
                                                              "features", [(vid, m)]))


def _orphans(store: FeatureStore, shards: list[dict], catalog: Catalog) -> list[Path]:
    used = {sid for _, _, _, sid, _ in catalog.feature_rows()}
    known = set()
    for s in shards:
        if s["shard_id"] in used:
            known.add(s["file"])
            known |= {s["file"].replace(".npy", suffix) for suffix in COMPANIONS}
    if not store.root.exists():
        return []
    return sorted(p for p in store.root.rglob("*") if p.is_file() and str(p.relative_to(store.root)) not in known)


def verify_output(out_dir: str | Path, repair: bool = False) -> VerifyReport:
    out_dir = Path(out_dir)
    report = VerifyReport(str(out_dir))
    path = out_dir / "catalog.sqlite"
    if not path.exists():
        report.problems.append(Problem("catalog", str(path), "no catalog: not an output folder (run scan first)"))
        return report
    try:
        catalog = Catalog(path, readonly=not repair)
    except sqlite3.DatabaseError as e:
        report.problems.append(Problem("catalog", str(path), f"cannot be opened: {e}"))
        return report
    try:
        try:
            report.integrity = catalog.integrity_check()
            shards = catalog.shard_rows()
        except sqlite3.DatabaseError as e:
            report.integrity = report.integrity or [str(e)]
            shards = []
        if report.integrity != ["ok"]:
            report.problems.append(Problem("catalog", str(path), "sqlite integrity_check: " + "; ".join(report.integrity[:5])))
            return report  # nothing below can be trusted; repair must not touch it
        store = FeatureStore(out_dir, catalog)
        bad: dict[str, Problem] = {}
        for shard in shards:
            report.checked_shards += 1
            before = len(report.problems)
            if not _check_shard(store.root, shard, report):
                bad[shard["shard_id"]] = report.problems[before]
        _check_rows(catalog, {s["shard_id"]: s for s in shards}, bad, report)
        _check_done(catalog, report)
        orphans = _orphans(store, shards, catalog)
        report.problems += [Problem("orphan", str(p.relative_to(store.root)), "no feature row points to it")
                            for p in orphans]
        if repair:
            report.repaired = _repair(catalog, store, report)
        return report
    finally:
        catalog.close()


def _repair(catalog: Catalog, store: FeatureStore, report: VerifyReport) -> dict:
    """Broken (video, modality) pairs -> pending; then what nothing points to is removed."""
    pending = catalog.mark_pending(report.broken_videos())
    removed = store.collect_garbage()
    return {"marked_pending": pending, "removed_files": [str(p.relative_to(store.root)) for p in removed]}


def print_report(report: VerifyReport, console) -> bool:
    """The report as rich tables; True when the folder is clean."""
    from rich.table import Table

    integrity = "; ".join(report.integrity[:3]) or "not run"
    console.print(f"verify {report.out_dir}: catalog integrity_check {integrity}; {report.checked_shards} shards, "
                  f"{report.checked_rows} feature rows checked")
    for note in report.notes[:5]:
        console.print(f"[yellow]note:[/] {note}")
    if report.problems:
        table = Table(title=f"{len(report.problems)} problems")
        for col in ("kind", "where", "detail", "videos"):
            table.add_column(col, overflow="fold")
        for p in report.problems:
            vids = ", ".join(sorted({v for v, _ in p.videos})[:5]) + (" …" if len(p.videos) > 5 else "")
            table.add_row(p.kind, p.where, p.detail, vids)
        console.print(table)
    if report.repaired:
        console.print(f"repaired: {report.repaired['marked_pending']} (video, modality) pairs marked pending, "
                      f"{len(report.repaired['removed_files'])} files removed; run `extract` to redo them")
    elif report.problems and any(p.kind != "catalog" for p in report.problems):
        console.print("run `verify --repair` to remove the orphans and mark the broken videos pending")
    return report.ok
