"""A shipped recipe's short name works wherever a RECIPE path does: an existing path wins, then the name, else
"not found" listing the shipped names. `patchkit recipes list|show` describe them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import patchkit
from patchkit.cli import main
from patchkit.errors import RecipeError
from patchkit.recipe import load_recipe
from patchkit.recipe import packaged as pk

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["26b-a4b", "31b", "e2b", "e4b", "smollm2-135m"]
OWN = "patchkit: 1\nname: my-own-e2b\nsource: {kind: manual}\nedits: [{layer: 0, neuron: 1, op: zero}]\n"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a directory with no recipes in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_names_resolve_to_the_shipped_files(elsewhere):
    assert pk.shipped_names() == SHIPPED
    for name in SHIPPED:
        recipe = load_recipe(name)
        assert Path(recipe.path) == ROOT / "recipes" / f"{name}.yaml"
        assert recipe.source_text == (ROOT / "recipes" / f"{name}.yaml").read_text()
    assert patchkit.load_recipe("e2b").model.repo == "google/gemma-4-E2B-it"  # the library facade too


def test_an_existing_path_wins_over_a_name(elsewhere):
    assert not pk.is_installed_copy("e2b")  # a checkout's recipes/ are the files to edit, not installed copies
    (elsewhere / "e2b").write_text(OWN)
    assert load_recipe("e2b").name == "my-own-e2b"
    assert pk.resolve_recipe_path("e2b") == Path("e2b") and not pk.is_shipped("e2b")
    assert pk.is_shipped("e4b")


@pytest.mark.parametrize("kind", ["directory", "dangling-link"])
def test_an_existing_non_file_is_refused_not_replaced_by_the_name(elsewhere, kind):
    if kind == "directory":
        (elsewhere / "e2b").mkdir()
    else:
        os.symlink(elsewhere / "missing.yaml", elsewhere / "e2b")
    with pytest.raises(RecipeError) as err:
        load_recipe("e2b")
    assert "e2b" in err.value.message and "recipe file not found" not in err.value.message


@pytest.mark.parametrize("arg", ["e2b.yaml", "./e2b", "recipes/e2b.yaml", "E2B", "e2b/", "../e2b", ""])
def test_only_a_bare_name_is_a_name(elsewhere, arg):
    assert pk.shipped_recipe(arg) is None
    if arg:
        with pytest.raises(RecipeError, match="recipe file not found"):
            load_recipe(arg)


def test_not_found_lists_the_shipped_names(elsewhere):
    with pytest.raises(RecipeError) as err:
        load_recipe("nope")
    assert err.value.message == "nope: recipe file not found"
    assert "e2b" in err.value.hint and "patchkit recipes list" in err.value.hint
    assert err.value.data["shipped"] == SHIPPED
    with pytest.raises(RecipeError) as err:
        load_recipe("recipes/e4b.yaml")  # the README's path, outside a checkout
    assert "pass its name `e4b`" in err.value.hint


def test_recipes_dir_prefers_installed_package_data(tmp_path, monkeypatch):
    """A wheel install has patchkit/_recipes; a checkout has recipes/ next to pyproject.toml; else nothing."""
    site = tmp_path / "site-packages"
    (site / "patchkit" / "_recipes").mkdir(parents=True)
    (site / "patchkit" / "_recipes" / "x1.yaml").write_text(OWN)
    (site / "recipes").mkdir()  # somebody else's top-level `recipes` package: never ours
    monkeypatch.setattr(pk.resources, "files", lambda name: site / "patchkit")
    assert pk.recipes_dir() == site / "patchkit" / "_recipes" and pk.shipped_names() == ["x1"]
    monkeypatch.chdir(tmp_path)
    assert pk.is_installed_copy("x1") and pk.is_installed_copy(site / "patchkit" / "_recipes" / "x1.yaml")
    (tmp_path / "x1").write_text(OWN)
    assert not pk.is_installed_copy("x1")  # the local file wins, and may be written
    (site / "patchkit" / "_recipes" / "x1.yaml").unlink()
    (site / "patchkit" / "_recipes").rmdir()
    assert pk.recipes_dir() is None and pk.shipped_names() == [] and pk.shipped_recipe("e2b") is None
    (site / "pyproject.toml").write_text("")
    assert pk.recipes_dir() == site / "recipes"


def test_cli_commands_take_names(elsewhere):
    runner = CliRunner()
    result = runner.invoke(main, ["validate", "e2b", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "gemma-4-E2B-it-loopfix"
    result = runner.invoke(main, ["recipe", "space", "e2b", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"] == [10, 12]
    result = runner.invoke(main, ["validate", "e2bb"])
    assert result.exit_code == 2
    assert "e2bb: recipe file not found" in result.output and "26b-a4b, 31b, e2b, e4b, smollm2-135m" in result.output


def test_recipes_list(elsewhere):
    result = CliRunner().invoke(main, ["recipes", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    assert lines[2].split()[:3] == ["e2b", "google/gemma-4-E2B-it", "unresolved"]
    result = CliRunner().invoke(main, ["recipes", "list", "--json"])
    doc = json.loads(result.stdout)
    assert doc["dir"] == str(ROOT / "recipes")
    e4b = next(r for r in doc["recipes"] if r["name"] == "e4b")
    assert e4b["model"] == "google/gemma-4-E4B-it" and e4b["resolved"] is False and e4b["error"] is None
    assert e4b["path"] == str(ROOT / "recipes" / "e4b.yaml")


def test_recipes_list_reports_a_broken_recipe_and_shows_text(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "good.yaml").write_text(OWN)
    (folder / "bad.yaml").write_text("patchkit: 1\nname: x\n")
    monkeypatch.setattr(pk, "recipes_dir", lambda: folder)
    result = CliRunner().invoke(main, ["recipes", "list"])
    assert result.exit_code == 0, result.output
    bad, good = result.stdout.splitlines()
    assert bad.startswith("bad ") and "INVALID" in bad and "source: required field is missing" in bad
    assert good.split()[0] == "good" and "resolved (1 slice(s))" in good
    shown = CliRunner().invoke(main, ["recipes", "show", "good"])
    assert shown.exit_code == 0 and shown.stdout == OWN
    missing = CliRunner().invoke(main, ["recipes", "show", "nope"])
    assert missing.exit_code == 2 and "nope: recipe file not found" in missing.output


def test_demo_default_recipe_is_the_shipped_one():
    from patchkit.workflows.demo import default_recipe_path

    assert default_recipe_path() == ROOT / "recipes" / "smollm2-135m.yaml"
