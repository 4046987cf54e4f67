"""GGUF files checked before anything else reads them: a bounded header walk, then the `gguf` package's own reader.

A GGUF file is someone else's bytes. The `gguf` reader (which transformers uses to load one) trusts the counts
in the header: an array that claims 2^60 elements past the end of the file makes it loop forever while it
allocates; a dimension of 2^64-1 overflows silently; a wrong byte makes it raise whatever numpy raises. So
`validate_gguf` first walks the header here, by hand and in bounded memory, proving every count, string, array
and tensor range against the file size and the caps below; only then does it hand the file to the reader,
inside a guard that turns anything the reader raises into a one-line `ModelError` naming the file. Finally it
checks what a loader would otherwise paper over: a tensor missing for a block the metadata promises (transformers
would fill it with random weights and carry on).

Hand-written because no library validates a GGUF without first trusting it. Layout (little-endian, or all
big-endian): "GGUF", u32 version, u64 tensor count, u64 KV count; KVs (string key, u32 type, value); tensor
infos (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset); padding to `general.alignment`;
tensor data. A string is a u64 length + UTF-8 bytes; an array is a u32 element type + u64 count + elements.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from patchkit._io.fs import check_entry, open_regular, shown
from patchkit.errors import ModelError

__all__ = ["GGUFHeader", "GGUFTensor", "check_gguf_file", "open_gguf_reader", "scan_gguf_header", "validate_gguf"]

#: Largest GGUF file patchkit opens: its weights are de-quantized in memory, so a bigger one cannot be used anyway.
MAX_GGUF_BYTES = 1 << 40
#: Tensors in one file (real models: a few hundred to a few thousand).
MAX_TENSORS = 1 << 17
#: Metadata key/value pairs (real models: 20 to 60).
MAX_KV = 1 << 16
#: Array elements over all metadata arrays together (a 262k vocabulary with scores, types and merges is ~1.4 M).
#: The `gguf` reader (and transformers after it) builds one numpy object per element, ~15-25 us and ~1 KB each on
#: two cores, so this cap is also what bounds their time and memory on a hostile file (about a minute, ~3 GB).
MAX_ARRAY_ELEMENTS = 1 << 21
#: Arrays of arrays at most this deep (llama.cpp reads no nested arrays at all).
MAX_ARRAY_DEPTH = 2
#: One string value (chat templates are tens of KB).
MAX_STRING_BYTES = 1 << 24
#: A metadata key or tensor name (llama.cpp: under 64).
MAX_NAME_BYTES = 1 << 10
#: Dimensions of one tensor (GGML_MAX_DIMS).
MAX_DIMS = 4
#: Blocks (layers) a model may declare.
MAX_BLOCKS = 1 << 16
#: Bytes allowed after the end of the last tensor's data (writers pad to the alignment, at most a few KB).
MAX_TRAILING_BYTES = 1 << 20

_HEADER_BYTES = 24  # magic, version, tensor count, KV count
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset

# GGUF value types: id -> (struct code, size) for scalars
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("B", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_INTEGERS = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_MIN_VALUE_BYTES = {**{t: size for t, (_, size) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
_KEEP_STRING_BYTES = 4096  # string values kept in GGUFHeader.metadata (longer ones are checked, not kept)
_BLOCK = re.compile(r"blk\.([0-9]+)\.")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor info, proven in-bounds: `start`/`end` are absolute byte offsets in the file."""

    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]  # as stored: ne0 (the contiguous axis) first
    start: int
    end: int


@dataclass(frozen=True)
class GGUFHeader:
    """What the header walk proved about a GGUF file."""

    path: Path  # as the caller gave it (used in messages)
    real_path: Path
    size: int
    version: int
    big_endian: bool
    alignment: int
    data_offset: int
    metadata: dict[str, Any] = field(repr=False)  # scalar values and short strings; arrays are not kept
    value_types: dict[str, int] = field(repr=False)  # every key -> its GGUF value type id
    tensors: tuple[GGUFTensor, ...] = field(repr=False)
    #: (key, start, end) of every metadata entry, in file order: the raw bytes a rewrite copies as they are
    kv_spans: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)
    #: byte range of the tensor-info table (its end is where the padding before the data begins)
    tensor_info_span: tuple[int, int] = (0, 0)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) and arch else None


