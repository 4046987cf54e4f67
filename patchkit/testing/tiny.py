"""Tiny checkpoints built from a config in well under a second (no Hub, no downloads): for trying patchkit
offline, and for its tests (`tests/fixtures/tiny_models.py` re-exports this module).

    patchkit tiny-model tiny --kind gemma4          # or: python -m patchkit.testing.tiny tiny --kind gemma4

Three families, smallest first:

Raw safetensors, written byte by byte with numpy (no torch; exact, and free to be hostile):
  `write_file`             one safetensors file from (dtype, shape, raw bytes) triples; None bytes leave a hole
  `write_index`            model.safetensors.index.json for a sharded checkpoint
  `raw_llama_checkpoint`   llama-layout model (config.json, 1..n shards + index) in BF16/F16/F32, any geometry
  `sparse_gemma4_checkpoint`  header-only Gemma 4 release with the real tensor names/shapes of a size profile

transformers models (random weights, fixed seeds):
  `llama_config` / `gemma4_text_config` / `gemma4_multimodal_config`   tiny configs, overridable per test
  `random_model`           instantiate a config under a seed and redraw its matrices N(0, std)
  `tiny_llama`             random LlamaForCausalLM (in memory)
  `gemma4_causal_lm`       Gemma4ForCausalLM with transformers' init, sized for generation tests
  `build`                  a saved checkpoint of one kind: llama | gemma4 | gemma4-moe | gemma4-mm
  `write_tiny_model`       `build` for people: refuses to replace a directory, never leaves a half-written one

Tokenizers and saving:
  `word_tokenizer`         word-level, "w4".."w127" (the vocabulary `build` checkpoints use)
  `byte_level_tokenizer`   byte-level BPE with no merges plus specials and a chat template (covers any text)
  `thinking_tokenizer`     byte-level, with a Gemma-4-like chat template that honours `enable_thinking`
  `thinking_model`         (random tiny Llama, thinking_tokenizer()): drives the thinking-budget study offline
  `save_checkpoint`        save_pretrained (safetensors, optionally sharded) + the tokenizer

Gemma 4 dense has per-layer embeddings and double-wide MLPs on its KV-shared layers, like E2B; the multimodal
one is saved by Gemma4ForConditionalGeneration, so its text weights live under `model.language_model.layers`
exactly as in the released checkpoints. Purpose-specific models (a planted loop neuron, bigram language models,
the Hub tests' patched copies) live next to their tests and start from these builders.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchkit.errors import PatchkitError

__all__ = [
    "BUILD_CONFIGS",
    "DTYPES",
    "ITEMSIZE",
    "KINDS",
    "RAW_LLAMA",
    "RAW_LLAMA_FILES",
    "SPARSE_SHARD_BYTES",
    "VOCAB",
    "build",
    "byte_level_tokenizer",
    "chat_llama",
    "encode",
    "gemma4_causal_lm",
    "gemma4_multimodal_config",
    "gemma4_release_tensors",
    "gemma4_text_config",
    "header_bytes",
    "llama_arrays",
    "llama_config",
    "main",
    "model_class",
    "random_model",
    "raw_llama_checkpoint",
    "raw_llama_config",
    "save_checkpoint",
    "shard_names",
    "sparse_gemma4_checkpoint",
    "THINKING_SPECIALS",
    "THINKING_TEMPLATE",
    "thinking_model",
    "thinking_tokenizer",
    "tiny_llama",
    "word_tokenizer",
    "write_file",
    "write_index",
    "write_tiny_model",
]

VOCAB = 128
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}

# --------------------------------------------------------------------------------------------------------------
# raw safetensors (numpy only)


def header_bytes(header: dict, pad_to: int = 8) -> bytes:
    """The 8-byte length prefix + JSON header, space-padded to `pad_to` like the safetensors library does."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % pad_to)
    return struct.pack("<Q", len(raw)) + raw


def write_file(
    path: Path, tensors: Mapping[str, tuple[str, tuple[int, ...], bytes | None]], metadata: dict | None = None
) -> Path:
    """tensors: name -> (dtype, shape, raw bytes), laid out in the given order with no gaps.

    Raw bytes None: the tensor's data area is a hole of its full size (a sparse file: no disk blocks).
    """
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    pos = 0
    for name, (dtype, shape, data) in tensors.items():
        n = len(data) if data is not None else ITEMSIZE[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    head = header_bytes(header)
    with open(path, "wb") as fh:
        fh.write(head)
        for name, (_, _, data) in tensors.items():
            if data is None:
                fh.seek(len(head) + header[name]["data_offsets"][1])
            else:
                fh.write(data)
        fh.truncate(len(head) + pos)
    return path


def write_index(directory: Path, weight_map: dict[str, str], total_size: int) -> Path:
    path = directory / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2))
    return path


