"""Equivalence on the real embedded model: a recipe applied to the SmolLM2-135M Q4_1 GGUF, imported back through
transformers, runs like the imported base model with the same recipe applied by runtime hooks.

This is the claim the GGUF path rests on (scaling row n of `ffn_up` by f scales neuron n by f, and scaling a
Q4_1 block's d and m scales the block), checked end to end on real quantized weights rather than random bytes.
Tolerances: inverted and zeroed rows are exact (bit-equal de-quantized rows); scaled rows are f x the base row to
within the fp16 rounding of the scaled d and m (relative 2^-11 per field, so 2^-10 of the row's largest value);
logits within 2e-3 of their largest magnitude, which that rounding alone explains.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

RECIPE = """\
patchkit: 1
name: smollm2-gguf-equivalence
model: {architecture: llama}
source: {kind: manual}
edits:
  - {layer: 3, neuron: [10, 20], op: invert}
  - {layer: 7, neuron: 100, op: zero}
  - {layer: 12, neuron: [5, 6], op: scale, factor: 3.0}
  - {layer: 20, neuron: 7, op: scale, factor: -0.8}
  - {layer: 25, neuron: 9, op: scale, factor: 0.5}
"""
TEXTS = [
    "List all the planets of the solar system: 1. Mercury 2. Venus 3.",
    "The capital of France is Paris, and the capital of Spain is",
    "Name every month of the year in order: January, February,",
]


@pytest.fixture(scope="module")
def patched_import(tmp_path_factory, smollm2_dir: Path):
    from patchkit.edit.gguf_apply import apply_gguf
    from patchkit.workflows.gguf_import import EMBEDDED_PACKAGE, find_package_gguf, import_gguf

    tmp = tmp_path_factory.mktemp("smol-gguf")
    (tmp / "r.yaml").write_text(RECIPE)
    source, _ = find_package_gguf(EMBEDDED_PACKAGE)
    result = apply_gguf(tmp / "r.yaml", model=source, out=tmp / "patched.gguf")
    assert result.plan.bytes_edited > 0
    out = import_gguf(tmp / "patched.gguf", out=tmp / "patched-import")
    return tmp / "r.yaml", out


def test_patched_gguf_rows_are_the_recipe_applied_to_the_base(patched_import, smollm2_dir: Path):
    """Imported rows: exact for invert/zero, within fp16 rounding of the scale fields for x3, x-0.8, x0.5; every
    other weight of every layer is bit-equal to the base import."""
    from safetensors.torch import load_file

    _, patched_dir = patched_import
    load = lambda d: {k: v for f in sorted(Path(d).glob("*.safetensors")) for k, v in load_file(f).items()}  # noqa: E731
    base, patched = load(smollm2_dir), load(patched_dir)
    assert base.keys() == patched.keys()
    expected = {(3, 10): -1.0, (3, 20): -1.0, (7, 100): 0.0, (12, 5): 3.0, (12, 6): 3.0, (20, 7): -0.8, (25, 9): 0.5}
    for name in base:
        if not torch.equal(base[name], patched[name]):
            assert name.endswith("mlp.up_proj.weight"), name
    for (layer, n), f in expected.items():
        name = f"model.layers.{layer}.mlp.up_proj.weight"
        a, b = base[name][n].double(), patched[name][n].double()
        if f in (-1.0, 0.0, 0.5):
            assert torch.equal(b, a * f), (layer, n)
        else:
            assert (b - a * f).abs().max() <= 2**-10 * abs(f) * a.abs().max(), (layer, n)
        rows = torch.ones(base[name].shape[0], dtype=torch.bool)
        rows[[m for (lay, m) in expected if lay == layer]] = False
        assert torch.equal(base[name][rows], patched[name][rows])


def test_patched_gguf_logits_match_runtime_hooks(patched_import, smollm2_dir: Path):
    """The imported patched GGUF vs the imported base with the recipe as forward hooks: same logits (to the stated
    tolerance) and the same top-1 token at every position."""
    from patchkit.edit.runtime import runtime_edits
    from patchkit.generate.loading import load_model
    from patchkit.recipe import load_recipe
    from patchkit.workflows.gguf_patch import logits_agreement

    recipe_path, patched_dir = patched_import
    base, tok = load_model(smollm2_dir)
    patched, _ = load_model(patched_dir)
    with runtime_edits(base, load_recipe(recipe_path).expanded_edits()):
        agreement = logits_agreement(base, patched, tok, TEXTS)
    assert agreement.positions > 30
    assert agreement.top1_agree == agreement.positions
    assert agreement.relative <= 2e-3, agreement.to_json()
    # and the hooks do something: without them the two models differ
    unhooked = logits_agreement(base, patched, tok, TEXTS[:1])
    assert unhooked.max_abs_logit_diff > 10 * agreement.max_abs_logit_diff
