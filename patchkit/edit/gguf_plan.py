"""From a recipe to GGUF byte work: which rows of which tensor, their bytes before and after, checked up front.

Planning reads only the rows an edit touches (a few KB each) and computes their new bytes with
`edit.gguf_blocks`, so every refusal (a quant type with no editable scale, a factor MXFP4 cannot hold, a scale
field that would overflow) happens before anything is written. Also here: the `patchkit.*` metadata keys that
carry provenance inside a GGUF, and reading them back (long strings are read from their raw bytes, which the
header walk proved in bounds).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchkit.edit.gguf_blocks import BlockEditError, edit_rows, factor_problem
from patchkit.errors import ModelError, RecipeError
from patchkit.model.gguf_header import GGUFHeader
from patchkit.model.gguf_model import GGUFModel, GGUFTarget, gguf_targets

__all__ = [
    "PREFIX",
    "GGUFEdit",
    "GGUFPlan",
    "plan_gguf",
    "read_patchkit_metadata",
    "string_kv",
]

#: Every provenance key patchkit writes into a GGUF starts with this.
PREFIX = "patchkit."
_STRING = 8


@dataclass(frozen=True)
class GGUFEdit:
    """One recipe unit's rows in one tensor, with their bytes before and after the edit."""

    layer: int
    kind: str
    index: int
    op: str
    factor: float
    target: GGUFTarget
    before: bytes = field(repr=False)
    after: bytes = field(repr=False)
    where: str = field(default="", compare=False)

    @property
    def changed_bytes(self) -> int:
        a = np.frombuffer(self.before, dtype=np.uint8)
        b = np.frombuffer(self.after, dtype=np.uint8)
        return int(np.count_nonzero(a != b))

    def runs(self) -> list[tuple[int, bytes, bytes]]:
        """(absolute offset, old bytes, new bytes) of each run of changed bytes (what an in-place edit writes)."""
        a = np.frombuffer(self.before, dtype=np.uint8)
        b = np.frombuffer(self.after, dtype=np.uint8)
        diff = np.flatnonzero(a != b)
        if diff.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(diff) > 1)
        starts = np.concatenate([[diff[0]], diff[breaks + 1]])
        ends = np.concatenate([diff[breaks], [diff[-1]]]) + 1
        return [
            (self.target.start + int(s), self.before[int(s) : int(e)], self.after[int(s) : int(e)])
            for s, e in zip(starts, ends, strict=True)
        ]

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "layer": self.layer,
            "kind": self.kind,
            "index": self.index,
            "op": self.op,
            "factor": self.factor,
            "tensor": t.tensor,
            "type": t.type_name,
            "rows": [t.first_row, t.first_row + t.rows],
            "part": t.part,
            "bytes": t.rows * t.row_bytes,
            "changed_bytes": self.changed_bytes,
            "before_sha256": hashlib.sha256(self.before).hexdigest(),
            "after_sha256": hashlib.sha256(self.after).hexdigest(),
        }


@dataclass
class GGUFPlan:
    model: GGUFModel
    edits: list[GGUFEdit]

    @property
    def parts_with_edits(self) -> set[int]:
        return {e.target.part for e in self.edits}

    @property
    def bytes_edited(self) -> int:
        return sum(e.changed_bytes for e in self.edits)

    def edits_of(self, part: int) -> list[GGUFEdit]:
        return sorted((e for e in self.edits if e.target.part == part), key=lambda e: e.target.start)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model.path),
            "files": [str(p) for p in self.model.files],
            "architecture": self.model.gguf_architecture,
            "quant_types": self.model.quant_types(),
            "edits": [e.to_json() for e in self.edits],
            "bytes_edited": self.bytes_edited,
        }


def _read(path: Path, start: int, n: int) -> bytes:
    with open(path, "rb", buffering=0) as fh:
        data = os.pread(fh.fileno(), n, start)
    if len(data) != n:
        raise ModelError(f"{path}: truncated: {n} bytes at {start} could not be read", data={"path": str(path)})
    return data


