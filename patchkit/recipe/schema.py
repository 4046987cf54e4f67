"""Recipe format v1: the pydantic schema (strict types), typed resolution constraints, expanded edits.

A recipe is the unit users review; `patchkit.recipe.loader` reads YAML into these models with file:line:column
errors, and every model here forbids unknown keys so a typo is an error, not a silently ignored field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from patchkit.errors import RecipeError
from patchkit.recipe.gates import Checks

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NeuronOp = Literal["invert", "scale", "zero"]
SourceKind = Literal["paper", "diff", "locate", "manual"]


# --- positions (file:line:column for error messages) ---

def dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def where_in(filename: str, positions: dict, loc: tuple) -> str:
    loc = tuple(loc)
    while loc and loc not in positions:
        loc = loc[:-1]
    line, col = positions.get(loc, (1, 1))
    return f"{filename}:{line}:{col}"



# --- schema ----------------------------------------------------------------------------------------------


class ModelSpec(BaseModel):
    """Which checkpoint the recipe edits. `revision` should be a 40-hex commit sha (a pin)."""

    model_config = ConfigDict(extra="forbid")

    repo: str | None = Field(None, description="Hub repo id (org/name) of the base model")
    revision: str | None = Field(None, description="pinned commit sha of the base model")
    architecture: Literal["gemma4", "llama"] | None = Field(None, description="adapter name")

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, value: str | None) -> str | None:
        if value is not None and (value.count("/") != 1 or value.startswith("/") or value.endswith("/")):
            raise ValueError(f"{value!r} is not a Hub repo id; write it as org/name")
        return value

    @property
    def pinned(self) -> bool:
        rev = self.revision or ""
        return len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


class Source(BaseModel):
    """Where the edits come from; evidence fields (scores, probes, method) are kept as given."""

    model_config = ConfigDict(extra="allow")

    kind: SourceKind
    reference: str | None = None


Op = Literal["invert", "scale", "zero", "suppress"]


class PartialEdit(BaseModel):
    """An edit known except for its neuron/expert index."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=0)
    op: Op
    factor: float | None = None
    note: str | None = None


class Constraints(BaseModel):
    """Typed view of `resolution.constraints` (extra keys are allowed and kept)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["neuron", "expert"] | None = None
    layers: list[int] | None = None
    max_edits: int | None = Field(None, ge=1)
    exact_edits: int | None = Field(None, ge=1)
    ops: list[Op] | None = None
    factors: list[float] | None = None
    partial_edits: list[PartialEdit] = Field(default_factory=list)
    units_total: int | None = Field(None, ge=1)
    evidence: str | None = None

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("the list is empty; omit `layers` to search every layer")
        if any(v < 0 for v in value):
            raise ValueError(f"layer indices must be >= 0, got {min(value)}")
        if len(set(value)) != len(value):
            raise ValueError("a layer is listed twice")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Constraints:
        """Cross-field rules, so a typed Constraints is always a coherent search space."""
        if self.max_edits is not None and self.exact_edits is not None and self.exact_edits > self.max_edits:
            raise ValueError(f"exact_edits ({self.exact_edits}) exceeds max_edits ({self.max_edits})")
        if self.layers is not None:
            stray = [p.layer for p in self.partial_edits if p.layer not in self.layers]
            if stray:
                raise ValueError(f"partial_edits: layer {stray[0]} is not in `layers` {self.layers}")
        for i, p in enumerate(self.partial_edits):
            if p.op == "scale" and p.factor is None:
                raise ValueError(f"partial_edits[{i}]: op scale needs a factor")
            if self.kind == "expert" and p.op != "suppress" or self.kind == "neuron" and p.op == "suppress":
                raise ValueError(f"partial_edits[{i}]: op {p.op} does not fit kind {self.kind}")
        if self.kind == "expert" and self.ops and set(self.ops) - {"suppress"}:
            raise ValueError("ops: experts support only `suppress`")
        return self

    def to_yaml_data(self) -> dict[str, Any]:
        """The constraints as plain data (what a recipe file holds), extra keys included."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)

    def get(self, key: str, default: Any = None) -> Any:
        """Read a known or extra key by name (tools record their own notes, e.g. `last_locate`)."""
        value = getattr(self, key, None) if key in type(self).model_fields else (self.model_extra or {}).get(key)
        return default if value is None else value