def _fail(display: str | os.PathLike[str], message: str, hint: str | None = None, **data: Any) -> ModelError:
    return ModelError(
        f"{display}: {message}",
        hint=hint or "the file is damaged, truncated or not a model GGUF",
        data={"path": str(display), **data},
    )


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ModelError(
            "reading a GGUF file needs the `gguf` package", hint="pip install 'patchkit-llm[gguf]'"
        ) from None
    return gguf


def check_gguf_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_GGUF_BYTES) -> tuple[Path, int]:
    """(real path, size) of a GGUF file patchkit may open: a regular file, no link out of its own directory
    (an HF cache snapshot's link into its blobs/ is fine), no larger than `max_bytes` (checked before reading)."""
    p = Path(path)
    try:
        real = check_entry(p, p.parent, what="GGUF file")
        size = os.stat(real).st_size
    except FileNotFoundError:
        raise ModelError(
            f"{p}: GGUF file not found", hint="give a .gguf file, or the package that ships one", data={"path": str(p)}
        ) from None
    except OSError as exc:
        raise ModelError(f"{p}: cannot read it ({exc.strerror or exc})", data={"path": str(p)}) from None
    if size > max_bytes:
        raise _fail(
            p,
            f"{size} bytes is larger than any GGUF patchkit opens (limit {max_bytes})",
            hint="is this really a GGUF model file?",
            size=size,
            limit=max_bytes,
        )
    return real, size


