"""The structure itself (#13): no import cycle, light commands that import nothing heavy, the
strict config, and tools/shape.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "extractors", "models")


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).glob("*.py")):
            names.append(pkg if f.stem == "__init__" else f"{pkg}.{f.stem}")
    return names


def test_every_module_imports_first_without_a_cycle():
    """Each project module imported first into a fresh module table (the libraries stay loaded):
    a cycle shows up as an ImportError of a partially initialised module."""
    code = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("pipeline", "extractors", "models")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as e:
        if "partially initialized" in str(e) or "circular" in str(e):
            failed[name] = str(e)
    except Exception:
        pass   # an optional dependency missing is not a cycle
print(json.dumps(failed))
"""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(_modules())], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("args", [["--help"], ["scan", "--videos", "{tmp}/videos", "--out", "{tmp}/out"],
                                  ["status", "--out", "{tmp}/out"]])
def test_scan_status_and_help_import_no_torch(args, tmp_path):
    (tmp_path / "videos").mkdir()
    from pipeline.catalog import Catalog

    Catalog(tmp_path / "out" / "catalog.sqlite").close()
    code = """
import sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("HEAVY", sorted(m for m in ("torch", "torchvision", "transformers", "ray", "cv2", "sklearn", "numpy")
                      if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code, *[a.format(tmp=tmp_path) for a in args]], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", proc.stdout


def test_config_is_strict_except_extractor_and_model_sections(tmp_path):
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        load_config(overrides=["train.epoch=5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("decode:\n  num_frame: 8\n")
    with pytest.raises(ConfigError, match="decode.num_frames"):
        load_config(bad)
    cfg = load_config(overrides=["extractors.visual.some_new_option=3", "models.nmcl.another=1", "train.epochs=2"])
    assert cfg.extractors.visual.some_new_option == 3 and cfg.models.nmcl.another == 1 and cfg.train.epochs == 2
    # a preset then a file then overrides, in that order
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train:\n  epochs: 3\n  lr: 0.5\n")
    second.write_text("train:\n  epochs: 4\n")
    cfg = load_config([first, second], ["train.batch_size=8"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (4, 0.5, 8)


def test_every_config_key_the_run_reads_is_declared():
    """Keys other parts read with attribute access must exist in the defaults."""
    cfg = load_config()
    for key in ("run.test_fraction", "run.top_k", "run.threshold", "store.flush_seconds", "train.metric_k",
                "train.stop_after_epochs", "train.ddp_find_unused", "train.use_completed", "extract.ray.actors",
                "importers.yt8m.on_error"):
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]


def test_shape_tool_reports_modules_and_functions():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "shape.py"), "--top", "3"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("modules") and len(lines) == 8 and "()" in lines[-1]
