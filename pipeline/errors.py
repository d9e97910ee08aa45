"""Errors a user can fix, and how the CLI reports them: one red line and an exit status.

    UserError   exit 1  something the inputs cannot do (no labels, features not extracted, ...)
    UsageError  exit 2  what was typed is wrong: an unknown config key, model or run, a missing folder

`run_pipeline.py` prints `error: <message>` for these (and for the project's other own errors:
`WeightsNotFound`, `DecodeError`, a full disk or a read-only folder) instead of a traceback;
`--debug` or MICROVIDEO_DEBUG=1 shows the traceback too. Anything else is a bug: it keeps its
traceback. This module imports nothing heavy: the CLI loads it before torch.
"""
from __future__ import annotations

import errno


class UserError(Exception):
    """A failure the user can act on; the message says what is wrong and what to do."""
    exit_code = 1


class UsageError(UserError, ValueError):
    """Bad usage: an unknown option value, config key, model or run name, a path that is not there."""
    exit_code = 2


class DataError(UserError, ValueError):
    """The data cannot do what was asked (a catalog without labels, a store without a modality)."""


class NotFound(UserError, FileNotFoundError):
    """A file or folder the command needs does not exist (a run, a checkpoint, a videos folder)."""
    exit_code = 2


# The project's own exception types defined in modules that import torch: matched by name so
# that this module (and a failing `scan`) never has to import them.
_BY_NAME = {"WeightsNotFound": 1, "DecodeError": 1, "StoreWriteError": 1, "ConfigKeyError": 2,
            "ConfigAttributeError": 2, "ConfigTypeError": 2, "ValidationError": 2, "GrammarParseError": 2}
_OS_ERRORS = {errno.ENOSPC: 1, errno.EROFS: 1, errno.EACCES: 1, errno.EDQUOT: 1}


def exit_code(e: BaseException) -> int | None:
    """The exit status for a user-facing error, or None for a bug (which keeps its traceback)."""
    if isinstance(e, UserError):
        return e.exit_code
    for cls in type(e).__mro__:
        if cls.__module__.split(".")[0] in ("extractors", "pipeline", "omegaconf") and cls.__name__ in _BY_NAME:
            return _BY_NAME[cls.__name__]
    if isinstance(e, OSError) and e.errno in _OS_ERRORS:
        return _OS_ERRORS[e.errno]
    return None


def one_line(e: BaseException) -> str:
    """The message on one line (OmegaConf appends `full_key: ...` detail lines)."""
    text = str(e).strip() or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("full_key:", "object_type=")))
