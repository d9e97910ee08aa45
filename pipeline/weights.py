"""The weights manager: which pretrained files the configured extractors need, where they go,
whether they are there, and fetching them ahead of time (`run_pipeline.py weights list|fetch|verify`).

Each extractor family declares its files with a classmethod (no instance needed, so listing never
loads a network):

    class ResNetExtractor(Extractor):
        @classmethod
        def weights_spec(cls, cfg) -> list[WeightFile]:      # cfg = cfg.extractors.<name>
            return torchvision_weights(f"resnet{cfg.get('depth', 50)}", cfg.get("weights", "IMAGENET1K_V2"))

`Extractor.weights_spec` (extractors/base.py) returns [] by default: a family that learns everything
from the corpus (Doc2Vec, the audio DAE) needs nothing. Helpers for the usual cases:
`torchvision_weights`, `torch_file(url)`, `hf_repo(repo_id)`, `local_file(path)`, `package(name)`.

Where files live (one folder can hold both kinds, so `--to DIR` then `--weights-dir DIR` works):
  * kind "torch": <TORCH_HOME>/hub/checkpoints/<file> (torch.hub.get_dir()), the sha256 prefix in
    the file name checked (torchvision / torch hub convention: resnet50-11ad3fa6.pth);
  * kind "hf": a Hugging Face repo in the hub cache, <HF_HOME>/hub/models--org--name, pinned to a
    revision;
  * kind "file" / "package": the user's own state dict, a pip package that ships weights: listed
    and verified, never downloaded.
Downloads stream through `pipeline.io.atomic_write` with a rich progress bar and a running sha256:
a checksum mismatch or a short read raises and leaves no file behind. `fetch --to DIR` also writes
DIR/weights.json with every file's full sha256, which `verify` checks on the offline machine.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import UsageError, UserError
from .io import atomic_write, write_json

KINDS = ("torch", "hf", "file", "package")
HASH_RE = re.compile(r"-([a-f0-9]{8,64})\.")
MANIFEST = "weights.json"


class ChecksumMismatch(UserError, ValueError):
    """A downloaded or present file does not have the published sha256."""


class IncompleteDownload(UserError, IOError):
    """The server closed the connection before sending the whole file."""


@dataclass
class WeightFile:
    """One pretrained file (or Hugging Face repo) a configured extractor needs."""

    name: str                    # file name (kind torch), repo id (hf), path (file), pip name (package)
    kind: str = "torch"
    url: str | None = None       # where `fetch` downloads it from (torch only)
    sha256: str | None = None    # full digest or a prefix (torchvision file names carry 8 hex digits)
    size: int | None = None      # bytes, when published
    revision: str | None = None  # hf: branch, tag or commit
    used_by: str = ""            # the modality (or modalities) that load it
    optional: bool = False       # used when present (e.g. RAFT for flow: auto), not an error when absent
    files: tuple = ()            # hf: only these files of the repo (glob patterns; () = the whole snapshot)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"WeightFile kind must be one of {KINDS}, got {self.kind!r}")


# -- declarations, used by the extractors' weights_spec -----------------------------------------
def torch_file(url: str, size: int | None = None, sha256: str | None = None, optional: bool = False) -> WeightFile:
    """A torch hub checkpoint downloaded from `url`; the sha256 prefix comes from the file name."""
    name = os.path.basename(url)
    m = HASH_RE.search(name)
    return WeightFile(name=name, url=url, sha256=sha256 or (m.group(1) if m else None), size=size, optional=optional)


def hf_repo(repo_id: str, revision: str | None = None, optional: bool = False, files=()) -> WeightFile:
    return WeightFile(name=repo_id, kind="hf", revision=revision or "main", optional=optional, files=tuple(files))


def local_file(path: str | Path) -> WeightFile:
    return WeightFile(name=str(Path(path).expanduser()), kind="file")


def package(name: str) -> WeightFile:
    return WeightFile(name=name, kind="package")


def torchvision_weights(arch: str, weights: str, optional: bool = False) -> list[WeightFile]:
    """The file behind torchvision `arch`'s Weights enum member `weights` (e.g. resnet50,
    IMAGENET1K_V2); [] for `random`; a local state dict when `weights` is not an enum name."""
    import torchvision

    weights = str(weights)
    if weights == "random":
        return []
    enum = torchvision.models.get_model_weights(arch)
    if weights not in enum.__members__:
        return [local_file(weights)]
    w = enum[weights]
    mb = w.meta.get("_file_size")
    return [torch_file(w.url, size=int(mb * 1e6) if mb else None, optional=optional)]


# -- what the config needs -----------------------------------------------------------------------
def collect(cfg, modalities: Iterable[str] | None = None) -> list[WeightFile]:
    """Every file the extractors of `cfg.extract.modalities` (or `modalities`) declare, once each
    (a file two modalities share lists both in `used_by`)."""
    from extractors import FAMILIES, family_class

    found: dict[tuple[str, str], WeightFile] = {}
    for name in list(modalities or cfg.extract.modalities):
        ecfg = cfg.extractors.get(name)
        if ecfg is None:
            raise UsageError(f"modality {name!r} has no configs/extractors/{name}.yaml")
        family = family_class(ecfg.get("family")) if ecfg.get("family") in FAMILIES else None
        if family is None:
            raise UsageError(f"extractor {name!r}: family {ecfg.get('family')!r} is not one of {sorted(FAMILIES)}")
        for wf in family.weights_spec(ecfg):
            key = (wf.kind, wf.name)
            if key in found:
                found[key].used_by += f", {name}"
            else:
                wf.used_by = name
                found[key] = wf
    return list(found.values())


# -- where files live ----------------------------------------------------------------------------
def use_weights_dir(folder: str | Path) -> None:
    """Make `folder` the torch hub and Hugging Face home of this process (TORCH_HOME, HF_HOME), as a
    folder filled by `weights fetch --to DIR`. Call it before transformers / huggingface_hub are
    imported (they read HF_HOME once); the CLI does this for `--weights-dir`."""
    folder = str(Path(folder).expanduser().resolve())
    os.environ["TORCH_HOME"] = folder
    os.environ["HF_HOME"] = folder
    os.environ.pop("HF_HUB_CACHE", None)
    os.environ.pop("HUGGINGFACE_HUB_CACHE", None)


def torch_dir(root: str | Path | None = None) -> Path:
    """The checkpoints folder: <root>/hub/checkpoints, or the torch hub's own one."""
    if root is not None:
        return Path(root) / "hub" / "checkpoints"
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_dir(root: str | Path | None = None) -> Path:
    """The Hugging Face hub cache: <root>/hub, else $HF_HOME/hub (default ~/.cache/huggingface/hub)."""
    if root is not None:
        return Path(root) / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def location(wf: WeightFile, root: str | Path | None = None) -> Path:
    if wf.kind == "torch":
        return torch_dir(root) / wf.name
    if wf.kind == "hf":
        return hf_dir(root) / ("models--" + wf.name.replace("/", "--"))
    if wf.kind == "package":
        return _package_path(wf.name) or Path(f"<pip package {wf.name}>")
    return Path(wf.name)


