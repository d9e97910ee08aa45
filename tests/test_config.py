"""The one config system (pipeline/config.py): the fast YAML reader, strict merges, sections."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pipeline import config as C


@pytest.mark.parametrize("path", sorted(C.CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(C.CONFIG_DIR)))
def test_fast_reader_reads_every_config_as_omegaconf_does(path):
    # defaults() reads the files with PyYAML's C loader for start-up speed; it must give the
    # same values (and types) as OmegaConf.load, file by file.
    assert C.read_yaml(path) == OmegaConf.to_container(OmegaConf.load(path))


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("-1E+3", -1000.0), ("1.5e2", 150.0), (".5", 0.5),
                                         ("5", 5), ("1_000", 1000), ("2026-12-01", "2026-12-01"), ("yes", True)])
def test_fast_reader_scalars_match_omegaconf(tmp_path, text, value):
    f = tmp_path / "x.yaml"
    f.write_text(f"a: {text}\n")
    got, want = C.read_yaml(f)["a"], OmegaConf.to_container(OmegaConf.load(f))["a"]
    assert got == want == value and type(got) is type(want)


def test_unknown_key_names_the_closest_one():
    with pytest.raises(C.ConfigError, match=r"train\.epoch .*did you mean train\.epochs\?"):
        C.load_config(overrides=["train.epoch=5"])


def test_strict_section_fills_defaults_and_rejects_typos(tmp_path):
    ref = tmp_path / "ref.yaml"
    ref.write_text("variant: paper\nhidden: 8\npaper:\n  gate: 1.0\ntuned:\n  gate: 2.0\n  extra: 3\n")
    out = C.strict_section(ref, {"variant": "tuned"}, "models.x", variants=("paper", "tuned"))
    assert out == {"variant": "tuned", "hidden": 8, "gate": 2.0, "extra": 3}
    assert C.strict_section(ref, None, "models.x", variants=("paper", "tuned")) == {"variant": "paper", "hidden": 8, "gate": 1.0}
    with pytest.raises(C.ConfigError, match=r"hiden .*models\.x.*did you mean hidden\?"):
        C.strict_section(ref, {"hiden": 4}, "models.x")
