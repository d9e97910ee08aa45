"""The Python API: features() with presence masks on a small store, and docs/api.md's example
run as written (every stage on the synthetic demo clips)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.api import Pipeline
from pipeline.catalog import Catalog, VideoRow
from pipeline.store import FeatureStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def out(tmp_path):
    out = tmp_path / "out"
    cat = Catalog(out / "catalog.sqlite")
    cat.upsert_videos([VideoRow(v, labels=[lab]) for v, lab in [("a.mp4", "x"), ("b.mp4", "y"), ("c.mp4", "x")]])
    store = FeatureStore(out, cat)
    with store.writer("m", dims={"pooled": 4, "sequence": 4}) as w:
        w.add("a.mp4", pooled=np.ones(4), sequence=np.ones((3, 4)), times=[[0, 1], [1, 2], [2, 3]])
        w.add("c.mp4", pooled=np.full(4, 2.0), sequence=np.full((1, 4), 2.0), times=[[0, 0.5]])
    cat.close()
    return out


def test_features_keep_missing_videos_with_a_mask(out):
    p = Pipeline(out)
    assert p.modalities() == {"m": {"pooled": 4, "sequence": 4}}
    f = p.features("m")
    assert f.video_ids == ["a.mp4", "b.mp4", "c.mp4"] and f.labels == [["x"], ["y"], ["x"]]
    np.testing.assert_array_equal(f.present, [True, False, True])
    np.testing.assert_array_equal(f.values[:, 0], [1, 0, 2])
    x, mask = f.torch()
    assert x.dtype.is_floating_point and x.shape == (3, 4) and mask.tolist() == [True, False, True]
    s = p.features("m", layout="sequence", video_ids=["c.mp4", "b.mp4", "a.mp4"])
    assert s.values.shape == (3, 3, 4) and s.lengths.tolist() == [1, 0, 3]
    np.testing.assert_array_equal(s.times[0, 0], [0, 0.5])
    assert np.isnan(s.times[0, 1:]).all() and (s.values[1] == 0).all()
    with pytest.raises(KeyError, match="no pooled features for modality 'nope'"):
        p.features("nope")


def example_code() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_docs_example_runs(capsys):
    exec(compile(example_code(), "docs/api.md", "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    assert "best val:" in printed and "clips have audio" in printed
    m = re.search(r"(\d+) of (\d+) clips have audio", printed)
    assert 0 < int(m.group(1)) < int(m.group(2))  # the demo has silent clips: present is a real mask
