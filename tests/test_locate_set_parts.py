"""The set search's parts: list continuations, snapping, set sizes, nested pruning, constraint modes, gates."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchkit.locate.continuations import list_continuation
from patchkit.locate.factors import Unit
from patchkit.locate.heldout import gate_results
from patchkit.locate.setsearch import GRID, SetScope, as_candidate, set_sizes, snap

REPO = Path(__file__).resolve().parents[1]
STATES = ["Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut", "Delaware"]


def test_continuation_follows_the_numbered_format_and_skips_named_items():
    answer = "Here are the states:\n1. Alabama\n2. Alaska\n3. Arizona\n4. Ariz"
    cont = list_continuation(answer, STATES, max_items=3)
    assert cont is not None and cont.style == "numbered"
    assert cont.prefix == "Here are the states:\n1. Alabama\n2. Alaska\n3. Arizona\n"  # the partial line is cut
    assert cont.text == "4. Arkansas\n5. California\n6. Colorado\n"
    assert cont.items == ("Arkansas", "California", "Colorado")


def test_continuation_keeps_bullets_parens_and_indent():
    cont = list_continuation("  - Alaska\n  - Alabama\n", STATES, max_items=2)
    assert cont is not None and cont.style == "bullet" and cont.text == "  - Arizona\n  - Arkansas\n"
    cont = list_continuation("1) Alabama\n2) Alaska\n", STATES, max_items=1)
    assert cont is not None and cont.text == "3) Arizona\n"


def test_continuation_of_a_comma_run_and_of_a_bare_preamble():
    cont = list_continuation("Alabama, Alaska, Arizona, Arkansas\n", STATES, max_items=2)
    assert cont is not None and cont.style == "comma"
    assert cont.prefix == "Alabama, Alaska, Arizona, Arkansas" and cont.text == ", California, Colorado"
    cont = list_continuation("Sure! The states are:\n", STATES, max_items=2)
    assert cont is not None and cont.text == "1. Alabama\n2. Alaska\n"


def test_continuation_is_none_when_everything_is_named_or_there_is_no_truth():
    full = "".join(f"{i + 1}. {s}\n" for i, s in enumerate(STATES))
    assert list_continuation(full, STATES) is None
    assert list_continuation("1. x\n", []) is None


def test_snap_free_scope_drops_small_moves_and_keeps_amplification():
    u = [Unit(3, "neuron", i) for i in range(6)]
    moved = [(u[0], 0.02), (u[1], -0.93), (u[2], 2.7), (u[3], 1.04), (u[4], 0.6), (u[5], 1.3)]
    out = dict(snap(moved, SetScope()))
    assert out == {u[0]: 0.0, u[1]: -1.0, u[2]: 3.0, u[4]: 0.5, u[5]: 1.25}
    assert set(out.values()) <= set(GRID)


def test_snap_constrained_scope_uses_only_allowed_factors_on_the_same_side():
    a, b, c = Unit(10, "neuron", 5), Unit(12, "neuron", 7), Unit(12, "neuron", 8)
    scope = SetScope(kinds=("neuron",), layers=(10, 12), per_layer={10: (-0.8,), 12: (3.0,)})
    # a moved down -> x-0.8; b moved up -> x3; c moved down in a layer whose only factor amplifies -> dropped
    assert snap([(a, 0.9), (b, 1.2), (c, 0.5)], scope) == [(a, -0.8), (b, 3.0)]
    zero_only = SetScope(kinds=("neuron",), factors=(0.0,), exact=3)
    assert snap([(a, 0.97), (b, 1.5)], zero_only) == [(a, 0.0)]
    experts = SetScope(kinds=("expert",), exact=3)
    e = Unit(4, "expert", 9)
    assert snap([(e, 0.4)], experts) == [(e, 0.0)]


def test_set_sizes_powers_of_two_plus_exact_and_max():
    assert set_sizes(300, SetScope(), 256) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert set_sizes(20, SetScope(), 256) == [20, 16, 8, 4, 2, 1]
    assert set_sizes(2000, SetScope(exact=1100), 1100) == [1100, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert set_sizes(50, SetScope(exact=3, max_edits=3), 256) == [3, 2, 1]
    assert set_sizes(0, SetScope(), 256) == []


def test_as_candidate_writes_recipe_ops():
    cand = as_candidate([(Unit(2, "neuron", 4), 3.0), (Unit(1, "neuron", 9), -1.0), (Unit(5, "expert", 2), 0.0)])
    assert cand.recipe_edits() == [
        {"layer": 1, "neuron": 9, "op": "invert"},
        {"layer": 2, "neuron": 4, "op": "scale", "factor": 3.0},
        {"layer": 5, "expert": 2, "op": "suppress"},
    ]


@pytest.mark.parametrize(
    ("recipe", "expect"),
    [
        ("e4b.yaml", {"kinds": ("neuron",), "layers": None, "factors": (0.0,), "exact": 3}),
        ("31b.yaml", {"kinds": ("neuron",), "layers": None, "factors": (0.0,), "exact": 1100}),
        ("26b-a4b.yaml", {"kinds": ("expert",), "layers": None, "exact": 3}),
        ("e2b.yaml", {"kinds": ("neuron",), "layers": (10, 12), "per_layer": {10: (-0.8,), 12: (3.0,)}}),
    ],
)
def test_every_gemma4_recipe_has_a_constraint_mode(recipe, expect):
    """--from-recipe works for every shipped Gemma 4 recipe: its constraints become a set-search scope."""
    from dataclasses import replace

    from patchkit.locate.from_recipe import scope_for, settings_for
    from patchkit.locate.run import LocateSettings
    from patchkit.recipe import load_recipe
    from patchkit.recipe.resolution import search_space

    r = load_recipe(REPO / "recipes" / recipe)
    space = search_space(r)
    scope = scope_for(space)
    for key, value in expect.items():
        assert getattr(scope, key) == value, key
    settings = settings_for(LocateSettings(), space)
    assert settings.scope == scope and settings.kinds == scope.kinds
    assert settings.max_set >= (scope.exact or 0)  # 31B: the 1,100-unit set is judged
    assert scope.describe()
    screen = settings_for(replace(LocateSettings(), method="screen"), space)
    assert screen.scope is None


def _probe_rows(kind, pairs):
    key = ("base_good", "edited_good") if kind == "enumeration" else ("base_correct", "edited_correct")
    return [{"kind": kind, key[0]: a, key[1]: b} for a, b in pairs]


def test_gates_need_a_30_percent_relative_loop_cut_and_no_significant_losses():
    base = {"loop_rate": 0.7}
    rows = _probe_rows("enumeration", [(False, False)] * 20) + _probe_rows("control", [(True, True)] * 10)
    good = gate_results(base, {"loop_rate": 0.45}, rows, 0.01)
    assert good["pass"] and good["loop_reduction"]["value"] == pytest.approx(0.3571, abs=1e-4)
    assert not gate_results(base, {"loop_rate": 0.55}, rows, 0.01)["pass"]  # only 21 % fewer
    assert not gate_results(base, {"loop_rate": 0.3}, rows, 0.03)["kl"]["pass"]
    lost = _probe_rows("enumeration", [(True, False)] * 7 + [(False, False)] * 13) + rows[20:]
    g = gate_results(base, {"loop_rate": 0.3}, lost, 0.01)
    assert not g["good_lists"]["pass"] and g["good_lists"]["lost"] == 7 and not g["pass"]
    noise = _probe_rows("control", [(True, False)] * 2 + [(True, True)] * 8) + rows[:20]
    assert gate_results(base, {"loop_rate": 0.3}, noise, 0.01)["controls"]["pass"]  # 2 lost, 0 gained: noise


def test_recipe_space_shows_the_set_search_mode():
    import json

    from click.testing import CliRunner

    from patchkit.cli import main

    res = CliRunner().invoke(main, ["recipe", "space", str(REPO / "recipes" / "31b.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    mode = json.loads(res.stdout)["set_search"]
    assert mode["exact"] == 1100 and mode["factors"] == [0.0] and "exactly 1100 edits" in mode["mode"]
