"""Tiny random llama checkpoints for the bench tests (byte-level tokenizer; built by fixtures.tiny_models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fixtures.tiny_models import byte_level_tokenizer, save_checkpoint, tiny_llama

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(extra_tokens: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + specials (covers any text)."""
    return byte_level_tokenizer((*SPECIALS, *extra_tokens), chat_template=TEMPLATE)


def make_tiny_llama(
    path: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, inter: int = 64, extra_tokens: tuple[str, ...] = ()
) -> Path:
    """Save a random tiny LlamaForCausalLM + tokenizer to `path` (safetensors) and return it."""
    tok = byte_tokenizer(extra_tokens)
    model = tiny_llama(
        seed=seed,
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return save_checkpoint(model, path, tok)


def zero_neurons_copy(src: Path, dst: Path, layer: int, neurons: list[int]) -> Path:
    """Copy a checkpoint and zero columns `neurons` of one layer's down_proj (what a zero recipe does)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    weights[name][:, neurons] = 0.0
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def write_recipe(path: Path, *, layer: int, neurons: list[int], op: str = "zero", bench: dict | None = None) -> Path:
    """A minimal patchkit recipe for the tiny model (JSON is valid YAML)."""
    doc = {
        "patchkit": 1,
        "name": "tiny-zero",
        "description": "zero MLP neurons of a tiny random llama (bench tests)",
        "model": {"repo": "patchkit-tests/tiny-llama", "architecture": "llama"},
        "source": {"kind": "manual"},
        "edits": [{"layer": layer, "neuron": neurons, "op": op}],
    }
    if bench is not None:
        doc["checks"] = {"bench": bench}
    path.write_text(json.dumps(doc))
    return path


def one_thread():
    """Generator for an autouse fixture: tiny models gain nothing from threads, and on a shared, busy
    2-core box two OpenMP threads spin-wait on each other (measured: up to 20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
