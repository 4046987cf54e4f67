"""Recipe YAML in and out: bounded reading, safe parsing, file:line:column errors, semantic checks, atomic dumps.

Reading a recipe (`load_recipe`): the file must be a regular file (not a directory, FIFO, device, or a link to
one) of at most `MAX_RECIPE_BYTES`, read once through `patchkit._io.fs.read_capped`; its bytes must be UTF-8
(a leading UTF-8 byte order mark is accepted and kept) and contain no control, bidirectional or other invisible
characters (`patchkit.recipe._text`). `Recipe.source_text` is exactly the text that was parsed, so the sha256
apply records equals the file's.

Parsing (`parse_recipe`): ruamel's round-trip loader keeps each key's line and column; every size is bounded
while composing (`patchkit.recipe._yaml`, `patchkit.recipe.limits`); the data is converted to plain Python (no
tags, no custom types, no alias explosions) and validated by the strict pydantic models in
`patchkit.recipe.schema`; cross-field rules (factors, duplicates, the expanded-edit cap) follow, in linear time.
Every refusal is one RecipeError line `file:line:column: field: what is wrong` with a hint; none is a traceback.
An unknown key names the closest known one (`edits[0].neurons: unknown key; did you mean `neuron`?`), and a
missing required field shows an example of it.

A RECIPE argument may also be a shipped recipe's short name (`e2b`): `load_recipe` resolves it in one place
(`patchkit.recipe.packaged.resolve_recipe_path`: an existing path wins, then a shipped name, else "not found"
with the shipped names listed).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import typing
from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from patchkit.errors import PatchkitError, RecipeError
from patchkit.recipe._text import check_text, decode, kind_of, show
from patchkit.recipe._yaml import load_plain
from patchkit.recipe.limits import MAX_DEPTH, MAX_EXPANDED_EDITS, MAX_NODES, MAX_RECIPE_BYTES
from patchkit.recipe.packaged import not_found_error, resolve_recipe_path
from patchkit.recipe.schema import (
    SCHEMA_VERSION,
    ExpertEdit,
    NeuronEdit,
    Recipe,
)
from patchkit.recipe.schema import dotted as _dotted
from patchkit.recipe.schema import where_in as _where

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_EDITS",
    "MAX_NODES",
    "MAX_RECIPE_BYTES",
    "dump_recipe",
    "json_schema",
    "load_recipe",
    "parse_recipe",
    "recipe_to_yaml",
    "validation_error",
]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Args:
        path: a recipe YAML file: a regular file (a link to one is followed) of at most 1 MiB of UTF-8 text;
            or, when no such path exists, the short name of a shipped recipe (`e2b`, see `patchkit recipes list`).

    Returns:
        Recipe: the validated recipe; `source_text` holds the exact text that was read and parsed.

    Raises:
        RecipeError: anything wrong, as one line with file:line:column, the field, and the fix.

    Example:
        >>> recipe = load_recipe("recipes/e2b.yaml")  # doctest: +SKIP
        >>> [(e.layer, e.index, e.op) for e in recipe.expanded_edits()]  # doctest: +SKIP
        >>> load_recipe("e2b").model.repo  # a shipped recipe, by name  # doctest: +SKIP
        'google/gemma-4-E2B-it'
    """
    from patchkit._io.fs import read_capped

    path = resolve_recipe_path(path)
    try:
        data = read_capped(path, MAX_RECIPE_BYTES, what="recipe", error=RecipeError)
    except FileNotFoundError:
        raise not_found_error(path) from None
    except RecipeError:
        raise
    except PatchkitError as exc:  # a directory, FIFO, device, socket or dangling link (UnsafeFileError)
        raise RecipeError(exc.message, hint=exc.hint, data=exc.data) from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.strerror or exc})", data={"path": str(path)}) from None
    return parse_recipe(decode(data, str(path)), str(path))


