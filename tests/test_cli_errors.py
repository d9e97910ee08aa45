"""#12.5: every user mistake ends in one red line and an exit status, never a traceback; --debug
and MICROVIDEO_DEBUG=1 bring the traceback back. Through the real CLI (a subprocess each)."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from pipeline.demo import moving_stripes, write_clip


def cli(*args, env=None):
    return run_cli(*args, env={"MICROVIDEO_DEBUG": "", **(env or {})}, timeout=300)


def one_line_error(proc, code: int, *words: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory) -> Path:
    """An output folder whose catalog has one video and no labels."""
    root = tmp_path_factory.mktemp("unlabeled")
    write_clip(root / "videos" / "a.mp4", moving_stripes(8, 32, 48), 25)
    out = root / "out"
    proc = cli("scan", "--videos", root / "videos", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_unknown_config_key_names_the_key_it_meant(tmp_path):
    one_line_error(cli("status", "--out", tmp_path, "train.epoch=5"), 2, "train.epoch", "train.epochs")
    one_line_error(cli("status", "--out", tmp_path, "notakey"), 2, "key=value")


def test_missing_videos_folder(tmp_path):
    one_line_error(cli("--videos", tmp_path / "nope", "--out", tmp_path / "out"), 2, "nope")
    one_line_error(cli("scan", "--videos", tmp_path / "nope", "--out", tmp_path / "out"), 2, "no such folder")


def test_status_of_a_folder_without_a_catalog(tmp_path):
    one_line_error(cli("status", "--out", tmp_path / "empty"), 2, "no catalog", "scan")


def test_mistyped_model(unlabeled):
    one_line_error(cli("train", "--out", unlabeled, "--model", "nmlc"), 2, "unknown model 'nmlc'", "nmcl")


def test_catalog_without_labels(unlabeled):
    one_line_error(cli("train", "--out", unlabeled, "--model", "nmcl", "device=cpu"), 1, "no labeled videos")


def test_evaluate_a_run_that_does_not_exist(unlabeled):
    one_line_error(cli("evaluate", "--out", unlabeled, "--run", "nope", "device=cpu"), 2, "no run 'nope'")


def test_missing_weights_file(unlabeled, tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "hub"), "MICROVIDEO_OFFLINE": "1"}
    proc = cli("extract", "--out", unlabeled, "--no-progress", "extract.modalities=[visual]", "device=cpu", env=env)
    one_line_error(proc, 1, "resnet")


def test_debug_shows_the_traceback(tmp_path):
    for proc in (cli("status", "--out", tmp_path / "empty", "--debug"),
                 cli("--debug", "status", "--out", tmp_path / "empty"),
                 cli("status", "--out", tmp_path / "empty", env={"MICROVIDEO_DEBUG": "1"})):
        assert proc.returncode == 2 and "Traceback" in proc.stderr and "error:" in proc.stderr, proc.stderr
