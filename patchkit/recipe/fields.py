"""Strict field types of the recipe schema: indices, factors, Hub repo ids, git revisions, names.

YAML retypes values silently (`"2"` is text, `2.0` a float, `yes`/`true` a boolean), and pydantic's lax mode
would accept them all as the number 2 or the boolean true. Every recipe model is strict (`ConfigDict(strict=
True)`), and the fields that need a precise rule use the validators here, which also say what YAML read:
- an index (`layer`, `neuron`, `expert`) is a real integer (not a boolean, float or text), 0 ..
  `MAX_INDEX`; a list of them is non-empty and lists each index once (checked in linear time);
- a factor is a real number (integer or float, not a boolean or text) and finite;
- a Hub repo id follows the Hub's grammar (`huggingface_hub.utils.validate_repo_id`, plus org/name and ASCII):
  `../evil`, `/abs/path`, `org/name/extra`, names with spaces are refused. A local model directory is never
  named by a recipe: it is passed explicitly (`--model ./dir`);
- a revision is a commit sha or a git ref name (`git check-ref-format` rules: no spaces, no `..`, ...).
Numpy scalars are accepted where the Python type is (library callers pass them), never booleans.

Each validator raises `PydanticCustomError("patchkit", "{message}", {...})`; the loader renders `message`, an
optional `hint`, and `item` (the list position) into one `file:line:column` line.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from patchkit.recipe._text import kind_of, show
from patchkit.recipe.limits import MAX_INDEX, MAX_NAME_CHARS, MAX_REVISION_CHARS

__all__ = ["Factor", "Index", "Indices", "OptFactor", "check_name", "check_repo_id", "check_revision", "fail"]


def fail(message: str, *, hint: str | None = None, item: int | None = None, loc: tuple = ()) -> PydanticCustomError:
    """The error our validators raise: the loader renders `message` (and `hint`) at the field, or deeper at
    `loc` (keys and list positions below the field; `item` is shorthand for a list position)."""
    ctx: dict[str, Any] = {"message": message}
    if hint:
        ctx["hint"] = hint
    if item is not None:
        loc = (item, *loc)
    if loc:
        ctx["loc"] = loc
    return PydanticCustomError("patchkit", "{message}", ctx)


# --- indices ----------------------------------------------------------------------------------------------


def _one_index(value: Any, item: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = None
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            hint = f"write {int(value)}, without the decimal point"
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            hint = "write the number without quotes"
        elif isinstance(value, bool):
            hint = "true/false are booleans in YAML; write the index as a number"
        what = "must be an index (a whole number >= 0)" if item is not None else "must be an index or a list of indices"
        raise fail(f"{what}, got {kind_of(value)}", hint=hint or "e.g. `3` or `[3, 7]`", item=item)
    v = int(value)
    if v < 0:
        raise fail(f"indices must be >= 0, got {v}", item=item)
    if v > MAX_INDEX:
        raise fail(f"index {show(v)} is beyond any model (limit {MAX_INDEX})", item=item)
    return v


def _indices(value: Any) -> int | list[int]:
    """An index, or a non-empty list of distinct indices."""
    if not isinstance(value, list):
        if isinstance(value, (tuple, set, frozenset, dict)) or value is None:
            raise fail(f"must be an index or a list of indices, got {kind_of(value)}", hint="e.g. `3` or `[3, 7]`")
        return _one_index(value)
    if not value:
        raise fail("the list is empty", hint="give at least one index, or remove the edit")
    first: dict[int, int] = {}
    out = []
    for i, item in enumerate(value):
        v = _one_index(item, i)
        if v in first:
            raise fail(f"{v} is listed twice (also at [{first[v]}])", hint="list each index once", item=i)
        first[v] = i
        out.append(v)
    return out


def _index_list(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise fail(f"must be a list of indices, got {kind_of(value)}", hint="e.g. `[10, 12]`")
    out = _indices(value)
    assert isinstance(out, list)
    return out


_INDEX_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_INDEX}
Index = Annotated[int, PlainValidator(_one_index), WithJsonSchema(_INDEX_SCHEMA)]
Indices = Annotated[
    int | list[int],
    PlainValidator(_indices),
    WithJsonSchema(
        {"anyOf": [_INDEX_SCHEMA, {"type": "array", "items": _INDEX_SCHEMA, "minItems": 1, "uniqueItems": True}]}
    ),
]
IndexList = Annotated[
    list[int],
    PlainValidator(_index_list),
    WithJsonSchema({"type": "array", "items": _INDEX_SCHEMA, "minItems": 1, "uniqueItems": True}),
]


# --- factors ----------------------------------------------------------------------------------------------


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = "write a number like 0.5"
        if isinstance(value, str):
            try:
                float(value)
                hint = "write the number without quotes"
            except ValueError:
                pass
        raise fail(f"must be a number, got {kind_of(value)}", hint=hint)
    try:
        v = float(value)
    except (OverflowError, ValueError):
        v = math.inf
    if not math.isfinite(v):
        raise fail(f"{v} is not a finite number", hint="a factor is a finite number like 0.5 or -0.8")
    return v


def _opt_factor(value: Any) -> float | None:
    return None if value is None else _factor(value)


Factor = Annotated[float, PlainValidator(_factor), WithJsonSchema({"type": "number"})]
OptFactor = Annotated[float | None, PlainValidator(_opt_factor), WithJsonSchema({"type": "number"})]


# --- names, repo ids, revisions ---------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9._-]{1,96}")
_REF_FORBIDDEN = set("~^:?*[\\")


def check_name(value: str) -> str:
    """A recipe name: a slug (it names the apply output directory and, by default, a Hub repo)."""
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise fail(
            f"{show(value)} is not a usable name: use letters, digits, '.', '_' and '-' only, starting with "
            "a letter or digit, no '..' (it becomes the output directory and repo name)",
            hint=f"e.g. `gemma-4-e2b-it-loopfix` (at most {MAX_NAME_CHARS} characters)",
        )
    return value


def check_repo_id(value: str, *, field: str = "repo") -> str:
    """A Hub repo id `org/name` by the Hub's own rules; never a path."""
    problem = None
    if not value.isascii() or not _HUB_ID_RE.fullmatch(value):
        problem = "write it as org/name: letters, digits, '-', '_' and '.', at most 96 characters each"
    else:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError:
            problem = (
                "the Hub refuses it: a name may not start or end with '-' or '.', contain '--' or '..', "
                "or end in '.git'"
            )
    if problem is None:
        return value
    hint = "a local model directory is never named in a recipe: pass it as --model ./dir"
    if "@" in value and field == "model.repo":
        hint = "put the revision in model.revision, not after '@'"
    raise fail(f"{show(value)} is not a Hub repo id; {problem}", hint=hint)


def check_revision(value: str) -> str:
    """A 40-hex commit sha or a branch / tag name, by `git check-ref-format` rules (ASCII, no spaces)."""
    problem = None
    if not value:
        problem = "it is empty"
    elif len(value) > MAX_REVISION_CHARS:
        problem = f"{len(value)} characters is too long (limit {MAX_REVISION_CHARS})"
    elif not value.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        problem = "it contains spaces or characters git does not allow in a revision"
    elif (
        any(c in _REF_FORBIDDEN for c in value)
        or ".." in value
        or "@{" in value
        or "//" in value
        or value == "@"
        or value.startswith(("-", "/"))
        or value.endswith(("/", ".", ".lock"))
        or any(part.startswith(".") or part.endswith(".lock") for part in value.split("/"))
    ):
        problem = "it is not a valid git revision (no '..', '~', '^', ':', '?', '*', '[', '\\', '@{', '//')"
    if problem is None:
        return value
    raise fail(
        f"{show(value)} is not a commit sha or branch name: {problem}",
        hint="pin the base model's 40-hex commit sha (see its Hub page or `patchkit new --model REF`)",
    )
