"""`patchkit recipe extract --into FILE` writes the extracted edits into FILE by a ruamel round trip: the author's
comments, key order and untouched sections survive; the result is field for field the recipe a plain extraction
writes (the comments are the only difference)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_extract import PREFIX, patched_copy

from patchkit.cli import main
from patchkit.recipe import Recipe, load_recipe, parse_recipe
from patchkit.workflows.resolve import extract_recipe

MY_COMMENTS = (
    "# why: the base loops on long lists; see the issue tracker",
    "  # the published fix only touches layers 1 and 3",
    "# thresholds agreed with the eval team",
)


@pytest.fixture
def fixed(tiny_gemma4_bf16, tmp_path):
    return patched_copy(
        tiny_gemma4_bf16,
        tmp_path / "fixed",
        [
            (f"{PREFIX}.3.mlp.down_proj.weight", 1, 90, "scale", -0.8),
            (f"{PREFIX}.1.mlp.down_proj.weight", 1, 2, "invert", None),
        ],
    )


@pytest.fixture
def starter(tiny_gemma4_bf16, tmp_path):
    """A `patchkit new` starter turned into a diff recipe, with the author's own comments added."""
    path = tmp_path / "mine.yaml"
    result = CliRunner().invoke(main, ["new", "--model", str(tiny_gemma4_bf16), "--name", "mine", "-o", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text().replace("method: manual", "method: diff")
    text = text.replace("patchkit: 1\n", f"{MY_COMMENTS[0]}\npatchkit: 1\n")
    text = text.replace("  # Neuron n of layer", f"{MY_COMMENTS[1]}\n  # Neuron n of layer")
    text = text.replace("checks:\n", f"{MY_COMMENTS[2]}\nchecks:\n")
    path.write_text(text)
    return path


def _comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_extract_into_keeps_every_comment_and_adds_the_edits(tiny_gemma4_bf16, fixed, starter):
    before = starter.read_text()
    result = CliRunner().invoke(main, ["recipe", "extract", str(tiny_gemma4_bf16), str(fixed), "--into", str(starter)])
    assert result.exit_code == 0, result.output
    assert "could not be kept" not in result.output
    after = starter.read_text()
    for comment in _comments(before):  # every comment line, in the same order, TO FILL markers included
        assert comment in _comments(after)
    assert [c for c in _comments(after) if c in _comments(before)] == _comments(before)
    assert "# TO FILL: the base model's Hub repo id" in after  # a local base leaves the repo still to fill
    recipe = load_recipe(starter)
    assert recipe.is_resolved and recipe.name == "mine"
    assert [e.model_dump(exclude_none=True, exclude={"tensor"}) for e in recipe.edits] == [
        {"layer": 1, "neuron": 2, "op": "invert"},
        {"layer": 3, "neuron": 90, "op": "scale", "factor": -0.8},
    ]
    lines = after.splitlines()
    # a comment that stood before a section still stands right before it (not inside the section above)
    assert lines[lines.index("checks:") - 1] == MY_COMMENTS[2]
    assert lines.index("resolution:") - 1 == next(i for i, x in enumerate(lines) if x.startswith("# Until it has"))
    assert "  - {layer: 1, neuron: 2, op: invert}" in lines
    assert "  loops: {suite: enumeration, max_loop_rate: 0.10}" in lines  # untouched sections keep their text


def test_the_kept_file_is_the_same_recipe_as_a_plain_extraction(tiny_gemma4_bf16, fixed, starter):
    template = load_recipe(starter)
    kept = extract_recipe(tiny_gemma4_bf16, fixed, template=template)
    plain = extract_recipe(tiny_gemma4_bf16, fixed, template=Recipe.model_validate(template.model_dump()))
    assert plain.text != kept.text and "TO FILL" not in plain.text and "TO FILL" in kept.text
    assert parse_recipe(kept.text, "k").model_dump() == parse_recipe(plain.text, "p").model_dump()
    assert kept.recipe.model_dump() == plain.recipe.model_dump() and kept.warnings == []


def test_filled_fields_lose_their_to_fill_marker():
    from patchkit.edit.extract import _into_template

    template = (
        "patchkit: 1\nname: r\nmodel:\n"
        "  repo:                   # TO FILL: the base model's Hub repo id (org/name)\n"
        "  revision:               # TO FILL: the 40-hex commit sha\n"
        "  architecture: llama    # read from config.json\n"
        "# the source of the edit\n"
        "source: {kind: manual}\nedits:\n"
    )
    doc = {
        "name": "r",
        "description": "d",
        "model": {"repo": "alice/base", "revision": "a" * 40, "architecture": "llama"},
        "source": {"kind": "diff", "reference": "alice/fixed@" + "b" * 40},
        "resolution": {"status": "resolved", "method": "diff", "reference": "alice/fixed@" + "b" * 40},
        "edits": [{"layer": 0, "neuron": 1, "op": "invert"}],
    }
    text = _into_template(template, doc)
    assert "TO FILL" not in text
    assert "  repo: alice/base\n" in text and f"  revision: {'a' * 40}\n" in text
    assert "  architecture: llama    # read from config.json\n# the source of the edit\nsource:" in text
    assert parse_recipe(text, "t").model.repo == "alice/base"


def test_a_template_that_cannot_be_kept_is_rewritten_whole_and_said(tiny_gemma4_bf16, fixed, starter, monkeypatch):
    import patchkit.edit.extract as extract

    monkeypatch.setattr(extract, "_into_template", lambda text, doc: text)  # would lose the edits: refused
    result = extract_recipe(tiny_gemma4_bf16, fixed, template=load_recipe(starter))
    assert result.recipe.is_resolved and len(result.recipe.edits) == 2
    assert result.text.startswith("# Generated by `patchkit recipe extract`")
    assert [w for w in result.warnings if "could not be kept" in w] == [
        f"the comments and layout of {starter} could not be kept; it was rewritten whole"
    ]


def test_into_a_shipped_recipe_name_writes_a_local_copy(tiny_gemma4_bf16, fixed, tmp_path, monkeypatch):
    """`--into e2b` reads the shipped recipe as the template but never writes into patchkit's own files: the
    resolved copy goes to ./e2b.yaml, and the command says so."""
    from patchkit.recipe.packaged import shipped_recipe

    shipped = shipped_recipe("e2b")
    assert shipped is not None
    before = shipped.read_bytes()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["recipe", "extract", str(tiny_gemma4_bf16), str(fixed), "--into", "e2b"])
    assert result.exit_code == 0, result.output
    assert shipped.read_bytes() == before
    written = load_recipe(tmp_path / "e2b.yaml")
    assert written.is_resolved and len(written.expanded_edits()) == 2
    assert "shipped with patchkit" in result.output
