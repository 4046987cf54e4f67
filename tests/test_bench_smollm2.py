"""Real model: on SmolLM2-135M a single-neuron sign inversion barely moves the distribution, zeroing a whole
layer's MLP (all 1536 neurons) moves it a lot; bench must tell the two apart by orders of magnitude."""

from __future__ import annotations

import copy

import pytest

from patchkit.checks.bench import BenchSettings, run_bench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from patchkit.generate.loading import load_model

    return load_model(smollm2_dir)


def _edited(model, layer: int, neurons: slice | list[int], factor: float):
    """A copy of `model` with columns `neurons` of layer `layer`'s down_proj scaled by `factor` (= a recipe edit)."""
    import torch

    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.model.layers[layer].mlp.down_proj.weight[:, neurons] *= factor
    return clone


def test_single_neuron_small_whole_layer_large(smollm2):
    model, tok = smollm2
    assert model.config.intermediate_size == 1536
    settings = BenchSettings(tasks="kl,ppl", limit=2, control_max_new_tokens=16, max_text_tokens=96)
    single = run_bench((model, tok), (_edited(model, 29, [11], -1.0), tok), settings=settings)
    layer = run_bench((model, tok), (_edited(model, 11, slice(None), 0.0), tok), settings=settings)
    kl_single, kl_layer = single.comparison("kl.mean").delta.value, layer.comparison("kl.mean").delta.value
    assert 0 < kl_single < 0.05
    assert kl_layer > 0.2
    assert kl_layer > 20 * kl_single
    assert single.comparison("kl.top1").delta.value > 0.9 > layer.comparison("kl.top1").delta.value
    assert layer.comparison("ppl.ratio").delta.value > single.comparison("ppl.ratio").delta.value
