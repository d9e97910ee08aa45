"""The shipped YouTube-8M recipe: the preset and every member's overrides are valid config
(strict sections reject a misspelt key), and the members are the models the bench says."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("yt8m_best", ROOT / "bench" / "yt8m_best.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_preset_settings(bench):
    _, cfg = bench.member_cfg(["early_fusion:tuned"])
    assert cfg.train.lr == pytest.approx(2e-3) and cfg.train.epochs == 6 and cfg.train.patience == 3
    assert list(cfg.train.modalities) == ["rgb", "audio"] and cfg.models.early_fusion.variant == "tuned"


@pytest.mark.parametrize("name", ["ef1024", "ef2048_ema", "ef1024_ema_s1", "ef2048_cg", "ef2048_ema_s2", "ef2048_std", "ef2048_ema_s3", "ef1024_ema_s2", "videotag"])
def test_member_overrides_apply(bench, name):
    member = bench.MEMBERS[name]
    model, cfg = bench.member_cfg(member, ["train.stop_after_epochs=5"])
    assert model == member[0].partition(":")[0] and cfg.train.stop_after_epochs == 5
    for override in member[1:]:
        key, value = override.split("=")
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert str(node).lower() == value.lower()
