"""A patched checkpoint behaves exactly like the base model with the same intervention applied by hooks."""

from __future__ import annotations

import pytest
import torch

from patchkit.edit.apply import apply_recipe
from patchkit.edit.runtime import runtime_edits
from patchkit.recipe import parse_recipe

HEAD = "patchkit: 1\nname: eq\nsource: {kind: manual}\n"

CASES = {
    "llama-invert-scale-up": (
        "tiny_llama",
        "  - {layer: 1, neuron: [3, 40], op: invert}\n"
        "  - {layer: 2, neuron: 5, op: scale, factor: 2.5}\n  - {layer: 0, neuron: 9, op: zero, tensor: up_proj}\n",
    ),
    "llama-bf16-sharded": (
        "tiny_llama_sharded_bf16",
        "  - {layer: [0, 2], neuron: 11, op: invert}\n  - {layer: 1, neuron: 4, op: scale, factor: -2.0}\n",
    ),  # power of 2: exact in bf16
    "gemma4-double-wide": (
        "tiny_gemma4",
        "  - {layer: 3, neuron: [5, 90], op: invert}\n  - {layer: 1, neuron: 2, op: scale, factor: 0.5, tensor: up_proj}\n",
    ),
    "gemma4-multimodal-prefix": (
        "tiny_gemma4_multimodal",
        "  - {layer: 2, neuron: [0, 95], op: invert}\n"
        "  - {layer: 0, neuron: 7, op: scale, factor: 3.0}\n  - {layer: 1, neuron: 9, op: zero, tensor: up_proj}\n",
    ),
    "gemma4-moe-suppress": (
        "tiny_gemma4_moe",
        "  - {layer: 1, expert: [2, 4], op: suppress}\n  - {layer: 2, expert: 0, op: suppress, tensor: down_proj}\n"
        "  - {layer: 0, neuron: 1, op: zero}\n",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_patched_logits_equal_runtime_hooks(request, tmp_path, case):
    from fixtures.tiny_models import model_class

    fixture, edits = CASES[case]
    cls = model_class("gemma4-mm" if fixture == "tiny_gemma4_multimodal" else "causal")
    base_dir = request.getfixturevalue(fixture)
    recipe = parse_recipe(HEAD + "edits:\n" + edits, f"{case}.yaml")
    out = tmp_path / "patched"
    apply_recipe(recipe, model=str(base_dir), out=out)
    base = cls.from_pretrained(base_dir, dtype=torch.float32)
    patched = cls.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(4, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = base(ids).logits
        with runtime_edits(base, recipe.expanded_edits()):
            hooked = base(ids).logits
        after = patched(ids).logits
    assert (plain - after).abs().max() > 1e-4, "the edit must change the output"
    torch.testing.assert_close(after, hooked, atol=1e-5, rtol=1e-5)
