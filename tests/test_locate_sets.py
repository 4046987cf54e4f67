"""`patchkit locate --method sets` against ground truth: a tiny counter whose loop is a planted SET of 8 units
(7 loop drivers over 6 layers + 1 brake whose amplification helps; tests/locate_planted_set.py), its unplanted
twin as the negative control, the constraint modes of --from-recipe, and expert-only search on a Gemma 4 MoE.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from locate_planted_set import PLANTED_UNITS, build_planted_set, write_suite

from patchkit.locate import LocateSettings, run_locate

TRUTH = {(layer, n): side for layer, n, side in PLANTED_UNITS}


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model is latency-bound: one thread, no fight with the other test workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted_set(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("planted-set")
    return (
        build_planted_set(root / "model"),
        build_planted_set(root / "unplanted", planted=False),
        write_suite(root / "suite.yaml"),
    )


def _settings(suite: Path, **kw) -> LocateSettings:
    return LocateSettings(suite=str(suite), max_new_tokens=48, max_set=16, device="cpu", **kw)


@pytest.fixture(scope="module")
def found(planted_set, tmp_path_factory):
    model_dir, _unplanted, suite = planted_set
    out = tmp_path_factory.mktemp("sets-out")
    result = run_locate(str(model_dir), out=out / "recipe.yaml", settings=_settings(suite), resume=out / "cache")
    return result, out


def _recovered(edits: list[dict]) -> list[tuple[int, int]]:
    """Planted units among `edits` whose op points the right way (reduce a driver, amplify the brake)."""
    hits = []
    for e in edits:
        side = TRUTH.get((e["layer"], e.get("neuron", e.get("index"))))
        factor = {"invert": -1.0, "zero": 0.0}.get(e["op"], e.get("factor"))
        if side is not None and factor is not None and (factor > 1) == (side == "amplify"):
            hits.append((e["layer"], e.get("neuron", e.get("index"))))
    return hits


def _loop_rate(model_dir: Path, suite: Path, split: str) -> float:
    from patchkit.checks.loops import LoopSettings, run_suite
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model

    model, tok = load_model(model_dir)
    run = run_suite(
        load_suite(suite).select(split=split),
        model=model,
        tokenizer=tok,
        settings=LoopSettings(max_new_tokens=48, split=split),
    )
    return run.metrics().loop_rate.value or 0.0


def test_set_search_recovers_the_planted_set_with_the_right_signs(found):
    result, _out = found
    assert result.found, result.report.get("reason")
    edits = result.winner["candidate"]["edits"]
    assert len(_recovered(edits)) >= 7, edits
    assert all(e["factor"] > 1 for e in edits if TRUTH.get((e["layer"], e["index"])) == "amplify")
    assert {e["layer"] for e in edits if (e["layer"], e["index"]) in TRUTH} >= {0, 1, 2, 3}
    sets = result.report["sets"]
    assert sets["chosen_k"] == len(edits) and sets["learned"]["units_in_scope"] == 6 * 32
    # every k is judged on train with the full set of figures, the chosen k once on held-out
    ks = [d["k"] for d in sets["frontier_train"]]
    assert ks == sorted(ks) and ks[0] == 1 and 8 in ks
    for d in sets["frontier_train"]:
        figures = d["summary"]["figures"]
        assert {"loop_rate", "good_list_rate", "completeness", "control_accuracy"} <= set(figures)
        assert figures["loop_rate"]["n"] == d["summary"]["n"] and len(figures["loop_rate"]["ci"]) == 2
        assert d["summary"]["completeness_ci"]["n"] == d["summary"]["n"]
    small = [d for d in sets["frontier_train"] if d["k"] < 4]
    assert all(d["summary"]["loops"] == d["summary"]["n"] for d in small)  # the drive is redundant


def test_heldout_gates_pass_and_the_recipe_restores_the_unplanted_loop_rate(found, planted_set, tmp_path):
    from patchkit.edit.apply import apply_recipe
    from patchkit.recipe import load_recipe

    result, out = found
    model_dir, unplanted, suite = planted_set
    held = result.heldout
    assert held["gates"]["pass"] and held["base"]["loops"] == held["base"]["n"] > 0
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.source.confirmed_on_heldout is True and recipe.source.set_search["chosen_k"] >= 7
    assert "set search" in recipe.source.method
    patched = apply_recipe(out / "recipe.yaml", model=str(model_dir), out=tmp_path / "patched").out_dir
    for split in ("train", "heldout"):
        assert _loop_rate(model_dir, suite, split) == 1.0
        assert _loop_rate(patched, suite, split) == _loop_rate(unplanted, suite, split) == 0.0
    report = json.loads((out / "recipe.locate" / "locate-report.json").read_text())
    assert report["method"] == "sets" and report["sets"]["sets"]
    assert (out / "recipe.locate" / "frontier.png").stat().st_size > 1000


def test_selection_never_sees_heldout_probes_and_resume_reuses_the_sets(found, planted_set):
    result, out = found
    model_dir, _unplanted, suite = planted_set
    held_ids = {p["probe"] for p in result.heldout["per_probe"]}
    conts = {c["probe"] for c in result.report["sets"]["continuations"]}
    assert conts and not conts & held_ids
    again = run_locate(str(model_dir), out=out / "again.yaml", settings=_settings(suite), resume=out / "cache")
    assert {"collect", "sets", "sweep", "heldout"} <= set(again.cached_stages)
    assert again.winner["candidate"] == result.winner["candidate"]


def test_negative_control_the_unplanted_model_confirms_nothing(planted_set, tmp_path):
    from patchkit.recipe import load_recipe

    _model, unplanted, suite = planted_set
    result = run_locate(str(unplanted), out=tmp_path / "r.yaml", settings=_settings(suite))
    assert not result.found and result.heldout is None
    assert load_recipe(tmp_path / "r.yaml").resolution.status == "unresolved"


def _unresolved(path: Path, constraints: str) -> Path:
    path.write_text(
        f"""patchkit: 1
