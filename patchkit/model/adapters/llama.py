"""Llama-family decoders (llama, mistral, qwen2/3, SmolLM2): `model.layers.{L}.mlp.{gate,up,down}_proj`."""

from __future__ import annotations

from patchkit.model.adapters.base import Adapter


class LlamaAdapter(Adapter):
    architecture = "llama"
    prefixes = ("model",)
    model_types = ("llama", "mistral", "qwen2", "qwen3", "smollm", "smollm2", "smollm3", "olmo2", "granite")
    class_names = (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Olmo2ForCausalLM",
        "GraniteForCausalLM",
    )
