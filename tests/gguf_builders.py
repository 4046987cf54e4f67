"""GGUF files built by code for the GGUF edit tests: random quant bytes with sane fp16 scales, any block type.

The edits must not depend on how the quants were chosen, so the payload bytes are random; only the scale fields
are drawn from a range where x3 and x-0.8 stay finite and normal in fp16 (and MXFP4/NVFP4 scale codes where x2
and x0.5 stay representable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from patchkit.edit.gguf_blocks import FORMATS


def random_rows(type_name: str, rows: int, ne0: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` rows of `ne0` values of `type_name` as raw bytes, shape (rows, row_bytes)."""
    fmt = FORMATS[type_name]
    row_bytes = ne0 // fmt.block_elems * fmt.block_bytes
    if fmt.kind == "element":
        vals = rng.standard_normal((rows, ne0)).astype(np.float32) * 0.05
        if type_name == "F32":
            return vals.view(np.uint8).reshape(rows, row_bytes)
        if type_name == "F16":
            return vals.astype(np.float16).view(np.uint8).reshape(rows, row_bytes)
        return (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, row_bytes)
    data = rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)
    blocks = data.reshape(-1, fmt.block_bytes)
    if fmt.kind == "fp16":
        for off in fmt.scales:
            d = rng.uniform(0.002, 0.05, len(blocks)) * rng.choice([-1.0, 1.0], len(blocks))
            blocks[:, off : off + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    elif fmt.kind == "iq1m":
        sc = blocks[:, 48:56].copy().view("<u2").reshape(-1, 4)
        d = rng.uniform(0.002, 0.05, len(blocks)).astype(np.float16).view(np.uint16)
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        blocks[:, 48:56] = sc.view(np.uint8).reshape(-1, 8)
    elif fmt.kind == "mxfp4":
        blocks[:, 0] = rng.integers(110, 130, len(blocks))
    elif fmt.kind == "nvfp4":
        exp = rng.integers(3, 12, (len(blocks), 4))
        blocks[:, :4] = (exp << 3) | rng.integers(0, 8, (len(blocks), 4))
    return data


def write_gguf(
    path: Path,
    arch: str,
    blocks: int,
    tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]],
    extra: dict[str, int] | None = None,
    *,
    kv: dict[str, tuple[Any, gguf.GGUFValueType]] | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """Write a GGUF: `tensors` maps name -> (type name, raw bytes, shape as numpy order (outermost first)).

    `extra` adds uint32 keys, `kv` keys of any value type. With `split_max_tensors`, gguf-py writes a split set
    `<stem>-0000i-of-0000N.gguf` (split.no / split.count / split.tensors.count in every part, the rest of the
    metadata in the first) and the first part's path is returned. A type outside FORMATS (I8, Q8_1, ...) is
    written from its raw bytes too.
    """
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_block_count(blocks)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    for key, (value, vtype) in (kv or {}).items():
        w.add_key_value(
            key, value, vtype, sub_type=gguf.GGUFValueType.get_type(value[0]) if isinstance(value, list) else None
        )
    for name, (type_name, data, shape) in tensors.items():
        qt = gguf.GGMLQuantizationType[type_name]
        fmt = FORMATS.get(type_name)
        if fmt is not None and fmt.kind == "element":
            np_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[type_name]
            arr = data.view(np_dtype).reshape(shape)
            if type_name == "BF16":
                w.add_tensor(name, arr.view(np.uint8).reshape(*shape[:-1], shape[-1] * 2), raw_dtype=qt)
            else:
                w.add_tensor(name, arr)
        else:
            block, size = gguf.GGML_QUANT_SIZES[qt]
            byte_shape = (*shape[:-1], shape[-1] // block * size)
            w.add_tensor(name, data.reshape(byte_shape), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if split_max_tensors and len(tensors) > split_max_tensors:
        count = -(-len(tensors) // split_max_tensors)
        return path.with_name(f"{path.stem}-00001-of-{count:05d}.gguf")
    return path


#: Metadata of several value types, to check that an apply copies every original entry as it was.
SAMPLE_KV: dict[str, tuple[Any, gguf.GGUFValueType]] = {
    "general.name": ("tiny test model", gguf.GGUFValueType.STRING),
    "general.file_type": (15, gguf.GGUFValueType.UINT32),
    "llama.rope.freq_base": (10000.0, gguf.GGUFValueType.FLOAT32),
    "llama.attention.layer_norm_rms_epsilon": (1e-5, gguf.GGUFValueType.FLOAT32),
    "tokenizer.ggml.tokens": (["<s>", "</s>", "a", "b"], gguf.GGUFValueType.ARRAY),
    "tokenizer.ggml.scores": ([0.0, -1.0, -2.5, -3.0], gguf.GGUFValueType.ARRAY),
    "general.tags": (["x", "é"], gguf.GGUFValueType.ARRAY),
    "test.int64": (-(2**40), gguf.GGUFValueType.INT64),
    "test.bool": (True, gguf.GGUFValueType.BOOL),
}


def tiny_llama(
    path: Path,
    type_name: str = "Q4_K",
    *,
    blocks: int = 2,
    n_embd: int = 256,
    n_ff: int = 64,
    seed: int = 0,
    kv: dict[str, tuple[Any, gguf.GGUFValueType]] | None = None,
    split_max_tensors: int = 0,
    up_type: str | None = None,
) -> Path:
    """A llama-shaped GGUF: per block ffn_gate/ffn_up/ffn_down (+ an attention norm), of `type_name`.

    Tensors are written block by block (4 per block), so `split_max_tensors=4` puts block i in part i + 1.
    `up_type` writes the ffn_up tensors in another type (e.g. I8 or Q8_1, which patchkit cannot edit).
    """
    rng = np.random.default_rng(seed)
    ne0_down = n_ff if n_ff % FORMATS[type_name].block_elems == 0 else 256
    tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]] = {}
    for b in range(blocks):
        tensors[f"blk.{b}.attn_norm.weight"] = ("F32", random_rows("F32", 1, n_embd, rng), (n_embd,))
        for part in ("gate", "up"):
            t = up_type if (part == "up" and up_type) else type_name
            tensors[f"blk.{b}.ffn_{part}.weight"] = (t, _any_rows(t, n_ff, n_embd, rng), (n_ff, n_embd))
        tensors[f"blk.{b}.ffn_down.weight"] = (
            type_name,
            random_rows(type_name, n_embd, ne0_down, rng),
            (n_embd, ne0_down),
        )
    return write_gguf(
        path,
        "llama",
        blocks,
        tensors,
        {"llama.feed_forward_length": n_ff, "llama.embedding_length": n_embd},
        kv=kv,
        split_max_tensors=split_max_tensors,
    )


def _any_rows(type_name: str, rows: int, ne0: int, rng: np.random.Generator) -> np.ndarray:
    """random_rows, or plain random bytes for a type patchkit does not edit."""
    if type_name in FORMATS:
        return random_rows(type_name, rows, ne0, rng)
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return rng.integers(0, 256, (rows, ne0 // block * size), dtype=np.uint8)


def tiny_gemma4_dense(
    path: Path, type_name: str = "Q8_0", *, n_ff: tuple[int, ...] = (64, 64, 128), n_embd: int = 256, seed: int = 1
) -> Path:
    """A dense Gemma 4 GGUF whose layers have their own widths (the last one double-wide, as the KV-shared
    layers of Gemma 4 E2B/E4B are)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]] = {}
    for b, ff in enumerate(n_ff):
        tensors[f"blk.{b}.attn_norm.weight"] = ("F32", random_rows("F32", 1, n_embd, rng), (n_embd,))
        for part in ("gate", "up"):
            tensors[f"blk.{b}.ffn_{part}.weight"] = (type_name, random_rows(type_name, ff, n_embd, rng), (ff, n_embd))
        tensors[f"blk.{b}.ffn_down.weight"] = (type_name, random_rows(type_name, n_embd, ff, rng), (n_embd, ff))
    kv = {"gemma4.feed_forward_length": (list(n_ff), gguf.GGUFValueType.ARRAY)}
    return write_gguf(path, "gemma4", len(n_ff), tensors, {"gemma4.embedding_length": n_embd}, kv=kv)


def tiny_gemma4_moe(
    path: Path,
    layout: str,
    type_name: str = "Q8_0",
    *,
    blocks: int = 2,
    n_expert: int = 4,
    n_ff_exp: int = 32,
    n_embd: int = 256,
    seed: int = 2,
) -> Path:
    """An MoE Gemma 4 GGUF (a dense MLP and experts in every block), experts laid out as `layout`:

    - "scale": fused `ffn_gate_up_exps` (numpy (E, 2F, H): per expert F gate rows, then F up rows) and the F32
      per-expert scale `ffn_down_exps.scale` [E] (llama.cpp's Gemma 4 converter);
    - "fused": the fused tensor without the scale;
    - "split": `ffn_gate_exps` and `ffn_up_exps`, numpy (E, F, H) each (Ollama's converter).
    """
    rng = np.random.default_rng(seed)
    E, F, H = n_expert, n_ff_exp, n_embd
    tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]] = {}
    for b in range(blocks):
        tensors[f"blk.{b}.attn_norm.weight"] = ("F32", random_rows("F32", 1, H, rng), (H,))
        for part in ("gate", "up"):
            tensors[f"blk.{b}.ffn_{part}.weight"] = (type_name, random_rows(type_name, 64, H, rng), (64, H))
        tensors[f"blk.{b}.ffn_down.weight"] = (type_name, random_rows(type_name, H, 64, rng), (H, 64))
        tensors[f"blk.{b}.ffn_gate_inp.weight"] = ("F32", random_rows("F32", E, H, rng), (E, H))
        if layout in ("scale", "fused"):
            tensors[f"blk.{b}.ffn_gate_up_exps.weight"] = (
                type_name,
                random_rows(type_name, E * 2 * F, H, rng),
                (E, 2 * F, H),
            )
        else:
            for part in ("gate", "up"):
                tensors[f"blk.{b}.ffn_{part}_exps.weight"] = (
                    type_name,
                    random_rows(type_name, E * F, H, rng),
                    (E, F, H),
                )
        tensors[f"blk.{b}.ffn_down_exps.weight"] = (type_name, random_rows(type_name, E * H, F, rng), (E, H, F))
        if layout == "scale":
            scale = rng.uniform(0.5, 2.0, E).astype(np.float32)
            tensors[f"blk.{b}.ffn_down_exps.scale"] = ("F32", scale.view(np.uint8), (E,))
    extra = {"gemma4.embedding_length": H, "gemma4.expert_count": E, "gemma4.expert_used_count": 2}
    return write_gguf(path, "gemma4", blocks, tensors, extra)


# --- reading back ------------------------------------------------------------------------------------------


def split_paths(first: Path) -> list[Path]:
    """Every part of the split set whose first part is `first` (sorted by name)."""
    stem = first.name.rsplit("-00001-of-", 1)[0]
    return sorted(first.parent.glob(f"{stem}-*-of-*.gguf"))


def read_tensors(path: Path) -> dict[str, tuple[str, bytes, np.ndarray]]:
    """name -> (type name, raw bytes, dequantized float32 values in numpy order) of every tensor in a file."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        raw = np.array(t.data)  # copy out of the memmap
        qt = gguf.GGMLQuantizationType(t.tensor_type)
        if qt.name in FORMATS and FORMATS[qt.name].kind == "element":
            shape = tuple(int(x) for x in reversed(t.shape))
            if qt.name == "BF16":
                vals = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                vals = raw.astype(np.float32)
            values = vals.reshape(shape)
        else:
            values = gguf.quants.dequantize(raw, qt) if qt.name in FORMATS else raw
        out[t.name] = (qt.name, raw.tobytes(), values)
    return out


def read_metadata(path: Path) -> dict[str, Any]:
    """key -> value of every metadata entry (the reader's own GGUF.* pseudo-fields left out)."""
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensor_info_fields(path: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (file offset of its ggml type field, file offset of its data-offset field, data start) for patching
    a header by hand; the tensor infos are walked here from where the gguf reader says each begins."""
    import struct

    reader = gguf.GGUFReader(str(path))
    data = path.read_bytes()
    out = {}
    for t in reader.tensors:
        pos = t.field.offset
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4 + 8 * n_dims
        out[t.name] = (pos, pos + 4, int(t.data_offset))
    return out
