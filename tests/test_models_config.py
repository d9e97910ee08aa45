"""The models' config (#13): configs/models/<name>.yaml is the only place for defaults, read
strictly by models.build_model (models.resolved_config), with one layout for every model with
variants (shared keys at the top level, one block per variant)."""
from __future__ import annotations

import re

import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

from models import MODELS, VARIANTS, build_model, resolved_config, variant_names
from pipeline.config import CONFIG_DIR, ConfigError, load_config, strict_section

DIMS = {"pooled": {"alpha": 6, "beta": 5}, "sequence": {}}
YAMLS = sorted((CONFIG_DIR / "models").glob("*.yaml"))


def test_every_model_has_a_yaml_and_every_variant_a_block():
    assert sorted(p.stem for p in YAMLS) == sorted(MODELS)
    for name in VARIANTS:
        top = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "models" / f"{name}.yaml"))
        assert top["variant"] == "paper", name
        for v in variant_names(name):
            assert isinstance(top.get(v), dict), f"configs/models/{name}.yaml has no `{v}:` block"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_no_key_is_both_shared_and_a_variants_own(path):
    """A key at the top level is never also in a block: a top-level override is then never
    shadowed by the chosen variant's block (which wins)."""
    top = OmegaConf.to_container(OmegaConf.load(path))
    blocks = {v: top[v] for v in variant_names(path.stem) if isinstance(top.get(v), dict)}
    for v, block in blocks.items():
        assert not set(block) & set(top), f"{path.name}: {sorted(set(block) & set(top))} both at the top and in {v}:"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_key_is_commented(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"\s*([\w-]+):\s*(.*)$", line)
        if not key or line.lstrip().startswith("#"):
            continue
        block_header = key.group(2) == "" and key.group(1) in variant_names(path.stem)
        commented = "#" in key.group(2) or (i and lines[i - 1].lstrip().startswith("#"))
        assert block_header or commented, f"{path.name}:{i + 1}: {line.strip()!r} has no comment"


def test_a_mistyped_key_is_a_one_line_error_naming_the_key_meant():
    cfg = load_config(overrides=["models.nmcl.hiden=64"])     # models.* stay open at load time ...
    with pytest.raises(ConfigError, match="did you mean hidden") as e:   # ... the model reads them strictly
        build_model("nmcl", cfg.models.nmcl, DIMS, 3, False, {})
    assert "\n" not in str(e.value) and "models.nmcl" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean paper.theta_dim"):
        resolved_config("nmcl", {"paper": {"theta_dims": 8}})
    with pytest.raises(ConfigError, match="models.nmcl.tuned.attn_dim"):   # a variant's key at the top level
        resolved_config("nmcl", {"attn_dim": 8})
    with pytest.raises(ConfigError, match="paper, tuned"):
        resolved_config("nmcl", {"variant": "faithful"})


def test_the_class_gets_one_flat_complete_dict_of_the_chosen_variant():
    given = {"variant": "tuned", "hidden": 7, "tuned": {"kl_weight": 0.3}, "paper": {"kl_weight": 5.0}}
    flat = resolved_config("nmcl", given)
    assert flat["kl_weight"] == 0.3 and flat["hidden"] == 7 and flat["proj_dim"] == 256   # the rest from the YAML
    assert not {"paper", "tuned"} & set(flat) and "theta_dim" not in flat                 # only tuned's keys
    assert resolved_config("nmcl", given | {"variant": "paper"})["kl_weight"] == 5.0
    assert resolved_config("nmcl", None) == resolved_config("nmcl", {}) == resolved_config("nmcl", load_config().models.nmcl)
    model = build_model("nmcl", given, {"pooled": {"alpha": 6, "beta": 5}, "sequence": {}}, 3, False, {})
    assert model.kl_weight == 0.3


def test_a_variant_block_wins_over_the_top_level(tmp_path):
    """strict_section's rule, which build_model relies on: the chosen block is lifted over the top level."""
    (tmp_path / "m.yaml").write_text("variant: paper\nwidth: 1\ndepth: 2\npaper: {width: 3}\ntuned: {width: 4}\n")
    assert strict_section(tmp_path / "m.yaml", {}, "models.m", ("paper", "tuned")) == {"variant": "paper", "width": 3, "depth": 2}
    got = strict_section(tmp_path / "m.yaml", {"variant": "tuned", "width": 9, "tuned": {"width": 5}}, "models.m", ("paper", "tuned"))
    assert got == {"variant": "tuned", "width": 5, "depth": 2}