def parse_recipe(text: str, filename: str = "<recipe>") -> Recipe:
    """Validate recipe YAML text; `filename` is used in error messages. The same bounds as `load_recipe` apply."""
    if not isinstance(text, str):
        raise RecipeError(f"{filename}: a recipe is text, got {type(text).__name__}")
    if len(text) > MAX_RECIPE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{filename}: {len(text.encode('utf-8', 'surrogatepass'))} bytes is too large for a recipe "
            f"(limit {MAX_RECIPE_BYTES})",
            hint="is this really a recipe?",
        )
    check_text(text, filename)
    data, positions = load_plain(text, filename)
    if data is None:
        raise RecipeError(f"{filename}:1:1: the recipe is empty", hint="start from `patchkit new`")
    if not isinstance(data, dict):  # never echo the content: it may be a file that is not a recipe at all
        shape = (
            "a list"
            if isinstance(data, list)
            else "text"
            if isinstance(data, str)
            else "a number"
            if isinstance(data, (int, float)) and not isinstance(data, bool)
            else "a single value"
        )
        raise RecipeError(
            f"{filename}:1:1: a recipe must be a mapping (key: value), got {shape}", hint="start from `patchkit new`"
        )
    _check_top_level(data, positions, filename)
    edits_raw = data.get("edits", [])
    if edits_raw is None:
        edits_raw = []
    if not isinstance(edits_raw, list):
        raise RecipeError(
            f"{_where(filename, positions, ('edits',))}: edits: must be a list of edits, got {kind_of(edits_raw)}",
            hint="e.g. `edits: [{layer: 3, neuron: 7, op: invert}]`",
        )
    data = dict(data)
    data["edits"] = [_edit_model(e, i, positions, filename) for i, e in enumerate(edits_raw)]
    _check_expansion(data["edits"], positions, filename)
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
        raise RecipeError(
            f"{filename}:1:1: patchkit: missing schema version", hint="add `patchkit: 1` as the first line"
        )
    if type(version) is not int or version != SCHEMA_VERSION:  # true and 1.0 equal 1 in Python; not here
        raise RecipeError(
            f"{_where(filename, positions, ('patchkit',))}: patchkit: schema version {show(version)} is not supported",
            hint=f"this patchkit reads version {SCHEMA_VERSION}: write `patchkit: {SCHEMA_VERSION}`",
        )


def _edit_model(raw: Any, i: int, positions: dict, filename: str) -> NeuronEdit | ExpertEdit:
    loc = ("edits", i)
    where = _where(filename, positions, loc)
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{where}: edits[{i}]: an edit must be a mapping like {{layer: 3, neuron: 7, op: invert}}, "
            f"got {kind_of(raw)}"
        )
    for key in raw:  # an unknown key first: `neurons:` is a typo of `neuron`, not a missing neuron
        if key not in _EDIT_KEYS:
            raise _unknown_key(filename, positions, loc + (key,), _EDIT_KEYS)
    has_neuron, has_expert = "neuron" in raw, "expert" in raw
    if has_neuron and has_expert:
        raise RecipeError(
            f"{where}: edits[{i}]: give either `neuron` or `expert`, not both", hint="split it into two edits"
        )
    if not has_neuron and not has_expert:
        raise RecipeError(
            f"{where}: edits[{i}]: missing `neuron` or `expert`", hint="say which neuron(s) or expert(s) to edit"
        )
    model = NeuronEdit if has_neuron else ExpertEdit
    op = raw.get("op")
    if has_expert and op is not None and not (isinstance(op, str) and op == "suppress"):
        raise RecipeError(
            f"{_where(filename, positions, loc + ('op',))}: edits[{i}].op: experts support only `suppress`, got {show(op)}"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, positions, filename, loc) from None


def _check_expansion(edits: list[NeuronEdit | ExpertEdit], positions: dict, filename: str) -> None:
    """Refuse a recipe whose lists multiply past MAX_EXPANDED_EDITS, from their lengths (nothing is expanded)."""
    total = 0
    for i, edit in enumerate(edits):
        indices = edit.neuron if isinstance(edit, NeuronEdit) else edit.expert
        kind = "neuron" if isinstance(edit, NeuronEdit) else "expert"
        n = (len(edit.layer) if isinstance(edit.layer, list) else 1) * (
            len(indices) if isinstance(indices, list) else 1
        )
        total += n
        if total > MAX_EXPANDED_EDITS:
            raise RecipeError(
                f"{_where(filename, positions, ('edits', i))}: edits[{i}]: the recipe expands to more than "
                f"{MAX_EXPANDED_EDITS:,} (layer, {kind}) slices ({total:,} up to this edit; this one alone is {n:,})",
                hint=f"lists multiply (every layer x every index); a recipe may edit at most {MAX_EXPANDED_EDITS:,} "
                "slices: split it",
                data={"slices": total, "limit": MAX_EXPANDED_EDITS},
            )


_UNION_LABELS = frozenset({"int", "float", "str", "list[int]", "NeuronEdit", "ExpertEdit"})


