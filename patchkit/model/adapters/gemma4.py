"""Gemma 4 (E2B, E4B, 31B dense; 26B-A4B MoE), checked against transformers 5.x modeling_gemma4.py.

- Multimodal checkpoints (`Gemma4ForConditionalGeneration`) keep text weights under `model.language_model.layers.{L}`,
  text-only ones (`Gemma4ForCausalLM`) under `model.layers.{L}`.
- KV-shared layers (the last `num_kv_shared_layers`) have a double-wide MLP when `use_double_wide_mlp` (E2B).
- MoE layers (`enable_moe_block`) keep the dense `mlp` and add `router.{proj.weight, scale, per_expert_scale}` and
  `experts.{gate_up_proj [E,2I,H], down_proj [E,H,I]}`. The router multiplies the renormalised top-k weights by
  `per_expert_scale[expert]`, so zeroing that one element removes the expert's output exactly; the expert is
  still chosen (the router has no bias to edit), so its top-k slot is spent on nothing.
"""

from __future__ import annotations

from typing import Any

from patchkit.errors import ModelError
from patchkit.model.adapters.base import MAX_EXPERTS, MAX_WIDTH, Adapter, LayerInfo, TensorTarget, config_value


class Gemma4Adapter(Adapter):
    architecture = "gemma4"
    prefixes = ("model.language_model", "model")
    model_types = ("gemma4", "gemma4_text")
    class_names = ("Gemma4ForConditionalGeneration", "Gemma4ForCausalLM")

    def __init__(self, config: dict[str, Any], *, source: str = "config.json"):
        super().__init__(config, source=source)
        multimodal = "text_config" in config or "ConditionalGeneration" in " ".join(config.get("architectures") or [])
        self.prefix = "model.language_model" if multimodal else "model"

    def _text_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if "text_config" not in config:
            return config
        tc = config["text_config"]
        if not isinstance(tc, dict):
            raise ModelError(
                f"{self.source}: text_config must be a JSON object, got {config_value(tc)}",
                hint="the checkpoint's config.json is malformed; re-download or fix it",
                data={"key": "text_config"},
            )
        self.key_prefix = "text_config."
        return tc

    def _check_config(self) -> None:
        super()._check_config()
        self._opt_int("num_kv_shared_layers", 0, self.num_layers)
        self._bool("use_double_wide_mlp")
        if self._bool("enable_moe_block"):
            self._int("num_experts", 1, MAX_EXPERTS)
            self._opt_int("moe_intermediate_size", 1, MAX_WIDTH)

    def layer_info(self, layer: int) -> LayerInfo:
        tc = self.text_config
        size = tc["intermediate_size"]
        if isinstance(size, list):  # explicit per-layer widths (Gemma 3n style) are taken as they are
            size = int(size[layer])
        else:  # transformers 5.x Gemma4TextMLP: doubled on the KV-shared ("reuse") layers when use_double_wide_mlp
            size = int(size)
            shared = int(tc.get("num_kv_shared_layers") or 0)
            if tc.get("use_double_wide_mlp") and shared and layer >= self.num_layers - shared:
                size *= 2
        if tc.get("enable_moe_block"):
            return LayerInfo(size, True, int(tc.get("num_experts") or 0), tc.get("moe_intermediate_size"))
        return LayerInfo(size)

    def expert_targets(self, edit: Any, tensor_names: set[str]) -> list[TensorTarget]:
        if not self.layer_info(edit.layer).is_moe:
            return super().expert_targets(edit, tensor_names)
        base = f"{self.prefix}.layers.{edit.layer}"
        scale = f"{base}.router.per_expert_scale"
        if edit.tensor != "down_proj" and scale in tensor_names:
            return [TensorTarget(scale, 0, edit.index)]
        slab = f"{base}.experts.down_proj"
        self._require(slab, tensor_names, edit)
        return [TensorTarget(slab, 0, edit.index)]
