"""Recipe format v1: YAML loaded safely, validated by pydantic, errors pointing at file:line:column.

A recipe is the unit users review, so every error names where in the file it is and how to fix it.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from patchkit.errors import RecipeError
from patchkit.gates import Checks

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NeuronOp = Literal["invert", "scale", "zero"]
SourceKind = Literal["paper", "diff", "locate", "manual"]


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


class Resolution(BaseModel):
    """Whether the edits are known. Unresolved recipes carry constraints and say how to resolve them."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["resolved", "unresolved"] = "resolved"
    method: str | None = Field(None, description="how the edits are (to be) found: paper-citation | diff | locate | manual")
    reference: str | None = None
    resolved_by: str | None = Field(None, description="command and patchkit version that wrote the edits")
    constraints: dict[str, Any] = Field(
        default_factory=dict,
        description="search space of an unresolved recipe: kind, layers, max_edits, exact_edits, ops, factors, "
                    "partial_edits, units_total, evidence (see patchkit.resolution.Constraints); other keys are kept")
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
        return _where(self._path or "<recipe>", self._positions, tuple(loc))

    def require_resolved(self) -> None:
        """Refuse to apply an unresolved recipe, saying what to run instead."""
        if self.is_resolved:
            return
        res = self.resolution
        how = (res.how_to_resolve if res else None) or self._default_how_to_resolve()
        raise RecipeError(f"{self.where('resolution')}: recipe {self.name!r} is unresolved (it carries no edits yet): {how}")

    def _default_how_to_resolve(self) -> str:
        from patchkit.resolution import how_to_resolve

        return how_to_resolve(self)

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


# --- YAML loading with positions -------------------------------------------------------------------------

_STANDARD_TAGS = tuple(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq"))


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")  # round-trip: keeps line/column; constructs only plain containers and scalars
    yaml.allow_duplicate_keys = False
    return yaml


MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 100_000  # YAML aliases can expand exponentially ("billion laughs"); a real recipe has a few hundred


def _plain(node: Any, loc: tuple, positions: dict, filename: str, budget: list[int] | None = None) -> Any:
    """Convert ruamel containers to plain Python, recording the line/column of every key and item."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise RecipeError(f"{filename}:1:1: the recipe expands to more than {MAX_NODES} values",
                          hint="recipes are small; remove the YAML aliases (*name) that multiply the data")

    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, TaggedScalar) or (tag and tag not in _STANDARD_TAGS and tag != "!"):
        raise RecipeError(
            f"{_where(filename, positions, loc)}: {_dotted(loc) or 'document'}: YAML tag {tag or ''} is not allowed",
            hint="recipes are plain data; remove the tag",
        )
    if isinstance(node, CommentedMap):
        out = {}
        for key in node:
            try:
                line, col = node.lc.key(key)
                positions[loc + (key,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            if not isinstance(key, str):
                raise RecipeError(f"{_where(filename, positions, loc + (key,))}: {_dotted(loc) or 'document'}: key {key!r} must be a string")
            out[key] = _plain(node[key], loc + (key,), positions, filename, budget)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, item in enumerate(node):
            try:
                line, col = node.lc.item(i)
                positions[loc + (i,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            out_list.append(_plain(item, loc + (i,), positions, filename, budget))
        return out_list
    if isinstance(node, AbstractSet):  # !!set
        return {_plain(item, loc, positions, filename, budget) for item in node}
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _where(filename: str, positions: dict, loc: tuple) -> str:
    loc = tuple(loc)
    while loc and loc not in positions:
        loc = loc[:-1]
    line, col = positions.get(loc, (1, 1))
    return f"{filename}:{line}:{col}"


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (RecipeError with file:line:column on any problem)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: recipe is not UTF-8 text") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.strerror})") from None
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {len(text)} characters is too large for a recipe (limit {MAX_RECIPE_BYTES})",
                          hint="is this really a recipe file?")
    return parse_recipe(text, str(path))


def parse_recipe(text: str, filename: str = "<recipe>") -> Recipe:
    """Validate recipe YAML text; `filename` is used in error messages."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    positions: dict[tuple, tuple[int, int]] = {}
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise RecipeError(f"{where}: YAML syntax error: {problem}", hint="fix the YAML syntax") from None
    except YAMLError as exc:
        raise RecipeError(f"{filename}: YAML error: {' '.join(str(exc).split())}") from None
    if doc is None:
        raise RecipeError(f"{filename}:1:1: the recipe is empty", hint="start from `patchkit new`")
    data = _plain(doc, (), positions, filename)
    if not isinstance(data, dict):
        raise RecipeError(f"{filename}:1:1: a recipe must be a mapping (key: value), got {type(data).__name__}")
    _check_top_level(data, positions, filename)
    edits_raw = data.get("edits", [])
    if edits_raw is None:
        edits_raw = []
    if not isinstance(edits_raw, list):
        raise RecipeError(f"{_where(filename, positions, ('edits',))}: edits: must be a list of edits")
    data = dict(data)
    data["edits"] = [_edit_model(e, i, positions, filename) for i, e in enumerate(edits_raw)]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, positions, filename, ()) from None
    recipe._path, recipe._text, recipe._positions = filename, text, positions
    _check_semantics(recipe)
    return recipe


