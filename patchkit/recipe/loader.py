"""Recipe YAML in and out: safe round-trip parsing, file:line:column errors, semantic checks, atomic dumps.

ruamel's round-trip loader keeps each key's line and column; the data is converted to plain Python (no tags,
no custom types, no alias explosions) and validated by the pydantic models in `patchkit.recipe.schema`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Set as AbstractSet
from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from patchkit.errors import RecipeError
from patchkit.recipe.schema import (
    SCHEMA_VERSION,
    ExpertEdit,
    NeuronEdit,
    Recipe,
    ResolvedEdit,
)
from patchkit.recipe.schema import dotted as _dotted
from patchkit.recipe.schema import where_in as _where

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


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Args:
        path: a recipe YAML file (at most 1 MiB, UTF-8).

    Returns:
        Recipe: the validated recipe; `source_text` holds the exact text that was read.

    Raises:
        RecipeError: anything wrong, as one line with file:line:column, the field, and the fix.

    Example:
        >>> recipe = load_recipe("recipes/e2b.yaml")  # doctest: +SKIP
        >>> [(e.layer, e.index, e.op) for e in recipe.expanded_edits()]  # doctest: +SKIP
    """
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
        raise validation_error(exc, positions, filename, ()) from None
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
        raise validation_error(exc, positions, filename, loc) from None


def validation_error(exc: ValidationError, positions: dict, filename: str, prefix: tuple) -> RecipeError:
    """The first pydantic error as one RecipeError line: file:line:column, the dotted field, what to do."""
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
    from patchkit._io.atomic import atomic_write_text

    return atomic_write_text(Path(path), recipe.source_text or recipe_to_yaml(recipe))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe format, for editor completion."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "patchkit recipe v1"
    return schema
