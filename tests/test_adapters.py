"""Adapters read geometry from config.json and map edits to the right tensor slices, checked on tiny models."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from patchkit.adapters import get_adapter
from patchkit.cli import main
from patchkit.errors import ModelError, RecipeError
from patchkit.model import resolve_model
from patchkit.recipe import parse_recipe

HEAD = "patchkit: 1\nname: t\nsource: {kind: manual}\n"


def _edits(text):
    return parse_recipe(HEAD + text, "r.yaml").expanded_edits()


def test_gemma4_double_wide_kv_shared_layers(tiny_gemma4):
    ref = resolve_model(tiny_gemma4)
    adapter = get_adapter(ref.config)
    assert adapter.architecture == "gemma4" and adapter.num_layers == 4
    widths = [adapter.layer_info(i).intermediate_size for i in range(4)]
    assert widths == [48, 48, 96, 96]  # the last 2 layers share KV and have double-wide MLPs
    # the geometry agrees with the real tensors in the file
    headers = ref.headers()
    shapes = {n: t.shape for h in headers.values() for n, t in h.tensors.items()}
    assert shapes["model.layers.3.mlp.down_proj.weight"] == (32, 96)
    adapter.validate(_edits("edits: [{layer: 3, neuron: 95, op: invert}]\n"), headers)
    with pytest.raises(RecipeError, match=r"neuron 48 is out of range for layer 1: its MLP has 48 neurons \(0–47\)"):
        adapter.validate(_edits("edits: [{layer: 1, neuron: 48, op: invert}]\n"), headers)


def test_targets_down_column_up_row_and_experts(tiny_gemma4_moe):
    ref = resolve_model(tiny_gemma4_moe)
    adapter = get_adapter(ref.config)
    names = ref.tensor_names()
    down, up, expert, slab = _edits("edits:\n  - {layer: 1, neuron: 7, op: invert}\n  - {layer: 1, neuron: 8, op: zero, tensor: up_proj}\n"
                                    "  - {layer: 2, expert: 5, op: suppress}\n  - {layer: 3, expert: 0, op: suppress, tensor: down_proj}\n")
    assert adapter.targets(down, names) == [("model.layers.1.mlp.down_proj.weight", 1, 7)]
    assert adapter.targets(up, names) == [("model.layers.1.mlp.up_proj.weight", 0, 8)]
    assert adapter.targets(expert, names) == [("model.layers.2.router.per_expert_scale", 0, 5)]
    assert adapter.targets(slab, names) == [("model.layers.3.experts.down_proj", 0, 0)]
    with pytest.raises(RecipeError, match=r"expert 6 is out of range for layer 0: it has 6 experts \(0–5\)"):
        adapter.validate(_edits("edits: [{layer: 0, expert: 6, op: suppress}]\n"), ref.headers())


def test_multimodal_prefix_is_used_when_present():
    config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
              "text_config": {"num_hidden_layers": 2, "intermediate_size": 8, "model_type": "gemma4_text"}}
    adapter = get_adapter(config)
    names = {"model.language_model.layers.1.mlp.down_proj.weight"}
    (edit,) = _edits("edits: [{layer: 1, neuron: 2, op: invert}]\n")
    assert adapter.targets(edit, names)[0].tensor == "model.language_model.layers.1.mlp.down_proj.weight"
    assert adapter.classify_tensor("model.language_model.layers.1.experts.down_proj").role == "experts.down_proj"
    assert adapter.classify_tensor("model.vision_tower.layers.1.mlp.down_proj.weight") is None


def test_llama_family_and_unknown_architecture(tiny_llama):
    adapter = get_adapter(resolve_model(tiny_llama).config)
    assert adapter.architecture == "llama" and adapter.total_neurons() == 3 * 48
    for model_type in ("mistral", "qwen2", "qwen3"):
        assert get_adapter({"model_type": model_type, "num_hidden_layers": 1, "intermediate_size": 4}).architecture == "llama"
    with pytest.raises(ModelError, match=r"unsupported architecture 'gpt2'.*supported: gemma4"):
        get_adapter({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ModelError, match="recipe is for architecture 'gemma4' but the model is 'llama'"):
        get_adapter({"model_type": "llama", "num_hidden_layers": 1, "intermediate_size": 4}, "gemma4")


@pytest.mark.parametrize("edit, pattern", [
    ("{layer: 40, neuron: 1, op: invert}", r"layer 40 is out of range: this model has 4 layers \(0–3\)"),
    ("{layer: 0, expert: 1, op: suppress}", r"layer 0 is dense: it has no experts"),
    ("{layer: 2, neuron: 96, op: zero}", r"neuron 96 is out of range for layer 2"),
])
def test_validate_against_model_cli(tmp_path, tiny_gemma4, edit, pattern):
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + f"model: {{architecture: gemma4}}\nedits:\n  - {edit}\n")
    result = CliRunner().invoke(main, ["validate", str(path), "--model", str(tiny_gemma4)])
    assert result.exit_code == 2
    assert re.search(rf"^error: {re.escape(str(path))}:6:5: edits\[0\]: {pattern}", result.output), result.output


def test_validate_refuses_quantized_dtype(tmp_path):
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1, "intermediate_size": 4}')
    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(2, 4, dtype=torch.int8)}, model / "model.safetensors")
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + "edits: [{layer: 0, neuron: 1, op: invert}]\n")
    result = CliRunner().invoke(main, ["validate", str(path), "--model", str(model)])
    assert result.exit_code == 2 and "stored as I8; patchkit edits only BF16, F16 and F32" in result.output


def test_new_writes_a_valid_starter_and_refuses_overwrite(tmp_path, tiny_gemma4_moe):
    out = tmp_path / "new.yaml"
    runner = CliRunner()
    result = runner.invoke(main, ["new", "--model", str(tiny_gemma4_moe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "4 layers (0–3)" in text and "6 experts per layer" in text
    assert runner.invoke(main, ["validate", str(out), "--model", str(tiny_gemma4_moe)]).exit_code == 0
    again = runner.invoke(main, ["new", "--arch", "llama", "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert out.read_text() == text


def test_schema_command_prints_json():
    import json

    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output)["title"] == "patchkit recipe v1"
