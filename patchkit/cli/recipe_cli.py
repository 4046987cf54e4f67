"""`patchkit validate`, `patchkit schema`, `patchkit new`: recipe authoring commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._options import earlier_name, one_spelling
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
    if report.to_fill:
        from patchkit.recipe.packaged import local_copy_path

        copy = local_copy_path(recipe)
        if copy is not None:  # never send users to edit the installed package
            con.print(
                f"{recipe} is a recipe shipped with patchkit: start your own copy with "
                f"`patchkit recipes show {copy.stem} > {copy.name}` and fill that in",
                highlight=False,
                soft_wrap=True,
            )
    for item in report.to_fill:
        con.print(f"to fill in: {item}", highlight=False, soft_wrap=True)
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
@json_option
@handle_errors
def schema_cmd(as_json: bool) -> None:
    """Print the recipe JSON Schema (for editor completion).

    The schema is JSON either way; `--json` is accepted like on every other command (scripts pass it to all of
    them), prints the same document, and makes an error a JSON object on stdout too."""
    from patchkit.recipe import json_schema

    emit_json(json_schema())


@click.command("new")
@click.option(
    "--model",
    "model",
    default=None,
    help="Fill in geometry from this model (local dir, org/name[@rev]); repo and revision pin too when it is a Hub "
    "repo or an HF-cache snapshot (a local dir leaves them marked TO FILL).",
)
@click.option(
    "--arch", type=click.Choice(["gemma4", "llama"]), default=None, help="Architecture when no model is given."
)
@click.option("--name", default=None, help="Recipe name. [default: my-loop-fix]")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write here (refuses to overwrite); default stdout.",
)
@earlier_name("--output", "output_old", "-o/--out")
@json_option
@handle_errors
def new_cmd(
    model: str | None, arch: str | None, name: str | None, out: Path | None, output_old: Path | None, as_json: bool
) -> None:
    """Write a commented starter recipe for a model.

    Fields it cannot know (the Hub repo and revision of a local copy) are left empty and marked TO FILL;
    `patchkit validate` lists them with their line numbers."""
    from patchkit._io.atomic import atomic_write_text
    from patchkit.recipe import parse_recipe
    from patchkit.recipe.validate import starter_recipe

    out = one_spelling(out, output_old, "-o/--out", "--output")
    if model is None and arch is None:
        raise PatchkitError("say which model the recipe is for", hint="pass --model REF or --arch gemma4|llama")
    text = starter_recipe(model=model, arch=arch, name=name)
    parse_recipe(text, "<starter>")  # the starter must itself be a valid recipe
    if out is None:
        if as_json:
            emit_json({"recipe": text})
        else:
            sys.stdout.write(text)
        return
    if out.exists():
        raise PatchkitError(
            f"{out}: already exists; refusing to overwrite", hint="choose another --out path or delete it"
        )
    atomic_write_text(out, text)
    if as_json:
        emit_json({"written": str(out)})
    else:
        click.echo(f"wrote {out}")
