"""Where a recipe with `resolution.ways` says how it was (or is to be) resolved: the one-line apply refusal from the
library, locate's record of the way that won, and the card's source line for an inferred reference."""

from __future__ import annotations

import pytest

from patchkit.errors import RecipeError
from patchkit.recipe import load_recipe


def test_the_library_refusal_of_a_ways_recipe_names_recipe_resolve():
    recipe = load_recipe("e2b")
    with pytest.raises(RecipeError, match=r"patchkit recipe resolve") as exc:
        recipe.require_resolved()
    assert "\n" not in str(exc.value)


def test_locate_records_that_its_way_resolved_a_ways_recipe():
    from patchkit.locate.from_recipe import resolved_recipe_data

    base = load_recipe("e2b")
    ways = base.resolution.ways
    locate_index = next(i for i, w in enumerate(ways) if w.method == "locate")
    generated = {
        "source": {"kind": "locate", "reference": "patchkit locate (test)"},
        "edits": [
            {"layer": 10, "neuron": 5, "op": "scale", "factor": -0.8},
            {"layer": 12, "neuron": 7, "op": "scale", "factor": 3.0},
        ],
        "description": "found by a test",
        "resolution": {"constraints": {"last_locate": {}}},
    }
    data = resolved_recipe_data(base, generated, confirmed=True)
    assert data["resolution"]["status"] == "resolved"
    assert data["resolution"]["resolved_via"] == f"ways[{locate_index}]"
    from patchkit.recipe import Recipe

    assert Recipe.model_validate(data).is_resolved


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("inferred", "(org/fixed; an **inferred** reference)"),
        ("published", "(org/fixed; published reference)"),
        (None, "(org/fixed)"),
    ],
)
def test_the_card_says_when_the_reference_was_only_inferred(status, expected):
    from patchkit.publish.card import _source_line

    source = {"kind": "diff", "reference": "org/fixed"}
    if status:
        source["reference_status"] = status
    line = _source_line(source)
    assert line.startswith("Source of the edit: **diff** ") and expected in line
