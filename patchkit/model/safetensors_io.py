"""Safetensors headers parsed and validated by hand, so every byte range patchkit touches is proven in-bounds.

The `safetensors` library would happily give us tensors, but apply/diff work on raw byte ranges of files
that may be corrupt or hostile. Every check below turns a violation into a one-line `SafetensorsError`
naming the file (and tensor). Nothing here ever loads a pickle or imports torch.

Layout of a safetensors file: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data
area. The JSON maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the
data area) plus an optional "__metadata__" string map.
"""

from __future__ import annotations

import gc
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from patchkit._io.fs import json_type, open_regular, parse_json, shown
from patchkit.errors import SafetensorsError

#: Same cap as the reference implementation: a header this large is hostile, not a model.
MAX_HEADER_LEN = 100_000_000
#: Largest dimension, offset and tensor byte size accepted (the format stores them as u64/usize).
MAX_INT = 2**63 - 1
#: Most dimensions a tensor may have.
MAX_DIMS = 64
#: Most tensors one header may list (counted before parsing: a 100 MB header of tiny entries would take half a
#: minute and GBs to parse). Real shards hold a few thousand; a whole 671B MoE in one file ~10^5.
MAX_TENSORS = 300_000

#: Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: Dtypes patchkit can edit exactly on raw bytes.
EDITABLE_DTYPES = frozenset({"BF16", "F16", "F32"})

