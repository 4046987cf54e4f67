"""`patchkit validate` names a misspelt key's closest known key and shows an example of a missing field, each as
one line with file:line:column."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from patchkit.cli import main
from patchkit.errors import RecipeError
from patchkit.recipe import load_recipe, parse_recipe

HEAD = "patchkit: 1\nname: t\nsource: {kind: manual}\n"


def _validate(tmp_path, text: str) -> str:
    path = tmp_path / "fix.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0].replace(str(path), "fix.yaml")


def test_neurons_is_an_unknown_key_with_a_suggestion(tmp_path):
    line = _validate(tmp_path, HEAD + "edits:\n  - {layer: 3, neurons: 7, op: invert}\n")
    assert line.startswith("error: fix.yaml:5:16: edits[0].neurons: unknown key; did you mean `neuron`?")
    assert "missing `neuron`" not in line


def test_neurons_in_block_style_points_at_the_key(tmp_path):
    line = _validate(tmp_path, HEAD + "edits:\n  - layer: 3\n    neurons: [7, 8]\n    op: invert\n")
    assert line.startswith("error: fix.yaml:6:5: edits[0].neurons: unknown key; did you mean `neuron`?")


@pytest.mark.parametrize(
    ("text", "where", "key", "suggestion"),
    [
        (HEAD + "edits:\n  - {layer: 1, experts: 2, op: suppress}\n", "5:16", "edits[0].experts", "expert"),
        (HEAD + "edits:\n  - {layer: 1, neuron: 2, op: scale, facter: 0.5}\n", "5:38", "edits[0].facter", "factor"),
        (HEAD + "edit:\n  - {layer: 1, neuron: 2, op: invert}\n", "4:1", "edit", "edits"),
        (HEAD + "model: {repo: a/b, revison: main}\n", "4:20", "model.revison", "revision"),
        (HEAD + "checks: {loops: {max_loop_rat: 0.1}}\n", "4:18", "checks.loops.max_loop_rat", "max_loop_rate"),
        (
            HEAD + "resolution: {status: unresolved, how_to_reslove: x}\n",
            "4:34",
            "resolution.how_to_reslove",
            "how_to_resolve",
        ),
    ],
)
def test_unknown_keys_name_the_closest_known_key(text, where, key, suggestion):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    assert err.value.message == f"r.yaml:{where}: {key}: unknown key; did you mean `{suggestion}`?"
    assert err.value.data == {"suggestion": suggestion}
    assert "\n" not in str(err.value)


def test_an_unknown_key_far_from_any_known_one_gets_no_guess():
    with pytest.raises(RecipeError) as err:
        parse_recipe(HEAD + "edits:\n  - {layer: 1, neuron: 2, op: zero, sign: -1}\n", "r.yaml")
    assert err.value.message == "r.yaml:5:37: edits[0].sign: unknown key"
    assert "did you mean" not in str(err.value)


def test_missing_source_shows_an_example(tmp_path):
    line = _validate(tmp_path, "patchkit: 1\nname: t\nedits:\n  - {layer: 3, neuron: 7, op: invert}\n")
    assert line.startswith("error: fix.yaml:1:1: source: required field is missing (")
    example = re.search(r"`(source: \{.*?\})`", line)
    assert example, line
    # the example itself is valid: pasting it in fixes the recipe
    fixed = parse_recipe(f"patchkit: 1\nname: t\n{example.group(1)}\nedits: [{{layer: 3, neuron: 7, op: invert}}]\n")
    assert fixed.source.kind == "manual"
    assert all(k in line for k in ("paper", "diff", "locate", "manual"))


@pytest.mark.parametrize(
    ("text", "field", "example"),
    [
        (HEAD.replace("name: t\n", ""), "name", "`name: "),
        (HEAD.replace("{kind: manual}", "{reference: x}"), "source.kind", "`kind: manual`"),
        (HEAD + "edits: [{neuron: 1, op: zero}]\n", "edits[0].layer", "`layer: 3`"),
        (HEAD + "edits: [{layer: 0, neuron: 1}]\n", "edits[0].op", "`op: invert`"),
    ],
)
def test_missing_fields_show_examples(text, field, example):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    assert re.fullmatch(rf"r\.yaml:\d+:\d+: {re.escape(field)}: required field is missing", err.value.message)
    assert example in err.value.hint


def test_json_error_carries_the_suggestion(tmp_path):
    path = tmp_path / "fix.yaml"
    path.write_text(HEAD + "edits:\n  - {layer: 3, neurons: 7, op: invert}\n")
    result = CliRunner().invoke(main, ["validate", str(path), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["data"] == {"suggestion": "neuron"} and "rename it to `neuron`" in error["hint"]


def test_load_recipe_reports_the_file(tmp_path):
    path = tmp_path / "fix.yaml"
    path.write_text(HEAD + "edits:\n  - {layer: 3, neurons: 7, op: invert}\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}:5:16: edits\[0\]\.neurons: unknown key"):
        load_recipe(path)
