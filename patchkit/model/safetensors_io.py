"""Safetensors headers parsed and validated by hand, so every byte range patchkit touches is proven in-bounds.

The `safetensors` library would happily give us tensors, but apply/diff work on raw byte ranges of files
that may be corrupt or hostile. Every check below turns a violation into a one-line `SafetensorsError`
naming the file (and tensor). Nothing here ever loads a pickle or imports torch.

Layout of a safetensors file: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data
area. The JSON maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the
data area) plus an optional "__metadata__" string map.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from patchkit.errors import SafetensorsError

#: Same cap as the reference implementation: a header this large is hostile, not a model.
MAX_HEADER_LEN = 100_000_000

#: Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

#: Dtypes patchkit can edit exactly on raw bytes.
EDITABLE_DTYPES = frozenset({"BF16", "F16", "F32"})

_QUANTIZED = frozenset({"F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "I8", "U8"})


@dataclass(frozen=True)
class TensorInfo:
    """One header entry. `begin`/`end` are offsets in the data area, exactly as stored in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element (only meaningful for byte-sized dtypes)."""
        return DTYPE_BITS[self.dtype] // 8


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: what `ModelRef.headers()` returns for each weight file."""

    path: str
    header_len: int
    metadata: dict[str, str] | None
    tensors: dict[str, TensorInfo] = field(repr=False)
    #: Size of the whole file when known (always for local files); None for headers read remotely.
    file_size: int | None = None

    @property
    def data_start(self) -> int:
        """Absolute file offset of the data area."""
        return 8 + self.header_len

    def absolute(self, name: str) -> tuple[int, int]:
        """Absolute [start, end) file offsets of tensor `name`."""
        info = self.tensor(name)
        return self.data_start + info.begin, self.data_start + info.end

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r} in this file") from None

    @property
    def data_size(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)


def dtype_itemsize(dtype: str) -> int:
    return DTYPE_BITS[dtype] // 8


