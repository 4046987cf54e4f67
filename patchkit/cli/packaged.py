"""`patchkit recipes list|show` (the recipes shipped with patchkit) and `patchkit tiny-model DIR` (a tiny random
checkpoint to try every command offline, outside any checkout).

Any command that takes a RECIPE also takes a shipped recipe's short name (`patchkit validate e2b`): the loader
resolves it (`patchkit.recipe.packaged`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.errors import PatchkitError


@click.group("recipes")
def recipes_group() -> None:
    """The recipes shipped with patchkit; pass a NAME wherever a command takes a RECIPE file."""


def _describe(name: str, path: Path) -> dict[str, Any]:
    from patchkit.recipe import load_recipe

    row: dict[str, Any] = {"name": name, "path": str(path)}
    try:
        recipe = load_recipe(path)
    except PatchkitError as exc:  # a shipped recipe should always load; say so instead of hiding the others
        return {**row, "recipe": None, "model": None, "revision": None, "resolved": None, "error": exc.render()}
    return {
        **row,
        "recipe": recipe.name,
        "model": recipe.model.repo,
        "revision": recipe.model.revision,
        "resolved": recipe.is_resolved,
        "edits": len(recipe.edits),
        "slices": recipe.slice_count(),
        "error": None,
    }


@recipes_group.command("list")
@json_option
@handle_errors
def list_cmd(as_json: bool) -> None:
    """One line per shipped recipe: NAME, base model, resolved or not."""
    from patchkit.recipe.packaged import recipes_dir, shipped_recipes

    rows = [_describe(r.name, r.path) for r in shipped_recipes()]
    if as_json:
        folder = recipes_dir()
        emit_json({"dir": str(folder) if folder else None, "recipes": rows})
        return
    if not rows:
        click.echo("no shipped recipes found (is this patchkit install complete?)", err=True)
        return
    width = max(len(r["name"]) for r in rows)
    model_width = max(len(r["model"] or "-") for r in rows)
    for r in rows:
        if r["error"]:
            status = f"INVALID: {r['error']}"
        elif r["resolved"]:
            status = f"resolved ({r['slices']} slice(s))"
        else:
            status = "unresolved (no edits yet)"
        click.echo(f"{r['name']:<{width}}  {r['model'] or '-':<{model_width}}  {status}")


@recipes_group.command("show")
@click.argument("name")
@json_option
@handle_errors
def show_cmd(name: str, as_json: bool) -> None:
    """Print shipped recipe NAME (e.g. `patchkit recipes show e2b > my-e2b.yaml` to start your own copy)."""
    from patchkit.recipe.packaged import not_found_error, shipped_recipe

    path = shipped_recipe(name)
    if path is None:
        raise not_found_error(name)
    text = path.read_text(encoding="utf-8")
    if as_json:
        emit_json({"name": name, "path": str(path), "text": text})
        return
    click.echo(text, nl=False)


@click.command("tiny-model")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["gemma4", "gemma4-moe", "gemma4-mm", "llama"]),
    default="gemma4",
    show_default=True,
    help="gemma4: E2B-like (per-layer inputs, double-wide KV-shared layers); gemma4-moe: 6 experts, top-2; "
    "gemma4-mm: saved as Gemma4ForConditionalGeneration (weights under model.language_model.); llama.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="dtype of the saved weights.",
)
@click.option("--shard", default=None, help='Shard the weights at this size (e.g. "48KB"); default: one file.')
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@json_option
@handle_errors
def tiny_model_cmd(directory: Path, kind: str, dtype: str, shard: str | None, seed: int, as_json: bool) -> None:
    """Write a tiny random checkpoint (hidden 64, 3-4 layers, a word-level tokenizer) to DIR, to try patchkit
    offline: `patchkit new --model DIR`, `validate`, `apply`, `diff`, `verify` all work on it. DIR must be new
    (or an empty directory)."""
    from patchkit.testing.tiny import write_tiny_model

    info = write_tiny_model(directory, kind, dtype=dtype, shard=shard, seed=seed)
    if as_json:
        emit_json(info)
        return
    ui_console(False).print(
        f"wrote {info['path']}: tiny {kind} ({info['layers']} layers, hidden {info['hidden']}, {dtype})",
        highlight=False,
    )
