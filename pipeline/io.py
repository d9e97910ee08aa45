"""The one place that writes files: every output (JSON, arrays, checkpoints, text, downloads)
goes through `atomic_write`, so a reader or a killed run never sees half a file.

The recipe: write a temp file in the same folder (same file system, so the rename is atomic),
flush and fsync it, then `os.replace` it over the final name. A failure on the way (a full disk:
OSError(ENOSPC), a read-only folder) removes the temp file and re-raises; the old file, if any,
is untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on a clean exit it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(obj, indent=2, default=str))
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def save_npy(path: str | Path, array) -> Path:
    import numpy as np

    with atomic_write(path, "wb") as f:
        np.save(f, array)
    return Path(path)


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def is_temp(path: str | Path) -> bool:
    """A leftover of `atomic_write` from a killed process (garbage collection removes these)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")
