"""Tiny random llama checkpoints for the bench tests (byte-level tokenizer, built in-process, no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer(extra_tokens: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + specials (covers any text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in (*SPECIALS, *extra_tokens):
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:] + list(extra_tokens))
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def make_tiny_llama(path: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, inter: int = 64,
                    extra_tokens: tuple[str, ...] = ()) -> Path:
    """Save a random tiny LlamaForCausalLM + tokenizer to `path` (safetensors) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer(extra_tokens)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # larger weights than the default init so the random model has peaked, input-dependent distributions
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


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
