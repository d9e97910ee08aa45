"""Importers: TFRecord framing and CRCs, Example / SequenceExample parsing, corrupt records
reported with file and offset, the generic spec importer, and features landing in the store."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.catalog import Catalog
from pipeline.importers import dequantize, import_features, import_yt8m, read_vocabulary
from pipeline.store import FeatureStore
from pipeline.tfrecord import (TFRecordError, encode_example, encode_sequence_example, frame_record,
                               masked_crc, parse_example, parse_sequence_example, read_records, write_records)

ROOT = Path(__file__).resolve().parent.parent


def _video_example(vid: str, labels: list[int], seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb, audio = rng.normal(size=1024).astype(np.float32), rng.normal(size=128).astype(np.float32)
    return encode_example({"id": vid, "labels": labels, "mean_rgb": rgb, "mean_audio": audio}), rgb, audio


def _shard(tmp_path: Path, n: int = 3) -> tuple[Path, list[tuple]]:
    items = [_video_example(f"v{i}", [i, 7], i) for i in range(n)]
    path = tmp_path / "train0000.tfrecord"
    write_records(path, [data for data, _, _ in items])
    return path, items


def _store(out: Path) -> tuple[Catalog, FeatureStore]:
    cat = Catalog(out / "catalog.sqlite")
    return cat, FeatureStore(out, cat)


# -- framing and protobuf ------------------------------------------------------------------------

def test_masked_crc():
    # CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720); TFRecord masks it as
    # ((crc >> 15) | (crc << 17)) + 0xa282ead8.
    crc = 0xE3069283
    assert masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc(b"") == 0xA282EAD8  # crc32c("") = 0: the mask alone


def test_example_round_trip_and_record_offsets(tmp_path):
    path, items = _shard(tmp_path)
    records = list(read_records(path))
    assert [off for off, _ in records] == [0, len(frame_record(items[0][0])),
                                           len(frame_record(items[0][0])) + len(frame_record(items[1][0]))]
    ex = parse_example(records[1][1])
    assert ex["id"] == [b"v1"]
    assert ex["labels"].tolist() == [1, 7]
    np.testing.assert_array_equal(ex["mean_rgb"], items[1][1])
    np.testing.assert_array_equal(ex["mean_audio"], items[1][2])


def test_negative_and_large_int64_survive():
    ex = parse_example(encode_example({"labels": [-1, 3861, 2**40]}))
    assert ex["labels"].tolist() == [-1, 3861, 2**40]


def test_sequence_example_frames_dequantize(tmp_path):
    rng = np.random.default_rng(0)
    q_rgb = rng.integers(0, 256, size=(5, 1024), dtype=np.uint8)
    q_audio = rng.integers(0, 256, size=(5, 128), dtype=np.uint8)
    data = encode_sequence_example({"id": "seq1", "labels": [2]},
                                   {"rgb": [r.tobytes() for r in q_rgb], "audio": [a.tobytes() for a in q_audio]})
    context, lists = parse_sequence_example(data)
    assert context["id"] == [b"seq1"] and context["labels"].tolist() == [2]
    assert len(lists["rgb"]) == 5 and lists["rgb"][3][0] == q_rgb[3].tobytes()

    write_records(tmp_path / "frames.tfrecord", [data])
    out = tmp_path / "out"
    summary = import_yt8m([tmp_path / "frames.tfrecord"], out, split="train")
    assert summary["layouts"] == ["pooled", "sequence"] and not summary["corrupt_records"]
    cat, store = _store(out)
    (seq,) = store.read_sequences("rgb", ["seq1"])
    want = dequantize(q_rgb)
    assert seq.shape == (5, 1024)
    np.testing.assert_allclose(seq.astype(np.float32), want, atol=2e-3)  # float16 store
    # Starter-code dequantization: q * 4/255 + 4/512 - 2, so 0 -> -2 + 4/512 and 255 -> 2 + 4/512.
    np.testing.assert_allclose(dequantize(np.array([0, 255], np.uint8)), [-2 + 4 / 512, 2 + 4 / 512], rtol=1e-6)
    _, pooled, present = store.read_pooled("rgb", ["seq1"])
    assert present.all()
    np.testing.assert_allclose(pooled[0].astype(np.float32), want.mean(0), atol=2e-3)
    assert cat.labeled_videos() == [("seq1", ["label_2"], "train")]


# -- corruption ------------------------------------------------------------------------------------

def test_corrupt_data_crc_reported_with_offset(tmp_path):
    path, items = _shard(tmp_path)
    second = len(frame_record(items[0][0]))
    raw = bytearray(path.read_bytes())
    raw[second + 12 + 40] ^= 0xFF  # a byte inside the second record's data
    path.write_bytes(bytes(raw))

    with pytest.raises(TFRecordError) as err:
        list(read_records(path))
    assert err.value.problem.offset == second and "data CRC" in err.value.problem.reason

    problems = []
    kept = [off for off, _ in read_records(path, on_error="skip_record", report=problems.append)]
    assert kept == [0, second + len(frame_record(items[1][0]))]  # records 1 and 3 still read
    assert [(p.file, p.offset) for p in problems] == [(str(path), second)]

    # The importer: the default skips the rest of the file, lists the problem, keeps record 1.
    summary = import_yt8m([path], tmp_path / "out", split="train")
    assert summary["corrupt_records"] == [f"{path} @ byte {second}: data CRC mismatch"]
    assert summary["videos"] == 1
    summary = import_yt8m([path], tmp_path / "out2", split="train", on_error="skip_record")
    assert summary["videos"] == 2 and len(summary["corrupt_records"]) == 1
    with pytest.raises(TFRecordError, match="byte"):
        import_yt8m([path], tmp_path / "out3", on_error="raise")


def test_corrupt_length_and_truncation(tmp_path):
    path, items = _shard(tmp_path)
    second = len(frame_record(items[0][0]))
    raw = path.read_bytes()

    bad_length = bytearray(raw)
    bad_length[second + 2] ^= 0x01  # the second record's length field
    (tmp_path / "len.tfrecord").write_bytes(bytes(bad_length))
    problems = []
    assert len(list(read_records(tmp_path / "len.tfrecord", "skip_record", problems.append))) == 1
    assert problems[0].offset == second and "length CRC" in problems[0].reason

    (tmp_path / "cut.tfrecord").write_bytes(raw[:-10])  # the last record loses its tail
    problems = []
    assert len(list(read_records(tmp_path / "cut.tfrecord", "skip_record", problems.append))) == 2
    third = second + len(frame_record(items[1][0]))
    assert problems[0].offset == third and "truncated record" in problems[0].reason

    (tmp_path / "head.tfrecord").write_bytes(raw[:second + 5])  # a header cut short
    problems = []
    assert len(list(read_records(tmp_path / "head.tfrecord", "skip_record", problems.append))) == 1
    assert "truncated header" in problems[0].reason

    # Several files: the broken one is reported, the good one after it is imported.
    shutil.copy(path, tmp_path / "good.tfrecord")
    good = tmp_path / "good2.tfrecord"
    write_records(good, [_video_example("w0", [1], 9)[0]])
    summary = import_yt8m([tmp_path / "cut.tfrecord", good], tmp_path / "out", split="val")
    assert len(summary["corrupt_records"]) == 1 and "cut.tfrecord @ byte" in summary["corrupt_records"][0]
    assert summary["videos"] == 3 and summary["files"] == 2


def test_valid_crc_but_unusable_example_is_reported(tmp_path):
    path = tmp_path / "x.tfrecord"
    write_records(path, [encode_example({"id": "a", "labels": [1], "mean_rgb": np.zeros(1024, np.float32)})])
    summary = import_yt8m([path], tmp_path / "out")
    assert summary["videos"] == 0
    assert summary["corrupt_records"] == [f"{path} @ byte 0: unusable record: no feature 'mean_audio'"]


# -- store round trip -------------------------------------------------------------------------------

def test_yt8m_import_lands_in_store(tmp_path):
    path, items = _shard(tmp_path, n=4)
    vocab = tmp_path / "vocabulary.csv"
    vocab.write_text("Index,TrainVideoCount,Name\n0,10,Game\n1,5,Car\n2,3,\n7,1,Dog\n")
    summary = import_yt8m([path], tmp_path / "out", vocabulary=vocab, split="train")
    assert summary["videos"] == 4 and summary["modalities"] == {"rgb": {"pooled": 1024}, "audio": {"pooled": 128}}
    cat, store = _store(tmp_path / "out")
    names = cat.class_names()
    assert names[:3] == ["Game", "Car", "label_2"] and names[7] == "Dog" and len(names) == 8
    assert dict((v, (l, s)) for v, l, s in cat.labeled_videos())["v1"] == (["Car", "Dog"], "train")
    ids, rgb, present = store.read_pooled("rgb", ["v0", "v3", "nope"])
    assert present.tolist() == [True, True, False]
    np.testing.assert_allclose(rgb[1].astype(np.float32), items[3][1], rtol=1e-3, atol=1e-3)
    assert store.modalities()["audio"].layouts == {"pooled": 128}
    assert store.modalities()["rgb"].meta["source"] == "youtube-8m"


def test_real_yt8m_shard(shared_data, tmp_path):
    shard = shared_data / "yt8m" / "tfrecord" / "validate0000.tfrecord"
    records = list(read_records(shard))
    ex = parse_example(records[0][1])
    assert len(ex["id"][0]) > 0 and len(ex["labels"]) >= 1
    assert ex["mean_rgb"].shape == (1024,) and ex["mean_audio"].shape == (128,)
    names = read_vocabulary(shared_data / "yt8m" / "vocabulary.csv")
    assert len(names) == 3862 and names[0] == "Game" and len(set(names)) == len(names)
    summary = import_yt8m([shard], tmp_path / "out", vocabulary=shared_data / "yt8m" / "vocabulary.csv", split="train")
    assert summary["videos"] == len(records) and not summary["corrupt_records"]
    cat, store = _store(tmp_path / "out")
    vid = ex["id"][0].decode()
    _, rgb, present = store.read_pooled("rgb", [vid])
    assert present[0]
    np.testing.assert_allclose(rgb[0].astype(np.float32), ex["mean_rgb"], atol=2e-3)
    labels = dict((v, l) for v, l, _ in cat.labeled_videos())[vid]
    assert labels == [names[i] for i in ex["labels"]]


# -- generic importer -------------------------------------------------------------------------------

def test_generic_csv_and_npy_spec(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 3)).astype(np.float32)
    lines = ["clip,a_0,a_1,a_2,tags"]
    for i in range(6):
        cells = ["" if (i == 2 and j == 1) else f"{a[i, j]:.6f}" for j in range(3)]  # row 2: a gap
        lines.append(",".join([f"c{i}", *cells, "cat|dog" if i % 2 else "dog"]))
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    b = rng.normal(size=(6, 5)).astype(np.float32)
    np.save(tmp_path / "b.npy", b)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: toy\nfiles:\n  - {path: data.csv, split: train, arrays: {b: b.npy}}\n"
        "id: clip\nlabel: tags\nlabel_separator: '|'\n"
        "modalities: {acoustic: 'a_*', extra: b}\n")
    summary = import_features(spec, tmp_path / "out")
    assert summary["videos"] == 6 and summary["modalities"] == {"acoustic": 3, "extra": 5}
    assert summary["missing"] == {"acoustic": 1, "extra": 0} and summary["classes"] == ["cat", "dog"]
    cat, store = _store(tmp_path / "out")
    ids, x, present = store.read_pooled("acoustic", [f"c{i}" for i in range(6)])
    assert present.tolist() == [True, True, False, True, True, True]
    np.testing.assert_allclose(x[[0, 1, 3]].astype(np.float32), a[[0, 1, 3]], atol=1e-3)
    _, xb, _ = store.read_pooled("extra", ["c4"])
    np.testing.assert_allclose(xb[0].astype(np.float32), b[4], atol=1e-3)
    assert dict((v, l) for v, l, _ in cat.labeled_videos())["c1"] == ["cat", "dog"]


def test_mosi_spec(shared_data, tmp_path):
    summary = import_features(ROOT / "configs" / "importers" / "mosi.yaml", tmp_path / "out",
                              root=shared_data / "mosi")
    assert summary["modalities"] == {"text": 100, "audio": 73, "video": 100}
    assert summary["splits"]["test"] == 752
    assert summary["splits"]["train"] + summary["splits"]["val"] == 1447 and summary["splits"]["val"] > 100
    cat, store = _store(tmp_path / "out")
    assert cat.class_names() == ["negative", "positive"]
    speaker = {s: {v.rsplit("_", 1)[0] for v, _, sp in cat.labeled_videos() if sp == s} for s in ("train", "val")}
    assert not speaker["train"] & speaker["val"]  # the carved validation split is speaker-independent
    with np.load(shared_data / "mosi" / "mosi_test.npz") as z:
        vid, text, label = str(z["utt_id"][5]), z["text"][5], int(z["label"][5])
    _, x, present = store.read_pooled("text", [vid])
    assert present[0]
    np.testing.assert_allclose(x[0].astype(np.float32), text, rtol=1e-2, atol=1e-2)
    assert dict((v, l) for v, l, _ in cat.labeled_videos())[vid] == [["negative", "positive"][label]]
