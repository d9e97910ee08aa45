"""TFRecord files and `tf.train.Example` / `SequenceExample` protos, read without TensorFlow.

A TFRecord file is a run of records, each framed as (all little-endian)

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

where masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32). The `data` of a
YouTube-8M record is a serialized protobuf:

    Example         { Features features = 1; }
    SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
    Features        { map<string, Feature> feature = 1; }        # map entry: key = 1, value = 2
    FeatureLists    { map<string, FeatureList> feature_list = 1; }
    FeatureList     { repeated Feature feature = 1; }
    Feature         { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1; }  Int64List { repeated int64 value = 1; }

Those five messages are all we need, so the protobuf wire format is decoded here directly (a
varint/length-delimited walk, floats via `np.frombuffer`) instead of compiling .proto files.
CRC32C comes from `google-crc32c` (C implementation; 80 MB in well under a second).

Corruption is never skipped silently: `read_records` reports the file, the byte offset of the
record and what was wrong, and either raises or hands the problem to the caller (`on_error`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# -- framing ------------------------------------------------------------------------------------

@dataclass
class CorruptRecord:
    """One problem in a TFRecord file: where it is and why the bytes cannot be trusted."""
    file: str
    offset: int      # byte offset of the record's header in the file
    reason: str

    def __str__(self) -> str:
        return f"{self.file} @ byte {self.offset}: {self.reason}"


class TFRecordError(ValueError):
    def __init__(self, problem: CorruptRecord):
        super().__init__(str(problem))
        self.problem = problem


def read_records(path: str | Path, on_error: str = "raise",
                 report: Callable[[CorruptRecord], None] | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, data) for every record whose two CRCs check out.

    on_error: "raise"       raise TFRecordError at the first problem;
              "skip_record" report it and go on with the next record when the framing allows it
                            (a bad data CRC: the length is trusted, so the next record is found);
                            a bad length CRC or a truncated file ends the file;
              "skip_file"   report it and stop reading this file.
    """
    if on_error not in ("raise", "skip_record", "skip_file"):
        raise ValueError(f"on_error must be raise | skip_record | skip_file, got {on_error!r}")
    buf = Path(path).read_bytes()  # shards are small (~1.5 MB); one read beats many seeks
    pos, end = 0, len(buf)

    def problem(offset: int, reason: str) -> None:
        found = CorruptRecord(str(path), offset, reason)
        if on_error == "raise" or report is None:
            raise TFRecordError(found)
        report(found)

    while pos < end:
        if end - pos < 12:
            problem(pos, f"truncated header ({end - pos} of 12 bytes)")
            return
        length_bytes = buf[pos:pos + 8]
        (length,) = struct.unpack_from("<Q", buf, pos)
        (length_crc,) = struct.unpack_from("<I", buf, pos + 8)
        if masked_crc(length_bytes) != length_crc:
            problem(pos, "length CRC mismatch")
            return  # without a trusted length the next record cannot be found
        start = pos + 12
        if start + length + 4 > end:
            problem(pos, f"truncated record (needs {length + 4} bytes after the header, file has {end - start})")
            return
        data = buf[start:start + length]
        (data_crc,) = struct.unpack_from("<I", buf, start + length)
        if masked_crc(data) != data_crc:
            problem(pos, "data CRC mismatch")
            if on_error == "skip_file":
                return
        else:
            yield pos, data
        pos = start + length + 4


def frame_record(data: bytes) -> bytes:
    """One record's bytes in TFRecord framing (the inverse of `read_records`)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write_records(path: str | Path, records: list[bytes]) -> None:
    Path(path).write_bytes(b"".join(frame_record(r) for r in records))


# -- protobuf wire format ------------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: value is an int for varints, bytes for
    length-delimited fields and 4/8-byte fixed fields."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("length-delimited field runs past the message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_feature(buf: bytes) -> list[bytes] | np.ndarray:
    """A `Feature`: a list of bytes, a float32 array or an int64 array."""
    for kind, _, body in _fields(buf):
        if kind == 1:
            return [v for n, _, v in _fields(body) if n == 1]
        if kind == 2:  # floats: packed (one length-delimited blob) or, rarely, one fixed32 each
            parts = [v for n, _, v in _fields(body) if n == 1]
            return np.frombuffer(b"".join(parts), "<f4").astype(np.float32)
        if kind == 3:
            values = []
            for n, wire, v in _fields(body):
                if n != 1:
                    continue
                if wire == 0:
                    values.append(_signed64(v))
                else:  # packed varints
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        values.append(_signed64(x))
            return np.array(values, np.int64)
    return []  # an empty Feature (no kind set)


def _parse_map(buf: bytes, parse_value: Callable[[bytes], object]) -> dict:
    out = {}
    for n, _, entry in _fields(buf):
        if n != 1:
            continue
        key, value = "", b""
        for k, _, v in _fields(entry):
            if k == 1:
                key = v.decode("utf-8")
            elif k == 2:
                value = v
        out[key] = parse_value(value)
    return out


def parse_example(data: bytes) -> dict:
    """`tf.train.Example` -> {feature name: list[bytes] | np.ndarray}."""
    out = {}
    for n, _, features in _fields(data):
        if n == 1:
            out.update(_parse_map(features, parse_feature))
    return out


def parse_sequence_example(data: bytes) -> tuple[dict, dict]:
    """`tf.train.SequenceExample` -> (context features, {name: [Feature, ...] one per step})."""
    context, lists = {}, {}
    for n, _, body in _fields(data):
        if n == 1:
            context.update(_parse_map(body, parse_feature))
        elif n == 2:
            lists.update(_parse_map(body, lambda b: [parse_feature(f) for k, _, f in _fields(b) if k == 1]))
    return context, lists


# -- encoding (the inverse, for tests and for writing small fixtures) -----------------------------

def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_field(number: int, body: bytes) -> bytes:
    return _enc_varint(number << 3 | 2) + _enc_varint(len(body)) + body


def encode_feature(value) -> bytes:
    """bytes / str / list of those -> BytesList; float arrays -> FloatList; ints -> Int64List."""
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], (bytes, str)):
        items = b"".join(_enc_field(1, v.encode() if isinstance(v, str) else v) for v in value)
        return _enc_field(1, items)
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        return _enc_field(2, _enc_field(1, arr.astype("<f4").tobytes()))
    return _enc_field(3, _enc_field(1, b"".join(_enc_varint(int(x)) for x in arr.ravel())))


def _enc_map(items: dict, encode_value: Callable[[object], bytes]) -> bytes:
    return b"".join(_enc_field(1, _enc_field(1, k.encode()) + _enc_field(2, encode_value(v)))
                    for k, v in items.items())


def encode_example(features: dict) -> bytes:
    return _enc_field(1, _enc_map(features, encode_feature))


def encode_sequence_example(context: dict, feature_lists: dict) -> bytes:
    lists = _enc_map(feature_lists, lambda steps: b"".join(_enc_field(1, encode_feature(s)) for s in steps))
    return _enc_field(1, _enc_map(context, encode_feature)) + _enc_field(2, lists)
