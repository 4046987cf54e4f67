"""From resolved edits to byte work: which file, which tensor, which elements, how many bytes.

The adapter says *what* an edit touches (tensor, axis, index); the plan adds *where* it lives on disk
(weight file, absolute byte range of the tensor, dtype, the selected elements) and refuses anything that
cannot be edited exactly (unknown tensor, out-of-range index, quantized dtype) before a byte is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from patchkit.edit.bytes import Selection
from patchkit.errors import ApplyError
from patchkit.model.safetensors_io import SafetensorsHeader, check_editable


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
            "layer": self.layer, "kind": self.kind, "index": self.index, "op": self.op, "factor": self.factor,
            "tensor": self.tensor, "file": self.file, "dtype": self.dtype, "shape": list(self.shape),
            "axis": self.axis, "slice_index": self.slice_index, "bytes": self.nbytes,
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
        raise ApplyError(f"{owner}: tensor {target.tensor} has shape {list(info.shape)}; axis {target.axis} does not exist")
    if not 0 <= target.index < info.shape[target.axis]:
        raise ApplyError(
            f"{owner}: tensor {target.tensor} has {info.shape[target.axis]} entries on axis {target.axis}; "
            f"index {target.index} is out of range (layer {edit.layer} {edit.kind} {edit.index})"
        )
    start, end = header.absolute(target.tensor)
    factor = getattr(edit, "factor", None)
    if factor is None:
        factor = {"invert": -1.0, "zero": 0.0, "suppress": 0.0}.get(edit.op, 1.0)
    return PlannedEdit(
        layer=int(edit.layer), kind=str(edit.kind), index=int(edit.index), op=str(edit.op), factor=float(factor),
        tensor=target.tensor, file=owner, dtype=info.dtype, shape=info.shape, axis=int(target.axis),
        slice_index=int(target.index), tensor_start=start, tensor_end=end,
    )


def plan_edits(
    pairs: Iterable[tuple[Any, Any]], headers: dict[str, SafetensorsHeader], *, source_dir: Path, weight_files: list[str]
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
        from patchkit.model.safetensors_io import read_header

        headers = {f: read_header(Path(source_dir) / f) for f in ref.weight_files()}
    else:
        headers = ref.headers()
    architecture = getattr(getattr(recipe, "model", None), "architecture", None)
    adapter = get_adapter(ref.config, architecture) if architecture else get_adapter(ref.config)
    edits = recipe.expanded_edits()
    adapter.validate(edits, headers)
    names = {t for h in headers.values() for t in h.tensors}
    pairs = [(edit, target) for edit in edits for target in adapter.targets(edit, names)]
    if not pairs and edits:
        raise ApplyError("the recipe's edits map to no tensors in this model")
    return plan_edits(pairs, headers, source_dir=Path(source_dir or ref.local_dir), weight_files=list(ref.weight_files()))
