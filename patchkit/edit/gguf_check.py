"""Compare GGUF files: `verify` (is B exactly the recipe applied to A?) and `diff` (which rows changed, as what op).

verify regenerates, chunk by chunk, what apply writes (the source's tensor data with the planned rows written
over it) and compares it with the patched file's data; the headers must be the source's entries in the same
order, byte for byte, plus `patchkit.*` entries whose recipe is the one given and whose source sha256 is the
source's (computed on the same pass). Every byte is read; nothing is trusted from a cache.

diff compares tensor by tensor (by name: the two headers may differ in size, so offsets differ). A changed
tensor is cut into rows (ne0 values, whole blocks); each changed row is explained bit-exactly: it is an
inversion, a zeroing or a scaling by c when `gguf_blocks.edit_rows` applied to A's row gives B's row byte for
byte (c is tried from the least-squares ratio of the de-quantized rows, rounded to 1-6 significant digits).
Rows of `ffn_up` are neurons; `ffn_down_exps.scale` elements, and zeroed expert slabs, are experts.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from patchkit._io.progress import Progress
from patchkit.edit.diff import MAX_CLASSIFIED_SLICES, DiffReport, SliceChange, TensorChange
from patchkit.edit.gguf_apply import refuse_journaled
from patchkit.edit.gguf_blocks import BlockEditError, edit_rows, format_of
from patchkit.edit.gguf_plan import PREFIX, plan_gguf, provenance_of
from patchkit.edit.verify import VerifyResult
from patchkit.model.gguf_header import GGUFHeader, GGUFTensor
from patchkit.model.gguf_model import GGUFModel, open_gguf_model

__all__ = ["diff_gguf", "verify_gguf"]

CHUNK = 8 << 20
_BLK = re.compile(
    r"^blk\.(\d+)\.(ffn_up\.weight|ffn_down_exps\.scale|ffn_gate_up_exps\.weight|ffn_up_exps\.weight|ffn_down_exps\.weight)$"
)


def _patched_model(source: GGUFModel, patched: str | os.PathLike[str]) -> GGUFModel:
    p = Path(patched)
    if source.is_split and p.is_dir():
        p = p / source.parts[0].path.name
    return open_gguf_model(p)


def _raw(header: GGUFHeader, upto: int) -> bytes:
    with open(header.real_path, "rb", buffering=0) as fh:
        return os.pread(fh.fileno(), upto, 0)


def _header_difference(src: GGUFHeader, dst: GGUFHeader) -> str | None:
    a, b = _raw(src, src.tensor_info_span[1]), _raw(dst, dst.tensor_info_span[1])
    kv_a = [(k, a[s:e]) for k, s, e in src.kv_spans if not k.startswith(PREFIX)]
    kv_b = [(k, b[s:e]) for k, s, e in dst.kv_spans if not k.startswith(PREFIX)]
    for (ka, ra), (kb, rb) in zip(kv_a, kv_b, strict=False):
        if ka != kb:
            return f"metadata entry {kb!r} where the source has {ka!r}"
        if ra != rb:
            return f"metadata entry {ka!r} differs"
    if len(kv_a) != len(kv_b):
        return f"{len(kv_b)} metadata entries (besides patchkit.*), the source has {len(kv_a)}"
    if a[src.tensor_info_span[0] : src.tensor_info_span[1]] != b[dst.tensor_info_span[0] : dst.tensor_info_span[1]]:
        return "the tensor-info table differs (names, shapes, types or offsets)"
    if src.size - src.data_offset != dst.size - dst.data_offset:
        return "the tensor data has another length"
    return None


def verify_gguf(
    recipe: Any, *, model: str | os.PathLike[str], patched: str | os.PathLike[str], progress: Progress | None = None
) -> VerifyResult:
    """Check that PATCHED (a .gguf, or the directory of a split set) is exactly `apply_gguf(recipe, model)`,
    byte for byte, apart from the creation time inside its provenance entry."""
    from patchkit.edit.apply import read_recipe

    recipe_obj, text, _ = read_recipe(recipe)
    source = open_gguf_model(model)
    target = _patched_model(source, patched)
    refuse_journaled(source)
    refuse_journaled(target)
    plan = plan_gguf(recipe_obj, source)
    result = VerifyResult(ok=True, model_dir=source.path, patched_dir=target.path, edits=len(plan.edits))

    def fail(part: GGUFHeader, offset: int | None, tensor: str | None, reason: str) -> VerifyResult:
        result.ok = False
        result.first_difference = {"file": part.path.name, "offset": offset, "tensor": tensor, "reason": reason}
        return result

    if len(target.parts) != len(source.parts):
        return fail(target.parts[0], None, None, f"{len(target.parts)} parts, the source has {len(source.parts)}")
    prov = provenance_of(target.parts[0])
    if prov is None:
        return fail(target.parts[0], None, None, "no patchkit.* provenance metadata (not written by patchkit apply)")
    if (prov.get("recipe") or {}).get("sha256") != hashlib.sha256(text.encode("utf-8")).hexdigest():
        return fail(target.parts[0], None, None, "its patchkit.recipe is not this recipe")
    digests: list[str] = []
    for i, (src, dst) in enumerate(zip(source.parts, target.parts, strict=True)):
        result.files_checked += 1
        problem = _header_difference(src, dst)
        if problem:
            return fail(dst, None, None, problem)
        if i > 0 and provenance_of(dst) is not None:
            return fail(dst, None, None, "patchkit.* metadata in a part other than the first")
        h = hashlib.sha256(_raw(src, src.data_offset))
        edits = plan.edits_of(i)
        length = src.size - src.data_offset
        with open(src.real_path, "rb", buffering=0) as fa, open(dst.real_path, "rb", buffering=0) as fb:
            for pos in range(0, length, CHUNK):
                n = min(CHUNK, length - pos)
                a = bytearray(os.pread(fa.fileno(), n, src.data_offset + pos))
                b = os.pread(fb.fileno(), n, dst.data_offset + pos)
                h.update(a)
                lo, hi = src.data_offset + pos, src.data_offset + pos + n
                for e in edits:
                    s, t = max(lo, e.target.start), min(hi, e.target.end)
                    if s < t:
                        a[s - lo : t - lo] = e.after[s - e.target.start : t - e.target.start]
                result.bytes_compared += n
                if a != b:
                    at = int(np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))[0]) + lo
                    tensor = next((t.name for t in src.tensors if t.start <= at < t.end), None)
                    return fail(dst, at - src.data_offset + dst.data_offset, tensor, "tensor bytes differ")
                if progress:
                    progress(dst.path.name, pos + n, length)
        digests.append(h.hexdigest())
    recorded = prov.get("source_sha256") or []
    if recorded != digests:
        return fail(target.parts[0], None, None, "patchkit.source.sha256 is not the sha256 of the source given")
    return result


# --- diff ----------------------------------------------------------------------------------------------------


def _row_geometry(t: GGUFTensor) -> tuple[int, int]:
    """(values per row, bytes per row) of a tensor."""
    fmt = format_of(t.type_name)
    ne0 = t.shape[0] if t.shape else 1
    if fmt is None:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
    else:
        block, size = fmt.block_elems, fmt.block_bytes
    return ne0, ne0 // block * size


def _dequant(raw: bytes, t: GGUFTensor) -> np.ndarray:
    import gguf

    return np.asarray(
        gguf.quants.dequantize(np.frombuffer(raw, dtype=np.uint8), gguf.GGMLQuantizationType(t.ggml_type)),
        dtype=np.float64,
    ).reshape(-1)


def _classify(t: GGUFTensor, ra: bytes, rb: bytes, va: np.ndarray, vb: np.ndarray) -> tuple[str, float | None]:
    """inverted | zeroed | scaled (with c) when edit_rows reproduces rb from ra exactly, else arbitrary (`va`, `vb`:
    the two rows de-quantized, where c is estimated from)."""
    if format_of(t.type_name) is None:
        return "arbitrary", None
    a = np.frombuffer(ra, dtype=np.uint8)
    for op, factor in (("invert", -1.0), ("zero", 0.0)):
        try:
            if edit_rows(t.type_name, a, op, factor).tobytes() == rb:
                return ("inverted" if op == "invert" else "zeroed"), None
        except BlockEditError:
            pass
    denom = float(np.dot(va, va))
    if denom == 0 or not np.isfinite(denom):
        return "arbitrary", None
    ratio = float(np.dot(va, vb)) / denom
    if not np.isfinite(ratio) or ratio == 0:
        return "arbitrary", None
    for digits in range(1, 7):
        c = float(f"{ratio:.{digits}g}")
        if c in (0.0, 1.0, -1.0):
            continue
        try:
            if edit_rows(t.type_name, a, "scale", c).tobytes() == rb:
                return "scaled", c
        except BlockEditError:
            continue
    return "arbitrary", None


def _role(name: str) -> tuple[int, str] | None:
    m = _BLK.match(name)
    if m is None:
        return None
    kind = m.group(2)
    role = {
        "ffn_up.weight": "mlp.up_proj",
        "ffn_down_exps.scale": "router.per_expert_scale",
        "ffn_gate_up_exps.weight": "experts.up_rows",
        "ffn_up_exps.weight": "experts.up_rows",
        "ffn_down_exps.weight": "experts.down_proj",
    }[kind]
    return int(m.group(1)), role


def _changed_rows(
    ha: GGUFHeader, hb: GGUFHeader, ta: GGUFTensor, tb: GGUFTensor, row_bytes: int
) -> tuple[list[int], int]:
    """Indices of rows whose bytes differ, and how many bytes were compared."""
    rows: list[int] = []
    per = max(1, CHUNK // max(1, row_bytes))
    total = ta.end - ta.start
    n_rows = total // row_bytes if row_bytes else 0
    with open(ha.real_path, "rb", buffering=0) as fa, open(hb.real_path, "rb", buffering=0) as fb:
        for first in range(0, n_rows, per):
            count = min(per, n_rows - first)
            n = count * row_bytes
            a = os.pread(fa.fileno(), n, ta.start + first * row_bytes)
            b = os.pread(fb.fileno(), n, tb.start + first * row_bytes)
            if a == b:
                continue
            va = np.frombuffer(a, np.uint8).reshape(count, row_bytes)
            vb = np.frombuffer(b, np.uint8).reshape(count, row_bytes)
            rows.extend(int(r) + first for r in np.flatnonzero(np.any(va != vb, axis=1)))
    return rows, total


def _read_row(header: GGUFHeader, t: GGUFTensor, row: int, row_bytes: int, count: int = 1) -> bytes:
    with open(header.real_path, "rb", buffering=0) as fh:
        return os.pread(fh.fileno(), row_bytes * count, t.start + row * row_bytes)


def diff_gguf(a: str | os.PathLike[str], b: str | os.PathLike[str], *, progress: Progress | None = None) -> DiffReport:
    """Compare GGUF A with GGUF B (B the patched one) tensor by tensor; explain changed rows as recipe ops."""
    started = time.perf_counter()
    ma, mb = open_gguf_model(a), open_gguf_model(b)
    refuse_journaled(ma)
    refuse_journaled(mb)
    report = DiffReport(a=ma.path, b=mb.path)
    names_a, names_b = set(ma.tensors), set(mb.tensors)
    report.added = sorted(names_b - names_a)
    report.removed = sorted(names_a - names_b)
    for key in _metadata_differences(ma, mb):
        report.other_files_changed.append(f"metadata {key}")
    common = [n for n in ma.tensors if n in names_b]
    done, total = 0, sum(ma.tensors[n][1].end - ma.tensors[n][1].start for n in common)
    for name in common:
        (pa, ta), (pb, tb) = ma.tensors[name], mb.tensors[name]
        ha, hb = ma.parts[pa], mb.parts[pb]
        if ta.type_name != tb.type_name or ta.shape != tb.shape:
            report.reshaped.append(
                {
                    "tensor": name,
                    "a": {"dtype": ta.type_name, "shape": list(ta.shape)},
                    "b": {"dtype": tb.type_name, "shape": list(tb.shape)},
                }
            )
            continue
        ne0, row_bytes = _row_geometry(ta)
        if name.endswith(".ffn_down_exps.scale") and len(ta.shape) == 1:  # one value per expert: each is a "row"
            ne0, row_bytes = 1, row_bytes // max(1, ta.shape[0])
        rows, nbytes = _changed_rows(ha, hb, ta, tb, row_bytes)
        report.bytes_compared += nbytes
        done += nbytes
        if progress:
            progress("diff", done, total)
        if not rows:
            report.identical_tensors += 1
            continue
        report.changed.append(_explain(name, ha, hb, ta, tb, ne0, row_bytes, rows))
    report.seconds = time.perf_counter() - started
    return report


def _metadata_differences(ma: GGUFModel, mb: GGUFModel) -> list[str]:
    out: list[str] = []
    for ha, hb in zip(ma.parts, mb.parts, strict=False):
        ra, rb = _raw(ha, ha.tensor_info_span[0]), _raw(hb, hb.tensor_info_span[0])
        kv_a = {k: ra[s:e] for k, s, e in ha.kv_spans if not k.startswith(PREFIX)}
        kv_b = {k: rb[s:e] for k, s, e in hb.kv_spans if not k.startswith(PREFIX)}
        out.extend(sorted(k for k in kv_a.keys() | kv_b.keys() if kv_a.get(k) != kv_b.get(k)))
    return out


def _explain(
    name: str, ha: GGUFHeader, hb: GGUFHeader, ta: GGUFTensor, tb: GGUFTensor, ne0: int, row_bytes: int, rows: list[int]
) -> TensorChange:
    found = _role(name)
    layer, role = found if found else (None, None)
    change = TensorChange(
        tensor=name,
        file_a=ha.path.name,
        file_b=hb.path.name,
        dtype=ta.type_name,
        shape=tuple(ta.shape),
        layer=layer,
        role=role,
        axis=None,
    )
    if role in ("experts.up_rows", "experts.down_proj"):
        _explain_experts(change, ha, hb, ta, tb, ne0, row_bytes, rows)
        return change
    for row in rows[: MAX_CLASSIFIED_SLICES + 1]:
        if len(change.slices) >= MAX_CLASSIFIED_SLICES:
            change.slices_truncated = True
            break
        ra, rb = _read_row(ha, ta, row, row_bytes), _read_row(hb, tb, row, row_bytes)
        va, vb = _dequant(ra, ta), _dequant(rb, tb)
        kind, factor = _classify(ta, ra, rb, va, vb)
        _add_slice(change, row, kind, factor, va, vb)
    if role is None:
        change.slices_truncated = change.slices_truncated or not change.slices
    return change


def _add_slice(
    change: TensorChange, index: int, kind: str, factor: float | None, va: np.ndarray, vb: np.ndarray
) -> None:
    delta = np.abs(vb - va)
    changed = int(np.count_nonzero(delta))
    max_abs = float(delta.max()) if delta.size else 0.0
    scale = float(np.abs(va).max()) if va.size else 0.0
    max_rel = max_abs / scale if scale else (float("inf") if max_abs else 0.0)
    change.slices.append(SliceChange(index, kind, factor, changed, max_abs, max_rel))
    change.changed_elements += changed
    change.max_abs = max(change.max_abs, max_abs)
    change.max_rel = max(change.max_rel, max_rel)


def _explain_experts(
    change: TensorChange,
    ha: GGUFHeader,
    hb: GGUFHeader,
    ta: GGUFTensor,
    tb: GGUFTensor,
    ne0: int,
    row_bytes: int,
    rows: list[int],
) -> None:
    """Group changed rows by expert: an expert counts as suppressed when exactly its up rows (fused: the second
    half of its slab; split up / down: the whole slab) are zeroed and nothing else of it changed."""
    shape = tuple(ta.shape) + (1, 1, 1)
    per_expert = shape[1]
    lo_rel = per_expert // 2 if ".ffn_gate_up_exps." in change.tensor else 0
    experts = sorted({r // per_expert for r in rows})
    for e in experts[:MAX_CLASSIFIED_SLICES]:
        mine = {r - e * per_expert for r in rows if r // per_expert == e}
        ra = _read_row(ha, ta, e * per_expert, row_bytes, per_expert)
        rb = _read_row(hb, tb, e * per_expert, row_bytes, per_expert)
        va, vb = _dequant(ra, ta), _dequant(rb, tb)
        up = slice(lo_rel * ne0, per_expert * ne0)
        zeroed = min(mine) >= lo_rel and not np.any(vb[up]) and np.array_equal(va[: lo_rel * ne0], vb[: lo_rel * ne0])
        _add_slice(change, e, "zeroed" if zeroed else "arbitrary", None, va, vb)
    change.slices_truncated = len(experts) > MAX_CLASSIFIED_SLICES