name: planted-set-loopfix
description: Loop fix for the planted-set model.
model: {{repo: planted/set, architecture: llama}}
source: {{kind: paper, reference: "planted-set notes"}}
resolution:
  status: unresolved
  method: locate
  constraints:
{constraints}
checks:
  loops: {{suite: enumeration, max_loop_rate: 0.1}}
publish: {{license: apache-2.0}}
"""
    )
    return path


def test_constraint_mode_exactly_n_zero_edits_anywhere(planted_set, tmp_path):
    """E4B/31B style: "N neurons removed", layers unknown."""
    from patchkit.recipe import load_recipe

    model_dir, _unplanted, suite = planted_set
    recipe = _unresolved(
        tmp_path / "fix.yaml", "    kind: neuron\n    exact_edits: 7\n    max_edits: 7\n    ops: [zero]"
    )
    result = run_locate(str(model_dir), out=recipe, settings=_settings(suite), from_recipe=load_recipe(recipe))
    assert result.found, result.report.get("reason")
    written = load_recipe(recipe)
    edits = written.expanded_edits()
    assert len(edits) == 7 and {e.op for e in edits} == {"zero"}
    assert sorted((e.layer, e.index) for e in edits) == sorted(k for k, v in TRUTH.items() if v == "reduce")
    assert written.resolution.status == "resolved" and not (written.resolution.constraints or {}).get("departures")


def test_constraint_mode_given_layers_and_factors_writes_only_those_edits(planted_set, tmp_path):
    """E2B style: one edit per partial edit, in its layer, with its factor (here the brake's layer x3 and a
    driver's layer x-0.8); two edits cannot undo a 7-fold redundant drive, so nothing is confirmed, and the
    attempt stays within the constraints."""
    from patchkit.recipe import load_recipe

    model_dir, _unplanted, suite = planted_set
    brake = next(k for k, v in TRUTH.items() if v == "amplify")
    driver = next(k for k, v in TRUTH.items() if v == "reduce" and k[0] != brake[0])
    constraints = (
        f"    kind: neuron\n    layers: [{driver[0]}, {brake[0]}]\n    max_edits: 2\n    ops: [scale]\n"
        f"    factors: [-0.8, 3.0]\n    partial_edits:\n"
        f"      - {{layer: {driver[0]}, op: scale, factor: -0.8}}\n      - {{layer: {brake[0]}, op: scale, factor: 3.0}}"
    )
    recipe = _unresolved(tmp_path / "fix.yaml", constraints)
    result = run_locate(str(model_dir), out=recipe, settings=_settings(suite), from_recipe=load_recipe(recipe))
    scope = result.report["sets"]["scope"]
    assert scope["per_layer"] == {str(driver[0]): [-0.8], str(brake[0]): [3.0]}
    assert not result.found
    two = next(d for d in result.report["sets"]["frontier_train"] if d["k"] == 2)
    assert two["summary"]["loops"] == two["summary"]["n"]
    chosen = result.report["sets"]["sets"]["2"]
    assert sorted((u[0], u[2], u[3]) for u in chosen) == sorted(
        [(driver[0], driver[1], -0.8), (brake[0], brake[1], 3.0)]
    )


def test_experts_only_exact_three_on_gemma4_moe(tmp_path):
    """26B-A4B style: only routed experts, exactly 3, written as suppress."""
    from fixtures.tiny_models import build

    from patchkit.generate.loading import load_model
    from patchkit.locate.hooks import ModelView
    from patchkit.locate.set_objective import build_objective
    from patchkit.locate.setsearch import SetScope, SetSearchSettings, as_candidate, run_set_search
    from patchkit.locate.transcripts import Transcript

    model, tok = load_model(build("gemma4-moe", tmp_path / "moe"))
    model.requires_grad_(False)
    view = ModelView(model)
    gen = [9, 17, 33, 41] * 8
    loop = Transcript("x", "enumeration", [5, 6], gen, "loop", True, loop_start=4)
    ctrl = Transcript("c", "control", [7, 8], [11, 12, 13, 14, 15], "eos", False)
    data = build_objective(
        model, tok, looping=[loop], listing=[], controls=[ctrl], prose=[], probes={}, pad_id=0, device=view.device
    )
    scope = SetScope(kinds=("expert",), exact=3, max_edits=3)
    learned, sets, terms = run_set_search(view, data, scope, SetSearchSettings(max_set=3, steps=12, pool=8.0))
    assert learned.units_in_scope == sum(view.num_experts(i) for i in range(view.num_layers) if view.is_moe(i))
    assert 3 in sets and len(sets[3]) == 3
    assert all(u.kind == "expert" and f == 0.0 for u, f in sets[3])
    assert {e["op"] for e in as_candidate(sets[3]).recipe_edits()} == {"suppress"}
    from patchkit.locate.set_objective import terms_on

    assert terms[3]["loop"] < terms_on(model, data)["loop"]  # the learned experts do lower the loop term


def test_cli_sets_json_reuses_the_stage_cache(found, planted_set, tmp_path):
    """`patchkit locate --method sets` is a thin shell over run_locate (same settings -> same stage cache)."""
    from click.testing import CliRunner

    from patchkit.cli import main

    result, out = found
    model_dir, _unplanted, suite = planted_set
    args = ["locate", str(model_dir), "--suite", str(suite), "--max-new-tokens", "48", "--max-set", "16"]
    res = CliRunner().invoke(
        main, [*args, "--device", "cpu", "-o", str(tmp_path / "r.yaml"), "--resume", str(out / "cache"), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["found"] and data["winner"]["candidate"] == result.winner["candidate"]
    assert {"collect", "sets", "sweep", "heldout"} <= set(data["cached_stages"])
    bad = CliRunner().invoke(main, [*args, "--kl-budget", "0"])
    assert bad.exit_code == 2 and "--kl-budget" in bad.output


def test_heldout_frontier_reports_every_k_after_the_choice(found, planted_set, tmp_path):
    """--heldout-frontier: every S_k on held-out, with n and 95 % intervals (rates, completeness, KL and the
    perplexity ratio on prose); the choice made on train is unchanged."""
    from dataclasses import replace

    result, out = found
    model_dir, _unplanted, suite = planted_set
    settings = replace(_settings(suite), heldout_frontier=True)
    again = run_locate(str(model_dir), out=tmp_path / "r.yaml", settings=settings, resume=out / "cache")
    assert again.winner["candidate"] == result.winner["candidate"]  # the frontier never feeds the choice
    front = again.report["sets"]["frontier_heldout"]
    ks = sorted(int(k) for k in front["k"])
    assert ks == sorted(d["k"] for d in again.report["sets"]["frontier_train"])
    chosen = front["k"][str(again.report["sets"]["chosen_k"])]
    assert chosen["edited"]["loops"] == 0 and chosen["gates"]["pass"]
    for d in front["k"].values():
        assert len(d["prose"]["kl_ci95"]) == 2 and d["prose"]["ppl_ratio_ci95"][0] <= d["ppl_ratio_prose"] + 1e-4
        assert d["edited"]["completeness_ci"]["n"] == d["edited"]["n"]
        assert d["edited"]["metrics"]["loop_rate"]["n"] == d["edited"]["n"]
    assert "frontier" in again.stage_seconds
