"""Candidate edits: small immutable values that label themselves and turn into recipe edits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patchkit.errors import PatchkitError

__all__ = ["Edit", "Candidate", "parse_ops", "op_name", "DEFAULT_OPS"]

#: Neuron factors tried by default: invert, zero, x0.5 (reduce a unit that drives loops) and x2, x3 (amplify a
#: unit that brakes them); the CLI spelling is `invert,zero,scale:0.5,scale:2,scale:3`.
DEFAULT_OPS: tuple[float, ...] = (-1.0, 0.0, 0.5, 2.0, 3.0)


@dataclass(frozen=True, order=True)
class Edit:
    """Scale neuron `index` of `layer` (kind "neuron") by `factor`, or suppress expert `index` (kind "expert")."""

    layer: int
    kind: str
    index: int
    factor: float

    @property
    def label(self) -> str:
        if self.kind == "expert":
            return f"L{self.layer} e{self.index} suppress"
        return f"L{self.layer} n{self.index} x{self.factor:g}"

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "index": self.index, "factor": self.factor, "op": op_name(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Edit:
        return cls(int(data["layer"]), str(data["kind"]), int(data["index"]), float(data["factor"]))


def op_name(edit: Edit) -> str:
    if edit.kind == "expert":
        return "suppress"
    if edit.factor == -1.0:
        return "invert"
    if edit.factor == 0.0:
        return "zero"
    return "scale"


@dataclass(frozen=True)
class Candidate:
    """One configuration tried in the sweep: a set of edits applied together (empty = the unedited base)."""

    edits: tuple[Edit, ...] = ()

    @property
    def label(self) -> str:
        return " + ".join(e.label for e in self.edits) or "base"

    @property
    def short_label(self) -> str:
        """The label, or for a large set its size and first edits (a 256-unit label helps nobody)."""
        if len(self.edits) <= 8:
            return self.label
        return f"{len(self.edits)} units: " + " + ".join(e.label for e in self.edits[:4]) + " + ..."

    @property
    def is_base(self) -> bool:
        return not self.edits

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "edits": [e.to_json() for e in self.edits]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        return cls(tuple(Edit.from_json(e) for e in data["edits"]))

    def recipe_edits(self) -> list[dict[str, Any]]:
        """Edits in recipe YAML form (patchkit/recipe.py NeuronEdit / ExpertEdit)."""
        out: list[dict[str, Any]] = []
        for e in self.edits:
            if e.kind == "expert":
                out.append({"layer": e.layer, "expert": e.index, "op": "suppress"})
            else:
                op = op_name(e)
                item: dict[str, Any] = {"layer": e.layer, "neuron": e.index, "op": op}
                if op == "scale":
                    item["factor"] = e.factor
                out.append(item)
        return out


def parse_ops(text: str | list[str] | tuple[str, ...]) -> list[float]:
    """'invert,zero,scale:0.5' -> neuron factors [-1, 0, 0.5] (expert suppression is always tried on MoE layers)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    factors: list[float] = []
    for raw in parts:
        part = raw.strip().lower()
        if not part:
            continue
        if part == "invert":
            value = -1.0
        elif part == "zero":
            value = 0.0
        elif part.startswith("scale:"):
            try:
                value = float(part.split(":", 1)[1])
            except ValueError:
                raise PatchkitError(f"ops: {raw!r} is not scale:<number>; e.g. scale:0.5") from None
        elif part == "suppress":
            continue
        else:
            raise PatchkitError(f"ops: unknown op {raw!r}; use invert, zero, scale:<factor> (comma-separated)")
        if value == 1.0:
            raise PatchkitError(f"ops: {raw!r} is the identity (factor 1); choose another factor")
        if value not in factors:
            factors.append(value)
    if not factors:
        raise PatchkitError("ops: no op given; e.g. invert,zero,scale:0.5")
    return factors