def validation_error(exc: ValidationError, positions: dict, filename: str, prefix: tuple) -> RecipeError:
    """The first pydantic error as one RecipeError line: file:line:column, the dotted field, what to do."""

    def strip(raw: tuple) -> tuple:  # drop pydantic's union-branch labels from an error location
        return tuple(p for p in raw if not (isinstance(p, str) and (p in _UNION_LABELS or "[" in p)))

    errors = exc.errors()
    err = errors[0]
    first = strip(err["loc"]) if err["type"] != "extra_forbidden" else tuple(err["loc"])
    for other in errors[1:]:  # a union's later branch may name the bad item more precisely: prefer it
        if len(strip(other["loc"])) > len(first) and strip(other["loc"])[: len(first)] == first:
            err, first = other, strip(other["loc"])
    ctx = err.get("ctx") or {}
    loc = prefix + first + tuple(ctx.get("loc", ()))
    path = _dotted(loc) or "recipe"
    at = _where(filename, positions, loc)
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "patchkit":  # our validators (patchkit.recipe.fields): the message says it all
        return RecipeError(f"{at}: {path}: {ctx['message']}", hint=ctx.get("hint"))
    if kind == "extra_forbidden":
        return _unknown_key(filename, positions, loc, _known_keys(loc[:-1]))
    if kind == "missing":
        return RecipeError(f"{at}: {path}: required field is missing", hint=_missing_hint(loc))
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        return RecipeError(f"{at}: {path}: {show(value)} is not allowed; expected {expected}")
    if kind == "string_type" and isinstance(value, (int, float, _dt.date)) and not isinstance(value, bool):
        return RecipeError(
            f"{at}: {path}: must be text, but YAML read {show(value) if not isinstance(value, _dt.date) else value} "
            f"as a {'date' if isinstance(value, _dt.date) else 'number'}",
            hint="put the value in quotes so YAML keeps it as written",
        )
    if kind == "string_type" and isinstance(value, (dict, list, set)):
        shape = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a set"
        return RecipeError(
            f"{at}: {path}: must be text, got {shape}", hint="quote it, or use a block scalar (|) for multi-line text"
        )
    if kind == "string_type":
        return RecipeError(
            f"{at}: {path}: must be text, got {kind_of(value)}",
            hint="put the value in quotes so YAML keeps it as written",
        )
    if kind in ("string_too_long", "string_too_short"):
        limit = ctx.get("max_length") if kind == "string_too_long" else ctx.get("min_length")
        size = len(value) if isinstance(value, str) else "?"
        what = f"is {size} characters long (limit {limit})" if kind == "string_too_long" else "must not be empty"
        return RecipeError(f"{at}: {path}: {what}")
    if kind == "string_pattern_mismatch":
        return RecipeError(f"{at}: {path}: {show(value)} does not have the expected form ({ctx.get('pattern', '')})")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        hint = (
            "write it without quotes"
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit()
            else f"write {int(value)}"
            if isinstance(value, float) and math.isfinite(value) and value == int(value)
            else "write a whole number"
        )
        return RecipeError(f"{at}: {path}: must be a whole number, got {kind_of(value)}", hint=hint)
    if kind in ("float_type", "float_parsing"):
        return RecipeError(
            f"{at}: {path}: must be a number, got {kind_of(value)}",
            hint="write it without quotes" if isinstance(value, str) else "write a number like 0.5",
        )
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        op = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        limit = next(iter(v for k, v in ctx.items() if k in ("ge", "le", "gt", "lt")), "?")
        return RecipeError(f"{at}: {path}: must be {op} {limit}, got {show(value)}")
    if kind in ("finite_number",):
        return RecipeError(f"{at}: {path}: must be a finite number, got {show(value)}")
    if kind in ("bool_type", "bool_parsing"):
        return RecipeError(
            f"{at}: {path}: must be true or false, got {kind_of(value)}", hint="write true or false, without quotes"
        )
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return RecipeError(f"{at}: {path}: must be a mapping (key: value), got {kind_of(value)}")
    if kind in ("list_type", "tuple_type", "set_type"):
        return RecipeError(f"{at}: {path}: must be a list, got {kind_of(value)}", hint="e.g. `[a, b]`")
    if kind == "value_error":  # our own model validators: the message already says what is wrong
        return RecipeError(f"{at}: {path}: {msg.removeprefix('Value error, ')}")
    return RecipeError(f"{at}: {path}: {msg} (got {show(value)})")


_EDIT_KEYS = frozenset(NeuronEdit.model_fields) | frozenset(ExpertEdit.model_fields)

#: An example for each required field a recipe may leave out (keyed by the field's path, list indices dropped).
_MISSING_EXAMPLES: dict[tuple[str, ...], str] = {
    ("name",): "add e.g. `name: gemma-4-e2b-it-loopfix`; letters, digits, . _ and -, it names the apply output",
    ("source",): 'add where the edits come from, e.g. `source: {kind: manual, reference: "how they were found"}`; '
    "kind is paper, diff, locate or manual",
    ("source", "kind"): "add e.g. `kind: manual`; kind is paper, diff, locate or manual",
    ("edits", "layer"): "add e.g. `layer: 3`, or a list of layers",
    ("edits", "op"): "add e.g. `op: invert`; neurons take invert, scale or zero, experts suppress",
}