class _Cursor:
    """Sequential reads of a file that never run past its end (every length is checked before it is read)."""

    def __init__(self, fh: BinaryIO, size: int, display: Path | str, order: str) -> None:
        self.fh, self.size, self.display, self.order, self.pos = fh, size, display, order, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _fail(
                self.display,
                f"truncated: {what} at byte {self.pos} needs {n} bytes, the file has {self.size - self.pos} left",
                offset=self.pos,
            )

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank under us
            raise _fail(self.display, f"truncated while reading {what} at byte {self.pos}", offset=self.pos)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        if n > 1 << 16:
            self.fh.seek(n, os.SEEK_CUR)
            self.pos += n
        else:
            self.take(n, what)

    def unpack(self, code: str, size: int, what: str) -> Any:
        return struct.unpack(self.order + code, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", 8, what))

    def name(self, what: str, limit: int = MAX_NAME_BYTES) -> str:
        start = self.pos
        n = self.u64(f"the length of {what}")
        if n > limit:
            raise _fail(self.display, f"{what} at byte {start} claims {n} bytes (limit {limit})", offset=start)
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(self.display, f"{what} at byte {start} is not UTF-8", offset=start) from None


class _Walk:
    """The header walk: KVs, then tensor infos, with every count proven against the bytes left."""

    def __init__(self, cur: _Cursor) -> None:
        self.cur = cur
        self.elements = 0
        self.metadata: dict[str, Any] = {}
        self.types: dict[str, int] = {}
        self.spans: list[tuple[str, int, int]] = []

    def fail(self, message: str, **data: Any) -> ModelError:
        return _fail(self.cur.display, message, **data)

    def value(self, vtype: int, key: str, depth: int) -> Any:
        cur = self.cur
        if vtype in _SCALARS:
            code, size = _SCALARS[vtype]
            return cur.unpack(code, size, f"the value of {key!r}")
        if vtype == _STRING:
            start = cur.pos
            n = cur.u64(f"the string length of {key!r}")
            if n > MAX_STRING_BYTES:
                raise self.fail(
                    f"key {key!r}: a string of {n} bytes at byte {start} (limit {MAX_STRING_BYTES})", offset=start
                )
            if n > _KEEP_STRING_BYTES or depth:
                cur.skip(n, f"the string value of {key!r}")
                return None
            try:
                return cur.take(n, f"the string value of {key!r}").decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail(f"key {key!r}: its string value at byte {start} is not UTF-8", offset=start) from None
        if vtype == _ARRAY:
            start = cur.pos
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(
                    f"key {key!r}: arrays nested more than {MAX_ARRAY_DEPTH} deep (at byte {start})", offset=start
                )
            etype = cur.u32(f"the element type of {key!r}")
            if etype not in _MIN_VALUE_BYTES:
                raise self.fail(f"key {key!r}: unknown array element type {etype} at byte {start}", offset=start)
            count = cur.u64(f"the length of {key!r}")
            left = cur.size - cur.pos
            if count * _MIN_VALUE_BYTES[etype] > left:
                raise self.fail(
                    f"key {key!r}: an array of {count} elements at byte {start} cannot fit in the "
                    f"{left} bytes left in the file",
                    offset=start,
                    count=count,
                )
            self.elements += count
            if self.elements > MAX_ARRAY_ELEMENTS:
                raise self.fail(
                    f"key {key!r}: metadata arrays hold more than {MAX_ARRAY_ELEMENTS} elements in all",
                    offset=start,
                    count=count,
                )
            if etype in _SCALARS:
                cur.skip(count * _SCALARS[etype][1], f"the elements of {key!r}")
            else:
                for _ in range(count):
                    self.value(etype, key, depth + 1)
            return None
        raise self.fail(f"key {key!r}: unknown value type {vtype} at byte {cur.pos - 4}", offset=cur.pos - 4)

    def kvs(self, count: int) -> None:
        cur = self.cur
        for i in range(count):
            start = cur.pos
            key = cur.name(f"the name of metadata key #{i}")
            if key in self.types:
                raise self.fail(f"metadata key {key!r} appears twice")
            vtype = cur.u32(f"the type of {key!r}")
            self.types[key] = vtype
            value = self.value(vtype, key, 0)
            if value is not None:
                self.metadata[key] = value
            self.spans.append((key, start, cur.pos))

    def tensor_infos(
        self, count: int, sizes: dict[int, tuple[int, int, str]]
    ) -> list[tuple[str, int, str, tuple[int, ...], int, int]]:
        cur = self.cur
        infos = []
        seen: set[str] = set()
        for i in range(count):
            name = cur.name(f"the name of tensor #{i}")
            if name in seen:
                raise self.fail(f"tensor {name!r} appears twice", tensor=name)
            seen.add(name)
            n_dims = cur.u32(f"the dimension count of {name!r}")
            if n_dims > MAX_DIMS:
                raise self.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})", tensor=name)
            dims = tuple(cur.u64(f"the dimensions of {name!r}") for _ in range(n_dims))
            if any(d >= 1 << 63 for d in dims):
                raise self.fail(f"tensor {name!r} has a negative dimension {list(dims)}", tensor=name)
            gtype = cur.u32(f"the type of {name!r}")
            if gtype not in sizes:
                raise self.fail(f"tensor {name!r} has unknown ggml type {gtype}", tensor=name, ggml_type=gtype)
            block, type_size, type_name = sizes[gtype]
            if dims and dims[0] % block:
                raise self.fail(
                    f"tensor {name!r}: its first dimension {dims[0]} is not a multiple of the "
                    f"{type_name} block size {block}",
                    tensor=name,
                )
            n = 1
            for d in dims:
                n *= d
            nbytes = n // block * type_size
            if nbytes > cur.size:
                raise self.fail(
                    f"tensor {name!r} of shape {list(dims)} needs {nbytes} bytes, more than the whole "
                    f"file ({cur.size})",
                    tensor=name,
                )
            offset = cur.u64(f"the data offset of {name!r}")
            infos.append((name, gtype, type_name, dims, offset, nbytes))
        return infos


