"""`patchkit recipe ...`: resolve recipes from published fixed checkpoints and inspect their search space.

`patchkit recipe resolve RECIPE` (try the recipe's `resolution.ways` in order: check each reference on the Hub,
extract the first that exists, warn where it departs from the constraints), `patchkit recipe extract BASE FIXED
-o recipe.yaml` (diff + Hub: only differing shards are downloaded), `patchkit recipe space RECIPE` (what an unresolved recipe leaves to search); `validate`, `new` and `schema`
are also reachable here (the top-level commands stay as they are).
"""

from __future__ import annotations

from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli.recipe_cli import describe_space, new_cmd, schema_cmd, validate_cmd
from patchkit.errors import PatchkitError


@click.group("recipe")
def recipe_group() -> None:
    """Create, resolve and inspect recipes."""


@recipe_group.command("extract")
@click.argument("base")
@click.argument("fixed")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the recipe here (default: stdout; with --into: the --into file).",
)
@click.option(
    "--into",
    "into",
    type=click.Path(path_type=Path),
    default=None,
    help="An (unresolved) recipe to resolve in place: keeps its comments, name, description, checks, publish and "
    "constraints. A shipped recipe's name (e.g. 26b-a4b) writes ./NAME.yaml instead.",
)
@click.option("--name", default=None, help="Recipe name (default: --into's, else <FIXED>-from-diff).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file (other than --into).")
@json_option
@handle_errors
def extract_cmd(
    base: str, fixed: str, out: Path | None, into: Path | None, name: str | None, force: bool, as_json: bool
) -> None:
    """Recipe ops that turn BASE into FIXED (local dirs or org/name[@rev]; refused if a change is not expressible)."""
    from patchkit._io.atomic import atomic_write_text
    from patchkit.cli.core import _progress
    from patchkit.recipe import load_recipe
    from patchkit.workflows.resolve import extract_recipe

    template = load_recipe(into) if into is not None else None
    target = out or into
    if into is not None and out is None:
        from patchkit.recipe.packaged import local_copy_path

        copy = local_copy_path(into)
        if copy is not None:  # never write into the installed package: a local copy
            target = copy
            click.echo(
                f"note: {into} is a recipe shipped with patchkit; writing the resolved copy to {target}", err=True
            )
    if target is not None and target.exists() and target != into and not force:
        raise PatchkitError(
            f"{target}: already exists; refusing to overwrite", hint="pass --force or choose another -o"
        )
    with _progress(as_json, "extract") as progress:
        result = extract_recipe(base, fixed, template=template, name=name, progress=progress)
    if target is not None:
        atomic_write_text(Path(target), result.text)
    if as_json:
        payload = result.to_json()
        payload["written"] = str(target) if target else None
        emit_json(payload)
        return
    if target is None:
        click.echo(result.text, nl=False)
    con = ui_console(target is None)
    units = len(result.recipe.expanded_edits())
    con.print(
        f"{units} edited unit(s) in {len(result.edits)} edit(s) from {result.reference} against {result.base}; "
        f"downloaded {len(result.downloaded_files)} shard(s), skipped {len(result.identical_files)} identical",
        highlight=False,
    )
    for note in result.notes:
        click.echo(f"warning: {note} (the reference is authoritative; check the recipe's constraints)", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if target is not None:
        con.print(f"wrote {target}", highlight=False)


@recipe_group.command("resolve")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the resolved recipe here (default: back into RECIPE, comments kept; a shipped name writes ./NAME.yaml).",
)
@click.option("--model", default=None, help="Diff against this base instead of the recipe's model.repo@revision.")
@click.option("--force", is_flag=True, help="Overwrite an existing -o file (or an existing ./NAME.yaml).")
@json_option
@handle_errors
def resolve_cmd(recipe: Path, out: Path | None, model: str | None, force: bool, as_json: bool) -> None:
    """Resolve RECIPE by trying its `resolution.ways` in order: the first that works wins and is recorded.

    Each diff reference is checked on the Hub (existence and commit pin, no weights); the first that exists is
    extracted (only differing shards are downloaded) and compared with the recipe's constraints: a departure is a
    warning. Nothing usable: says what it tried and what to run next (exit 1)."""
    from patchkit._io.atomic import atomic_write_text
    from patchkit.cli.core import _progress
    from patchkit.errors import GateFailed
    from patchkit.recipe.packaged import local_copy_path
    from patchkit.workflows.resolve import resolve_recipe

    copy = local_copy_path(recipe)
    target = out or copy or recipe
    if (out is not None or copy is not None) and target.exists() and not force:
        raise PatchkitError(
            f"{target}: already exists; refusing to overwrite", hint="pass --force or choose another -o"
        )
    with _progress(as_json, "resolve") as progress:
        report = resolve_recipe(recipe, model=model, name=str(recipe), progress=progress)
    if report.resolved and report.result is not None:
        atomic_write_text(Path(target), report.result.text)
        report.next = report.next.replace("RESOLVED", str(target))
    if as_json:
        payload = report.to_json()
        payload["written"] = str(target) if report.resolved else None
        emit_json(payload)
    else:
        con = ui_console(False)
        for way in report.ways:
            con.print(way.line(), highlight=False)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.resolved:
        raise GateFailed(report.message)
    if not as_json:
        con = ui_console(False)
        if copy is not None and out is None:
            click.echo(
                f"note: {recipe} is a recipe shipped with patchkit; wrote the resolved copy to {target}", err=True
            )
        con.print(report.message, highlight=False)
        con.print(f"wrote {target}; next: {report.next}", highlight=False)


@recipe_group.command("space")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--model", default=None, help="Check the space against this model's geometry (default: its size profile)."
)
@json_option
@handle_errors
def space_cmd(recipe: Path, model: str | None, as_json: bool) -> None:
    """The search space an unresolved RECIPE leaves to `patchkit locate --from-recipe`."""
    from patchkit.recipe import load_recipe
    from patchkit.recipe.resolution import search_space

    rec = load_recipe(recipe)
    config = None
    if model is not None:
        from patchkit.model.refs import resolve_model

        config = resolve_model(model).config
    from patchkit.locate.from_recipe import scope_for

    found = search_space(rec, config=config)
    space = found.to_json()
    mode = scope_for(found)
    space["set_search"] = {**mode.to_json(), "mode": mode.describe()}
    if as_json:
        emit_json(space)
        return
    con = ui_console(False)
    con.print(f"{recipe}: {describe_space(space)}", highlight=False)
    con.print(f"set search (locate --from-recipe): {mode.describe()}", highlight=False)


recipe_group.add_command(validate_cmd)
recipe_group.add_command(new_cmd)
recipe_group.add_command(schema_cmd)
