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


def write_gguf(path: Path, arch: str, blocks: int, tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]],
               extra: dict[str, int] | None = None, *, kv: dict[str, tuple[Any, gguf.GGUFValueType]] | None = None,
               split_max_tensors: int = 0) -> Path:
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
        w.add_key_value(key, value, vtype, sub_type=gguf.GGUFValueType.get_type(value[0]) if isinstance(value, list) else None)
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


def tiny_llama(path: Path, type_name: str = "Q4_K", *, blocks: int = 2, n_embd: int = 256, n_ff: int = 64,
               seed: int = 0) -> Path:
    """A llama-shaped GGUF: per block ffn_gate/ffn_up/ffn_down (+ an attention norm), of `type_name`."""
    rng = np.random.default_rng(seed)
    ne0_down = n_ff if n_ff % FORMATS[type_name].block_elems == 0 else 256
    tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]] = {}
    for b in range(blocks):
        tensors[f"blk.{b}.attn_norm.weight"] = ("F32", random_rows("F32", 1, n_embd, rng), (n_embd,))
        for part in ("gate", "up"):
            tensors[f"blk.{b}.ffn_{part}.weight"] = (type_name, random_rows(type_name, n_ff, n_embd, rng), (n_ff, n_embd))
        tensors[f"blk.{b}.ffn_down.weight"] = (type_name, random_rows(type_name, n_embd, ne0_down, rng), (n_embd, ne0_down))
    return write_gguf(path, "llama", blocks, tensors, {"llama.feed_forward_length": n_ff, "llama.embedding_length": n_embd})
