"""The recipes shipped with patchkit, and the one place a RECIPE argument is resolved to a file.

The canonical files are `recipes/*.yaml` at the top of the source tree (users and docs refer to them). The wheel
carries the same files as package data at `patchkit/_recipes/` (pyproject.toml maps that data package onto
`recipes/`, so no copy is kept in the tree). They are found:

- installed from a wheel or sdist: `importlib.resources.files("patchkit") / "_recipes"`;
- in a source checkout (plain or editable install, where `patchkit/_recipes` does not exist): the `recipes/`
  directory next to the `patchkit/` package, only when a `pyproject.toml` sits beside it, so a stray
  `site-packages/recipes` of some other distribution is never mistaken for ours.

A shipped recipe's short name is its file name without `.yaml` (`e2b`). `resolve_recipe_path` applies the rule
every command follows: a path that exists wins; else a shipped recipe's short name; else the path unchanged, and
`not_found_error` says so and lists the shipped names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from patchkit.errors import RecipeError

__all__ = [
    "DATA_PACKAGE_DIR",
    "ShippedRecipe",
    "is_installed_copy",
    "is_shipped",
    "local_copy_path",
    "not_found_error",
    "recipes_dir",
    "resolve_recipe_path",
    "shipped_names",
    "shipped_recipe",
    "shipped_recipes",
]

#: Where the wheel puts the recipes, relative to the `patchkit` package (see pyproject.toml).
DATA_PACKAGE_DIR = "_recipes"
_SUFFIX = ".yaml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class ShippedRecipe:
    """A recipe file shipped with patchkit: its short name and where it lies."""

    name: str
    path: Path


def recipes_dir() -> Path | None:
    """The directory holding the shipped recipes (installed package data, else a source checkout's `recipes/`)."""
    package = resources.files("patchkit")
    installed = package / DATA_PACKAGE_DIR
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    if isinstance(package, Path):
        root = package.parent
        if (root / "pyproject.toml").is_file() and (root / "recipes").is_dir():
            return root / "recipes"
    return None


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe, sorted by name (empty when none is found)."""
    folder = recipes_dir()
    if folder is None:
        return []
    found = [
        ShippedRecipe(entry.name[: -len(_SUFFIX)], entry)
        for entry in folder.iterdir()
        if entry.name.endswith(_SUFFIX) and _NAME.fullmatch(entry.name[: -len(_SUFFIX)]) and entry.is_file()
    ]
    return sorted(found, key=lambda r: r.name)


def shipped_names() -> list[str]:
    """The short names of the shipped recipes (`e2b`, `e4b`, ...)."""
    return [r.name for r in shipped_recipes()]


def shipped_recipe(name: str) -> Path | None:
    """The file of the shipped recipe called `name` (no directory, no `.yaml`), or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(_SUFFIX):
        return None
    folder = recipes_dir()
    if folder is None:
        return None
    path = folder / f"{name}{_SUFFIX}"
    return path if path.is_file() else None


def is_shipped(path: str | os.PathLike[str]) -> bool:
    """True when `path` names a shipped recipe rather than a file that exists (commands that write a recipe back
    use this to write a copy in the working directory instead of into the installed package)."""
    return not os.path.lexists(path) and shipped_recipe(os.fspath(path)) is not None


def is_installed_copy(path: str | os.PathLike[str]) -> bool:
    """True when `path` (a name, or a file that exists) is a recipe inside an installed patchkit's package data:
    a command that writes a recipe back (`locate --from-recipe`, `recipe extract --into`) must write elsewhere,
    e.g. `./<name>.yaml`. A source checkout's `recipes/` files are not installed copies: writing them is the
    intended workflow there."""
    installed = resources.files("patchkit") / DATA_PACKAGE_DIR
    if not isinstance(installed, Path) or not installed.is_dir():
        return False
    target = resolve_recipe_path(path)
    try:
        return target.resolve().is_relative_to(installed.resolve())
    except OSError:
        return False


def local_copy_path(path: str | os.PathLike[str]) -> Path | None:
    """Where a command that writes a recipe back must write instead of RECIPE: `./NAME.yaml` in the working
    directory when RECIPE is a shipped name or an installed copy (never into the installed package), else None
    (RECIPE itself may be written)."""
    if is_shipped(path) or is_installed_copy(path):
        return Path.cwd() / f"{Path(path).name.removesuffix(_SUFFIX)}{_SUFFIX}"
    return None


def resolve_recipe_path(path: str | os.PathLike[str]) -> Path:
    """A RECIPE argument as a file path: an existing path wins (even one that is not a regular file, so it is
    refused as such rather than silently replaced); else the shipped recipe of that short name; else the path
    unchanged (reading it then fails with `not_found_error`)."""
    if os.path.lexists(path):
        return Path(path)
    shipped = shipped_recipe(os.fspath(path))
    return shipped if shipped is not None else Path(path)


def not_found_error(path: str | os.PathLike[str]) -> RecipeError:
    """`PATH: recipe file not found`, with the shipped names as the way out."""
    names = shipped_names()
    stem = Path(path).name.removesuffix(_SUFFIX)
    if stem in names:  # `recipes/e2b.yaml` outside a checkout: the shipped copy has that name
        hint = f"to use the recipe shipped with patchkit, pass its name `{stem}` instead"
    elif names:
        shipped = ", ".join(names)
        hint = f"give a recipe file, or the name of a shipped recipe: {shipped}, described by `patchkit recipes list`"
    else:
        hint = "give the path of a recipe YAML file"
    return RecipeError(f"{path}: recipe file not found", hint=hint, data={"path": str(path), "shipped": names})
