"""From resolved edits to byte work: which file, which tensor, which elements, how many bytes.

The adapter says *what* an edit touches (tensor, axis, index); the plan adds *where* it lives on disk
(weight file, absolute byte range of the tensor, dtype, the selected elements) and refuses anything that
cannot be edited exactly (unknown tensor, out-of-range index, quantized dtype) before a byte is written.

A scale is also refused here when its result would not be what the recipe says: a factor that is not finite, 0,
1 or a stray -1 once rounded to the tensor's dtype (`adapters.base.scale_factor_problem`), and — reading the one
slice it edits — a factor that overflows the dtype, flushes every nonzero weight to 0, or changes no element
(`bytes.ScaleCheck`). Such an edit would otherwise be written, with exit 0, as a wrong or empty edit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from patchkit._io.fs import open_regular
from patchkit.edit.bytes import ScaleCheck, Selection, raw_view
from patchkit.errors import ApplyError, RecipeError
from patchkit.model.adapters.base import scale_factor_problem
from patchkit.model.safetensors_io import SCAN_CHUNK, SafetensorsHeader, check_editable

#: Between selected blocks of a slice, a gap up to this many bytes is read through rather than skipped with a
#: new read (a column of a narrow matrix is read as one span; of a wide one, one small read per row).
READ_THROUGH_GAP = 4096


@dataclass(frozen=True)
class PlannedEdit:
    """One resolved edit on one tensor slice, located in a weight file."""

    layer: int
    kind: str
    index: int
    op: str
    factor: float
    tensor: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    axis: int
    slice_index: int
    tensor_start: int  # absolute offset of the tensor's first byte in `file`
    tensor_end: int
    where: str = field(default="", compare=False)  # the recipe position of the edit, for messages

    @property
    def selection(self) -> Selection:
        return Selection.of(self.shape, self.axis, self.slice_index)

    @property
    def itemsize(self) -> int:
        return (self.tensor_end - self.tensor_start) // max(1, _numel(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the edited slice."""
        return self.selection.count * self.itemsize

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "kind": self.kind,
            "index": self.index,
            "op": self.op,
            "factor": self.factor,
            "tensor": self.tensor,
            "file": self.file,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "axis": self.axis,
            "slice_index": self.slice_index,
            "bytes": self.nbytes,
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class Plan:
    """Everything apply will do, computed from headers only (what --dry-run prints)."""

    source_dir: Path
    weight_files: list[str]
    edits: list[PlannedEdit]
    file_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def files_to_rewrite(self) -> dict[str, list[PlannedEdit]]:
        out: dict[str, list[PlannedEdit]] = {}
        for e in self.edits:
            out.setdefault(e.file, []).append(e)
        return out

    @property
    def untouched_files(self) -> list[str]:
        touched = self.files_to_rewrite
        return [f for f in self.weight_files if f not in touched]

    @property
    def bytes_to_write(self) -> int:
        return sum(self.file_sizes.get(f, 0) for f in self.files_to_rewrite)

    @property
    def bytes_edited(self) -> int:
        return sum(e.nbytes for e in self.edits)

    def to_json(self) -> dict[str, Any]:
        return {
            "source_dir": str(self.source_dir),
            "edits": [e.to_json() for e in self.edits],
            "files_rewritten": sorted(self.files_to_rewrite),
            "files_linked": self.untouched_files,
            "bytes_to_write": self.bytes_to_write,
            "bytes_edited": self.bytes_edited,
        }


def locate(edit: Any, target: Any, headers: dict[str, SafetensorsHeader]) -> PlannedEdit:
    """Place one (ResolvedEdit, TensorTarget) pair in the checkpoint, checking index bounds and dtype."""
    owner = next((f for f, h in headers.items() if target.tensor in h.tensors), None)
    if owner is None:
        raise ApplyError(
            f"tensor {target.tensor} (layer {edit.layer} {edit.kind} {edit.index}) is not in any weight file; "
            "is the recipe for this model?"
        )
    header = headers[owner]
    info = check_editable(header, target.tensor)
    if not 0 <= target.axis < len(info.shape):
        raise ApplyError(
            f"{owner}: tensor {target.tensor} has shape {list(info.shape)}; axis {target.axis} does not exist"
        )
    if not 0 <= target.index < info.shape[target.axis]:
        raise ApplyError(
            f"{owner}: tensor {target.tensor} has {info.shape[target.axis]} entries on axis {target.axis}; "
            f"index {target.index} is out of range (layer {edit.layer} {edit.kind} {edit.index})"
        )
    start, end = header.absolute(target.tensor)
    factor = getattr(edit, "factor", None)
    where = _where(edit)
    if edit.op == "scale":
        problem = scale_factor_problem(factor, info.dtype)
        if problem:
            raise RecipeError(
                f"{where}: {target.tensor} is {info.dtype}: {problem}",
                data={"tensor": target.tensor, "dtype": info.dtype, "factor": factor},
            )
    if factor is None:
        factor = {"invert": -1.0, "zero": 0.0, "suppress": 0.0}.get(edit.op, 1.0)
    return PlannedEdit(
        layer=int(edit.layer),
        kind=str(edit.kind),
        index=int(edit.index),
        op=str(edit.op),
        factor=float(factor),
        tensor=target.tensor,
        file=owner,
        dtype=info.dtype,
        shape=info.shape,
        axis=int(target.axis),
        slice_index=int(target.index),
        tensor_start=start,
        tensor_end=end,
        where=where,
    )