def plan_gguf(recipe: Any, model: GGUFModel) -> GGUFPlan:
    """Resolve every recipe edit to GGUF rows and compute their new bytes; RecipeError (one line naming the
    edit, the tensor, its type and what to do) for anything that cannot be written exactly."""
    if recipe.model.architecture and recipe.model.architecture != model.architecture:
        raise RecipeError(
            f"{recipe.where('model', 'architecture')}: the recipe is for {recipe.model.architecture} models, "
            f"{model.path.name} is {model.gguf_architecture}",
            hint="pass the GGUF of the model the recipe was written for",
        )
    edits: list[GGUFEdit] = []
    claimed: dict[tuple[str, int], str] = {}
    for edit in recipe.expanded_edits():
        for target in gguf_targets(model, edit):
            where = edit.where or "recipe"
            for row in range(target.first_row, target.first_row + target.rows):
                key = (target.tensor, row)
                if key in claimed:
                    raise RecipeError(
                        f"{where}: {target.what} is also edited by {claimed[key]}; in a GGUF both land on the same row",
                        hint="merge the two edits into one",
                    )
            for row in range(target.first_row, target.first_row + target.rows):
                claimed[(target.tensor, row)] = where
            problem = factor_problem(target.type_name, edit.op, edit.factor)
            if problem:
                raise RecipeError(
                    f"{where}: {target.tensor} is {target.type_name}: {problem}", data={"tensor": target.tensor}
                )
            header = model.parts[target.part]
            before = _read(header.real_path, target.start, target.end - target.start)
            try:
                after = edit_rows(target.type_name, np.frombuffer(before, dtype=np.uint8), edit.op, edit.factor)
            except BlockEditError as exc:
                raise RecipeError(
                    f"{where}: {target.what} ({target.type_name}): {exc}", data={"tensor": target.tensor}
                ) from None
            edits.append(
                GGUFEdit(
                    edit.layer, edit.kind, edit.index, edit.op, edit.factor, target, before, after.tobytes(), where
                )
            )
    return GGUFPlan(model, edits)


# --- metadata --------------------------------------------------------------------------------------------


def string_kv(key: str, value: str) -> bytes:
    """One GGUF metadata entry holding a UTF-8 string (little-endian)."""
    k, v = key.encode("utf-8"), value.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _STRING) + struct.pack("<Q", len(v)) + v


def read_patchkit_metadata(header: GGUFHeader) -> dict[str, str]:
    """Every `patchkit.*` string entry of a GGUF header, read whole from its raw bytes (the header walk keeps
    only short strings)."""
    out: dict[str, str] = {}
    spans = [(k, a, b) for k, a, b in header.kv_spans if k.startswith(PREFIX)]
    if not spans:
        return out
    with open(header.real_path, "rb", buffering=0) as fh:
        for key, a, b in spans:
            if header.value_types.get(key) != _STRING:
                continue
            raw = os.pread(fh.fileno(), b - a, a)
            klen = struct.unpack_from("<Q", raw, 0)[0]
            vstart = 8 + klen + 4 + 8
            try:
                out[key] = raw[vstart:].decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


def provenance_of(header: GGUFHeader) -> dict[str, Any] | None:
    """The provenance document a patchkit apply wrote into a GGUF, or None when it has none."""
    meta = read_patchkit_metadata(header)
    if f"{PREFIX}version" not in meta:
        return None
    try:
        doc = json.loads(meta.get(f"{PREFIX}provenance", "{}"))
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    doc["patchkit_version"] = meta.get(f"{PREFIX}version")
    doc.setdefault("recipe", {})
    if isinstance(doc["recipe"], dict):
        doc["recipe"]["text"] = meta.get(f"{PREFIX}recipe")
        doc["recipe"]["sha256"] = meta.get(f"{PREFIX}recipe.sha256")
    doc["source_sha256"] = (meta.get(f"{PREFIX}source.sha256") or "").split()
    return doc