def _missing_hint(loc: tuple) -> str:
    key = tuple(p for p in loc if isinstance(p, str))
    return _MISSING_EXAMPLES.get(key, "add it (see `patchkit schema` for every field)")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field annotation (through Optional, list, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _known_keys(parent: tuple) -> frozenset[str]:
    """The keys the schema allows in the mapping at `parent` (a recipe location; list indices are skipped)."""
    if parent[:1] == ("edits",) and len(parent) <= 2:
        return _EDIT_KEYS
    models: list[type[BaseModel]] = [Recipe]
    for part in parent:
        if not isinstance(part, str):
            continue
        fields = [m.model_fields.get(part) for m in models]
        models = [m for f in fields if f is not None for m in _models_in(f.annotation)]
    return frozenset(k for m in models for k in m.model_fields)


def _unknown_key(filename: str, positions: dict, loc: tuple, known: frozenset[str] | set[str]) -> RecipeError:
    """`file:line:col: edits[0].neurons: unknown key; did you mean `neuron`?` (the suggestion when one is close)."""
    key = loc[-1]
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6) if isinstance(key, str) else []
    at, path = _where(filename, positions, loc), _dotted(loc)
    if close:
        return RecipeError(
            f"{at}: {path}: unknown key; did you mean `{close[0]}`?",
            hint=f"rename it to `{close[0]}`; `patchkit schema` lists every key",
            data={"suggestion": close[0]},
        )
    return RecipeError(f"{at}: {path}: unknown key", hint="remove it or check its spelling (see `patchkit schema`)")


def _check_semantics(recipe: Recipe) -> None:
    """Cross-field rules pydantic field types cannot express: factors per op, duplicates, resolution.

    Linear in the number of slices: one dict keyed by (layer, kind, index)."""
    for i, edit in enumerate(recipe.edits):
        if not isinstance(edit, NeuronEdit):
            continue
        base = ("edits", i)
        if edit.op == "scale":
            f = edit.factor
            if f is None:
                raise RecipeError(
                    f"{recipe.where(*base, 'op')}: edits[{i}].factor: op scale needs a factor",
                    hint="add e.g. `factor: 0.5`",
                )
            if not math.isfinite(f):
                raise RecipeError(f"{recipe.where(*base, 'factor')}: edits[{i}].factor: {f} is not a finite number")
            if f == 0.0:
                why = (
                    "-0.0 is a zero that would also set the sign bit of every zeroed weight"
                    if math.copysign(1.0, f) < 0
                    else "scaling by 0 is zeroing (and leaves -0.0 where weights were negative)"
                )
                raise RecipeError(
                    f"{recipe.where(*base, 'factor')}: edits[{i}].factor: {why}",
                    hint="write `op: zero` (without a factor): it writes exact zeros",
                )
            if f == 1.0:
                raise RecipeError(
                    f"{recipe.where(*base, 'factor')}: edits[{i}].factor: scaling by 1 changes nothing",
                    hint="remove the edit",
                )
        elif edit.factor is not None:
            raise RecipeError(
                f"{recipe.where(*base, 'factor')}: edits[{i}].factor: op {edit.op} takes no factor",
                hint="use `op: scale` with a factor, or drop the factor",
            )
    seen: dict[tuple, tuple[str | None, str, int]] = {}
    for i, edit in enumerate(recipe.edits):
        layers = edit.layer if isinstance(edit.layer, list) else [edit.layer]
        tensor: str | None = edit.tensor
        kind, indices = ("neuron", edit.neuron) if isinstance(edit, NeuronEdit) else ("expert", edit.expert)
        indices = indices if isinstance(indices, list) else [indices]
        for layer in layers:
            for index in indices:
                key = (layer, kind, index)
                prev = seen.get(key)
                if prev is None:
                    seen[key] = (tensor, edit.op, i)
                    continue
                first_tensor, first_op, j = prev
                what = f"layer {layer} {kind} {index}"
                if first_tensor != tensor and kind == "neuron":
                    raise RecipeError(
                        f"{recipe.where('edits', i)}: edits[{i}]: {what} is edited on both up_proj and down_proj "
                        f"(edits[{j}]); the two factors would multiply",
                        hint="edit each neuron once, on one tensor",
                    )
                hint = (
                    "each slice may be edited once; merge the two edits"
                    if first_op == edit.op
                    else (f"it cannot be both {first_op} and {edit.op}; keep one")
                )
                raise RecipeError(
                    f"{recipe.where('edits', i)}: edits[{i}]: {what} is already edited by edits[{j}]", hint=hint
                )
    if recipe.is_resolved and not recipe.edits:
        raise RecipeError(
            f"{recipe.where('edits')}: edits: the recipe has no edits",
            hint="add edits, or mark it `resolution: {status: unresolved}`",
        )
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
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
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
