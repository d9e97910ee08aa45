"""An output folder opened for a stage: its catalog and its feature store, built from the config.

Every stage (scan, extract, complete, train, evaluate, predict, the importers) opens OUT here,
so the store's settings (`store.shard_size`, `store.dtype`, `store.flush_seconds`) are read in
one place. Files are written through `pipeline/io.py`.
"""
from __future__ import annotations

from pathlib import Path

from .catalog import Catalog
from .store import FeatureStore


def open_output(cfg, out_dir: str | Path, readonly: bool = False) -> tuple[Catalog, FeatureStore]:
    """(catalog, store) of OUT; the caller closes the catalog. `readonly`: for readers
    (evaluate, predict on the store, status) that run beside a writer and take no lock."""
    out_dir = Path(out_dir)
    catalog = Catalog(out_dir / "catalog.sqlite", readonly=readonly)
    store = FeatureStore(out_dir, catalog, shard_size=cfg.store.shard_size, dtype=cfg.store.dtype,
                         flush_seconds=cfg.store.flush_seconds)
    return catalog, store
