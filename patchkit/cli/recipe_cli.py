"""`patchkit validate`, `patchkit schema`, `patchkit new`: recipe authoring commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.errors import PatchkitError


@click.command("validate")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model",
    default=None,
    help="Local dir, org/name, org/name@rev, or a .gguf file (or split set) to check the edits against.",
)
@json_option
@handle_errors
def validate_cmd(recipe: Path, model: str | None, as_json: bool) -> None:
    """Check RECIPE's schema and, against the model, every layer, index, tensor and dtype (headers only; for a
    .gguf, also the quant type and new scale bytes of every edited row)."""
    from patchkit.model.gguf_model import is_gguf_path
    from patchkit.recipe.validate import validate_recipe

    if is_gguf_path(model):
        from patchkit.workflows.gguf_patch import validate_gguf_recipe

        report, plan = validate_gguf_recipe(recipe, model=str(model))
        if as_json:
            emit_json({**report.to_json(), "plan": plan.to_json() if plan else None})
            return
    else:
        report = validate_recipe(recipe, model=model)
    if as_json:
        emit_json(report.to_json())
        return
    con = ui_console(False)
    target = {
        "gguf": f"against the GGUF {report.model}",
        "model": f"against {report.model}",
        "profile": f"against the offline profile of {report.model}",
        "schema-only": "schema only",
    }[report.against]
    what = (
        f"{report.edits} edit(s), {report.slices} slice(s) in layers {report.layers}"
        if report.resolved
        else "unresolved, no edits yet"
    )
    con.print(f"[green]ok[/green] {recipe}: {report.name} — {what} ({target})", highlight=False)
    if report.search_space:
        con.print(f"search space: {describe_space(report.search_space)}", highlight=False)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)


def describe_space(space: dict) -> str:
    """One line: what an unresolved recipe leaves to search."""
    layers = space["layers"] if space["layers"] is not None else "all layers"
    parts = [
        f"{space['kind']}s in layers {layers}" if space["layers"] is not None else f"{space['kind']}s in all layers"
    ]
    if space.get("units_in_scope") is not None:
        parts.append(f"{space['units_in_scope']:,} candidates")
    if space.get("exact_edits"):
        parts.append(f"exactly {space['exact_edits']} edit(s)")
    elif space.get("max_edits"):
        parts.append(f"at most {space['max_edits']} edit(s)")
    if space.get("ops"):
        parts.append("ops " + "/".join(space["ops"]))
    if space.get("partial_edits"):
        known = ", ".join(
            f"L{p['layer']} {p['op']}" + (f" x{p['factor']:g}" if p.get("factor") is not None else "")
            for p in space["partial_edits"]
        )
        parts.append(f"known except the index: {known}")
    return "; ".join(parts)


@click.command("schema")
@handle_errors
def schema_cmd() -> None:
    """Print the recipe JSON Schema (for editor completion)."""
    from patchkit.recipe import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@click.command("new")
@click.option("--model", "model", default=None, help="Fill in geometry and revision pin from this model.")
@click.option(
    "--arch", type=click.Choice(["gemma4", "llama"]), default=None, help="Architecture when no model is given."
)
@click.option("--name", default=None, help="Recipe name.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Write here (refuses to overwrite); default stdout.",
)
@json_option
@handle_errors
def new_cmd(model: str | None, arch: str | None, name: str | None, output: Path | None, as_json: bool) -> None:
    """Write a commented starter recipe for a model."""
    from patchkit._io.atomic import atomic_write_text
    from patchkit.recipe import parse_recipe
    from patchkit.recipe.validate import starter_recipe

    if model is None and arch is None:
        raise PatchkitError("say which model the recipe is for", hint="pass --model REF or --arch gemma4|llama")
    text = starter_recipe(model=model, arch=arch, name=name)
    parse_recipe(text, "<starter>")  # the starter must itself be a valid recipe
    if output is None:
        if as_json:
            emit_json({"recipe": text})
        else:
            sys.stdout.write(text)
        return
    if output.exists():
        raise PatchkitError(
            f"{output}: already exists; refusing to overwrite", hint="choose another -o path or delete it"
        )
    atomic_write_text(output, text)
    if as_json:
        emit_json({"written": str(output)})
    else:
        click.echo(f"wrote {output}")