def shard_names(n: int) -> list[str]:
    """save_pretrained's shard file names: model-00001-of-0000n.safetensors, ..."""
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def encode(values: np.ndarray, dtype: str) -> bytes:
    """float values -> the raw bytes of `dtype` (BF16 rounds to nearest even, as torch does)."""
    from patchkit.edit.bytes import from_float32

    return from_float32(values.astype(np.float32), dtype).tobytes()


def llama_arrays(
    *, hidden: int, inter: int, layers: int, vocab: int, std: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """float32 llama weights in checkpoint order: matrices N(0, std) from numpy's `seed`, norms all ones."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    out = {"model.embed_tokens.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{name}.weight"] = w(hidden, hidden)
        out[f"{p}.mlp.gate_proj.weight"] = w(inter, hidden)
        out[f"{p}.mlp.up_proj.weight"] = w(inter, hidden)
        out[f"{p}.mlp.down_proj.weight"] = w(hidden, inter)
        out[f"{p}.input_layernorm.weight"] = np.ones(hidden, np.float32)
        out[f"{p}.post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    out["model.norm.weight"] = np.ones(hidden, np.float32)
    out["lm_head.weight"] = w(vocab, hidden)
    return out


RAW_LLAMA = dict(hidden=16, inter=24, layers=3, vocab=32, heads=2)  # raw_llama_checkpoint's default geometry
RAW_LLAMA_FILES = {
    "tokenizer_config.json": '{"model_max_length": 64}',
    "generation_config.json": '{"do_sample": false}',
}


def raw_llama_config(dtype: str, *, hidden: int, inter: int, layers: int, vocab: int, heads: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": vocab,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
    }


def raw_llama_checkpoint(
    directory: Path,
    dtype: str = "BF16",
    shards: int = 2,
    seed: int = 0,
    *,
    std: float = 0.5,
    files: dict[str, str] | None = None,
    config_extra: dict | None = None,
    **geometry: int,
) -> Path:
    """A llama-layout checkpoint directory written byte by byte (no torch); returns `directory`.

    geometry: hidden, inter, layers, vocab, heads (default RAW_LLAMA). Weights: `llama_arrays(std, seed)` in
    `dtype`. shards == 1: a single model.safetensors; else layer i's tensors go to shard min(i, shards-1), the
    embedding to the first and the final norm / lm_head to the last, with an index. files: extra text files
    (default: a tokenizer_config.json and generation_config.json stand-in); config_extra: more config.json keys.
    """
    geo = {**RAW_LLAMA, **geometry}
    directory.mkdir(parents=True, exist_ok=True)
    arrays = llama_arrays(std=std, seed=seed, **{k: geo[k] for k in ("hidden", "inter", "layers", "vocab")})
    tensors = {name: (dtype, a.shape, encode(a, dtype)) for name, a in arrays.items()}
    (directory / "config.json").write_text(
        json.dumps({**raw_llama_config(dtype, **geo), **(config_extra or {})}, indent=2)
    )
    for name, text in (RAW_LLAMA_FILES if files is None else files).items():
        (directory / name).write_text(text)
    if shards == 1:
        write_file(directory / "model.safetensors", tensors, {"format": "pt"})
        return directory
    names = shard_names(shards)
    groups: list[dict] = [{} for _ in range(shards)]
    weight_map = {}
    for name, t in tensors.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else (0 if "embed" in name else shards - 1)
        k = min(layer, shards - 1)
        groups[k][name] = t
        weight_map[name] = names[k]
    for fname, group in zip(names, groups, strict=True):
        write_file(directory / fname, group, {"format": "pt"})
    write_index(directory, weight_map, sum(len(t[2]) for t in tensors.values()))
    return directory


SPARSE_SHARD_BYTES = 5 * 10**9


def gemma4_release_tensors(profile) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every text-decoder tensor of a released Gemma 4 size profile, in transformers' order.

    The list comes from transformers itself: Gemma4TextModel built on the meta device (no memory, no weights),
    its names prefixed with `model.language_model.` as the released Gemma4ForConditionalGeneration files store them.
    """
    import torch
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextModel

    from patchkit.model.profiles import PREFIX

    tc = {k: v for k, v in profile.text_config().items() if k != "model_type"}
    with torch.device("meta"):
        model = Gemma4TextModel(Gemma4TextConfig(**tc))
    return [(f"{PREFIX}.{name}", tuple(t.shape)) for name, t in model.state_dict().items()]


def sparse_gemma4_checkpoint(profile, out: Path) -> Path:
    """config.json + sharded header-only BF16 safetensors + index for a `SizeProfile`; returns `out`.

    Each shard has a real header and a data area that is only a hole, so a 62 GB checkpoint costs a few hundred
    KB of disk. Vision and audio towers are left out (patchkit never edits them). Shard names follow the
    published layout when the profile knows it (31B: two shards), else save_pretrained's at ~5 GB per shard.
    """
    out.mkdir(parents=True, exist_ok=True)
    tensors = gemma4_release_tensors(profile)
    total = sum(2 * math.prod(s) for _, s in tensors)
    n = len(profile.shards) if profile.shards else max(1, math.ceil(total / SPARSE_SHARD_BYTES))
    names = list(profile.shards) if profile.shards else shard_names(n)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n)]
    budget = total / n
    acc, k = 0, 0
    for name, shape in tensors:  # contiguous split by bytes, like save_pretrained's max_shard_size
        size = 2 * math.prod(shape)
        if acc + size > budget * (k + 1) and groups[k] and k < n - 1:
            k += 1
        groups[k].append((name, shape))
        acc += size
    weight_map = {}
    for fname, group in zip(names, groups, strict=True):
        write_file(out / fname, {name: ("BF16", shape, None) for name, shape in group}, {"format": "pt"})
        weight_map.update({name: fname for name, _ in group})
    write_index(out, weight_map, total)
    config = profile.config()
    config.pop("_patchkit_profile", None)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


