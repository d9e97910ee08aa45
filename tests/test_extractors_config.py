"""Extractor configs are read strictly (#13 "defaults only in YAML"): each family merges its section
over its reference YAML, so every modality YAML may only set keys the reference declares, a
mistyped key is a one-line ConfigError naming the closest key (through build_extractor and through
the CLI, exit 2, no traceback), and partial dicts get the rest from the YAML. And the family map
imports a family's module only when it is built: `visual` alone pulls in none of the heavy
libraries of the other families."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from extractors import FAMILIES, build_extractor, family_class
from pipeline.config import ConfigError, defaults

MINE = ("resnet", "vggish", "audio_dae", "transformer_text", "doc2vec", "dense_trajectory", "mfcc", "hf_audio",
        "subtitles", "asr", "scene", "nrc_emotion")


def test_every_modality_yaml_sets_only_keys_its_family_declares():
    cfg = defaults()
    for name, section in cfg.extractors.items():
        cls = family_class(section.family)
        resolved = cls.resolved(section)             # raises ConfigError on an undeclared key
        assert resolved["family"] == section.family, name
    for family in MINE:
        cls = family_class(family)
        assert cls.defaults, f"{family} has no reference YAML"
        reference = cls.resolved({})                  # the reference YAML is of this family
        assert reference["family"] == family, family


def test_partial_dict_is_completed_from_the_yaml():
    ext = build_extractor("audio_mfcc", {"family": "mfcc", "n_mfcc": 20})
    assert ext.cfg["n_mfcc"] == 20 and ext.cfg["window_s"] == 1.0 and ext.cfg["silence_dbfs"] == -70
    assert ext.dim == 2 * 20 * 2
    assert "seed" not in ext.cfg and "modality" not in ext.cfg and ext.modality == "audio_mfcc"
    seeded = build_extractor("audio_mfcc", {"family": "mfcc"}, seed=7)
    again = build_extractor("audio_mfcc", seeded.metadata()["config"])   # how predict rebuilds it
    assert seeded.seed == again.seed == 7 and again.cfg == seeded.cfg


@pytest.mark.parametrize("name, section, typo, meant", [
    ("visual", {"family": "resnet", "weights": "random", "dept": 50}, "dept", "depth"),
    ("audio_mfcc", {"family": "mfcc", "n_mfc": 20}, "n_mfc", "n_mfcc"),
    ("speech_text", {"family": "asr", "text": {"modle": "x"}}, "modle", "text.model"),
])
def test_mistyped_key_is_a_one_line_error_naming_the_closest_key(name, section, typo, meant):
    with pytest.raises(ConfigError) as err:
        build_extractor(name, section)
    msg = str(err.value)
    assert "\n" not in msg and typo in msg and f"did you mean {meant}?" in msg and f"extractors.{name}" in msg
    with pytest.raises(ConfigError, match=typo):        # what weights_spec reads the raw section with
        family_class(section["family"]).resolved(section)
    if name != "audio_mfcc":                             # (mfcc has no weight files)
        with pytest.raises(ConfigError, match=typo):
            family_class(section["family"]).weights_spec(section)


def test_mistyped_key_on_the_command_line_exits_2_without_traceback(tmp_path):
    from pipeline.demo import moving_stripes, write_clip

    write_clip(tmp_path / "videos" / "a.mp4", moving_stripes(8, 32, 48), 25)
    out = tmp_path / "out"
    env = {"MICROVIDEO_DEBUG": ""}
    assert run_cli("scan", "--videos", tmp_path / "videos", "--out", out, env=env).returncode == 0
    proc = run_cli("extract", "--out", out, "--no-progress", "extract.modalities=[visual]",
                   "extractors.visual.dept=50", env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dept" in errors[0] and "did you mean depth?" in errors[0], text


HEAVY = ("transformers", "open_clip", "timm", "scenedetect", "librosa")


def test_building_visual_imports_no_other_family():
    """A fresh interpreter builds the resnet family: no heavy library of another family and no
    other family module is imported (FAMILIES maps names to "module:Class", imported on use)."""
    code = ("import json, sys\n"
            "from extractors import build_extractor\n"
            "build_extractor('visual', {'family': 'resnet', 'depth': 18, 'weights': 'random'})\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r or m.startswith('extractors.'))))"
            % (HEAVY,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], loaded
    assert set(loaded) <= {"extractors.base", "extractors.resnet", "extractors.text"}, loaded
    assert all(":" in v for v in FAMILIES.values())