def _check_top_level(data: dict, positions: dict, filename: str) -> None:
    version = data.get("patchkit")
    if version is None:
        raise RecipeError(f"{filename}:1:1: patchkit: missing schema version", hint="add `patchkit: 1` as the first line")
    if version != SCHEMA_VERSION:
        raise RecipeError(
            f"{_where(filename, positions, ('patchkit',))}: patchkit: schema version {version!r} is not supported",
            hint=f"this patchkit reads version {SCHEMA_VERSION}",
        )


def _edit_model(raw: Any, i: int, positions: dict, filename: str) -> NeuronEdit | ExpertEdit:
    loc = ("edits", i)
    where = _where(filename, positions, loc)
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: edits[{i}]: an edit must be a mapping like {{layer: 3, neuron: 7, op: invert}}")
    has_neuron, has_expert = "neuron" in raw, "expert" in raw
    if has_neuron and has_expert:
        raise RecipeError(f"{where}: edits[{i}]: give either `neuron` or `expert`, not both", hint="split it into two edits")
    if not has_neuron and not has_expert:
        raise RecipeError(f"{where}: edits[{i}]: missing `neuron` or `expert`", hint="say which neuron(s) or expert(s) to edit")
    model = NeuronEdit if has_neuron else ExpertEdit
    if has_expert and raw.get("op") not in (None, "suppress"):
        raise RecipeError(
            f"{_where(filename, positions, loc + ('op',))}: edits[{i}].op: experts support only `suppress`, got {raw.get('op')!r}"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, positions, filename, loc) from None


def _validation_error(exc: ValidationError, positions: dict, filename: str, prefix: tuple) -> RecipeError:
    def strip(raw: tuple) -> tuple:  # drop pydantic's union-branch labels from an error location
        return tuple(p for p in raw if not (isinstance(p, str) and p in ("int", "list[int]", "NeuronEdit", "ExpertEdit")))

    errors = exc.errors()
    err = errors[0]
    first = strip(err["loc"])
    for other in errors[1:]:  # `int | list[int]`: the list branch's error names the bad item, so prefer it
        if len(strip(other["loc"])) > len(first) and strip(other["loc"])[: len(first)] == first:
            err, first = other, strip(other["loc"])
    loc = prefix + first
    path = _dotted(loc) or "recipe"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        hint = "remove it or check its spelling (see `patchkit schema`)"
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: unknown key", hint=hint)
    if kind == "missing":
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: required field is missing")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: {err.get('input')!r} is not allowed; expected {expected}")
    value = err.get("input")
    if kind == "string_type" and isinstance(value, (int, float, _dt.date)) and not isinstance(value, bool):
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: must be text, but YAML read {value} as a "
                           f"{'date' if isinstance(value, _dt.date) else 'number'}", hint="put the value in quotes so YAML keeps it as written")
    if kind == "string_type" and isinstance(value, (dict, list, set)):
        shape = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a set"
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: must be text, got {shape}",
                           hint="quote it, or use a block scalar (|) for multi-line text")
    if kind in ("int_type", "int_parsing", "int_from_float") and loc and loc[-1] in ("layer", "neuron", "expert"):
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: must be an index or a list of indices, got {value!r}",
                           hint=f"e.g. `{loc[-1]}: 3` or `{loc[-1]}: [3, 7]`")
    if kind == "value_error":  # our own validators: the message already says what is wrong
        return RecipeError(f"{_where(filename, positions, loc)}: {path}: {msg.removeprefix('Value error, ')}")
    return RecipeError(f"{_where(filename, positions, loc)}: {path}: {msg} (got {value!r})")