# --------------------------------------------------------------------------------------------------------------
# tokenizers


def word_tokenizer():
    """A tiny word-level tokenizer: <pad> <eos> <bos> <unk>, then "w4".."w127" (whitespace-split)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for i in range(4, VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def byte_level_tokenizer(specials: Sequence[str], *, chat_template: str, padding_side: str | None = None):
    """Byte-level BPE with no merges: the 256 byte tokens, then `specials` (covers any text).

    specials[0] is the eos, pad and bos token; the rest are additional special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in specials:
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=specials[0],
        pad_token=specials[0],
        bos_token=specials[0],
        additional_special_tokens=list(specials[1:]),
    )
    tok.chat_template = chat_template
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


#: Gemma-4-like special tokens: turns, the system-prompt thinking switch, and the thinking channel markers
#: (`patchkit.generate.thinking` splits `<|channel>thought\n ... <channel|>`). The first is eos/pad/bos.
THINKING_SPECIALS = ("<eos>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>")
#: A chat template in the shape of Gemma 4's: `enable_thinking` puts <|think|> in a system turn and opens the
#: thinking channel in the model turn (so even a random model "thinks" until it emits <channel|> or runs out
#: of budget); without it the template renders no thinking at all.
THINKING_TEMPLATE = (
    "{% if enable_thinking is defined and enable_thinking %}<|turn>system\n<|think|><turn|>\n{% endif %}"
    "{% for m in messages %}<|turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n"
    "{% if enable_thinking is defined and enable_thinking %}<|channel>thought\n{% endif %}{% endif %}"
)


def thinking_tokenizer():
    """Byte-level tokenizer with THINKING_SPECIALS and THINKING_TEMPLATE (left padding), built by code.

    Why: the thinking-budget study refuses a template without a thinking mode; tests and offline trials need
    one that has it, with the same markers as Gemma 4, and no download.
    """
    return byte_level_tokenizer(THINKING_SPECIALS, chat_template=THINKING_TEMPLATE, padding_side="left")


def chat_llama(tok: Any, eos_token: str, *, seed: int = 0, std: float = 0.15) -> Any:
    """A random 2-layer Llama (hidden 32) over `tok`'s vocabulary that ends a turn with `eos_token`: random, but
    with peaked, input-dependent distributions (the generation and loop tests' model), in eval mode."""
    model = tiny_llama(
        seed=seed,
        std=std,
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.convert_tokens_to_ids(eos_token),
        pad_token_id=tok.pad_token_id,
    )
    return model.eval()