_QUANTIZED = frozenset({"F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "I8", "U8"})


@dataclass(frozen=True, slots=True)
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


def read_header(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file (reads only the header bytes).

    The file must be a regular file (`patchkit._io.fs.open_regular`: FIFOs, devices, sockets and directories are
    refused without being read; with `root`, so are links leaving the model directory); its size is known before a
    byte is read and the header length is checked against it and against MAX_HEADER_LEN.
    """
    path = Path(path)
    try:
        with open_regular(path, root, what="safetensors file") as fh:
            size = os.fstat(fh.fileno()).st_size
            return _read_header_from(fh, size, str(path))
    except FileNotFoundError:
        raise SafetensorsError(f"{path}: file not found") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise SafetensorsError(f"{path}: cannot be read ({exc.strerror})") from None


def _read_header_from(fh: BinaryIO, size: int, label: str) -> SafetensorsHeader:
    if size < 8:
        raise SafetensorsError(
            f"{label}: truncated file ({size} bytes; a safetensors file starts with an 8-byte header length)"
        )
    prefix = fh.read(8)
    if len(prefix) != 8:
        raise SafetensorsError(f"{label}: file shrank while reading its header")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_LEN:
        raise SafetensorsError(
            f"{label}: header length {n} exceeds the {MAX_HEADER_LEN}-byte limit (corrupt or hostile file)"
        )
    if 8 + n > size:
        raise SafetensorsError(f"{label}: header length {n} runs past the end of the {size}-byte file (truncated?)")
    raw = fh.read(n)
    if len(raw) != n:
        raise SafetensorsError(f"{label}: file shrank while reading its header")
    return parse_header(raw, path=label, file_size=size)


def parse_header(raw: bytes, *, path: str, file_size: int | None = None) -> SafetensorsHeader:
    """Validate the JSON header bytes (without the 8-byte length prefix)."""
    if len(raw) < 2:
        raise SafetensorsError(f"{path}: header is {len(raw)} bytes; too short to be a JSON object")
    if not raw.startswith(b"{"):
        raise SafetensorsError(f"{path}: header does not start with '{{' (not a safetensors file?)")
    if raw.count(b"{") > MAX_TENSORS + 2:  # every entry is an object; escapes cannot hide a structural brace
        raise SafetensorsError(f"{path}: header lists more than {MAX_TENSORS} tensors (corrupt or hostile file)")
    obj = parse_json(
        raw,
        f"{path}: header",
        error=SafetensorsError,
        what="safetensors header",
        duplicate="tensor {key}: duplicate key in header",
    )
    return header_from_dict(obj, path=path, header_len=len(raw), file_size=file_size)


def header_from_dict(obj: Any, *, path: str, header_len: int, file_size: int | None = None) -> SafetensorsHeader:
    """Validate an already-decoded header (e.g. one read over HTTP Range by `patchkit.publish.hub`)."""
    if not isinstance(obj, dict):
        raise SafetensorsError(f"{path}: header is a JSON {type(obj).__name__}, expected an object")
    metadata = obj.get("__metadata__")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise SafetensorsError(
                f"{path}: __metadata__ must map strings to strings, got a JSON {json_type(metadata)}"
            )
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise SafetensorsError(
                    f"{path}: __metadata__ must map strings to strings; key {shown(k, 60)} maps to "
                    f"a JSON {json_type(v)}"
                )
    if len(obj) > MAX_TENSORS + 1:
        raise SafetensorsError(f"{path}: header lists more than {MAX_TENSORS} tensors (corrupt or hostile file)")
    tensors: dict[str, TensorInfo] = {}
    collecting = gc.isenabled()
    gc.disable()  # many small new objects: generational GC passes would dominate
    try:
        for name, entry in obj.items():
            if name == "__metadata__":
                continue
            tensors[name] = _tensor_info(path, name, entry)
    finally:
        if collecting:
            gc.enable()
    _check_layout(path, tensors, header_len, file_size)
    return SafetensorsHeader(path=path, header_len=header_len, metadata=metadata, tensors=tensors, file_size=file_size)


_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


def _tensor_info(path: str, name: str, entry: Any) -> TensorInfo:
    # fast path first (a header may list ~10^5 tensors): plain checks, messages built only on failure
    if type(entry) is dict and entry.keys() == _FIELDS and name.isprintable():
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if (
            type(dtype) is str
            and dtype in DTYPE_BITS
            and type(shape) is list
            and len(shape) <= MAX_DIMS
            and type(offsets) is list
            and len(offsets) == 2
        ):
            begin, end = offsets
            if (
                type(begin) is int
                and type(end) is int
                and 0 <= begin <= end <= MAX_INT
                and all(type(d) is int and 0 <= d <= MAX_INT for d in shape)
            ):
                numel = math.prod(shape)
                if numel * DTYPE_BITS[dtype] == (end - begin) * 8:
                    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)
    return _tensor_info_checked(path, name, entry)


def _tensor_info_checked(path: str, name: str, entry: Any) -> TensorInfo:
    if not name:
        raise SafetensorsError(f"{path}: empty tensor name in header")
    if not name.isprintable():
        raise SafetensorsError(f"{path}: tensor {shown(name, 80)}: name contains control characters")
    where = f"{path}: tensor {shown(name, 200)}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    extra = set(entry) - _FIELDS
    missing = _FIELDS - set(entry)
    if missing or extra:
        what = f"missing {sorted(missing)}" if missing else f"unknown keys {sorted(extra)}"
        raise SafetensorsError(f"{where}: {what}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SafetensorsError(f"{where}: unknown dtype {shown(repr(dtype), 40)} (known: {', '.join(DTYPE_BITS)})")
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_uint(d) for d in shape):
        raise SafetensorsError(
            f"{where}: shape must be a list of at most {MAX_DIMS} integers from 0 to {MAX_INT}, "
            f"got {shown(repr(shape), 80)}"
        )
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise SafetensorsError(
            f"{where}: data_offsets must be [begin, end] integers from 0 to {MAX_INT}, got {shown(repr(offsets), 80)}"
        )
    begin, end = offsets
    if end < begin:
        raise SafetensorsError(f"{where}: data_offsets end {end} is before begin {begin}")
    if math.prod(d for d in shape if d) > MAX_INT:
        raise SafetensorsError(f"{where}: shape {shape} overflows (more than {MAX_INT} elements)")
    numel = math.prod(shape)
    expected = (numel * DTYPE_BITS[dtype] + 7) // 8
    if expected != end - begin:
        raise SafetensorsError(
            f"{where}: shape {shape} x {dtype} needs {expected} bytes but data_offsets span {end - begin}"
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _check_layout(path: str, tensors: dict[str, TensorInfo], header_len: int, file_size: int | None) -> None:
    """Tensors must tile the data area exactly: sorted, no overlap, no gap, nothing past the end."""
    pos = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < pos:
            raise SafetensorsError(
                f"{path}: tensor {info.name}: data_offsets [{info.begin}, {info.end}] overlap the previous tensor (ends at {pos})"
            )
        if info.begin > pos:
            raise SafetensorsError(
                f"{path}: tensor {info.name}: gap of {info.begin - pos} bytes before its data (offset {info.begin}, expected {pos})"
            )
        pos = info.end
    if file_size is not None:
        data_len = file_size - 8 - header_len
        if pos > data_len:
            last = max(tensors.values(), key=lambda t: t.end)
            raise SafetensorsError(
                f"{path}: tensor {last.name}: data ends at {pos} but the data area holds only {data_len} bytes (truncated file?)"
            )
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


# --- float dtypes as numbers ----------------------------------------------------------------------------

#: Largest finite value of each editable float dtype.
DTYPE_MAX = {"BF16": 3.3895313892515355e38, "F16": 65504.0, "F32": 3.4028234663852886e38}
#: Smallest positive (subnormal) value of each editable float dtype.
DTYPE_TINY = {"BF16": 9.183549615799121e-41, "F16": 5.960464477539063e-08, "F32": 1.401298464324817e-45}


def _f32_bits(value: float) -> int:
    try:
        return struct.unpack("<I", struct.pack("<f", value))[0]
    except OverflowError:  # finite in float64, beyond float32: rounds to infinity
        return 0xFF800000 if value < 0 else 0x7F800000


def _bits_to_value(bits: int, dtype: str) -> float:
    if dtype == "F16":
        return struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]
    if dtype == "BF16":
        bits = (bits & 0xFFFF) << 16
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def dtype_bits(value: float, dtype: str) -> int:
    """The raw bits of `value` rounded to `dtype` (nearest, ties to even; out of range: infinity).

    BF16 rounds the float32 value, as `edit.bytes` does (a factor is always a float32 in the arithmetic)."""
    if dtype == "F16":  # through float32 first, like the arithmetic in `edit.bytes`
        try:
            return struct.unpack("<H", struct.pack("<e", _bits_to_value(_f32_bits(value), "F32")))[0]
        except OverflowError:
            return 0xFC00 if value < 0 else 0x7C00
    bits = _f32_bits(value)
    if dtype == "F32":
        return bits
    if dtype != "BF16":
        raise ValueError(dtype)
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x7FFFFF:  # NaN stays NaN
        return (bits >> 16) | 0x40
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def round_to_dtype(value: float, dtype: str) -> float:
    """`value` as the nearest number of float dtype `dtype` (BF16, F16, F32), as a Python float."""
    return _bits_to_value(dtype_bits(value, dtype), dtype)


def dtype_neighbours(value: float, dtype: str) -> tuple[float, float]:
    """The representable `dtype` numbers just below and just above `value`'s rounded value."""
    bits = dtype_bits(value, dtype)
    sign = 0x80000000 if dtype == "F32" else 0x8000
    below, above = (bits + 1, bits - 1) if bits & sign else (bits - 1, bits + 1)
    return _bits_to_value(below, dtype), _bits_to_value(above, dtype)