def check_editable(header: SafetensorsHeader, name: str) -> TensorInfo:
    """The tensor's info, or a clear refusal for quantized / fp8 / integer dtypes."""
    info = header.tensor(name)
    if info.dtype not in EDITABLE_DTYPES:
        kind = "quantized/fp8" if info.dtype in _QUANTIZED else "non-float"
        raise SafetensorsError(
            f"{header.path}: tensor {name} is stored as {info.dtype} ({kind}); patchkit edits only BF16, F16 "
            "and F32 weights exactly — use the unquantized base checkpoint"
        )
    return info


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file (reads only the header bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            return _read_header_from(fh, size, str(path))
    except FileNotFoundError:
        raise SafetensorsError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SafetensorsError(f"{path}: is a directory, not a safetensors file") from None


def _read_header_from(fh: BinaryIO, size: int, label: str) -> SafetensorsHeader:
    if size < 8:
        raise SafetensorsError(f"{label}: truncated file ({size} bytes; a safetensors file starts with an 8-byte header length)")
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > MAX_HEADER_LEN:
        raise SafetensorsError(f"{label}: header length {n} exceeds the {MAX_HEADER_LEN}-byte limit (corrupt or hostile file)")
    if 8 + n > size:
        raise SafetensorsError(f"{label}: header length {n} runs past the end of the {size}-byte file (truncated?)")
    raw = fh.read(n)
    return parse_header(raw, path=label, file_size=size)


def parse_header(raw: bytes, *, path: str, file_size: int | None = None) -> SafetensorsHeader:
    """Validate the JSON header bytes (without the 8-byte length prefix)."""
    if len(raw) < 2:
        raise SafetensorsError(f"{path}: header is {len(raw)} bytes; too short to be a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SafetensorsError(f"{path}: header is not valid UTF-8 (byte {exc.start})") from None
    if not text.startswith("{"):
        raise SafetensorsError(f"{path}: header does not start with '{{' (not a safetensors file?)")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as exc:
        raise SafetensorsError(f"{path}: header is not valid JSON ({exc.msg} at char {exc.pos})") from None
    return header_from_dict(obj, path=path, header_len=len(raw), file_size=file_size)


def _no_duplicates(path: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise SafetensorsError(f"{path}: tensor {key}: duplicate key in header")
            out[key] = value
        return out

    return hook


def header_from_dict(
    obj: Any, *, path: str, header_len: int, file_size: int | None = None
) -> SafetensorsHeader:
    """Validate an already-decoded header (e.g. one read over HTTP Range by `patchkit.publish.hub`)."""
    if not isinstance(obj, dict):
        raise SafetensorsError(f"{path}: header is a JSON {type(obj).__name__}, expected an object")
    metadata = obj.get("__metadata__")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_info(path, name, entry)
    _check_layout(path, tensors, header_len, file_size)
    return SafetensorsHeader(path=path, header_len=header_len, metadata=metadata, tensors=tensors, file_size=file_size)


def _tensor_info(path: str, name: str, entry: Any) -> TensorInfo:
    where = f"{path}: tensor {name}"
    if not name:
        raise SafetensorsError(f"{path}: empty tensor name in header")
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    extra = set(entry) - {"dtype", "shape", "data_offsets"}
    missing = {"dtype", "shape", "data_offsets"} - set(entry)
    if missing or extra:
        what = f"missing {sorted(missing)}" if missing else f"unknown keys {sorted(extra)}"
        raise SafetensorsError(f"{where}: {what}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SafetensorsError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise SafetensorsError(f"{where}: data_offsets must be [begin, end] non-negative integers, got {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise SafetensorsError(f"{where}: data_offsets end {end} is before begin {begin}")
    numel = math.prod(shape)
    expected = (numel * DTYPE_BITS[dtype] + 7) // 8
    if expected != end - begin:
        raise SafetensorsError(
            f"{where}: shape {shape} x {dtype} needs {expected} bytes but data_offsets span {end - begin}"
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(path: str, tensors: dict[str, TensorInfo], header_len: int, file_size: int | None) -> None:
    """Tensors must tile the data area exactly: sorted, no overlap, no gap, nothing past the end."""
    pos = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < pos:
            raise SafetensorsError(f"{path}: tensor {info.name}: data_offsets [{info.begin}, {info.end}] overlap the previous tensor (ends at {pos})")
        if info.begin > pos:
            raise SafetensorsError(f"{path}: tensor {info.name}: gap of {info.begin - pos} bytes before its data (offset {info.begin}, expected {pos})")
        pos = info.end
    if file_size is not None:
        data_len = file_size - 8 - header_len
        if pos > data_len:
            last = max(tensors.values(), key=lambda t: t.end)
            raise SafetensorsError(f"{path}: tensor {last.name}: data ends at {pos} but the data area holds only {data_len} bytes (truncated file?)")
        if pos < data_len:
            raise SafetensorsError(f"{path}: {data_len - pos} trailing bytes after the last tensor (corrupt file)")


# --- reading data ---------------------------------------------------------------------------------------

#: Streaming unit for patched tensors and copies.
CHUNK = 8 << 20
#: Unit for reading to hash or compare: small enough to stay in CPU cache between the read and its use.
SCAN_CHUNK = 1 << 20


def iter_range(fh: BinaryIO, start: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield the bytes of [start, end) of an open file in chunks of at most `chunk` bytes."""
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        data = os.pread(fh.fileno(), n, pos)
        if len(data) != n:
            raise SafetensorsError(f"{getattr(fh, 'name', '?')}: file shrank while reading (offset {pos})")
        yield data
        pos += n


def read_tensor_bytes(header: SafetensorsHeader, name: str) -> bytes:
    """All bytes of one tensor (for small tensors and tests; apply/diff stream instead)."""
    start, end = header.absolute(name)
    with open(header.path, "rb") as fh:
        return b"".join(iter_range(fh, start, end))
