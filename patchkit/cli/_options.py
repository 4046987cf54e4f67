"""Click options derived from a settings model, so a command's flags and its workflow's settings cannot drift.

`settings_options(LoopSettings)` adds one option per field: `max_new_tokens` -> `--max-new-tokens`, the type
(and range) from the annotation and its constraints, the help text from the field description. A bool field
becomes `--name/--no-name`. Per-field extras in `json_schema_extra`:

* `"flag"`: the option declaration instead of the derived one (e.g. "--thinking/--no-thinking");
* `"metavar"`: the metavar shown in --help;
* `"path"`: keyword arguments for `click.Path` (e.g. {"dir_okay": False}) on a Path field;
* `"cli": False`: no option for this field.

Every option defaults to None ("not given"), and `settings_from_options` builds the model from the given
values only, so the model's defaults apply, and a workflow can still tell what the user set (the recipe's
`checks` fill in the rest, see `LoopSettings.with_gate_defaults`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import annotated_types
import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["settings_options", "settings_from_options", "placement_printer"]

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)


def _fields(model: type[BaseModel], only: Iterable[str] | None, exclude: Iterable[str]) -> list[tuple[str, FieldInfo]]:
    """The model's CLI fields in declaration order (or in `only`'s order), minus `exclude` and `"cli": False`."""
    names = list(only) if only is not None else list(model.model_fields)
    unknown = [n for n in [*names, *exclude] if n not in model.model_fields]
    if unknown:
        raise ValueError(f"{model.__name__} has no field(s) {', '.join(unknown)}")
    skip = set(exclude)
    return [
        (n, model.model_fields[n])
        for n in names
        if n not in skip and _extra(model.model_fields[n]).get("cli", True) is not False
    ]


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` -> X (the CLI's None already means "not given")."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(info: FieldInfo) -> dict[str, Any]:
    """click range keyword arguments from the field's ge/gt/le/lt constraints."""
    out: dict[str, Any] = {}
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            out["min"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            out.update(min=m.gt, min_open=True)
        elif isinstance(m, annotated_types.Le):
            out["max"] = m.le
        elif isinstance(m, annotated_types.Lt):
            out.update(max=m.lt, max_open=True)
    return out


def _click_type(info: FieldInfo) -> Any:
    """The click parameter type for a field (None for a bool flag)."""
    annotation = _unwrap_optional(info.annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return None
    if origin is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if annotation is int:
        bounds = _bounds(info)
        return click.IntRange(**bounds) if bounds else click.INT
    if annotation is float:
        bounds = _bounds(info)
        return click.FloatRange(**bounds) if bounds else click.FLOAT
    if annotation is Path:
        return click.Path(path_type=Path, **_extra(info).get("path", {}))
    # str, and sequences given as one comma list (the model's validator parses them)
    return click.STRING


def _help(info: FieldInfo) -> str:
    text = info.description or ""
    if info.default is not None and "default" not in text.lower():
        default = info.default
        text += f" [default: {str(default).lower() if isinstance(default, bool) else default}]"
    return text.strip()


def settings_options(
    model: type[BaseModel], *, only: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> Callable[[F], F]:
    """A decorator that adds one click option per field of `model` (see the module docstring for the mapping).

    Args:
        model: a pydantic settings model (e.g. LoopSettings, BenchSettings).
        only: the fields to expose, in this order (default: all, in declaration order).
        exclude: fields not to expose.

    Returns:
        The decorator; the command receives each field under its own name (None when not given).

    Raises:
        ValueError: `only` or `exclude` names a field the model does not have (a programming error).
    """
    options = []
    for name, info in _fields(model, only, exclude):
        extra = _extra(info)
        kebab = name.replace("_", "-")
        ctype = _click_type(info)
        if ctype is None:  # bool: a --x/--no-x switch; None when neither is given
            decl = extra.get("flag", f"--{kebab}/--no-{kebab}")
            options.append(click.option(decl, name, default=None, help=_help(info)))
        else:
            decl = extra.get("flag", f"--{kebab}")
            options.append(
                click.option(decl, name, type=ctype, default=None, metavar=extra.get("metavar"), help=_help(info))
            )

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def settings_from_options(model: type[M], values: dict[str, Any]) -> M:
    """Build `model` from the option values the user gave (None = not given, so the model's default applies).

    Args:
        model: the settings model the options were derived from.
        values: the command's keyword arguments (other keys are ignored).

    Returns:
        The frozen settings object; `model_fields_set` holds exactly the fields given on the command line.

    Raises:
        click.BadParameter: a value the model rejects (exit 2 with the field's flag named).
    """
    given = {k: v for k, v in values.items() if k in model.model_fields and v is not None}
    try:
        return model(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise click.BadParameter(err["msg"], param_hint=f"--{field.replace('_', '-')}") from None


def placement_printer(console: Any) -> Callable[[str], None]:
    """A `log` callback for the checks that prints each distinct placement line once on `console`.

    Why: `--device auto --dtype auto` decide from the machine and the checkpoint, so the command says what it
    chose and why ("device: cpu (no CUDA or MPS), dtype: bfloat16 (config.json torch_dtype; ...)") before a
    long run; the base and the patched model normally get the same line, which is printed once. Under --json
    the console is stderr (stdout stays one JSON document, whose report records the same placement).
    """
    seen: set[str] = set()

    def show(line: str) -> None:
        if line not in seen:
            seen.add(line)
            console.print(line, highlight=False, markup=False)

    return show


def earlier_name(old_flag: str, dest: str, new_flag: str) -> Callable[[Any], Any]:
    """A hidden option that keeps a renamed path option's earlier spelling working (`--output` for `-o/--out`);
    the command folds it into the new one with `one_spelling`."""
    return click.option(
        old_flag,
        dest,
        type=click.Path(path_type=Path),
        default=None,
        hidden=True,
        help=f"The earlier name of {new_flag} (kept so existing scripts run).",
    )


def one_spelling(value: Any, old_value: Any, new_flag: str, old_flag: str) -> Any:
    """The value of a renamed option given under either spelling; a usage error (exit 2) when given under both."""
    if value is not None and old_value is not None:
        raise click.UsageError(f"give {new_flag} once ({old_flag} is its earlier name)")
    return value if value is not None else old_value
