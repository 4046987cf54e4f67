"""runtime_edits: forward hooks reproduce each edit exactly as the same change made to the weights in memory."""

from __future__ import annotations

import pytest
import torch

from patchkit.edit.runtime import runtime_edits
from patchkit.errors import PatchkitError
from patchkit.recipe import parse_recipe

HEAD = "patchkit: 1\nname: rt\nsource: {kind: manual}\nedits:\n"


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _ids():
    return torch.randint(4, 128, (2, 9), generator=torch.Generator().manual_seed(1))


def _edit_weights(model, edits):
    """The reference: the same edits applied to the parameters in memory (what apply does on disk)."""
    layers = model.model.layers
    with torch.no_grad():
        for e in edits:
            layer = layers[e.layer]
            if e.kind == "expert":
                if e.tensor == "down_proj":
                    layer.experts.down_proj[e.index].zero_()
                else:
                    layer.router.per_expert_scale[e.index] = 0.0
            elif e.tensor == "up_proj":
                layer.mlp.up_proj.weight[e.index, :] *= e.factor
            else:
                layer.mlp.down_proj.weight[:, e.index] *= e.factor


@pytest.mark.parametrize(
    "fixture, edits",
    [
        (
            "tiny_llama",
            "  - {layer: 0, neuron: [1, 47], op: invert}\n  - {layer: 2, neuron: 3, op: scale, factor: 0.25}\n"
            "  - {layer: 1, neuron: 6, op: zero, tensor: up_proj}\n  - {layer: 1, neuron: 7, op: scale, factor: -1.5, tensor: up_proj}\n",
        ),
        (
            "tiny_gemma4_moe",
            "  - {layer: 0, expert: [1, 5], op: suppress}\n  - {layer: 3, expert: 2, op: suppress, tensor: down_proj}\n"
            "  - {layer: 2, neuron: 4, op: invert}\n",
        ),
    ],
)
def test_hooks_match_weight_edits_and_are_removed(request, fixture, edits):
    path = request.getfixturevalue(fixture)
    resolved = parse_recipe(HEAD + edits, "rt.yaml").expanded_edits()
    base, edited = _model(path), _model(path)
    _edit_weights(edited, resolved)
    ids = _ids()
    with torch.no_grad():
        plain = base(ids).logits
        with runtime_edits(base, resolved):
            hooked = base(ids).logits
        after = base(ids).logits
        expected = edited(ids).logits
    assert (plain - expected).abs().max() > 1e-4
    torch.testing.assert_close(hooked, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, plain, atol=0, rtol=0)  # hooks gone after the block


def test_hooks_are_removed_when_the_block_raises(tiny_llama):
    model = _model(tiny_llama)
    (edit,) = parse_recipe(HEAD + "  - {layer: 1, neuron: 2, op: zero}\n").expanded_edits()
    with pytest.raises(RuntimeError):
        with runtime_edits(model, [edit]):
            assert model.model.layers[1].mlp.down_proj._forward_pre_hooks
            raise RuntimeError("boom")
    assert not model.model.layers[1].mlp.down_proj._forward_pre_hooks


def test_expert_edit_on_a_dense_model_is_refused(tiny_llama):
    model = _model(tiny_llama)
    (edit,) = parse_recipe(HEAD + "  - {layer: 1, expert: 2, op: suppress}\n").expanded_edits()
    with pytest.raises(PatchkitError, match="layer 1 has no router"):
        with runtime_edits(model, [edit]):
            pass
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
