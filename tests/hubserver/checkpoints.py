"""Tiny Llama checkpoints for the Hub tests: a 2-shard base model and a patched copy with patchkit.json.

`make_patched` uses `patchkit.edit.apply.apply_recipe` when the core engine is installed and otherwise writes the
same layout itself, following the provenance format in docs/ARCHITECTURE.md exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

HIDDEN, INTER, LAYERS, VOCAB, HEADS = 16, 32, 2, 64, 2
EDIT_LAYER, EDIT_NEURON = 1, 5
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

BASE_CARD = """---
license: apache-2.0
license_link: https://www.apache.org/licenses/LICENSE-2.0
tags:
- tiny
pipeline_tag: text-generation
---
# tiny-llama (test base model)
"""

RECIPE_TEXT = f"""patchkit: 1
name: tiny-llama-loopfix
description: Invert neuron {EDIT_NEURON} of layer {EDIT_LAYER}, which drives list-repetition loops.
model: {{repo: test-org/tiny-llama, revision: {'a' * 40}, architecture: llama}}
source: {{kind: manual, reference: "unit test"}}
edits:
  - {{layer: {EDIT_LAYER}, neuron: {EDIT_NEURON}, op: invert}}
publish: {{repo: alice/tiny-llama-loopfix, license: apache-2.0}}
"""


def _config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    out = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{name}.weight"] = w(HIDDEN, HIDDEN)
        out[f"{p}.mlp.gate_proj.weight"] = w(INTER, HIDDEN)
        out[f"{p}.mlp.up_proj.weight"] = w(INTER, HIDDEN)
        out[f"{p}.mlp.down_proj.weight"] = w(HIDDEN, INTER)
        out[f"{p}.input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        out[f"{p}.post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    out["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    out["lm_head.weight"] = w(VOCAB, HIDDEN)
    return out


def _shard_of(name: str) -> str:
    return SHARDS[0] if name.startswith(("model.embed_tokens", "model.layers.0.")) else SHARDS[1]


def _write_shards(directory: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    for shard in SHARDS:
        part = {k: v for k, v in tensors.items() if _shard_of(k) == shard}
        save_file(part, str(directory / shard), metadata={"format": "pt"})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
             "weight_map": {k: _shard_of(k) for k in sorted(tensors)}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_base(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(_config(), indent=2))
    (directory / "README.md").write_text(BASE_CARD)
    _write_shards(directory, _tensors())
    return directory


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def engine_available() -> bool:
    """Whether the core engine (recipe + model + apply + a llama adapter) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("patchkit.edit.apply", "patchkit.recipe", "patchkit.model.refs"))


def make_patched(base: Path, out: Path, *, use_engine: bool = False) -> Path:
    """A patched copy of `base` (neuron EDIT_NEURON of layer EDIT_LAYER inverted) with patchkit.json.

    use_engine: run the real `patchkit.edit.apply.apply_recipe` (must be installed); otherwise write the same
    layout here, so the Hub tests do not depend on the engine's state.
    """
    recipe_path = out.parent / "tiny-llama-loopfix.yaml"
    recipe_path.write_text(RECIPE_TEXT)
    if use_engine:
        from patchkit.edit.apply import apply_recipe

        apply_recipe(recipe_path, model=str(base), out=out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        shutil.copy2(item, out / item.name)
    tensors = _tensors()
    name = f"model.layers.{EDIT_LAYER}.mlp.down_proj.weight"
    before = hashlib.sha256(tensors[name][:, EDIT_NEURON].tobytes()).hexdigest()
    tensors[name][:, EDIT_NEURON] *= -1
    after = hashlib.sha256(tensors[name][:, EDIT_NEURON].tobytes()).hexdigest()
    from safetensors.numpy import save_file

    part = {k: v for k, v in tensors.items() if _shard_of(k) == SHARDS[1]}
    save_file(part, str(out / SHARDS[1]), metadata={"format": "pt"})
    provenance = {
        "patchkit_version": "0.1.0",
        "created": "2026-11-24T22:00:00Z",
        "recipe": {
            "path": str(recipe_path),
            "sha256": hashlib.sha256(RECIPE_TEXT.encode()).hexdigest(),
            "text": RECIPE_TEXT,
            "normalized": {
                "patchkit": 1,
                "name": "tiny-llama-loopfix",
                "description": f"Invert neuron {EDIT_NEURON} of layer {EDIT_LAYER}, which drives list-repetition loops.",
                "model": {"repo": "test-org/tiny-llama", "revision": "a" * 40, "architecture": "llama"},
                "source": {"kind": "manual", "reference": "unit test"},
                "edits": [{"layer": EDIT_LAYER, "neuron": EDIT_NEURON, "op": "invert"}],
                "publish": {"repo": "alice/tiny-llama-loopfix", "license": "apache-2.0"},
            },
        },
        "base": {"ref": str(base), "repo": "test-org/tiny-llama", "revision": "a" * 40, "architecture": "llama"},
        "source_files": {s: {"sha256": _sha(base / s), "size": (base / s).stat().st_size} for s in SHARDS},
        "output_files": {
            p.name: {"sha256": _sha(p), "size": p.stat().st_size, "rewritten": p.name == SHARDS[1]}
            for p in sorted(out.iterdir())
            if p.name != "patchkit.json"
        },
        "edits": [{"layer": EDIT_LAYER, "kind": "neuron", "index": EDIT_NEURON, "op": "invert", "factor": -1.0,
                   "tensor": name, "file": SHARDS[1], "before_sha256": before, "after_sha256": after}],
    }
    (out / "patchkit.json").write_text(json.dumps(provenance, indent=2))
    return out
