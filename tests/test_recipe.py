"""Recipe schema: valid recipes expand correctly; each malformed recipe gives one clear file:line error."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from patchkit.cli import main
from patchkit.errors import RecipeError
from patchkit.recipe import json_schema, load_recipe, parse_recipe

HEAD = "patchkit: 1\nname: t\nsource: {kind: manual}\n"


def test_valid_recipe_expands_lists_and_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        HEAD + "edits:\n  - {layer: [1, 2], neuron: [3, 4], op: invert}\n"
        "  - {layer: 0, neuron: 5, op: scale, factor: 0.5, tensor: up_proj}\n"
        "  - {layer: 2, expert: 1, op: suppress}\n"
    )
    recipe = load_recipe(path)
    edits = recipe.expanded_edits()
    assert [(e.layer, e.index, e.factor) for e in edits[:4]] == [(1, 3, -1.0), (1, 4, -1.0), (2, 3, -1.0), (2, 4, -1.0)]
    assert (edits[4].tensor, edits[4].factor, edits[4].op) == ("up_proj", 0.5, "scale")
    assert (edits[5].kind, edits[5].factor, edits[5].tensor) == ("expert", 0.0, None)
    assert edits[0].where.startswith(f"{path}:5:5")
    assert recipe.source_text == path.read_text()


def test_checks_and_publish_are_preserved():
    recipe = parse_recipe(
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\n"
        "checks: {loops: {max_loop_rate: 0.1}, bench: {max_kl: 0.02}}\npublish: {repo: a/b, license: mit}\n"
    )
    assert recipe.checks.loops.max_loop_rate == 0.1 and recipe.checks.bench.max_kl == 0.02
    assert recipe.publish.repo == "a/b"


def test_unresolved_recipe_loads_but_refuses_to_apply():
    recipe = parse_recipe(HEAD + "resolution: {status: unresolved, constraints: {expert_slots: 3}}\n", "u.yaml")
    assert not recipe.is_resolved and recipe.expanded_edits() == []
    with pytest.raises(RecipeError, match=r"u.yaml:4:1: .*unresolved.*patchkit"):
        recipe.require_resolved()


def test_json_schema_lists_fields():
    schema = json_schema()
    assert {"patchkit", "name", "model", "source", "edits", "checks", "publish", "resolution"} <= set(
        schema["properties"]
    )
    json.dumps(schema)


MALFORMED = {
    "yaml-syntax": ("patchkit: 1\nname: [t\n", r":3:1: YAML syntax error"),
    "yaml-tab-indent": ("patchkit: 1\nname: t\n\tsource: x\n", r"YAML syntax error"),
    "empty-file": ("", r":1:1: the recipe is empty"),
    "not-a-mapping": ("- a\n- b\n", r"must be a mapping"),
    "missing-version": ("name: t\nsource: {kind: manual}\n", r"patchkit: missing schema version"),
    "wrong-version": (
        "patchkit: 2\nname: t\nsource: {kind: manual}\n",
        r":1:1: patchkit: schema version 2 is not supported",
    ),
    "missing-name": (
        "patchkit: 1\nsource: {kind: manual}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"name: required field is missing",
    ),
    "missing-source": (
        "patchkit: 1\nname: t\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"source: required field is missing",
    ),
    "bad-source-kind": (
        HEAD.replace("manual", "blog") + "edits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":3:10: source.kind: 'blog' is not allowed",
    ),
    "unknown-top-key": (HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\nedit: []\n", r":5:1: edit: unknown key"),
    "unknown-edit-key": (
        HEAD + "edits:\n  - {layer: 0, neuron: 1, op: zero, sign: -1}\n",
        r":5:.*edits\[0\]\.sign: unknown key",
    ),
    "unknown-model-key": (
        HEAD + "model: {repo: a/b, rev: x}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"model\.rev: unknown key",
    ),
    "bad-repo": (
        HEAD + "model: {repo: justaname}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"model\.repo: .*org/name",
    ),
    "bad-architecture": (
        HEAD + "model: {architecture: gpt2}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"model\.architecture: 'gpt2' is not allowed",
    ),
    "edits-not-list": (HEAD + "edits: {layer: 0}\n", r"edits: must be a list"),
    "edit-not-mapping": (HEAD + "edits: [3]\n", r"edits\[0\]: an edit must be a mapping"),
    "no-neuron-or-expert": (HEAD + "edits: [{layer: 0, op: zero}]\n", r"missing `neuron` or `expert`"),
    "neuron-and-expert": (
        HEAD + "edits: [{layer: 0, neuron: 1, expert: 2, op: zero}]\n",
        r"either `neuron` or `expert`",
    ),
    "missing-layer": (HEAD + "edits: [{neuron: 1, op: zero}]\n", r"edits\[0\]\.layer: required field is missing"),
    "missing-op": (HEAD + "edits: [{layer: 0, neuron: 1}]\n", r"edits\[0\]\.op: required field is missing"),
    "bad-op": (HEAD + "edits: [{layer: 0, neuron: 1, op: flip}]\n", r"edits\[0\]\.op: 'flip' is not allowed"),
    "expert-bad-op": (HEAD + "edits: [{layer: 0, expert: 1, op: invert}]\n", r"experts support only `suppress`"),
    "layer-string": (
        HEAD + "edits: [{layer: x, neuron: 1, op: zero}]\n",
        r":4:10: edits\[0\]\.layer: must be an index or a list of indices, got 'x'",
    ),
    "layer-float": (HEAD + "edits: [{layer: 1.5, neuron: 1, op: zero}]\n", r"edits\[0\]\.layer"),
    "negative-neuron": (
        HEAD + "edits: [{layer: 0, neuron: -1, op: zero}]\n",
        r"edits\[0\]\.neuron: indices must be >= 0",
    ),
    "negative-layer": (
        HEAD + "edits: [{layer: -2, neuron: 1, op: zero}]\n",
        r"edits\[0\]\.layer: indices must be >= 0",
    ),
    "empty-neuron-list": (
        HEAD + "edits: [{layer: 0, neuron: [], op: zero}]\n",
        r"edits\[0\]\.neuron: the list is empty",
    ),
    "repeated-index": (HEAD + "edits: [{layer: 0, neuron: [1, 1], op: zero}]\n", r"1 is listed twice"),
    "scale-no-factor": (HEAD + "edits: [{layer: 0, neuron: 1, op: scale}]\n", r"op scale needs a factor"),
    "factor-on-invert": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: invert, factor: 2}]\n",
        r"op invert takes no factor",
    ),
    "factor-one": (HEAD + "edits: [{layer: 0, neuron: 1, op: scale, factor: 1}]\n", r"scaling by 1 changes nothing"),
    "factor-nan": (HEAD + "edits: [{layer: 0, neuron: 1, op: scale, factor: .nan}]\n", r"not a finite number"),
    "factor-string": (HEAD + "edits: [{layer: 0, neuron: 1, op: scale, factor: half}]\n", r"edits\[0\]\.factor"),
    "bad-tensor": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero, tensor: gate_proj}]\n",
        r"edits\[0\]\.tensor: 'gate_proj' is not allowed",
    ),
    "duplicate-edit": (
        HEAD + "edits:\n  - {layer: 1, neuron: 3, op: invert}\n  - {layer: 1, neuron: [2, 3], op: zero}\n",
        r":6:5: edits\[1\]: layer 1 neuron 3 is already edited by edits\[0\] \(it cannot be both invert and zero",
    ),
    "duplicate-expert": (
        HEAD + "edits:\n  - {layer: [1, 2], expert: 3, op: suppress}\n  - {layer: 2, expert: 3, op: suppress}\n",
        r"layer 2 expert 3 is already edited",
    ),
    "duplicate-key": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\nname: again\n",
        r":5:1: name: duplicate key \(first at line 2\)",
    ),
    "python-tag": (
        "patchkit: 1\nname: !!python/object/apply:os.system [ls]\nsource: {kind: manual}\n",
        r"YAML tag .* is not allowed",
    ),
    "no-edits": (HEAD, r"the recipe has no edits"),
    "unresolved-with-edits": (
        HEAD + "resolution: {status: unresolved}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"unresolved recipe must not carry edits",
    ),
    "bad-gate": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\nchecks: {loops: {max_loop_rate: 2}}\n",
        r"checks\.loops\.max_loop_rate",
    ),
    "revision-read-as-number": (
        HEAD + "model: {repo: a/b, revision: 1234567}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":4:20: model\.revision: must be text, but YAML read 1234567 as a number \(put the value in quotes",
    ),
    "name-read-as-date": (
        "patchkit: 1\nname: 2026-11-24\nsource: {kind: manual}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":2:1: name: must be text, but YAML read 2026-11-24 as a date",
    ),
    "up-and-down-same-neuron": (
        HEAD
        + "edits:\n  - {layer: 1, neuron: 3, op: invert}\n  - {layer: 1, neuron: 3, op: invert, tensor: up_proj}\n",
        r":6:5: edits\[1\]: layer 1 neuron 3 is edited on both up_proj and down_proj \(edits\[0\]\)",
    ),
    "expert-twice-other-tensor": (
        HEAD
        + "edits:\n  - {layer: 1, expert: 3, op: suppress}\n  - {layer: 1, expert: 3, op: suppress, tensor: down_proj}\n",
        r"edits\[1\]: layer 1 expert 3 is already edited by edits\[0\]",
    ),
    "conflicting-ops": (
        HEAD
        + "edits:\n  - {layer: 2, neuron: [4, 5], op: zero}\n  - {layer: [1, 2], neuron: 5, op: scale, factor: 2}\n",
        r"layer 2 neuron 5 is already edited by edits\[0\] \(it cannot be both zero and scale; keep one\)",
    ),
    "layer-list-of-strings": (
        HEAD + "edits: [{layer: [1, a], neuron: 1, op: zero}]\n",
        r":4:21: edits\[0\]\.layer\[1\]: must be an index \(a whole number >= 0\), got 'a' \(text\)",
    ),
    "expert-tensor-up": (
        HEAD + "edits: [{layer: 0, expert: 1, op: suppress, tensor: up_proj}]\n",
        r"edits\[0\]\.tensor: 'up_proj' is not allowed",
    ),
    "bad-resolution-status": (
        HEAD + "resolution: {status: maybe}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":4:14: resolution\.status: 'maybe' is not allowed",
    ),
    "unknown-resolution-key": (HEAD + "resolution: {status: unresolved, todo: x}\n", r"resolution\.todo: unknown key"),
    "publish-private-not-bool": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\npublish: {repo: a/b, private: perhaps}\n",
        r"publish\.private",
    ),
    "alias-bomb": (
        "patchkit: 1\nname: t\nsource: {kind: manual}\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)),
        r":8:\d+: the recipe expands to more than 100000 values",
    ),
    "set-as-text": (
        HEAD + "description: !!set {a, b}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":4:1: description: a YAML set \(!!set\) is not allowed",
    ),
    "custom-tag": (
        HEAD + "publish: !foo {repo: a/b}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":4:1: publish: YAML tag !foo is not allowed",
    ),
    "two-documents": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\n---\npatchkit: 1\n",
        r"YAML syntax error: but found another document",
    ),
    "non-string-key": (HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\n1: x\n", r"key 1 must be a string"),
    "name-escapes-directory": (
        "patchkit: 1\nname: ../../etc/x\nsource: {kind: manual}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r":2:1: name: '\.\./\.\./etc/x' is not a usable name: use letters",
    ),
    "name-with-spaces": (
        "patchkit: 1\nname: my fix\nsource: {kind: manual}\nedits: [{layer: 0, neuron: 1, op: zero}]\n",
        r"name: .*'my fix' is not a usable name",
    ),
    "unknown-gate": (
        HEAD + "edits: [{layer: 0, neuron: 1, op: zero}]\nchecks: {bench: {max_kld: 1}}\n",
        r"checks\.bench\.max_kld: unknown key",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_recipe_gives_one_line_error_and_nonzero_exit(tmp_path, case):
    text, pattern = MALFORMED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}:"), lines[0]
    assert re.search(r":\d+:\d+: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


def test_at_least_30_malformed_cases():
    assert len(MALFORMED) >= 30


def test_wrong_architecture_for_the_model(tmp_path, tiny_llama):
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + "model: {architecture: gemma4}\nedits: [{layer: 0, neuron: 1, op: zero}]\n")
    result = CliRunner().invoke(main, ["validate", str(path), "--model", str(tiny_llama)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "recipe is for architecture 'gemma4' but the model is 'llama'" in result.output


def test_validate_json_and_warnings(tmp_path, tiny_llama):
    path = tmp_path / "r.yaml"
    path.write_text(
        HEAD
        + "model: {repo: org/not-cached, architecture: llama}\nedits: [{layer: [0, 2], neuron: [1, 2], op: zero}]\n"
    )
    result = CliRunner().invoke(main, ["validate", str(path), "--model", str(tiny_llama), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["against"], report["edits"], report["slices"], report["layers"]) == (
        True,
        "model",
        1,
        4,
        [0, 2],
    )
    assert any("not a pinned" in w for w in report["warnings"])


def test_missing_recipe_file(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "recipe file not found" in result.output


@pytest.mark.parametrize(
    "resolution, says",
    [
        (
            "{status: unresolved, method: diff, reference: org/fixed}",
            "patchkit recipe extract org/base org/fixed --into u.yaml",
        ),
        ("{status: unresolved, method: locate}", "patchkit locate org/base --from-recipe u.yaml"),
        ("{status: unresolved, how_to_resolve: ask the author}", "ask the author"),
    ],
)
def test_unresolved_recipe_says_what_to_run(resolution, says):
    recipe = parse_recipe(HEAD + f"model: {{repo: org/base}}\nresolution: {resolution}\n", "u.yaml")
    with pytest.raises(RecipeError) as info:
        recipe.require_resolved()
    assert str(info.value).startswith("u.yaml:5:1: recipe 't' is unresolved") and says in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_round_trip_preserves_the_recipe():
    from patchkit.recipe import recipe_to_yaml

    text = (
        HEAD.replace("{kind: manual}", "{kind: locate, reference: run-7, score: 0.93, probes: [a, b]}")
        + "model: {repo: org/m, revision: '"
        + "a" * 40
        + "', architecture: gemma4}\n"
        + "edits:\n  - {layer: [1, 2], neuron: [3, 4], op: scale, factor: 0.5, note: why}\n  - {layer: 0, expert: 2, op: suppress}\n"
        + "checks: {loops: {max_loop_rate: 0.1}}\npublish: {repo: org/m-fix, license: mit}\n"
    )
    recipe = parse_recipe(text, "a.yaml")
    again = parse_recipe(recipe_to_yaml(recipe), "b.yaml")
    assert again.model_dump() == recipe.model_dump()
    assert again.expanded_edits() == recipe.expanded_edits()
    assert again.source.model_extra == {"score": 0.93, "probes": ["a", "b"]} and again.model.pinned
