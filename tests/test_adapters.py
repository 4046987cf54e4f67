"""Adapters read geometry from config.json and map edits to the right tensor slices, checked on tiny models."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from patchkit.cli import main
from patchkit.errors import ModelError, RecipeError
from patchkit.model.adapters import get_adapter
from patchkit.model.adapters.base import TensorTarget
from patchkit.model.refs import resolve_model
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
    assert shapes["model.layers.3.mlp.down_proj.weight"] == (64, 96)
    assert shapes["model.layers.1.mlp.up_proj.weight"] == (48, 64)
    # E2B-style per-layer embeddings are present (and never classified as MLP tensors)
    assert "model.embed_tokens_per_layer.weight" in shapes and "model.layers.0.per_layer_input_gate.weight" in shapes
    assert adapter.classify_tensor("model.layers.0.per_layer_projection.weight") is None
    adapter.validate(_edits("edits: [{layer: 3, neuron: 95, op: invert}]\n"), headers)
    with pytest.raises(RecipeError, match=r"neuron 48 is out of range for layer 1: its MLP has 48 neurons \(0–47\)"):
        adapter.validate(_edits("edits: [{layer: 1, neuron: 48, op: invert}]\n"), headers)


def test_targets_down_column_up_row_and_experts(tiny_gemma4_moe):
    ref = resolve_model(tiny_gemma4_moe)
    adapter = get_adapter(ref.config)
    names = ref.tensor_names()
    down, up, expert, slab = _edits(
        "edits:\n  - {layer: 1, neuron: 7, op: invert}\n  - {layer: 1, neuron: 8, op: zero, tensor: up_proj}\n"
        "  - {layer: 2, expert: 5, op: suppress}\n  - {layer: 3, expert: 0, op: suppress, tensor: down_proj}\n"
    )
    assert adapter.targets(down, names) == [TensorTarget("model.layers.1.mlp.down_proj.weight", 1, 7)]
    assert adapter.targets(up, names) == [TensorTarget("model.layers.1.mlp.up_proj.weight", 0, 8)]
    assert adapter.targets(expert, names) == [TensorTarget("model.layers.2.router.per_expert_scale", 0, 5)]
    assert adapter.targets(slab, names) == [TensorTarget("model.layers.3.experts.down_proj", 0, 0)]
    with pytest.raises(RecipeError, match=r"expert 6 is out of range for layer 0: it has 6 experts \(0–5\)"):
        adapter.validate(_edits("edits: [{layer: 0, expert: 6, op: suppress}]\n"), ref.headers())


def test_multimodal_prefix_is_used_when_present():
    config = {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": {"num_hidden_layers": 2, "intermediate_size": 8, "model_type": "gemma4_text"},
    }
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
        assert (
            get_adapter({"model_type": model_type, "num_hidden_layers": 1, "intermediate_size": 4}).architecture
            == "llama"
        )
    with pytest.raises(ModelError, match=r"unsupported architecture 'gpt2'.*supported: gemma4"):
        get_adapter({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ModelError, match="recipe is for architecture 'gemma4' but the model is 'llama'"):
        get_adapter({"model_type": "llama", "num_hidden_layers": 1, "intermediate_size": 4}, "gemma4")


@pytest.mark.parametrize(
    "edit, pattern",
    [
        ("{layer: 40, neuron: 1, op: invert}", r"layer 40 is out of range: this model has 4 layers \(0–3\)"),
        ("{layer: 0, expert: 1, op: suppress}", r"layer 0 is dense: it has no experts"),
        ("{layer: 2, neuron: 96, op: zero}", r"neuron 96 is out of range for layer 2"),
    ],
)
def test_validate_against_model_cli(tmp_path, tiny_gemma4, edit, pattern):
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + f"model: {{architecture: gemma4}}\nedits:\n  - {edit}\n")
    result = CliRunner().invoke(main, ["validate", str(path), "--model", str(tiny_gemma4)])
    assert result.exit_code == 2
    assert re.search(rf"^error: {re.escape(str(path))}:6:5: edits\[0\]: {pattern}", result.output), result.output


def test_validate_refuses_quantized_dtype(tmp_path):
    from fixtures.tiny_models import write_file

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1, "intermediate_size": 4}')
    write_file(model / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": ("I8", (2, 4), bytes(8))})
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
    checked = runner.invoke(main, ["validate", str(out), "--model", str(tiny_gemma4_moe)])
    assert checked.exit_code == 0 and "unresolved" in checked.output
    starter = parse_recipe(text, "new.yaml")
    with pytest.raises(RecipeError, match=r"new\.yaml:\d+:1: recipe 'my-loop-fix' is unresolved.*fill in `edits:`"):
        starter.require_resolved()  # a starter never edits anything by accident
    # filled in: drop the resolution section, uncomment an example edit -> a valid recipe for this model
    lines = text.splitlines()
    start = lines.index("resolution:")
    filled = "\n".join(lines[:start] + lines[start + 4 :]).replace(
        "  # - {layer: 0, neuron: 0, op: invert}", "  - {layer: 0, neuron: 0, op: invert}"
    )
    out2 = tmp_path / "filled.yaml"
    out2.write_text(filled + "\n")
    assert runner.invoke(main, ["validate", str(out2), "--model", str(tiny_gemma4_moe)]).exit_code == 0
    assert parse_recipe(filled, "f.yaml").is_resolved
    again = runner.invoke(main, ["new", "--arch", "llama", "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert out.read_text() == text


def test_schema_command_prints_json():
    import json

    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output)["title"] == "patchkit recipe v1"


def test_gemma4_multimodal_checkpoint_names(tiny_gemma4_multimodal):
    """A checkpoint saved by Gemma4ForConditionalGeneration: text weights under model.language_model.layers."""
    ref = resolve_model(tiny_gemma4_multimodal)
    adapter = get_adapter(ref.config)
    names = ref.tensor_names()
    assert adapter.prefix == "model.language_model" and adapter.num_layers == 4
    assert [adapter.layer_info(i).intermediate_size for i in range(4)] == [48, 48, 96, 96]
    (edit,) = _edits("edits: [{layer: 2, neuron: 95, op: invert}]\n")
    adapter.validate([edit], ref.headers())
    assert adapter.targets(edit, names) == [TensorTarget("model.language_model.layers.2.mlp.down_proj.weight", 1, 95)]
    roles = {n: adapter.classify_tensor(n) for n in names}
    mlp = {n for n, r in roles.items() if r is not None}
    assert mlp == {
        f"model.language_model.layers.{i}.mlp.{p}.weight"
        for i in range(4)
        for p in ("gate_proj", "up_proj", "down_proj")
    }
    assert any(n.startswith("model.vision_tower.") and ".mlp." in n for n in names)  # vision MLPs are not ours


def test_gemma4_moe_geometry_matches_the_saved_tensors(tiny_gemma4_moe):
    ref = resolve_model(tiny_gemma4_moe)
    adapter = get_adapter(ref.config)
    shapes = {n: t.shape for h in ref.headers().values() for n, t in h.tensors.items()}
    for layer in range(adapter.num_layers):
        info = adapter.layer_info(layer)
        assert info.is_moe and info.num_experts == 6 and info.expert_intermediate_size == 16
        base = f"model.layers.{layer}"
        assert shapes[f"{base}.experts.down_proj"] == (6, 64, 16)  # [E, H, I]
        assert shapes[f"{base}.experts.gate_up_proj"] == (6, 32, 64)  # [E, 2I, H]
        assert shapes[f"{base}.router.per_expert_scale"] == (6,)
        assert shapes[f"{base}.mlp.down_proj.weight"] == (64, info.intermediate_size)  # the dense MLP stays
        assert adapter.classify_tensor(f"{base}.experts.gate_up_proj").role == "experts.gate_up_proj"
        assert adapter.classify_tensor(f"{base}.router.per_expert_scale").role == "router.per_expert_scale"
    assert adapter.classify_tensor("model.layers.0.router.proj.weight") is None


def test_missing_tensor_is_named(tiny_llama):
    ref = resolve_model(tiny_llama)
    adapter = get_adapter(ref.config)
    names = ref.tensor_names() - {"model.layers.1.mlp.up_proj.weight"}
    (edit,) = _edits("edits: [{layer: 1, neuron: 2, op: zero, tensor: up_proj}]\n")
    with pytest.raises(
        RecipeError,
        match=r"r\.yaml:4:9: edits\[0\]: tensor model\.layers\.1\.mlp\.up_proj\.weight is not in the checkpoint",
    ):
        adapter.targets(edit, names)


@pytest.mark.parametrize(
    "dtype, quant, pattern",
    [
        ("F8_E4M3", None, r"stored as F8_E4M3; patchkit edits only BF16, F16 and F32"),
        ("BF16", {"quant_method": "gptq"}, r"config\.json: the model is quantized \(quant_method: gptq\)"),
    ],
)
def test_fp8_and_quantized_models_are_refused(tmp_path, dtype, quant, pattern):
    import json

    from patchkit.model.safetensors_io import header_from_dict

    config = {"model_type": "llama", "num_hidden_layers": 1, "intermediate_size": 4}
    if quant:
        config["quantization_config"] = quant
    name = "model.layers.0.mlp.down_proj.weight" if not quant else "model.layers.0.mlp.down_proj.qweight"
    size = 8 * (1 if dtype == "F8_E4M3" else 2)
    header = header_from_dict(
        {name: {"dtype": dtype, "shape": [2, 4], "data_offsets": [0, size]}}, path="model.safetensors", header_len=128
    )
    adapter = get_adapter(json.loads(json.dumps(config)))
    (edit,) = _edits("edits: [{layer: 0, neuron: 1, op: invert}]\n")
    with pytest.raises(RecipeError, match=pattern):
        adapter.validate([edit], {"model.safetensors": header})
    if quant:  # without headers (profile / config only) the config alone is enough to refuse
        with pytest.raises(RecipeError, match=pattern):
            adapter.validate([edit], None)


def test_gemma4_geometry_from_config_variants():
    """E2B-like config (int width, doubled on the KV-shared tail) vs explicit per-layer widths (taken as given)."""
    e2b = {
        "model_type": "gemma4_text",
        "num_hidden_layers": 35,
        "intermediate_size": 6144,
        "num_kv_shared_layers": 20,
        "use_double_wide_mlp": True,
    }
    adapter = get_adapter(e2b)
    widths = [adapter.layer_info(i).intermediate_size for i in range(35)]
    assert widths == [6144] * 15 + [12288] * 20 and not adapter.is_moe
    listed = get_adapter({**e2b, "intermediate_size": [8] * 30 + [16] * 5})
    assert [listed.layer_info(i).intermediate_size for i in (0, 29, 30, 34)] == [8, 8, 16, 16]
    moe = get_adapter(
        {
            "model_type": "gemma4",
            "architectures": ["Gemma4ForConditionalGeneration"],
            "text_config": {
                "model_type": "gemma4_text",
                "num_hidden_layers": 30,
                "intermediate_size": 2112,
                "enable_moe_block": True,
                "num_experts": 128,
                "moe_intermediate_size": 704,
            },
        }
    )
    info = moe.layer_info(29)
    assert (moe.prefix, info.is_moe, info.num_experts, info.expert_intermediate_size) == (
        "model.language_model",
        True,
        128,
        704,
    )
    (edit,) = _edits("edits: [{layer: 29, expert: 128, op: suppress}]\n")
    with pytest.raises(RecipeError, match=r"expert 128 is out of range for layer 29: it has 128 experts \(0–127\)"):
        moe.validate([edit])


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"]}, None),
        ({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}, None),
        ({"architectures": ["MistralForCausalLM"]}, "llama"),
        ({"architectures": ["Gemma4ForConditionalGeneration"]}, "gemma4"),
        ({"model_type": "gemma4_text"}, "gemma4"),
    ],
)
def test_detection_is_exact(config, expected):
    from patchkit.model.adapters import detect_architecture

    if expected is None:
        with pytest.raises(ModelError, match="unsupported architecture .*supported: gemma4 .*llama"):
            detect_architecture(config)
    else:
        assert detect_architecture(config) == expected


LLAMA = {"model_type": "llama", "num_hidden_layers": 3, "intermediate_size": 24}
GEMMA = {
    "model_type": "gemma4",
    "architectures": ["Gemma4ForConditionalGeneration"],
    "text_config": {"num_hidden_layers": 4, "intermediate_size": 8},
}


@pytest.mark.parametrize(
    "config, key",
    [
        ([1, 2], "is a JSON list"),
        ({**LLAMA, "num_hidden_layers": "four"}, "num_hidden_layers must be an integer from 1 to 10000, got 'four'"),
        ({**LLAMA, "num_hidden_layers": -1}, "num_hidden_layers must be an integer"),
        ({**LLAMA, "num_hidden_layers": 10**12}, "num_hidden_layers must be an integer"),
        ({**LLAMA, "num_hidden_layers": float("nan")}, "num_hidden_layers must be an integer"),
        ({**LLAMA, "num_hidden_layers": True}, "num_hidden_layers must be an integer"),
        ({"model_type": "llama", "intermediate_size": 24}, "missing num_hidden_layers"),
        ({"model_type": "llama", "num_hidden_layers": 3}, "missing intermediate_size"),
        ({**LLAMA, "intermediate_size": [24, 24]}, "intermediate_size must be one width per layer (3 entries"),
        ({**LLAMA, "intermediate_size": [24, "x", 24]}, "intermediate_size must be a list of integers"),
        ({**LLAMA, "intermediate_size": 0}, "intermediate_size must be an integer from 1"),
        ({**LLAMA, "model_type": ["llama"]}, "model_type must be a string"),
        ({"architectures": "LlamaForCausalLM", "num_hidden_layers": 3}, "architectures must be a list"),
        ({**GEMMA, "text_config": "oops"}, "text_config must be a JSON object, got 'oops'"),
        ({**GEMMA, "text_config": None}, "text_config must be a JSON object, got None"),
        ({**GEMMA, "text_config": {"num_hidden_layers": 4}}, "missing text_config.intermediate_size"),
        (
            {**GEMMA, "text_config": {**GEMMA["text_config"], "num_kv_shared_layers": 5}},
            "text_config.num_kv_shared_layers",
        ),
        (
            {**GEMMA, "text_config": {**GEMMA["text_config"], "use_double_wide_mlp": "yes"}},
            "text_config.use_double_wide_mlp",
        ),
        (
            {**GEMMA, "text_config": {**GEMMA["text_config"], "enable_moe_block": True}},
            "missing text_config.num_experts",
        ),
        (
            {
                **GEMMA,
                "text_config": {
                    **GEMMA["text_config"],
                    "enable_moe_block": True,
                    "num_experts": 8,
                    "moe_intermediate_size": -4,
                },
            },
            "text_config.moe_intermediate_size",
        ),
    ],
)
def test_malformed_configs_are_one_model_error_naming_the_key(config, key):
    with pytest.raises(ModelError) as info:
        get_adapter(config, source="m/config.json")
    assert str(info.value).startswith("m/config.json: ") and key in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "factor, dtype, expected",
    [
        (0.5, "BF16", None),
        (3.0, "BF16", None),
        (-1.0, "BF16", None),
        (0.0, "BF16", None),
        (2.0, "F16", None),
        (1.0000001, "F32", None),
        (1.01, "BF16", None),
        (1.001, "BF16", "exactly 1.0 in BF16"),
        (1.003, "BF16", "exactly 1.0 in BF16"),
        (1.0004, "F16", "exactly 1.0 in F16"),
        (1.00000001, "F32", "exactly 1.0 in F32"),
        (-1.002, "BF16", "exactly -1.0 in BF16"),
        (1e39, "F32", "inf in F32"),
        (70000.0, "F16", "inf in F16"),
        (1e-50, "F32", "0 in F32"),
        (1e-8, "F16", "0 in F16"),
        (float("nan"), "F32", "not a finite number"),
        (None, "BF16", "needs a factor"),
    ],
)
def test_scale_factor_problems_name_the_dtype(factor, dtype, expected):
    from patchkit.model.adapters.base import scale_factor_problem

    problem = scale_factor_problem(factor, dtype)
    assert problem is None if expected is None else expected in problem


def test_validate_refuses_a_factor_that_is_1_in_the_tensor_dtype(tmp_path):
    from fixtures.tiny_models import raw_llama_checkpoint

    model = raw_llama_checkpoint(tmp_path / "m", "BF16", shards=1)
    ref = resolve_model(model)
    adapter = get_adapter(ref.config)
    edits = _edits("edits: [{layer: 1, neuron: 5, op: scale, factor: 1.002}]\n")
    with pytest.raises(
        RecipeError,
        match=r"r.yaml:4:9: edits\[0\]: model.layers.1.mlp.down_proj.weight is BF16: factor "
        r"1.002 is exactly 1.0 in BF16: .* 0.99609375 and 1.0078125",
    ):
        adapter.validate(edits, ref.headers())
    adapter.validate(_edits("edits: [{layer: 1, neuron: 5, op: scale, factor: 1.01}]\n"), ref.headers())