class Resolution(BaseModel):
    """Whether the edits are known. Unresolved recipes carry constraints and say how to resolve them."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["resolved", "unresolved"] = "resolved"
    method: str | None = Field(None, description="how the edits are (to be) found: paper-citation | diff | locate | manual")
    reference: str | None = None
    resolved_by: str | None = Field(None, description="command and patchkit version that wrote the edits")
    constraints: Constraints = Field(
        default_factory=lambda: Constraints(),
        description="search space of an unresolved recipe: kind, layers, max_edits, exact_edits, ops, factors, "
                    "partial_edits, units_total, evidence (see patchkit.recipe.resolution.Constraints); other keys are kept")
    how_to_resolve: str | None = None


class Publish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str | None = None
    license: str | None = None
    private: bool = False


IntOrList = int | list[int]


class NeuronEdit(BaseModel):
    """Scale MLP neuron(s): column n of down_proj (default) or row n of up_proj."""

    model_config = ConfigDict(extra="forbid")

    layer: IntOrList
    neuron: IntOrList
    op: NeuronOp
    factor: float | None = None
    tensor: Literal["down_proj", "up_proj"] = "down_proj"
    note: str | None = None


class ExpertEdit(BaseModel):
    """Suppress routed expert(s) of an MoE layer."""

    model_config = ConfigDict(extra="forbid")

    layer: IntOrList
    expert: IntOrList
    op: Literal["suppress"]
    tensor: Literal["down_proj"] | None = None
    note: str | None = None


class Recipe(BaseModel):
    """A patchkit recipe (schema v1)."""

    model_config = ConfigDict(extra="forbid")

    patchkit: Literal[1] = Field(1, description="recipe schema version")
    name: str = Field(min_length=1, max_length=96, description="slug (letters, digits, . _ -); names the apply output dir")
    description: str | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    source: Source
    resolution: Resolution | None = None
    edits: list[NeuronEdit | ExpertEdit] = Field(default_factory=list)
    checks: Checks | None = None
    publish: Publish | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, value: str) -> str:
        if not _NAME_RE.match(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a usable name: use letters, digits, '.', '_' and '-' only "
                             "(it becomes the output directory and repo name)")
        return value

    _path: str | None = PrivateAttr(None)
    _text: str | None = PrivateAttr(None)
    _positions: dict[tuple, tuple[int, int]] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def source_text(self) -> str | None:
        return self._text

    @property
    def is_resolved(self) -> bool:
        return self.resolution is None or self.resolution.status == "resolved"

    def where(self, *loc: Any) -> str:
        """`file:line:column` of a field path (best effort), for error messages."""
        return where_in(self._path or "<recipe>", self._positions, tuple(loc))

    def require_resolved(self) -> None:
        """Refuse to apply an unresolved recipe, saying what to run instead."""
        if self.is_resolved:
            return
        res = self.resolution
        how = (res.how_to_resolve if res else None) or self._default_how_to_resolve()
        raise RecipeError(f"{self.where('resolution')}: recipe {self.name!r} is unresolved (it carries no edits yet): {how}")

    def _default_how_to_resolve(self) -> str:
        """The command that resolves this recipe (one clause, for one-line errors)."""
        res = self.resolution
        if res is not None and res.how_to_resolve:
            return res.how_to_resolve
        path = self.path or "RECIPE"
        base = self.model.repo or "BASE"
        if self.model.revision:
            base = f"{base}@{self.model.revision}"
        method = res.method if res is not None else None
        if method == "diff":
            fixed = (res.reference if res is not None else None) or "FIXED"
            return f"run `patchkit recipe extract {base} {fixed} --into {path}` where the Hub is reachable"
        if method == "locate":
            return f"run `patchkit locate {base} --from-recipe {path}` on a machine with the model and a GPU"
        return "fill in `edits:` and delete the `resolution:` section (or find them with `patchkit locate`)"

    def expanded_edits(self) -> list[ResolvedEdit]:
        """One ResolvedEdit per (layer, neuron|expert), lists expanded, in file order."""
        out: list[ResolvedEdit] = []
        for i, edit in enumerate(self.edits):
            layers = edit.layer if isinstance(edit.layer, list) else [edit.layer]
            if isinstance(edit, NeuronEdit):
                kind, indices = "neuron", edit.neuron
                factor = {"invert": -1.0, "zero": 0.0}.get(edit.op, edit.factor)
                tensor: str | None = edit.tensor
            else:
                kind, indices, factor, tensor = "expert", edit.expert, 0.0, edit.tensor
            indices = indices if isinstance(indices, list) else [indices]
            where = self.where("edits", i)
            for layer in layers:
                for index in indices:
                    out.append(ResolvedEdit(layer, kind, index, edit.op, float(factor), tensor, where=f"{where}: edits[{i}]"))
        return out


@dataclass(frozen=True)
class ResolvedEdit:
    """One edited slice: neuron `index` (or expert `index`) of `layer`, multiplied by `factor`."""

    layer: int
    kind: Literal["neuron", "expert"]
    index: int
    op: str
    factor: float
    tensor: str | None = "down_proj"
    where: str = field(default="", compare=False)

    @property
    def key(self) -> tuple:
        """Identity of the edited unit: one neuron or expert of one layer, whichever tensor carries the edit."""
        return (self.layer, self.kind, self.index)