def test_the_override_syntax_reaches_the_variant():
    cfg = load_config(overrides=["models.marnet.variant=tuned", "models.marnet.tuned.hidden=48",
                                 "models.marnet.tuned.heads=3", "models.marnet.label_embeddings=random"])
    model = build_model("marnet", cfg.models.marnet, DIMS, 3, True, {"label_cooccurrence": torch.eye(3) + 1})
    assert type(model).__name__ == "MARNetTuned" and model.heads == 3 and model.label_in.out_features == 48
    cfg = load_config(overrides=["models.mart.variant=masking-only", "models.mart.masking-only.fusion=tokens",
                                 "models.mart.segments=3"])
    model = build_model("mart", cfg.models.mart, DIMS, 3, False, {})
    assert type(model).__name__ == "MaskedTemporalModel" and model.fusion == "tokens" and model.segments == 3
    with pytest.raises(ConfigError, match="models.mart.masking-only.fusion"):    # the other variant's key: not for paper
        resolved_config("mart", {"fusion": "tokens"})


def test_modality_maps_take_any_modality_name():
    layers = resolved_config("late_fusion", {"paper": {"layers": {"audio_dae": 2}}})["layers"]
    assert layers["audio_dae"] == 2 and layers["visual"] == 3            # merged over the YAML's map
    assert resolved_config("late_fusion", {"variant": "tuned", "tuned": {"layers": {"default": 2}}})["layers"] == {"default": 2}
    assert resolved_config("videotag", {"lstm_sizes": {"rgb": 64}})["lstm_sizes"] == {"audio": 128, "rgb": 64}
    with pytest.raises(ConfigError):
        resolved_config("videotag", {"lstm_size": {"rgb": 64}, "lstm_sizs": 3})


def test_train_with_a_mistyped_model_key_exits_2_with_one_line(tmp_path):
    from test_train import make_store

    make_store(tmp_path, n=24)
    proc = run_cli("train", "--out", tmp_path, "--model", "nmcl", "--no-progress", "device=cpu", "models.nmcl.hiden=64",
                   env={"MICROVIDEO_DEBUG": ""}, timeout=300)
    text = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in text and len(errors) == 1, text
    assert "hiden" in errors[0] and "did you mean hidden" in errors[0], errors[0]


def test_checkpoints_of_the_flat_layout_load_through_legacy_config():
    """MARNet and MART sections saved before the variant blocks (one flat section, `tuned_heads`)."""
    from models import legacy_config

    old = {"variant": "tuned", "input": "pooled", "label_embeddings": "random", "label_dim": 8, "group_dim": 16,
           "heads": 3, "lam3": 0.01, "hidden": 32, "tuned_heads": 2, "gnn_layers": 1, "dropout": 0.0}
    with pytest.raises(ConfigError, match="models.marnet.paper.group_dim"):
        resolved_config("marnet", old)
    new = legacy_config("marnet", old)
    assert new["tuned"] == {"hidden": 32, "heads": 2, "gnn_layers": 1, "dropout": 0.0}
    assert new["paper"] == {"group_dim": 16, "heads": 3, "lam3": 0.01}
    flat = resolved_config("marnet", new)
    assert (flat["hidden"], flat["heads"], flat["gnn_layers"]) == (32, 2, 1)
    assert legacy_config("marnet", new) == new and legacy_config("nmcl", {"hidden": 3}) == {"hidden": 3}
    mart = legacy_config("mart", {"variant": "masking-only", "segments": 3, "fusion": "tokens", "mask_ratio": 0.2})
    assert mart == {"variant": "masking-only", "segments": 3, "masking-only": {"fusion": "tokens"}, "paper": {"mask_ratio": 0.2}}


@pytest.mark.parametrize("name", ["sun", "mart"])
def test_label_prior_bias_is_opt_in(name):
    """`label_prior_bias` (not in the papers): off by default; on, a multi-label head starts at the
    log-odds of the training label frequencies, a multi-class one as before."""
    from models import build_model

    dims = {"pooled": {}, "sequence": {"a": 6, "b": 5}}
    prior = [0.01, 0.2, 0.5]
    heads = {"sun": lambda m: list(m.classifier.values()), "mart": lambda m: [m.head]}[name]
    for on, multilabel in ((False, True), (True, True), (True, False)):
        torch.manual_seed(0)
        cfg = {"label_prior_bias": on} if name == "sun" else {"paper": {"label_prior_bias": on}}
        model = build_model(name, cfg, dims, 3, multilabel, {"label_prior": prior})
        for layer in heads(model):
            if on and multilabel:
                torch.testing.assert_close(layer.bias.detach(), torch.logit(torch.tensor(prior)))
            else:
                assert not torch.allclose(layer.bias.detach(), torch.logit(torch.tensor(prior)))
