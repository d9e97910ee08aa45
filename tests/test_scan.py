"""Scanning: ids, sidecar formats, folder labels, re-scan after new / changed / deleted files."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from pipeline.catalog import Catalog, StageUpdate
from pipeline.demo import moving_stripes, write_clip
from pipeline.scan import read_sidecar, scan_folder


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "videos"
    for cls, n in (("cats", 2), ("dogs", 1)):
        for i in range(n):
            write_clip(root / cls / f"{cls}_{i}.mp4", moving_stripes(6, 32, 32, seed=i), 25)
    return root


def test_sidecar_formats(tmp_path):
    tsv = tmp_path / "l.tsv"
    tsv.write_text("a.mp4\tA title\tx,y\nb.mp4\t\tz\nc.mp4\n")
    csv = tmp_path / "l.csv"
    csv.write_text('file,title,labels,split\na.mp4,"A, title","x,y",train\n')
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text(json.dumps({"file": "a.mp4", "title": "A title", "labels": ["x", "y"]}) + "\n")
    t, c, j = read_sidecar(tsv), read_sidecar(csv), read_sidecar(jsonl)
    assert t["a.mp4"].labels == ["x", "y"] and t["a.mp4"].title == "A title"
    assert t["b.mp4"].title is None and t["b.mp4"].labels == ["z"]
    assert t["c.mp4"].labels == [] and t["c.mp4"].title is None
    assert c["a.mp4"].title == "A, title" and c["a.mp4"].labels == ["x", "y"] and c["a.mp4"].split == "train"
    assert j["a.mp4"].labels == ["x", "y"]


def test_scan_labels_titles_and_ids(folder, tmp_path):
    cat = Catalog(tmp_path / "out" / "catalog.sqlite")
    side = tmp_path / "titles.tsv"
    side.write_text("cats/cats_0.mp4\tfluffy cat video\t\ndogs_0\tgood dog\t\nmissing.mp4\tnothing\t\n")
    s = scan_folder(cat, folder, side, [".mp4"])
    assert (s.found, s.new, s.titled, s.labeled) == (3, 3, 2, 3)
    assert s.unmatched_sidecar == ["missing.mp4"]
    videos = {v["video_id"]: v for v in cat.videos()}
    assert set(videos) == {"cats/cats_0.mp4", "cats/cats_1.mp4", "dogs/dogs_0.mp4"}
    assert videos["cats/cats_0.mp4"]["labels"] == ["cats"]          # from the folder
    assert videos["dogs/dogs_0.mp4"]["title"] == "good dog"         # matched by stem
    assert videos["cats/cats_1.mp4"]["title"] is None               # never the file name


def test_sidecar_labels_win_over_folders(folder, tmp_path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    side = tmp_path / "l.tsv"
    side.write_text("cats/cats_0.mp4\tt\tpet,indoor\n")
    scan_folder(cat, folder, side, [".mp4"])
    labels = {v["video_id"]: v["labels"] for v in cat.videos()}
    assert labels["cats/cats_0.mp4"] == ["pet", "indoor"]
    assert labels["cats/cats_1.mp4"] == []


def test_rescan_new_changed_deleted(folder, tmp_path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    scan_folder(cat, folder, None, [".mp4"])
    cat.set_stages([StageUpdate("cats/cats_0.mp4", "extract:visual", "done"),
                    StageUpdate("cats/cats_1.mp4", "extract:visual", "done")])
    again = scan_folder(cat, folder, None, [".mp4"])
    assert (again.new, again.changed, again.unchanged, again.deleted) == (0, 0, 3, 0)

    write_clip(folder / "cats" / "cats_0.mp4", moving_stripes(6, 32, 32, seed=99), 25)   # changed content
    os.utime(folder / "cats" / "cats_1.mp4", (1, 1))                                     # touched only
    (folder / "dogs" / "dogs_0.mp4").unlink()                                              # deleted
    write_clip(folder / "birds" / "b.mp4", moving_stripes(6, 32, 32), 25)                # new
    s = scan_folder(cat, folder, None, [".mp4"])
    assert (s.new, s.changed, s.unchanged, s.deleted) == (1, 1, 1, 1)
    status = cat.stage_status("extract:visual")
    assert "cats/cats_0.mp4" not in status            # outputs of changed content are forgotten
    assert status["cats/cats_1.mp4"] == "done"        # same bytes, new mtime: kept
    assert {v["video_id"] for v in cat.videos()} == {"cats/cats_0.mp4", "cats/cats_1.mp4", "birds/b.mp4"}
    # the deleted file comes back: it is live again
    shutil.copy(folder / "cats" / "cats_1.mp4", folder / "dogs_back.mp4")
    assert scan_folder(cat, folder, None, [".mp4"]).new == 1
