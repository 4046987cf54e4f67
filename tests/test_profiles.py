"""Size profiles of the released Gemma 4 models, the shipped recipes, and validate / apply plans at full scale
on header-only (sparse) checkpoints with the real tensor names and shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchkit.cli import main
from patchkit.errors import RecipeError
from patchkit.model.profiles import PROFILES, compare_config, find_profile, get_profile
from patchkit.recipe import load_recipe, parse_recipe
from patchkit.recipe.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
GEMMA_RECIPES = {"e2b": "e2b.yaml", "e4b": "e4b.yaml", "26b-a4b": "26b-a4b.yaml", "31b": "31b.yaml"}


# --- geometry ---------------------------------------------------------------------------------------------


def test_profiles_agree_with_the_papers_unit_counts():
    # the paper's totals are products of the published configs: an independent check of layers x widths
    assert PROFILES["e4b"].total_neurons == 430_080
    assert PROFILES["31b"].total_neurons == 1_290_240
    assert PROFILES["26b-a4b"].total_expert_slots == 3_840
    e2b = PROFILES["e2b"]
    assert [e2b.mlp_width(i) for i in range(35)] == [6144] * 15 + [12288] * 20  # double-wide KV-shared layers


@pytest.mark.parametrize("key", sorted(PROFILES))
def test_adapter_reads_the_profile_like_a_config_json(key):
    from patchkit.model.adapters import get_adapter

    profile = PROFILES[key]
    adapter = get_adapter(get_profile(profile.repo))
    assert adapter.prefix == "model.language_model" and adapter.num_layers == profile.num_hidden_layers
    assert [adapter.layer_info(i).intermediate_size for i in range(adapter.num_layers)] == [
        profile.mlp_width(i) for i in range(profile.num_hidden_layers)
    ]
    assert adapter.is_moe == profile.enable_moe_block
    assert find_profile(profile.repo.upper() + "@main") is profile and find_profile(key) is profile
    assert compare_config(profile, profile.config()) == []


@pytest.mark.parametrize("key", sorted(PROFILES))
def test_transformers_builds_the_same_mlp_shapes_from_the_profile(key):
    from fixtures.tiny_models import gemma4_release_tensors

    profile = PROFILES[key]
    shapes = dict(gemma4_release_tensors(profile))
    p = "model.language_model.layers"
    for layer in range(profile.num_hidden_layers):
        width = profile.mlp_width(layer)
        assert shapes[f"{p}.{layer}.mlp.down_proj.weight"] == (profile.hidden_size, width)
        assert shapes[f"{p}.{layer}.mlp.up_proj.weight"] == (width, profile.hidden_size)
        if profile.enable_moe_block:
            e, h, i = profile.num_experts, profile.hidden_size, profile.moe_intermediate_size
            assert shapes[f"{p}.{layer}.experts.down_proj"] == (e, h, i)
            assert shapes[f"{p}.{layer}.experts.gate_up_proj"] == (e, 2 * i, h)
            assert shapes[f"{p}.{layer}.router.per_expert_scale"] == (e,)


def test_compare_config_names_a_mismatch():
    real = PROFILES["e4b"].config()
    real["text_config"]["num_hidden_layers"] = 40
    assert compare_config(PROFILES["e4b"], real) == ["num_hidden_layers: config.json has 40, the e4b profile 42"]


# --- shipped recipes --------------------------------------------------------------------------------------


def test_every_gemma_size_ships_a_recipe():
    assert {p.name for p in RECIPES} >= set(GEMMA_RECIPES.values())


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates_against_its_profile(path):
    recipe = load_recipe(path)
    report = validate_recipe(path)
    profile = find_profile(recipe.model.repo)
    if profile is not None:
        assert report.against == "profile" and report.model == profile.repo
    if not recipe.is_resolved:
        assert recipe.edits == []  # never invented: unresolved recipes carry no indices
        space = report.search_space
        if profile is not None:
            assert 0 < space["units_in_scope"] <= space["units_in_model"]
            assert "patchkit" in recipe.resolution.how_to_resolve


def test_recipe_search_spaces_are_what_the_sources_say():
    from patchkit.recipe.resolution import search_space

    e2b = search_space(load_recipe(ROOT / "recipes/e2b.yaml"))
    assert (e2b.kind, e2b.layers, e2b.max_edits, e2b.units_in_scope) == ("neuron", (10, 12), 2, 2 * 6144)
    assert [(p.layer, p.op, p.factor) for p in e2b.partial_edits] == [(10, "scale", -0.8), (12, "scale", 3.0)]
    e4b = search_space(load_recipe(ROOT / "recipes/e4b.yaml"))
    assert (e4b.kind, e4b.layers, e4b.exact_edits, e4b.units_in_scope) == ("neuron", None, 3, 430_080)
    moe = search_space(load_recipe(ROOT / "recipes/26b-a4b.yaml"))
    assert (moe.kind, moe.exact_edits, moe.units_in_model, moe.method) == ("expert", 3, 3_840, "diff")
    assert moe.reference == "edgerunner-ai/gemma-4-26B-A4B-it-noloop"
    big = search_space(load_recipe(ROOT / "recipes/31b.yaml"))
    assert (big.exact_edits, big.units_total, big.ops) == (1100, 1_290_240, ("zero",))


@pytest.mark.parametrize("name", ["e2b.yaml", "e4b.yaml", "31b.yaml", "26b-a4b.yaml"])
def test_apply_on_an_unresolved_recipe_stops_with_one_line(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = CliRunner().invoke(main, ["apply", str(ROOT / "recipes" / name), "--dry-run"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "unresolved" in lines[0]
    # apply never resolves (not even the published 26B-A4B reference): it names the command that does
    assert f"run `patchkit recipe resolve {ROOT / 'recipes' / name}` first" in lines[0]
    status = "published" if name == "26b-a4b.yaml" else "inferred"
    assert f"-it-noloop ({status}), then locate --from-recipe" in lines[0]


def test_validate_json_reports_the_search_space():
    result = CliRunner().invoke(main, ["validate", str(ROOT / "recipes/e2b.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["against"] == "profile" and data["search_space"]["layers"] == [10, 12]


HEAD = "patchkit: 1\nname: t\nsource: {kind: paper}\nmodel: {repo: google/gemma-4-E2B-it}\n"


@pytest.mark.parametrize(
    "constraints, says",
    [
        ("{layers: [10, 40]}", r"layer 40 is out of range: this model has 35 layers"),
        ("{kind: expert}", r"kind: expert, but google/gemma-4-E2B-it is dense"),
        ("{units_total: 430080}", r"units_total: the source counts 430080 neuron units but this model has 337920"),
        ("{layers: [10], max_edits: 7000}", r"max_edits: 7000 exceeds the 6144 candidate units"),
    ],
)
def test_constraints_are_checked_against_the_geometry(constraints, says):
    text = HEAD + f"resolution: {{status: unresolved, constraints: {constraints}}}\n"
    with pytest.raises(RecipeError, match=says):
        validate_recipe(parse_recipe(text, "c.yaml"))


@pytest.mark.parametrize(
    "constraints, says",
    [
        ("{layers: 10}", r"c\.yaml:5:\d+: resolution\.constraints\.layers"),
        ("{max_edits: 0}", r"resolution\.constraints\.max_edits"),
        ("{ops: [explode]}", r"resolution\.constraints\.ops\[0\]: 'explode' is not allowed"),
        ("{layers: [1], partial_edits: [{layer: 2, op: zero}]}", r"layer 2 is not in `layers`"),
        ("{partial_edits: [{layer: 2, op: scale}]}", r"op scale needs a factor"),
        ("{kind: expert, ops: [zero]}", r"experts support only `suppress`"),
    ],
)
def test_bad_constraints_are_one_line_errors_with_a_position(constraints, says):
    with pytest.raises(RecipeError, match=says) as info:
        parse_recipe(HEAD + f"resolution: {{status: unresolved, constraints: {constraints}}}\n", "c.yaml")
    assert "\n" not in str(info.value)


# --- full scale on header-only checkpoints ----------------------------------------------------------------

FULL_SCALE = {
    # key: (edits that must validate at the edges of the real geometry, expected bytes edited, an edit out of range)
    "e2b": (
        "- {layer: 34, neuron: 12287, op: invert}\n- {layer: 14, neuron: 6143, op: scale, factor: -0.8}\n",
        2 * 1536 * 2,
        "- {layer: 14, neuron: 6144, op: zero}\n",
        r"neuron 6144 is out of range for layer 14: its MLP has 6144 neurons",
    ),
    "e4b": (
        "- {layer: 41, neuron: [0, 10239], op: zero}\n",
        2 * 2560 * 2,
        "- {layer: 42, neuron: 0, op: zero}\n",
        r"layer 42 is out of range: this model has 42 layers \(0–41\)",
    ),
    "26b-a4b": (
        "- {layer: 29, expert: 127, op: suppress}\n- {layer: 0, expert: 5, op: suppress, tensor: down_proj}\n",
        2 + 2816 * 704 * 2,
        "- {layer: 3, expert: 128, op: suppress}\n",
        r"expert 128 is out of range for layer 3: it has 128 experts",
    ),
    "31b": (
        "- {layer: 59, neuron: 21503, op: invert}\n- {layer: 0, neuron: 1, op: zero}\n",
        2 * 5376 * 2,
        "- {layer: 59, neuron: 21504, op: zero}\n",
        r"neuron 21504 is out of range for layer 59",
    ),
}


@pytest.fixture(scope="module")
def sparse_models(tmp_path_factory):
    from fixtures.tiny_models import sparse_gemma4_checkpoint

    root = tmp_path_factory.mktemp("sparse")
    return {key: sparse_gemma4_checkpoint(PROFILES[key], root / key) for key in FULL_SCALE}


@pytest.mark.parametrize("key", sorted(FULL_SCALE))
def test_full_scale_validate_and_dry_run_plan(sparse_models, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = sparse_models[key]
    profile = PROFILES[key]
    files = sorted(model.glob("*.safetensors"))
    if profile.shards:
        assert [f.name for f in files] == list(profile.shards)
    logical = sum(f.stat().st_size for f in files)
    on_disk = sum(f.stat().st_blocks * 512 for f in files)
    assert logical > 5 * 10**9 and on_disk < 32 * 2**20  # real size, (almost) no blocks
    good, nbytes, bad, says = FULL_SCALE[key]
    head = f"patchkit: 1\nname: {key}-test\nsource: {{kind: manual}}\nmodel: {{repo: {profile.repo}, architecture: gemma4}}\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(head + "edits:\n" + "\n".join("  " + line for line in good.splitlines()) + "\n")
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(recipe), "--model", str(model), "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["against"] == "model" and not any("differs from patchkit" in w for w in report["warnings"])
    offline = runner.invoke(main, ["validate", str(recipe), "--json"])  # no model: the profile
    assert offline.exit_code == 0 and json.loads(offline.stdout)["against"] == "profile"
    plan_run = runner.invoke(main, ["apply", str(recipe), "--model", str(model), "--dry-run", "--json"])
    assert plan_run.exit_code == 0, plan_run.output
    plan = json.loads(plan_run.stdout)["plan"]
    assert plan["bytes_edited"] == nbytes
    touched = {e["file"] for e in plan["edits"]}
    assert set(plan["files_rewritten"]) == touched and set(plan["files_linked"]) == {f.name for f in files} - touched
    assert all(e["tensor"].startswith("model.language_model.layers.") for e in plan["edits"])
    assert not (tmp_path / f"{key}-test").exists()  # a dry run writes nothing
    recipe.write_text(head + "edits:\n  " + bad)
    for args in (["validate", str(recipe), "--model", str(model)], ["validate", str(recipe)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2
        import re

        assert re.search(says, res.output), res.output


def test_sparse_checkpoint_is_what_the_adapter_expects(sparse_models):
    from patchkit.model.refs import resolve_model

    ref = resolve_model(str(sparse_models["26b-a4b"]))
    names = ref.tensor_names()
    assert "model.language_model.layers.0.router.per_expert_scale" in names
    assert os.path.getsize(sparse_models["26b-a4b"] / "config.json") > 0