def thinking_model(seed: int = 0, *, std: float = 0.15):
    """(random 2-layer Llama over `thinking_tokenizer()`'s vocabulary, that tokenizer); eos is <turn|>."""
    tok = thinking_tokenizer()
    return chat_llama(tok, "<turn|>", seed=seed, std=std), tok


# --------------------------------------------------------------------------------------------------------------
# transformers models


def llama_config(**overrides: Any) -> Any:
    """LlamaConfig: vocab 128, hidden 64, MLP 48, 3 layers, 4 heads / 2 KV heads, untied; any field overridable."""
    from transformers import LlamaConfig

    kw: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def gemma4_text_config(*, moe: bool = False, **overrides):
    """Gemma4TextConfig, 4 layers (sliding, full) x 2, hidden 64.

    Dense (default): per-layer embeddings and double-wide MLPs (48 -> 96) on the 2 KV-shared layers, like E2B.
    moe: 6 experts, top-2, expert MLP 16, next to the dense MLP; no per-layer inputs or KV sharing.
    """
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    kw: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        sliding_window=16,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB,
        layer_types=["sliding_attention", "full_attention"] * 2,
    )
    if moe:
        kw.update(
            enable_moe_block=True,
            num_experts=6,
            top_k_experts=2,
            moe_intermediate_size=16,
            hidden_size_per_layer_input=0,
            num_kv_shared_layers=0,
        )
    else:
        kw.update(num_kv_shared_layers=2, use_double_wide_mlp=True)
    kw.update(overrides)
    return Gemma4TextConfig(**kw)


def gemma4_multimodal_config(**text_overrides):
    """Gemma4ForConditionalGeneration as released (E2B-like text stack + a one-layer vision tower, no audio)."""
    from transformers.models.gemma4.configuration_gemma4 import Gemma4Config, Gemma4VisionConfig

    vision = Gemma4VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        position_embedding_size=64,
    )
    return Gemma4Config(text_config=gemma4_text_config(**text_overrides).to_dict(), vision_config=vision.to_dict())


