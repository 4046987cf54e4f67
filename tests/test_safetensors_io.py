"""Header parsing: valid files round-trip with the safetensors library; hostile ones fail in one line."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from fixtures.tiny_models import header_bytes, write_file
from safetensors.numpy import save_file

from patchkit.errors import SafetensorsError
from patchkit.model.safetensors_io import check_editable, read_header, read_tensor_bytes


def test_matches_reference_library(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones((4,), dtype=np.float16)}
    path = tmp_path / "m.safetensors"
    save_file(arrays, str(path), metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert header.tensors["b"].shape == (2, 3) and header.tensors["b"].dtype == "F32"
    assert read_tensor_bytes(header, "b") == arrays["b"].tobytes()
    assert read_tensor_bytes(header, "a") == arrays["a"].tobytes()
    start, end = header.absolute("b")
    assert end - start == 24 and start >= header.data_start


def test_refuses_quantized_dtype(tmp_path):
    path = write_file(tmp_path / "q.safetensors", {"w": ("F8_E4M3", (2, 2), b"\0" * 4)})
    with pytest.raises(SafetensorsError, match=r"q\.safetensors: tensor w is stored as F8_E4M3 \(quantized/fp8\)"):
        check_editable(read_header(path), "w")


def _raw(header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if length is None else length
    return struct.pack("<Q", n) + body + data


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


GOOD = {"w": _t()}
HOSTILE = [
    ("empty file", b"", "truncated file"),
    ("short length prefix", b"\x01\x02\x03", "truncated file"),
    ("huge header length", struct.pack("<Q", 2**62) + b"{}", "exceeds the"),
    ("header past end", _raw(json.dumps(GOOD).encode(), length=10_000), "runs past the end"),
    ("non-utf8 header", _raw(b'{"w\xff": 1}'), "not valid UTF-8"),
    ("not json", _raw(b"{not json}   "), "not valid JSON"),
    ("json array", _raw(b"[1, 2]"), "does not start with"),
    ("unknown dtype", _raw({"w": _t(dtype="F12")}, b"\0" * 8), "tensor w: unknown dtype 'F12'"),
    ("size mismatch", _raw({"w": _t(shape=(3,))}, b"\0" * 8), "tensor w: shape [3] x F32 needs 12 bytes"),
    ("negative shape", _raw({"w": _t(shape=(-2,))}, b"\0" * 8), "tensor w: shape must be"),
    ("bool in shape", _raw({"w": _t(shape=(True, 2))}, b"\0" * 8), "tensor w: shape must be"),
    ("offsets reversed", _raw({"w": _t(offsets=(8, 0))}, b"\0" * 8), "tensor w: data_offsets end 0 is before begin 8"),
    ("offsets past data", _raw({"w": _t(shape=(4,), offsets=(0, 16))}, b"\0" * 8), "tensor w: data ends at 16"),
    ("overlap", _raw({"a": _t(), "b": _t(offsets=(4, 12))}, b"\0" * 12), "tensor b: data_offsets [4, 12] overlap"),
    ("gap", _raw({"a": _t(), "b": _t(offsets=(12, 20))}, b"\0" * 20), "tensor b: gap of 4 bytes"),
    ("trailing garbage", _raw(GOOD, b"\0" * 12), "4 trailing bytes"),
    ("missing field", _raw({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "tensor w: missing ['data_offsets']"),
    ("extra field", _raw({"w": {**_t(), "pickle": "x"}}, b"\0" * 8), "tensor w: unknown keys ['pickle']"),
    ("entry not object", _raw({"w": [1, 2, 3]}, b"\0" * 8), "tensor w: entry must be an object"),
    ("three offsets", _raw({"w": _t(offsets=(0, 4, 8))}, b"\0" * 8), "tensor w: data_offsets must be"),
    (
        "duplicate tensor",
        _raw(
            b'{"w": {"dtype":"F32","shape":[2],"data_offsets":[0,8]}, "w": {"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
            b"\0" * 8,
        ),
        "tensor w: duplicate key",
    ),
    ("bad metadata", _raw({"__metadata__": {"format": 1}, **GOOD}, b"\0" * 8), "__metadata__ must map strings"),
    (
        "overflowing shape",
        _raw({"w": _t(shape=(2**40, 2**40))}, b"\0" * 8),
        "tensor w: shape [1099511627776, 1099511627776]",
    ),
    ("deeply nested", _raw(b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply"),
    (
        "5000-digit offset",
        _raw(b'{"w": {"dtype":"F32","shape":[2],"data_offsets":[0,1' + b"0" * 5000 + b"]}}"),
        "5001 digits",
    ),
    ("offset past u63", _raw({"w": _t(offsets=(0, 2**64))}, b"\0" * 8), "tensor w: data_offsets must be"),
    ("NaN offset", _raw(b'{"w": {"dtype":"F32","shape":[2],"data_offsets":[0,NaN]}}'), "NaN is not valid JSON"),
    ("float dim", _raw({"w": _t(shape=(2.0,))}, b"\0" * 8), "tensor w: shape must be"),
    (
        "too many dims",
        _raw({"w": _t(shape=(1,) * 65 + (2,))}, b"\0" * 8),
        "tensor w: shape must be a list of at most 64",
    ),
    ("control character", _raw({"a\x1bb": _t()}, b"\0" * 8), "name contains control characters"),
    (
        "metadata list",
        _raw({"__metadata__": ["pt"], **GOOD}, b"\0" * 8),
        "__metadata__ must map strings to strings, got a JSON array",
    ),
    (
        "too many tensors",
        _raw(
            (
                "{"
                + ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(300_010))
                + "}"
            ).encode()
        ),
        "more than 300000 tensors",
    ),
    (
        "duplicate field",
        _raw(b'{"w": {"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        "duplicate key",
    ),
]


@pytest.mark.parametrize("label,blob,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_headers_fail_in_one_line(tmp_path, label, blob, expected):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(SafetensorsError) as info:
        read_header(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_at_least_fifteen_hostile_cases():
    assert len(HOSTILE) >= 15


def test_padded_header_is_accepted(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(header_bytes({"w": _t()}, pad_to=64) + b"\0" * 8)
    assert read_header(path).header_len % 64 == 0


def test_special_files_are_refused_without_being_read(tmp_path):
    import os

    from patchkit.errors import ModelError

    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match=r"fifo\.safetensors: is a FIFO"):
        read_header(fifo)  # would block forever if opened for a blocking read
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ModelError, match=r"zero\.safetensors: is a device"):
        read_header(zero)
    with pytest.raises(ModelError, match=r"zero\.safetensors: is a link to /dev/zero, outside the model directory"):
        read_header(zero, root=tmp_path)
    with pytest.raises(ModelError, match=r"is a directory, not a regular safetensors file"):
        read_header(tmp_path)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_round_to_dtype_agrees_with_the_byte_arithmetic(dtype):
    from patchkit.edit.bytes import from_float32, to_float32
    from patchkit.model.safetensors_io import DTYPE_MAX, DTYPE_TINY, dtype_neighbours, round_to_dtype

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(2000) * np.logspace(-45, 39, 2000),
            [1.001, -1.001, 1e-50, 3.5e38, 65519.0, 65520.0, 1.00000001],
        ]
    )
    with np.errstate(over="ignore"):
        f32 = values.astype(np.float32)
    want = to_float32(from_float32(f32, dtype), dtype)
    got = np.array([round_to_dtype(float(v), dtype) for v in values], np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    assert round_to_dtype(DTYPE_MAX[dtype], dtype) == DTYPE_MAX[dtype] and round_to_dtype(DTYPE_TINY[dtype], dtype) > 0
    lo, hi = dtype_neighbours(1.0, dtype)
    assert lo < 1.0 < hi and round_to_dtype(lo, dtype) == lo and round_to_dtype(hi, dtype) == hi
    assert dtype_neighbours(-1.0, dtype) == (-hi, -lo)


@pytest.mark.parametrize(
    "text, expected",
    [
        (b'{"a": 1, "a": 2}', "duplicate key a"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": 1' + b"0" * 40 + b"}", "41 digits"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (b'{"a": ', "not valid JSON"),
    ],
)
def test_parse_json_is_strict_and_one_line(text, expected):
    from patchkit._io.fs import parse_json
    from patchkit.errors import ModelError

    with pytest.raises(ModelError) as info:
        parse_json(text, "x.json")
    assert str(info.value).startswith("x.json: ") and expected in str(info.value) and "\n" not in str(info.value)
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}', "x.json") == {"a": [1, 2.5, "x", None, True]}
