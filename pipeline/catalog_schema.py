"""The catalog's sqlite schema (`pipeline.catalog`) and the columns added since.

Tables
    videos      one row per video: stable id (path relative to the videos folder), path, size,
                mtime, content hash, title, labels (JSON list), split, decode facts, deleted flag
    stages      (video_id, stage) -> pending | done | failed | missing, with the error text;
                stages are "decode" and "extract:<modality>" ("missing" = the video lacks that
                modality, e.g. a silent clip has no audio: not a failure)
    shards      every committed shard file of the feature store
    features    (video_id, modality, layout) -> (shard, row): where each feature lives
    modalities  (modality, layout) -> dim and the metadata of what produced it
    meta        key -> JSON value (class vocabulary, ...)
    segments    time-stamped text an extractor made (speech transcripts), committed with its shard
    feature_info per-video facts an extractor found (the language Whisper detected), likewise
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    video_id     TEXT PRIMARY KEY,
    path         TEXT,
    size         INTEGER,
    mtime        REAL,
    content_hash TEXT,
    title        TEXT,
    labels       TEXT NOT NULL DEFAULT '[]',
    split        TEXT,
    deleted      INTEGER NOT NULL DEFAULT 0,
    duration     REAL,
    fps          REAL,
    width        INTEGER,
    height       INTEGER,
    has_audio    INTEGER,
    updated_at   REAL,
    decode_warnings TEXT,
    subtitles    TEXT
);
CREATE TABLE IF NOT EXISTS stages (
    video_id   TEXT NOT NULL,
    stage      TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'missing')),
    error      TEXT,
    updated_at REAL,
    PRIMARY KEY (video_id, stage)
);
CREATE TABLE IF NOT EXISTS shards (
    shard_id   TEXT PRIMARY KEY,
    modality   TEXT NOT NULL,
    layout     TEXT NOT NULL,
    file       TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    dim        INTEGER NOT NULL,
    created_at REAL,
    dtype      TEXT,
    sha256     TEXT,
    aux        TEXT
);
CREATE TABLE IF NOT EXISTS features (
    video_id TEXT NOT NULL,
    modality TEXT NOT NULL,
    layout   TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    row      INTEGER NOT NULL,
    PRIMARY KEY (video_id, modality, layout)
);
CREATE TABLE IF NOT EXISTS modalities (
    modality TEXT NOT NULL,
    layout   TEXT NOT NULL,
    dim      INTEGER NOT NULL,
    meta     TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (modality, layout)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- time-stamped text an extractor made (speech transcripts: `speech_text`), committed with its shard
CREATE TABLE IF NOT EXISTS segments (
    video_id TEXT NOT NULL, modality TEXT NOT NULL, idx INTEGER NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (video_id, modality, idx)
);
-- per-video facts an extractor found (ASR: {"language": "en"}), committed with its shard
CREATE TABLE IF NOT EXISTS feature_info (
    video_id TEXT NOT NULL, modality TEXT NOT NULL, info TEXT NOT NULL,
    PRIMARY KEY (video_id, modality)
);
CREATE INDEX IF NOT EXISTS features_by_modality ON features (modality, layout);
CREATE INDEX IF NOT EXISTS stages_by_stage ON stages (stage, status);
"""


# Columns added after a table's first release: (table, column, declaration). An older catalog
# gains them when a writer opens it (NULL in old rows; e.g. shards written before checksums
# were recorded have sha256 NULL, which `verify` reports as "not recorded", not as damage).
MIGRATIONS = [
    ("shards", "dtype", "TEXT"),
    ("shards", "sha256", "TEXT"),
    ("shards", "aux", "TEXT"),              # JSON {companion file: sha256} (a sequence shard's offsets, times)
    ("videos", "decode_warnings", "TEXT"),  # JSON {"lost_packets": n, ...}: done, but salvaged
    ("videos", "subtitles", "TEXT"),        # JSON [[start_s, end_s, text], ...] from a sidecar
]