def _package_path(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name.replace("-", "_"))
    return Path(spec.origin).parent if spec and spec.origin else None


def _hf_snapshot(wf: WeightFile, root=None, download: bool = False) -> Path | None:
    """The local snapshot folder of an hf repo (downloading it when `download`), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(wf.name, revision=wf.revision, cache_dir=str(hf_dir(root)),
                                      local_files_only=not download, allow_patterns=list(wf.files) or None))
    except Exception:  # LocalEntryNotFoundError offline, or any hub error: the repo is not here
        if download:
            raise
        return None


def is_present(wf: WeightFile, root=None) -> bool:
    if wf.kind == "hf":
        return _hf_snapshot(wf, root) is not None
    if wf.kind == "package":
        return _package_path(wf.name) is not None
    return location(wf, root).is_file()


# -- checking ------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_digest(digest: str, expected: str | None, what: str) -> None:
    if expected and not digest.startswith(expected.lower()):
        raise ChecksumMismatch(f"checksum mismatch for {what}: sha256 {digest[:16]}..., expected "
                               f"{expected[:16]}...; the file is corrupt or not the published one")


def verify(wf: WeightFile, root=None, manifest: dict | None = None) -> tuple[str, str]:
    """('ok' | 'missing' | 'bad', detail): re-hash a present file against its published prefix and
    against the full digest `fetch --to` recorded in the folder's weights.json, when there is one."""
    if not is_present(wf, root):
        return ("missing", str(location(wf, root)))
    if wf.kind in ("hf", "package"):
        return ("ok", str(_hf_snapshot(wf, root) if wf.kind == "hf" else location(wf, root)))
    path = location(wf, root)
    digest = sha256_file(path)
    recorded = (manifest or {}).get(wf.name, {}).get("sha256")
    try:
        check_digest(digest, wf.sha256, str(path))
        check_digest(digest, recorded, f"{path} (recorded in {MANIFEST})")
    except ChecksumMismatch as e:
        return ("bad", str(e))
    return ("ok", digest)


def read_manifest(root=None) -> dict:
    import json

    base = Path(root) if root is not None else torch_dir().parent.parent
    path = base / MANIFEST
    return json.loads(path.read_text())["files"] if path.exists() else {}