def _check_semantics(recipe: Recipe) -> None:
    """Cross-field rules pydantic field types cannot express: factors, indices, duplicates, resolution."""
    seen: dict[tuple, tuple[ResolvedEdit, int]] = {}
    for i, edit in enumerate(recipe.edits):
        base = ("edits", i)
        for name in ("layer", "neuron" if isinstance(edit, NeuronEdit) else "expert"):
            value = getattr(edit, name)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise RecipeError(f"{recipe.where(*base, name)}: edits[{i}].{name}: the list is empty")
            if any(v < 0 for v in values):
                raise RecipeError(f"{recipe.where(*base, name)}: edits[{i}].{name}: indices must be >= 0, got {min(values)}")
            if len(set(values)) != len(values):
                dup = next(v for v in values if values.count(v) > 1)
                raise RecipeError(f"{recipe.where(*base, name)}: edits[{i}].{name}: {dup} is listed twice", hint="list each index once")
        if isinstance(edit, NeuronEdit):
            if edit.op == "scale":
                if edit.factor is None:
                    raise RecipeError(f"{recipe.where(*base, 'op')}: edits[{i}].factor: op scale needs a factor", hint="add e.g. `factor: 0.5`")
                if not math.isfinite(edit.factor):
                    raise RecipeError(f"{recipe.where(*base, 'factor')}: edits[{i}].factor: {edit.factor} is not a finite number")
                if edit.factor == 1.0:
                    raise RecipeError(f"{recipe.where(*base, 'factor')}: edits[{i}].factor: scaling by 1 changes nothing", hint="remove the edit")
            elif edit.factor is not None:
                raise RecipeError(
                    f"{recipe.where(*base, 'factor')}: edits[{i}].factor: op {edit.op} takes no factor",
                    hint="use `op: scale` with a factor, or drop the factor",
                )
    for resolved in recipe.expanded_edits():
        key = resolved.key
        i = int(resolved.where.rsplit("edits[", 1)[1].rstrip("]"))
        if key in seen:
            first, j = seen[key]
            what = f"layer {resolved.layer} {resolved.kind} {resolved.index}"
            if first.tensor != resolved.tensor and resolved.kind == "neuron":
                raise RecipeError(
                    f"{recipe.where('edits', i)}: edits[{i}]: {what} is edited on both up_proj and down_proj "
                    f"(edits[{j}]); the two factors would multiply",
                    hint="edit each neuron once, on one tensor",
                )
            hint = "each slice may be edited once; merge the two edits" if first.op == resolved.op else (
                f"it cannot be both {first.op} and {resolved.op}; keep one")
            raise RecipeError(f"{recipe.where('edits', i)}: edits[{i}]: {what} is already edited by edits[{j}]", hint=hint)
        seen[key] = (resolved, i)
    if recipe.resolution is not None and recipe.resolution.constraints:
        from patchkit.resolution import parse_constraints

        parse_constraints(recipe.resolution.constraints, where=f"{recipe.where('resolution', 'constraints')}: "
                          "resolution.constraints", positions=recipe._positions, filename=recipe._path or "<recipe>")
    if recipe.is_resolved and not recipe.edits:
        raise RecipeError(f"{recipe.where('edits')}: edits: the recipe has no edits", hint="add edits, or mark it `resolution: {status: unresolved}`")
    if not recipe.is_resolved and recipe.edits:
        raise RecipeError(
            f"{recipe.where('resolution')}: resolution.status: an unresolved recipe must not carry edits",
            hint="set status: resolved (and say how in resolution.method) or remove the edits",
        )


# --- writing ---------------------------------------------------------------------------------------------


def recipe_to_yaml(recipe: Recipe) -> str:
    """Normalized YAML for a recipe (used when the verbatim text is not available)."""
    from ruamel.yaml import YAML

    data = recipe.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None
    yaml.sort_base_mapping_type_on_output = False
    buf = StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write a recipe atomically (temp file + rename)."""
    from patchkit.fsutil import atomic_write_text

    return atomic_write_text(Path(path), recipe.source_text or recipe_to_yaml(recipe))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe format, for editor completion."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "patchkit recipe v1"
    return schema
