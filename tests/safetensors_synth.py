"""Write safetensors checkpoints byte by byte for the core-engine tests (no torch: fast and exact).

`write_file` writes any header (also hostile ones); `llama_checkpoint` writes a small llama-style model
(config.json, tokenizer stand-in, one or more shards, index) in BF16, F16 or F32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from patchkit.edit.bytes import from_float32

HIDDEN, INTER, LAYERS, VOCAB = 16, 24, 3, 32
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}


def header_bytes(header: dict, pad_to: int = 8) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % pad_to)
    return struct.pack("<Q", len(raw)) + raw


def write_file(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict | None = None) -> Path:
    """tensors: name -> (dtype, shape, raw bytes); laid out in the given order, no gaps."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    pos = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
    with open(path, "wb") as fh:
        fh.write(header_bytes(header))
        for _, (_, _, data) in tensors.items():
            fh.write(data)
    return path


def encode(values: np.ndarray, dtype: str) -> bytes:
    return from_float32(values.astype(np.float32), dtype).tobytes()


def llama_tensors(dtype: str, seed: int = 0) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (dtype, shape, encode(rng.standard_normal(shape) * 0.5, dtype))

    out = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{name}.weight"] = w(HIDDEN, HIDDEN)
        out[f"{p}.mlp.gate_proj.weight"] = w(INTER, HIDDEN)
        out[f"{p}.mlp.up_proj.weight"] = w(INTER, HIDDEN)
        out[f"{p}.mlp.down_proj.weight"] = w(HIDDEN, INTER)
        out[f"{p}.input_layernorm.weight"] = (dtype, (HIDDEN,), encode(np.ones(HIDDEN), dtype))
        out[f"{p}.post_attention_layernorm.weight"] = (dtype, (HIDDEN,), encode(np.ones(HIDDEN), dtype))
    out["model.norm.weight"] = (dtype, (HIDDEN,), encode(np.ones(HIDDEN), dtype))
    out["lm_head.weight"] = w(VOCAB, HIDDEN)
    return out


def llama_config(dtype: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
    }


def llama_checkpoint(directory: Path, dtype: str = "BF16", shards: int = 2, seed: int = 0) -> Path:
    """A small llama-style checkpoint directory; layer i's tensors go to shard min(i, shards-1)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = llama_tensors(dtype, seed)
    (directory / "config.json").write_text(json.dumps(llama_config(dtype), indent=2))
    (directory / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (directory / "generation_config.json").write_text('{"do_sample": false}')
    if shards == 1:
        write_file(directory / "model.safetensors", tensors, {"format": "pt"})
        return directory
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    groups: list[dict] = [{} for _ in range(shards)]
    weight_map = {}
    for name, t in tensors.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else (0 if "embed" in name else shards - 1)
        k = min(layer, shards - 1)
        groups[k][name] = t
        weight_map[name] = names[k]
    for fname, group in zip(names, groups):
        write_file(directory / fname, group, {"format": "pt"})
    total = sum(len(t[2]) for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return directory