# -- downloading ---------------------------------------------------------------------------------
def download(url: str, dest: str | Path, sha256: str | None = None, console=None, progress: bool = True,
             timeout_s: float = 30.0, on_chunk: Callable[[int, int | None], None] | None = None) -> Path:
    """Stream `url` into `dest` atomically with a rich progress bar (file name, bytes, speed, ETA).
    The sha256 (full or prefix) is checked before the file gets its name: a mismatch raises
    ChecksumMismatch and a connection closed early raises IncompleteDownload, both leaving nothing
    at `dest`. `on_chunk(received, total)` is called after every block (tests, other front-ends)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    dest = Path(dest)
    req = urllib.request.Request(url, headers={"User-Agent": "microvideo-pipeline"})
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with urllib.request.urlopen(req, timeout=timeout_s) as resp, atomic_write(dest, "wb") as f, \
            Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        total = int(resp.headers["Content-Length"]) if resp.headers.get("Content-Length") else None
        task = bar.add_task(dest.name, total=total)
        h, received = hashlib.sha256(), 0
        while True:
            try:
                block = resp.read(1 << 16)
            except http.client.IncompleteRead as e:
                raise IncompleteDownload(f"download of {url} was cut off after {received + len(e.partial)} "
                                         f"bytes; nothing was written") from None
            if not block:
                break
            f.write(block)
            h.update(block)
            received += len(block)
            bar.update(task, completed=received)
            if on_chunk:
                on_chunk(received, total)
        if total is not None and received != total:
            raise IncompleteDownload(f"download of {url} stopped at {received} of {total} bytes; nothing was written")
        check_digest(h.hexdigest(), sha256, f"{url}")
    return dest


def fetch(files: list[WeightFile], root=None, console=None, progress: bool = True) -> list[tuple[WeightFile, str]]:
    """Download what is missing (torch files and hf repos) into the default folders or into `root`;
    returns [(file, "present" | "downloaded" | "not downloadable: ..." | "failed: ...")]. With `root`,
    DIR/weights.json records every file's full sha256 for `verify` on the offline machine."""
    results = []
    for wf in files:
        try:
            if is_present(wf, root):
                results.append((wf, "present"))
            elif wf.kind == "torch" and wf.url:
                download(wf.url, location(wf, root), wf.sha256, console=console, progress=progress)
                results.append((wf, "downloaded"))
            elif wf.kind == "hf":
                _hf_snapshot(wf, root, download=True)
                results.append((wf, "downloaded"))
            else:
                results.append((wf, f"not downloadable: put it at {location(wf, root)}"))
        except Exception as e:  # one failed file is reported; the others are still fetched
            results.append((wf, f"failed: {type(e).__name__}: {e}"))
    if root is not None:
        write_manifest(files, root)
    return results


def write_manifest(files: list[WeightFile], root) -> Path:
    entries = {}
    for wf in files:
        path = location(wf, root)
        entry = asdict(wf)
        if wf.kind == "torch" and path.is_file():
            entry.update(sha256=sha256_file(path), size=path.stat().st_size)
        entries[wf.name] = entry
    return write_json(Path(root) / MANIFEST, {"files": entries})


def describe(wf: WeightFile, root=None) -> dict:
    """One row of `weights list`."""
    size = f"{wf.size / 1e6:.1f} MB" if wf.size else "?"
    check = wf.revision if wf.kind == "hf" else (wf.sha256 or "-")
    name = f"{wf.name}: {' | '.join(wf.files)}" if wf.files else wf.name
    return {"used by": wf.used_by, "file": name, "kind": wf.kind, "size": size, "sha256 / revision": check,
            "folder": str(location(wf, root).parent), "present": "yes" if is_present(wf, root) else
            ("no (optional)" if wf.optional else "no")}


# -- the CLI's tables (run_pipeline.py weights list|fetch|verify) ---------------------------------
def print_list(files: list[WeightFile], root=None, console=None) -> int:
    """`weights list`: a table of what the config needs; returns how many required files are missing."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = [describe(wf, root) for wf in files]
    table = Table(title=f"{len(files)} weight files for the configured extractors")
    for col in ("used by", "file", "kind", "size", "sha256 / revision", "present"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in ("used by", "file", "kind", "size", "sha256 / revision", "present")))
    console.print(table)
    for folder in dict.fromkeys(r["folder"] for r in rows):  # the folders, once each, in full
        kinds = sorted({r["kind"] for r in rows if r["folder"] == folder})
        console.print(f"{'/'.join(kinds)} files go in {folder}", soft_wrap=True)
    return sum(r["present"] == "no" for r in rows)


def print_verify(files: list[WeightFile], root=None, console=None) -> int:
    """`weights verify`: re-hash every present file; returns the number of bad or missing required files."""
    from rich.console import Console

    console = console or Console()
    manifest = read_manifest(root)
    problems = 0
    for wf in files:
        state, detail = verify(wf, root, manifest)
        colour = {"ok": "green", "missing": "yellow", "bad": "red"}[state]
        console.print(f"[{colour}]{state:8s}[/] {wf.name}  {detail}")
        problems += state == "bad" or (state == "missing" and not wf.optional)
    return problems


def print_fetch(files: list[WeightFile], root=None, console=None, progress: bool = True) -> int:
    """`weights fetch`: download what is missing; returns the number of required files still absent."""
    from rich.console import Console

    console = console or Console()
    failed = 0
    for wf, state in fetch(files, root, console=console, progress=progress):
        bad = state.startswith(("failed", "not downloadable"))
        console.print(f"[{'red' if bad else 'green'}]{wf.name}[/]: {state}")
        failed += bad and not wf.optional
    if root is not None:
        console.print(f"{root} is ready to copy: use it there with --weights-dir {root} "
                      f"(or TORCH_HOME={root} HF_HOME={root})")
    return failed
