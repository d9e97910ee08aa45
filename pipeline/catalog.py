"""The catalog: one sqlite database per output folder, the single source of truth of a run.

The tables and their migrations are in `pipeline.catalog_schema`.

Only one process writes (the pipeline's main process holds `OutputLock`); workers never touch
sqlite. Shard rows and the stage statuses of the videos in them are committed in one
transaction (`commit_shard`), so a crash leaves either both or neither.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .catalog_schema import MIGRATIONS, SCHEMA


@dataclass
class VideoRow:
    video_id: str
    path: str | None = None
    size: int | None = None
    mtime: float | None = None
    content_hash: str | None = None
    title: str | None = None
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    subtitles: list | None = None   # [(start_s, end_s, text), ...] from a sidecar .srt/.vtt/.ass


@dataclass
class StageUpdate:
    video_id: str
    stage: str
    status: str
    error: str | None = None


class OutputLock:
    """An exclusive advisory lock on the output folder, so two runs cannot write it at once.
    The kernel drops it when the process dies (even by SIGKILL), so no stale lock survives."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise RuntimeError(
                f"another run is using {self.path.parent} (pid {holder}); wait for it to finish "
                "or use another --out folder") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Catalog:
    """`Catalog(path)` opens (creating and migrating) the catalog for writing; the process
    holding `OutputLock` is the only writer. `Catalog(path, readonly=True)` opens it with
    sqlite's `mode=ro`: for `status`, `evaluate`, `verify`, `predict` while an `extract` writes
    the same folder. It takes no lock and never blocks the writer; in WAL mode each query sees
    the last committed transaction, so a reader sees whole shards or none."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path} does not exist (run scan or extract first)")
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions ourselves (`transaction`), so a multi-table
        # commit is one BEGIN ... COMMIT. WAL keeps readers (e.g. `status`) off the writer's way.
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        for table, column, decl in MIGRATIONS:
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def integrity_check(self) -> list[str]:
        """sqlite's own `PRAGMA integrity_check`: ["ok"] for a sound database file."""
        return [row[0] for row in self.conn.execute("PRAGMA integrity_check")]

    def close(self) -> None:
        self.conn.close()

    # -- transactions ---------------------------------------------------------------------
    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, *_):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def transaction(self) -> "_Tx":
        return Catalog._Tx(self.conn)

    # -- videos ---------------------------------------------------------------------------
    def upsert_videos(self, rows: Iterable[VideoRow]) -> int:
        now = time.time()
        data = [(r.video_id, r.path, r.size, r.mtime, r.content_hash, r.title, json.dumps(list(r.labels)),
                 r.split, None if r.subtitles is None else json.dumps([list(s) for s in r.subtitles]), now)
                for r in rows]
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO videos (video_id, path, size, mtime, content_hash, title, labels, split, subtitles,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(video_id) DO UPDATE SET path=excluded.path,"
                " size=excluded.size, mtime=excluded.mtime, content_hash=excluded.content_hash,"
                " title=excluded.title, labels=excluded.labels, split=excluded.split,"
                " subtitles=excluded.subtitles, deleted=0,"
                " updated_at=excluded.updated_at", data)
        return len(data)

    def videos(self, include_deleted: bool = False, video_id: str | None = None) -> list[dict]:
        where = [] if include_deleted else ["deleted=0"]
        args = []
        if video_id is not None:
            where, args = where + ["video_id=?"], [video_id]
        sql = "SELECT * FROM videos" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY video_id"
        cur = self.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row))
            item["labels"] = json.loads(item["labels"])
            for key in ("decode_warnings", "subtitles"):  # JSON columns; NULL = none
                item[key] = json.loads(item[key]) if item.get(key) else None
            out.append(item)
        return out

    def video(self, video_id: str) -> dict | None:
        rows = self.videos(include_deleted=True, video_id=video_id)
        return rows[0] if rows else None

    def mark_deleted(self, video_ids: Iterable[str]) -> None:
        with self.transaction() as c:
            c.executemany("UPDATE videos SET deleted=1, updated_at=? WHERE video_id=?",
                          [(time.time(), v) for v in video_ids])

    def forget_outputs(self, video_ids: Iterable[str]) -> None:
        """A video's content changed: its stage statuses and feature locations no longer hold."""
        ids = [(v,) for v in video_ids]
        with self.transaction() as c:
            c.executemany("DELETE FROM stages WHERE video_id=?", ids)
            c.executemany("DELETE FROM features WHERE video_id=?", ids)
            c.executemany("DELETE FROM segments WHERE video_id=?", ids)
            c.executemany("DELETE FROM feature_info WHERE video_id=?", ids)

    def record_decodes(self, decoded: Iterable[tuple] = (), failed: Iterable[tuple[str, str]] = ()) -> None:
        """Decode outcomes in one transaction: `decoded` rows are (video_id, duration, fps, width,
        height, has_audio[, warnings]) and mark the stage done (warnings: `Clip.warnings`, what a
        salvaged decode lost, stored as JSON in decode_warnings; NULL when nothing was lost);
        `failed` rows are (video_id, reason)."""
        decoded, failed = list(decoded), list(failed)
        with self.transaction() as c:
            self.set_stages([StageUpdate(vid, "decode", "done") for vid, *_ in decoded] +
                            [StageUpdate(vid, "decode", "failed", reason) for vid, reason in failed], conn=c)
            c.executemany("UPDATE videos SET duration=?, fps=?, width=?, height=?, has_audio=?, decode_warnings=?"
                          " WHERE video_id=?",
                          [(*facts[:4], int(facts[4]), json.dumps(facts[5]) if len(facts) > 5 and facts[5] else None,
                            vid) for vid, *facts in decoded])

    # -- labels ---------------------------------------------------------------------------
    def set_class_names(self, names: list[str]) -> None:
        self.set_meta("class_names", list(names))

    def class_names(self) -> list[str]:
        fixed = self.get_meta("class_names")
        if fixed:
            return list(fixed)
        return sorted({label for v in self.videos() for label in v["labels"]})

    def labeled_videos(self) -> list[tuple[str, list[str], str | None]]:
        return [(v["video_id"], v["labels"], v["split"]) for v in self.videos()]

    def set_meta(self, key: str, value) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- stages ---------------------------------------------------------------------------
    def set_stages(self, updates: Iterable[StageUpdate], conn=None) -> None:
        data = [(u.video_id, u.stage, u.status, u.error, time.time()) for u in updates]
        sql = "INSERT OR REPLACE INTO stages (video_id, stage, status, error, updated_at) VALUES (?,?,?,?,?)"
        if conn is not None:
            conn.executemany(sql, data)
        else:
            with self.transaction() as c:
                c.executemany(sql, data)

    def stage_status(self, stage: str) -> dict[str, str]:
        return dict(self.conn.execute("SELECT video_id, status FROM stages WHERE stage=?", (stage,)).fetchall())

    def stage_reasons(self, stage: str) -> dict[str, tuple[str, str | None]]:
        """{video_id: (status, error)} of one stage."""
        return {v: (s, e) for v, s, e in self.conn.execute(
            "SELECT video_id, status, error FROM stages WHERE stage=?", (stage,))}

    def stage_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        rows = self.conn.execute(
            "SELECT s.stage, s.status, COUNT(*) FROM stages s JOIN videos v USING (video_id)"
            " WHERE v.deleted=0 GROUP BY s.stage, s.status").fetchall()
        for stage, status, n in rows:
            out.setdefault(stage, {})[status] = n
        return out

    def failures(self) -> list[tuple[str, str, str, str | None]]:
        """(video_id, path, stage, error) of every failed stage of a live video."""
        return self.conn.execute(
            "SELECT s.video_id, v.path, s.stage, s.error FROM stages s JOIN videos v USING (video_id)"
            " WHERE s.status='failed' AND v.deleted=0 ORDER BY s.video_id, s.stage").fetchall()

    # -- store bookkeeping (called by pipeline.store) --------------------------------------
    def commit_shard(self, shard_id: str, modality: str, layout_files: dict[str, dict],
                     video_rows: list[tuple[str, int]], stage_updates: list[StageUpdate],
                     segments: dict[str, list] | None = None, infos: dict[str, dict] | None = None) -> None:
        """Record shard files ({layout: {"file", "rows", "dim", "dtype", "sha256", "aux"}}, aux =
        {companion file: sha256}), where each video's features live, the stage statuses, the
        videos' text segments ({video_id: [(start_s, end_s, text), ...]}) and the facts the
        extractor found ({video_id: {"language": "en"}}), all in one transaction."""
        now = time.time()
        with self.transaction() as c:
            for layout, f in layout_files.items():
                c.execute("INSERT INTO shards (shard_id, modality, layout, file, rows, dim, created_at, dtype, sha256, aux)"
                          " VALUES (?,?,?,?,?,?,?,?,?,?)",
                          (f"{shard_id}:{layout}", modality, layout, f["file"], f["rows"], f["dim"], now,
                           f.get("dtype"), f.get("sha256"), json.dumps(f.get("aux") or {})))
                c.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?)",
                              [(vid, modality, layout, f"{shard_id}:{layout}", row) for vid, row in video_rows])
            for vid, segs in (segments or {}).items():
                c.execute("DELETE FROM segments WHERE video_id=? AND modality=?", (vid, modality))
                c.executemany("INSERT INTO segments VALUES (?,?,?,?,?,?)",
                              [(vid, modality, i, float(a), float(b), str(t)) for i, (a, b, t) in enumerate(segs)])
            c.executemany("DELETE FROM feature_info WHERE video_id=? AND modality=?", [(v, modality) for v, _ in video_rows])
            c.executemany("INSERT INTO feature_info VALUES (?,?,?)",
                          [(vid, modality, json.dumps(info)) for vid, info in (infos or {}).items()])
            self.set_stages(stage_updates, conn=c)

    def feature_info(self, modality: str) -> dict[str, dict]:
        """{video_id: facts the extractor recorded with the video's features} (ASR: language)."""
        return {vid: json.loads(info) for vid, info in self.conn.execute(
            "SELECT video_id, info FROM feature_info WHERE modality=?", (modality,))}

    def segments(self, video_id: str, modality: str) -> list[tuple[float, float, str]]:
        """The time-stamped text an extractor stored for a video (e.g. its speech transcript)."""
        return [tuple(r) for r in self.conn.execute(
            "SELECT start_s, end_s, text FROM segments WHERE video_id=? AND modality=? ORDER BY idx",
            (video_id, modality))]

    def register_modality(self, modality: str, layout: str, dim: int, meta: dict) -> None:
        with self.transaction() as c:
            old = c.execute("SELECT dim FROM modalities WHERE modality=? AND layout=?", (modality, layout)).fetchone()
            if old and old[0] != dim:
                raise ValueError(f"store modality {modality}/{layout} has dim {old[0]}, new features have {dim}; "
                                 "use a new output folder or a new modality name")
            c.execute("INSERT OR REPLACE INTO modalities VALUES (?,?,?,?)",
                      (modality, layout, dim, json.dumps(meta, default=str)))

    def modality_rows(self) -> list[tuple[str, str, int, dict]]:
        return [(m, l, d, json.loads(meta)) for m, l, d, meta in
                self.conn.execute("SELECT modality, layout, dim, meta FROM modalities ORDER BY modality, layout")]

    def feature_locations(self, modality: str, layout: str) -> Iterator[tuple[str, str, int]]:
        """(video_id, shard file, row) of every live video that has this feature."""
        yield from self.conn.execute(
            "SELECT f.video_id, s.file, f.row FROM features f JOIN shards s USING (shard_id)"
            " JOIN videos v USING (video_id) WHERE f.modality=? AND f.layout=? AND v.deleted=0"
            " ORDER BY f.video_id", (modality, layout))

    def drop_unreferenced_shards(self) -> int:
        """Forget shards no video points to any more (all their rows rewritten by a later run, as
        a re-completion does); their files are then garbage for `FeatureStore.collect_garbage`.
        Rows first, files after: a run killed in between leaves only unknown files behind."""
        with self.transaction() as c:
            return c.execute("DELETE FROM shards WHERE shard_id NOT IN (SELECT DISTINCT shard_id FROM features)").rowcount

    def shard_files(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT file FROM shards")}

    # -- integrity (called by pipeline.verify) ---------------------------------------------
    def shard_rows(self) -> list[dict]:
        """Every committed shard: shard_id, modality, layout, file, rows, dim and, where the
        catalog is new enough to record them, dtype, sha256 and aux ({companion: sha256})."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(shards)")}
        cols = [c for c in ("shard_id", "modality", "layout", "file", "rows", "dim", "dtype", "sha256", "aux")
                if c in have]
        out = []
        for row in self.conn.execute(f"SELECT {', '.join(cols)} FROM shards ORDER BY file"):
            item = {"dtype": None, "sha256": None, "aux": None, **dict(zip(cols, row))}
            item["aux"] = json.loads(item["aux"]) if item["aux"] else None
            out.append(item)
        return out

    def feature_rows(self) -> list[tuple[str, str, str, str, int]]:
        """(video_id, modality, layout, shard_id, row) of every feature location, deleted videos too."""
        return self.conn.execute("SELECT video_id, modality, layout, shard_id, row FROM features"
                                 " ORDER BY video_id, modality, layout").fetchall()

    def mark_pending(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Forget the features of (video_id, modality) pairs and set their `extract:<modality>`
        stage pending (no status row, as before its first extract), in one transaction: the
        next `extract` redoes exactly them."""
        pairs = sorted(set(pairs))
        with self.transaction() as c:
            c.executemany("DELETE FROM features WHERE video_id=? AND modality=?", pairs)
            c.executemany("DELETE FROM stages WHERE video_id=? AND stage=?", [(v, f"extract:{m}") for v, m in pairs])
        return len(pairs)