def scan_gguf_header(
    path: str | os.PathLike[str],
    *,
    display: str | os.PathLike[str] | None = None,
    real: Path | None = None,
    size: int | None = None,
) -> GGUFHeader:
    """Walk the header of a GGUF file without trusting it; ModelError (one line naming the file) on anything wrong.

    Proves: the magic and a version the `gguf` reader supports; the tensor and KV counts fit the file (each
    needs a minimum number of bytes) and the caps; every string, array and tensor info lies inside the file;
    value types, ggml types and dimension counts are known; no duplicate keys or tensor names; a valid
    `general.alignment`; every tensor's data is aligned, inside the file and overlaps no other; nothing but
    padding follows the last tensor.
    """
    gguf = _require_gguf()
    display_path = Path(display) if display is not None else Path(path)
    if real is None or size is None:
        real, size = check_gguf_file(path)
    sizes = {int(t): (int(b), int(s), t.name) for t, (b, s) in gguf.GGML_QUANT_SIZES.items()}
    supported = tuple(int(v) for v in gguf.gguf_reader.READER_SUPPORTED_VERSIONS)
    try:
        fh = open_regular(real, what="GGUF file")  # non-blocking open, re-checked: a FIFO swapped in is refused
    except FileNotFoundError:
        raise ModelError(f"{display_path}: GGUF file not found", data={"path": str(display_path)}) from None
    with fh:
        magic = fh.read(4)
        if magic != b"GGUF":
            what = "it is empty" if not magic else f"it starts with {magic!r}, a GGUF file with b'GGUF'"
            raise _fail(display_path, f"not a GGUF file ({what})", hint="pass a file written by llama.cpp / gguf-py")
        if size < _HEADER_BYTES:
            raise _fail(display_path, f"truncated: {size} bytes, a GGUF header alone needs {_HEADER_BYTES}", size=size)
        raw_version = fh.read(4)
        little = struct.unpack("<I", raw_version)[0]
        order = "<" if little & 0xFFFF else ">"  # the gguf reader's own rule for a byte-swapped file
        version = struct.unpack(order + "I", raw_version)[0]
        if version not in supported:
            raise _fail(
                display_path,
                f"GGUF version {version} is not supported (readable: {', '.join(map(str, supported))})",
                hint="convert it with a current llama.cpp",
            )
        cur = _Cursor(fh, size, display_path, order)
        cur.pos = 8
        tensor_count = cur.u64("the tensor count")
        kv_count = cur.u64("the metadata count")
        left = size - cur.pos
        if tensor_count > MAX_TENSORS or kv_count > MAX_KV:
            raise _fail(
                display_path,
                f"header claims {tensor_count} tensors and {kv_count} metadata keys "
                f"(limits {MAX_TENSORS} and {MAX_KV})",
                tensors=tensor_count,
                kvs=kv_count,
            )
        if tensor_count * _MIN_TENSOR_INFO_BYTES + kv_count * _MIN_KV_BYTES > left:
            raise _fail(
                display_path,
                f"header claims {tensor_count} tensors and {kv_count} metadata keys, more than "
                f"the {left} bytes after it can hold",
                tensors=tensor_count,
                kvs=kv_count,
            )
        walk = _Walk(cur)
        walk.kvs(kv_count)
        infos_start = cur.pos
        infos = walk.tensor_infos(tensor_count, sizes)
        header_end = cur.pos

    alignment = 32 if "general.alignment" not in walk.types else walk.metadata.get("general.alignment")
    if "general.alignment" in walk.types and walk.types["general.alignment"] != _UINT32:
        raise _fail(display_path, f"general.alignment has value type {walk.types['general.alignment']}, not uint32")
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _fail(display_path, f"general.alignment {alignment} is not a power of two")
    data_offset = -(-header_end // alignment) * alignment
    tensors = []
    for name, gtype, type_name, dims, offset, nbytes in infos:
        if offset % alignment:
            raise _fail(
                display_path,
                f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}",
                tensor=name,
            )
        start = data_offset + offset
        if start + nbytes > size:
            raise _fail(
                display_path,
                f"tensor {name!r}: its data (bytes {start}..{start + nbytes}) lies outside the file ({size} bytes)",
                tensor=name,
                start=start,
                end=start + nbytes,
            )
        tensors.append(GGUFTensor(name, gtype, type_name, dims, start, start + nbytes))
    ordered = sorted(tensors, key=lambda t: (t.start, t.end))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start < a.end:
            raise _fail(
                display_path, f"tensors {a.name!r} and {b.name!r} overlap (bytes {b.start}..{a.end})", tensor=b.name
            )
    end = max([header_end] + [t.end for t in tensors])
    if size - end > MAX_TRAILING_BYTES:
        raise _fail(
            display_path,
            f"{size - end} bytes follow the end of the last tensor at byte {end} (a GGUF file ends "
            "with its tensor data)",
            hint="the file has something appended, or is not what it says",
        )
    return GGUFHeader(
        path=display_path,
        real_path=real,
        size=size,
        version=version,
        big_endian=order == ">",
        alignment=alignment,
        data_offset=data_offset,
        metadata=walk.metadata,
        value_types=walk.types,
        tensors=tuple(tensors),
        kv_spans=tuple(walk.spans),
        tensor_info_span=(infos_start, header_end),
    )


