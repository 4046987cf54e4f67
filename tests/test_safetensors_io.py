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
    ("non-utf8 header", _raw(b"{\"w\xff\": 1}"), "not valid UTF-8"),
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
    ("duplicate tensor", _raw(b'{"w": {"dtype":"F32","shape":[2],"data_offsets":[0,8]}, "w": {"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8), "tensor w: duplicate key"),
    ("bad metadata", _raw({"__metadata__": {"format": 1}, **GOOD}, b"\0" * 8), "__metadata__ must map strings"),
    ("overflowing shape", _raw({"w": _t(shape=(2**40, 2**40))}, b"\0" * 8), "tensor w: shape [1099511627776, 1099511627776]"),
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