def _where(edit: Any) -> str:
    return getattr(edit, "where", "") or f"layer {edit.layer} {edit.kind} {edit.index}"


def check_scaled_slices(edits: Iterable[PlannedEdit], source_dir: Path) -> None:
    """Read each scaled slice once and refuse a factor that overflows its dtype, flushes every nonzero weight to
    zero, or changes nothing (RecipeError naming the edit, tensor, dtype and factor). Weight files that are not on
    disk (headers read remotely) are skipped."""
    by_file: dict[str, list[PlannedEdit]] = {}
    for e in edits:
        if e.op == "scale":
            by_file.setdefault(e.file, []).append(e)
    for file, group in by_file.items():
        path = Path(source_dir) / file
        if not os.path.lexists(path):
            continue
        with open_regular(path, source_dir, what="safetensors file") as fh:
            for e in group:
                check = ScaleCheck(e.dtype, e.factor)
                for raw in _slice_values(fh, e):
                    check.update(raw)
                problem = check.problem()
                if problem:
                    raise RecipeError(
                        f"{e.where}: scaling {e.tensor} ({e.dtype}) by {e.factor!r} {problem}",
                        data={
                            "tensor": e.tensor,
                            "dtype": e.dtype,
                            "factor": e.factor,
                            "file": file,
                            "max_abs": check.max_abs,
                        },
                    )


def _slice_values(fh: BinaryIO, e: PlannedEdit) -> Iterator[np.ndarray]:
    """The raw bits of the elements `e` selects, in batches of at most about SCAN_CHUNK bytes."""
    sel, item, fd = e.selection, e.itemsize, fh.fileno()
    period = sel.dim * sel.inner

    def pread(offset: int, n: int) -> bytes:
        data = os.pread(fd, n, offset)
        if len(data) != n:
            raise ApplyError(f"{e.file}: file shrank while reading tensor {e.tensor}")
        return data

    if sel.outer > 1 and (period - sel.inner) * item <= READ_THROUGH_GAP and period * item <= SCAN_CHUNK:
        # blocks close together: read the span through, pick the selected elements out
        first = sel.index * sel.inner
        last = (sel.outer - 1) * period + first + sel.inner
        step = max(period, SCAN_CHUNK // item // period * period)
        for e0 in range(first, last, step):
            e1 = min(last, e0 + step)
            raw = raw_view(pread(e.tensor_start + e0 * item, (e1 - e0) * item), e.dtype)
            positions = sel.positions_in(e0, e1)
            if isinstance(positions, np.ndarray):
                yield raw[positions]
            else:
                yield from (raw[lo:hi] for lo, hi in positions)
        return
    batch: list[bytes] = []
    size = 0
    for lo, hi in sel.element_ranges():
        a, b = e.tensor_start + lo * item, e.tensor_start + hi * item
        while a < b:
            n = min(SCAN_CHUNK, b - a)
            batch.append(pread(a, n))
            size += n
            a += n
            if size >= SCAN_CHUNK:
                yield raw_view(b"".join(batch), e.dtype)
                batch, size = [], 0
    if batch:
        yield raw_view(b"".join(batch), e.dtype)


def plan_edits(
    pairs: Iterable[tuple[Any, Any]],
    headers: dict[str, SafetensorsHeader],
    *,
    source_dir: Path,
    weight_files: list[str],
) -> Plan:
    """A plan from explicit (edit, target) pairs (used by `plan_recipe` and by tests without adapters)."""
    edits = [locate(edit, target, headers) for edit, target in pairs]
    seen: dict[tuple[str, int, int], PlannedEdit] = {}
    for e in edits:
        key = (e.tensor, e.axis, e.slice_index)
        if key in seen:
            other = seen[key]
            raise ApplyError(
                f"edits layer {other.layer} {other.kind} {other.index} and layer {e.layer} {e.kind} {e.index} both "
                f"touch {e.tensor}[axis {e.axis} = {e.slice_index}]; merge them into one edit"
            )
        seen[key] = e
    check_scaled_slices(edits, source_dir)
    sizes = {}
    for f in weight_files:
        p = source_dir / f
        sizes[f] = p.stat().st_size if p.exists() else (headers[f].file_size or 0)
    return Plan(source_dir=source_dir, weight_files=list(weight_files), edits=edits, file_sizes=sizes)


def plan_recipe(recipe: Any, ref: Any, *, source_dir: Path | None = None) -> Plan:
    """Resolve a recipe against a model (adapter targets + header geometry) into a byte-level plan."""
    from patchkit.model.adapters import get_adapter

    if source_dir is not None:
        # the bytes we patch are the local files: take offsets from their own headers, never from remote copies
        ref = ref.at(source_dir)
    headers = ref.headers()  # index and headers checked against each other; every read checked (patchkit._io.fs)
    architecture = getattr(getattr(recipe, "model", None), "architecture", None)
    adapter = get_adapter(ref.config, architecture or None, source=ref.config_source)
    edits = recipe.expanded_edits()
    adapter.validate(edits, headers)
    names = {t for h in headers.values() for t in h.tensors}
    pairs = [(edit, target) for edit in edits for target in adapter.targets(edit, names)]
    if not pairs and edits:
        raise ApplyError("the recipe's edits map to no tensors in this model")
    return plan_edits(
        pairs, headers, source_dir=Path(source_dir or ref.local_dir), weight_files=list(ref.weight_files())
    )