def check_blocks(header: GGUFHeader, parts: tuple[GGUFHeader, ...] = ()) -> None:
    """The tensors cover exactly the blocks `<arch>.block_count` declares (else a loader random-fills the rest).

    `header` is a whole model file, or with `parts` (every file of a split set, `header` being the first) the
    tensors of all the parts together are checked.
    """
    where, arch = header.path, header.architecture
    if arch is None:
        raise _fail(
            where, "GGUF metadata has no general.architecture", hint="the file is incomplete or not a model GGUF"
        )
    split = header.metadata.get("split.count")
    if isinstance(split, int) and split > 1 and not parts:
        raise _fail(
            where,
            f"is one part of a GGUF split into {split} files",
            hint="merge the parts first: llama-gguf-split --merge FIRST-PART OUT.gguf",
        )
    raw_key = f"{arch}.block_count"
    key = shown(raw_key, 80)  # the architecture comes from the file: printed escaped
    blocks = header.metadata.get(raw_key)
    if header.value_types.get(raw_key) not in _INTEGERS or not isinstance(blocks, int):
        raise _fail(where, f"GGUF metadata has no integer {key}", hint="the file is incomplete or not a model GGUF")
    if not 1 <= blocks <= MAX_BLOCKS:
        raise _fail(where, f"{key} is {blocks} (expected 1..{MAX_BLOCKS})")
    present: set[int] = set()
    for t in (t for part in (parts or (header,)) for t in part.tensors):
        m = _BLOCK.match(t.name)
        if m is None:
            continue
        index = int(m.group(1))
        if index >= blocks:
            raise _fail(where, f"tensor {t.name!r} belongs to block {index}, but {key} is {blocks}", tensor=t.name)
        present.add(index)
    missing = [i for i in range(blocks) if i not in present]
    if missing:
        listed = ", ".join(f"blk.{i}" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise _fail(
            where,
            f"{key} is {blocks}, but {len(missing)} block(s) have no tensors ({listed})",
            hint="the file is incomplete: get a complete copy",
            missing=missing[:100],
        )


#: What the `gguf` reader (and numpy under it) raises on bytes it cannot make sense of.
_READER_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    struct.error,
    OverflowError,
    MemoryError,
    RecursionError,
    OSError,
)


def open_gguf_reader(header: GGUFHeader) -> Any:
    """`gguf.GGUFReader` on a file `scan_gguf_header` accepted; whatever it raises becomes a one-line ModelError."""
    gguf = _require_gguf()
    try:
        reader = gguf.GGUFReader(str(header.real_path), "r")
        found = len(reader.tensors)
    except _READER_ERRORS as exc:
        try:
            text = shown(" ".join(str(exc).split()), 200)
        except Exception:  # noqa: BLE001 - an exception whose own message is broken
            text = "?"
        raise _fail(
            header.path,
            f"not a readable GGUF file ({type(exc).__name__}: {text})",
            hint="pass a file written by llama.cpp / gguf-py",
        ) from None
    if found != len(header.tensors):  # pragma: no cover - the walk and the reader disagree: refuse, do not guess
        raise _fail(header.path, f"the gguf reader found {found} tensors, the header walk {len(header.tensors)}")
    return reader


def check_loaded(display: str | os.PathLike[str], loading_info: dict[str, Any]) -> None:
    """Refuse a model transformers built from a GGUF with parameters the file did not supply (it fills those with
    random values and only logs a warning): `loading_info` is from `from_pretrained(..., output_loading_info=True)`."""
    missing = sorted(loading_info.get("missing_keys") or [])
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in (loading_info.get("mismatched_keys") or []))
    for what, names in (("has no weights for", missing), ("has weights of the wrong shape for", mismatched)):
        if names:
            listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise _fail(
                display,
                f"the GGUF {what} {len(names)} parameter(s) of the model ({listed})",
                hint="the file is incomplete or does not match its own metadata",
                parameters=names[:100],
            )


def validate_gguf(path: str | os.PathLike[str], *, max_bytes: int = MAX_GGUF_BYTES, reader: bool = True) -> GGUFHeader:
    """Everything above, in order: file type and size, header walk, blocks, then the `gguf` reader (guarded)."""
    _require_gguf()
    real, size = check_gguf_file(path, max_bytes=max_bytes)
    header = scan_gguf_header(path, real=real, size=size)
    check_blocks(header)
    if reader:
        open_gguf_reader(header)
    return header
