"""A GGUF model as patchkit edits it: one file or a split set, its tensors, and where each recipe unit lives.

The recipe units map onto llama.cpp's tensor names without reading any weight:

- neuron n of layer L (`h_n = act(gate_n . x) * (up_n . x)`, read out by column n of `ffn_down`): **row n of
  `blk.L.ffn_up.weight`**. Scaling that row by f scales h_n by f, which is what scaling column n of `down_proj`
  does in a safetensors checkpoint, and in GGUF the row is contiguous (ne0 = n_embd) and made of whole quant
  blocks. A recipe's `tensor: down_proj | up_proj` makes no difference here: both scale h_n.
- expert e of an MoE layer: `blk.L.ffn_down_exps.scale[e]` when the file has it (Gemma 4: HF
  `router.per_expert_scale`, unquantized), set to 0; otherwise the up half of the expert's slab, zeroed, in the
  fused `ffn_gate_up_exps` (gate rows first, then up rows) or the split `ffn_up_exps` (Ollama's converter splits
  the fused tensor); with `tensor: down_proj`, the expert's slab of `ffn_down_exps`. Each makes the expert add
  exactly nothing; as in safetensors, the router still spends its top-k slot on it.

Geometry comes from the tensor shapes themselves (a KV-shared double-wide Gemma 4 layer has its own n_ff), so a
recipe checked here cannot disagree with the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit.errors import ModelError, RecipeError
from patchkit.model.gguf_header import GGUFHeader, GGUFTensor, check_blocks, check_gguf_file, scan_gguf_header

__all__ = [
    "GGUFModel",
    "GGUFTarget",
    "gguf_targets",
    "is_gguf_path",
    "open_gguf_model",
    "split_part_paths",
]

#: GGUF `general.architecture` values and the recipe architecture whose units they share.
GGUF_ARCHITECTURES = {
    "gemma4": "gemma4",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "olmo2": "llama",
    "granite": "llama",
}
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def is_gguf_path(ref: str | os.PathLike[str] | None) -> bool:
    """True for a model reference that names a .gguf file (existing or not: the caller reports a missing one)."""
    return ref is not None and str(ref).lower().endswith(".gguf") and not Path(str(ref)).is_dir()


def split_part_paths(path: Path) -> list[Path]:
    """Every file of the split set `path` belongs to (llama.cpp's `NAME-0000i-of-0000N.gguf`), else [path]."""
    m = _SPLIT.match(path.name)
    if m is None:
        return [path]
    count = int(m.group("count"))
    if not 1 <= count <= 9999:
        raise ModelError(f"{path}: a split set of {count} files is not a GGUF split set")
    return [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


@dataclass(frozen=True)
class GGUFModel:
    """A validated GGUF model: its parts (one, or every file of a split set, in order) and where each tensor is."""

    path: Path  # as the caller gave it
    parts: tuple[GGUFHeader, ...]
    architecture: str  # the recipe architecture (gemma4 | llama)
    gguf_architecture: str  # general.architecture as the file says
    block_count: int
    tensors: dict[str, tuple[int, GGUFTensor]]  # name -> (part index, tensor)

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1

    @property
    def files(self) -> list[Path]:
        return [p.path for p in self.parts]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    def tensor(self, name: str) -> tuple[int, GGUFTensor] | None:
        return self.tensors.get(name)

    def quant_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return dict(sorted(counts.items()))

    def file_type(self) -> str | None:
        """The dominant quant type of the MLP weights (what a card calls the file's quantization)."""
        counts: dict[str, int] = {}
        for name, (_, t) in self.tensors.items():
            if ".ffn_" in name and len(t.shape) >= 2:
                counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return max(counts, key=lambda k: counts[k]) if counts else None


def _split_meta(header: GGUFHeader, key: str) -> int | None:
    value = header.metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def open_gguf_model(path: str | os.PathLike[str]) -> GGUFModel:
    """Validate a .gguf file (or every part of its split set) with the bounded header walk; no tensor is read.

    Raises ModelError (one line naming the file) for a missing part, a damaged or hostile header, a part that does
    not belong to the set, missing blocks, big-endian files, or an architecture patchkit cannot map.
    """
    given = Path(path)
    paths = split_part_paths(given)
    parts: list[GGUFHeader] = []
    for i, part in enumerate(paths):
        if not os.path.lexists(part) and len(paths) == 1:
            raise ModelError(
                f"{part}: GGUF file not found", hint="give the path of a .gguf file", data={"path": str(part)}
            )
        if not os.path.lexists(part):
            raise ModelError(
                f"{part}: part {i + 1} of the split set {given.name} is missing",
                hint="download every part of the split set into one directory",
                data={"path": str(part)},
            )
        real, size = check_gguf_file(part)
        header = scan_gguf_header(part, real=real, size=size)
        if header.big_endian:
            raise ModelError(
                f"{part}: a big-endian GGUF; patchkit edits little-endian files only",
                hint="convert it with llama.cpp on a little-endian machine",
                data={"path": str(part)},
            )
        if len(paths) > 1:
            no, count = _split_meta(header, "split.no"), _split_meta(header, "split.count")
            if no != i or count != len(paths):
                raise ModelError(
                    f"{part}: its split metadata says part {no} of {count}, not part {i} of {len(paths)}",
                    hint="the split set is mixed up: download its parts again",
                    data={"path": str(part)},
                )
        parts.append(header)
    first = parts[0]
    check_blocks(first, tuple(parts) if len(parts) > 1 else ())
    if len(parts) > 1:
        total = _split_meta(first, "split.tensors.count")
        found = sum(len(p.tensors) for p in parts)
        if total is not None and total != found:
            raise ModelError(
                f"{given}: split.tensors.count is {total}, the parts hold {found} tensors",
                hint="a part is from another split set",
                data={"path": str(given)},
            )
    arch = first.architecture or ""
    if arch not in GGUF_ARCHITECTURES:
        raise ModelError(
            f"{given}: general.architecture {arch!r} is not one patchkit maps recipe units onto "
            f"(known: {', '.join(sorted(GGUF_ARCHITECTURES))})",
            data={"path": str(given)},
        )
    tensors: dict[str, tuple[int, GGUFTensor]] = {}
    for i, header in enumerate(parts):
        for t in header.tensors:
            if t.name in tensors:
                raise ModelError(f"{header.path}: tensor {t.name!r} is also in another part of the split set")
            tensors[t.name] = (i, t)
    blocks = first.metadata[f"{arch}.block_count"]
    return GGUFModel(given, tuple(parts), GGUF_ARCHITECTURES[arch], arch, int(blocks), tensors)


@dataclass(frozen=True)
class GGUFTarget:
    """Rows `first_row .. first_row + rows - 1` of `tensor` (each `row_elems` values), all multiplied by a factor."""

    tensor: str
    part: int
    type_name: str
    first_row: int
    rows: int
    row_elems: int
    row_bytes: int
    start: int  # absolute byte offset of the first row in its part
    what: str  # e.g. "row 17 of blk.3.ffn_up.weight"

    @property
    def end(self) -> int:
        return self.start + self.rows * self.row_bytes


def _rows(model: GGUFModel, name: str, first: int, count: int, what: str) -> GGUFTarget:
    import gguf

    part, t = model.tensors[name]
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
    ne0 = t.shape[0] if t.shape else 1
    row_bytes = ne0 // block * size
    return GGUFTarget(name, part, t.type_name, first, count, ne0, row_bytes, t.start + first * row_bytes, what)


def _dims(t: GGUFTensor) -> tuple[int, int, int]:
    shape = tuple(t.shape) + (1, 1, 1)
    return shape[0], shape[1], shape[2]


def gguf_targets(model: GGUFModel, edit: Any) -> list[GGUFTarget]:
    """Where a recipe edit lives in the GGUF; RecipeError naming the edit and the tensor when it cannot."""
    where = getattr(edit, "where", "") or "recipe"
    layer, index = edit.layer, edit.index
    if not 0 <= layer < model.block_count:
        raise RecipeError(
            f"{where}: layer {layer} is out of range: {model.path.name} has {model.block_count} blocks "
            f"(0–{model.block_count - 1})"
        )
    blk = f"blk.{layer}"
    if edit.kind == "neuron":
        name = f"{blk}.ffn_up.weight"
        found = model.tensor(name)
        if found is None:
            raise RecipeError(
                f"{where}: tensor {name} is not in {model.path.name}",
                hint="this GGUF has no separate ffn_up for that block; check the recipe's layer",
            )
        ne0, n_ff, _ = _dims(found[1])
        if index >= n_ff:
            raise RecipeError(
                f"{where}: neuron {index} is out of range for layer {layer}: {name} has {n_ff} rows (0–{n_ff - 1})",
                data={"tensor": name},
            )
        return [_rows(model, name, index, 1, f"row {index} of {name}")]
    # expert
    scale = f"{blk}.ffn_down_exps.scale"
    fused, up, down = f"{blk}.ffn_gate_up_exps.weight", f"{blk}.ffn_up_exps.weight", f"{blk}.ffn_down_exps.weight"
    if edit.tensor == "down_proj":
        candidates = [down]
    else:
        candidates = [scale, fused, up]
    present = [n for n in candidates if model.tensor(n) is not None]
    if not present:
        raise RecipeError(
            f"{where}: layer {layer} has no experts in {model.path.name} (none of {', '.join(candidates)})",
            hint="use a neuron edit, or pick an MoE layer",
        )
    name = present[0]
    t = model.tensors[name][1]
    ne0, ne1, ne2 = _dims(t)
    n_experts = ne0 if name == scale else ne2
    if index >= n_experts:
        raise RecipeError(
            f"{where}: expert {index} is out of range for layer {layer}: {name} has {n_experts} experts "
            f"(0–{n_experts - 1})",
            data={"tensor": name},
        )
    if name == scale:
        return [_rows_of_elements(model, name, index)]
    if name == fused:
        if ne1 % 2:
            raise RecipeError(f"{where}: {name} has an odd number of rows ({ne1}); it is not a fused gate/up tensor")
        half = ne1 // 2
        return [_rows(model, name, index * ne1 + half, half, f"the up rows of expert {index} in {name}")]
    return [_rows(model, name, index * ne1, ne1, f"expert {index}'s slab of {name}")]


def _rows_of_elements(model: GGUFModel, name: str, index: int) -> GGUFTarget:
    """Element `index` of a 1-D unquantized tensor, as a one-element row."""
    part, t = model.tensors[name]
    if t.type_name not in ("F32", "F16", "BF16"):
        raise RecipeError(f"{name} is {t.type_name}; patchkit expects an F32/F16/BF16 per-expert scale there")
    size = (t.end - t.start) // max(1, t.shape[0] if t.shape else 1)
    return GGUFTarget(name, part, t.type_name, index, 1, 1, size, t.start + index * size, f"element {index} of {name}")
