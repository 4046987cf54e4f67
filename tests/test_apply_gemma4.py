"""Byte level on the tiny Gemma 4 models (real recipe, model and adapter modules): only the edited slices
differ, and diff --as-recipe reproduces the output exactly (dense double-wide layers and MoE experts)."""

from __future__ import annotations

import numpy as np
import pytest

from patchkit.edit.apply import apply_recipe
from patchkit.edit.diff import diff_checkpoints, recipe_text
from patchkit.edit.verify import verify_patched
from patchkit.recipe import parse_recipe

HEAD = "patchkit: 1\nname: g4\nsource: {kind: manual}\nmodel: {architecture: gemma4}\n"
CASES = {
    "tiny_gemma4_bf16": "  - {layer: 3, neuron: [5, 90], op: invert}\n  - {layer: 1, neuron: 2, op: scale, factor: 0.5, tensor: up_proj}\n",
    "tiny_gemma4_moe": "  - {layer: 1, expert: [2, 4], op: suppress}\n  - {layer: 2, expert: 0, op: suppress, tensor: down_proj}\n"
    "  - {layer: 0, neuron: 1, op: scale, factor: -3.0}\n",
}


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_only_edited_slices_differ_and_diff_round_trips(request, tmp_path, monkeypatch, fixture):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "hashes"))
    base = request.getfixturevalue(fixture)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(HEAD + "edits:\n" + CASES[fixture])
    result = apply_recipe(recipe_path, model=str(base), out=tmp_path / "out")
    out = result.out_dir
    for rel in result.plan.weight_files:
        a = np.frombuffer((base / rel).read_bytes(), np.uint8)
        b = np.frombuffer((out / rel).read_bytes(), np.uint8)
        allowed = np.zeros(a.size, dtype=bool)
        for e in result.plan.files_to_rewrite.get(rel, []):
            for lo, hi in e.selection.element_ranges():
                allowed[e.tensor_start + lo * e.itemsize : e.tensor_start + hi * e.itemsize] = True
        changed = a != b
        assert not (changed & ~allowed).any(), rel
        assert changed.any() == (rel in result.plan.files_to_rewrite)
    report = diff_checkpoints(base, out)
    assert all(s.classification != "arbitrary" for c in report.changed for s in c.slices)
    text = recipe_text(report, name="g4-roundtrip")
    parse_recipe(text, "roundtrip.yaml")
    (tmp_path / "rt.yaml").write_text(text)
    assert verify_patched(tmp_path / "rt.yaml", model=str(base), patched=out).ok
    assert verify_patched(recipe_path, model=str(base), patched=out).ok