def model_class(kind: str):
    """The transformers class that loads a checkpoint built by `build(kind, ...)`."""
    if kind == "gemma4-mm":
        from transformers import Gemma4ForConditionalGeneration

        return Gemma4ForConditionalGeneration
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def random_model(config, *, seed: int = 0, std: float | None = 0.15, cls=None):
    """`cls` (default: AutoModelForCausalLM) built from `config` right after torch.manual_seed(seed).

    std: redraw every matrix (and expert tensor) N(0, std) - larger than transformers' init, so even a tiny
    random model has peaked, input-dependent distributions - and router.per_expert_scale U(0.5, 1.5), so edits
    to it are visible. std None keeps transformers' own initialisation.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config) if cls is None else cls._from_config(config)
    if std is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "per_expert_scale" in name:
                    param.uniform_(0.5, 1.5)
                elif param.dim() >= 2 or "experts" in name:
                    param.normal_(0.0, std)
    return model


def tiny_llama(*, seed: int = 0, std: float | None = 0.15, **config):
    """A random LlamaForCausalLM in memory: `llama_config(**config)` through `random_model(seed, std)`."""
    return random_model(llama_config(**config), seed=seed, std=std)


def gemma4_causal_lm(tokenizer, *, seed: int = 0):
    """Gemma4ForCausalLM (eval mode, transformers' init) over `tokenizer`'s vocabulary, for generation tests.

    4 layers in transformers' default sliding/full pattern (sliding window 16, so short prompts cross it), hidden
    64, MLP 128, head_dim 32, per-layer inputs of 16; eos is the tokenizer's <|im_end|>.
    """
    from transformers import Gemma4TextConfig

    cfg = Gemma4TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
        vocab_size_per_layer_input=len(tokenizer),
        hidden_size_per_layer_input=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    return random_model(cfg, seed=seed, std=None).eval()


def save_checkpoint(model, out: Path, tokenizer=None, *, shard: str | None = None) -> Path:
    """save_pretrained as safetensors (sharded at `shard`, e.g. "48KB", when given) + the tokenizer; returns `out`."""
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


BUILD_CONFIGS: dict[str, Callable] = {
    "llama": llama_config,
    "gemma4": gemma4_text_config,
    "gemma4-moe": lambda: gemma4_text_config(moe=True),
    "gemma4-mm": gemma4_multimodal_config,
}


def build(kind: str, out: Path, *, dtype=None, shard: str | None = None, seed: int = 0) -> Path:
    """Save a tiny random model of `kind` (llama | gemma4 | gemma4-moe | gemma4-mm) to `out`; returns `out`.

    Weights N(0, 0.15) from torch seed `seed`, cast to `dtype` (default float32), sharded at `shard` when given,
    with `word_tokenizer()` so the checkpoint loads with AutoTokenizer too.
    """
    import torch

    if kind not in BUILD_CONFIGS:
        raise ValueError(kind)
    cls = model_class(kind) if kind == "gemma4-mm" else None
    model = random_model(BUILD_CONFIGS[kind](), seed=seed, cls=cls)
    return save_checkpoint(model.to(dtype or torch.float32), out, word_tokenizer(), shard=shard)


KINDS = tuple(BUILD_CONFIGS)
#: dtype names `write_tiny_model` accepts (the torch dtype of the saved weights).
DTYPES = ("float32", "bfloat16", "float16")


def write_tiny_model(
    out: str | os.PathLike[str],
    kind: str = "gemma4",
    *,
    dtype: str = "float32",
    shard: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Save a tiny random model of `kind` to `out`, as `build` does, for people rather than tests.

    `out` must not exist or be an empty directory: the model is written to a hidden sibling and renamed into
    place when complete, so an interrupted run leaves no half-written checkpoint and nothing is replaced.

    Args:
        out: the checkpoint directory to create.
        kind: llama | gemma4 (E2B-like: per-layer inputs, double-wide KV-shared layers) | gemma4-moe | gemma4-mm
            (saved as Gemma4ForConditionalGeneration, text weights under `model.language_model.`).
        dtype: float32 | bfloat16 | float16.
        shard: save_pretrained's max_shard_size (e.g. "48KB") for a sharded checkpoint; None = one file.
        seed: torch seed of the random weights (the same seed gives the same bytes).

    Returns:
        dict: path, kind, dtype, layers, hidden, files (what was written).

    Raises:
        PatchkitError: an unknown kind or dtype, or `out` already exists and is not empty.

    Example:
        >>> write_tiny_model("tiny", "gemma4")["layers"]  # doctest: +SKIP
        4
    """
    if kind not in BUILD_CONFIGS:
        raise PatchkitError(f"unknown tiny model kind {kind!r}", hint=f"choose one of {', '.join(KINDS)}")
    if dtype not in DTYPES:
        raise PatchkitError(f"unknown dtype {dtype!r}", hint=f"choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if os.path.lexists(out) and not (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        raise PatchkitError(
            f"{out}: already exists; refusing to replace it",
            hint="choose a new directory or an empty one",
            data={"path": str(out)},
        )
    import torch

    from patchkit._io.atomic import TMP_MARK, replace_dir, temp_tag

    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{temp_tag(out.name)}{TMP_MARK}tiny-"))
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar, for a sub-second write
    try:
        build(kind, tmp / "model", dtype=getattr(torch, dtype), shard=shard, seed=seed)
        if out.is_dir() and not out.is_symlink():
            out.rmdir()  # empty, checked above
        replace_dir(tmp / "model", out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    config = json.loads((out / "config.json").read_text())
    text = config.get("text_config", config)
    return {
        "path": str(out),
        "kind": kind,
        "dtype": dtype,
        "layers": text.get("num_hidden_layers"),
        "hidden": text.get("hidden_size"),
        "files": sorted(p.name for p in out.iterdir()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m patchkit.testing.tiny DIR [--kind KIND]`: the same as `patchkit tiny-model`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m patchkit.testing.tiny", description=write_tiny_model.__doc__)
    parser.add_argument("dir", help="checkpoint directory to create")
    parser.add_argument("--kind", choices=KINDS, default="gemma4")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--shard", default=None, help='max shard size, e.g. "48KB" (default: one file)')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        info = write_tiny_model(args.dir, args.kind, dtype=args.dtype, shard=args.shard, seed=args.seed)
    except PatchkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {info['path']}: tiny {info['kind']} ({info['layers']} layers, hidden {info['hidden']}, {info['dtype']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
