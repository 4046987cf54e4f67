"""Scale whole rows of a quantized GGUF tensor by editing only their blocks' scale fields: no requantization.

Why this is exact: every ggml block type de-quantizes as `y = d * q(...)` or `y = d * q(...) - m * s(...)`, where
`d` and the min `m` are the block's scale fields and `q`/`s` depend only on the quant bits. Multiplying `d` (and
`m`) by f multiplies the whole block by f, and leaves every quant bit as it was. So an edit that scales a row
(a neuron's `ffn_up` row, an expert's slab) rewrites a few bytes per block:

- `d` only (fp16): Q4_0, Q5_0, Q8_0, Q3_K, Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ4_NL, IQ4_XS,
  TQ1_0, TQ2_0;
- `d` and the min (fp16, both scaled: negating `d` alone would be wrong): Q4_1, Q5_1, Q2_K, Q4_K, Q5_K;
- IQ1_M keeps its fp16 `d` in the top nibbles of four uint16 scales: reassembled, scaled, split back;
- MXFP4 and NVFP4 have unsigned power-of-two-ish scales (E8M0, UE4M3): invert flips the sign bit of every 4-bit
  value (E2M1 is sign-magnitude), zero clears the values, and a scale must be ±2^k and land exactly on a scale
  code, else it is refused;
- F32, F16 and BF16 rows are edited element-wise with the same arithmetic as safetensors (`edit.bytes`).

Invert (x -1) and zero are exact for every type; a power of two is exact unless a scale field overflows or leaves
the normal range; any other factor is the fp16 rounding of `d * f` (computed in float32, rounded to nearest even,
as `edit.bytes` does for F16 weights). A factor that overflows a scale field, or flushes a nonzero scale to
zero, is refused: the edit would not be what the recipe says. Block layouts follow ggml's `ggml-common.h`; the
tests check every type against `gguf.quants.dequantize`. Hand-written because no library edits GGUF scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from patchkit.edit.bytes import RAW_DTYPES, apply_op

__all__ = ["FORMATS", "BlockEditError", "BlockFormat", "edit_rows", "factor_problem", "format_of"]

Kind = Literal["element", "fp16", "iq1m", "mxfp4", "nvfp4"]


class BlockEditError(ValueError):
    """The edit cannot be written exactly on these bytes (the message says why; callers add the tensor name)."""


@dataclass(frozen=True)
class BlockFormat:
    """Where a block type keeps the fields an edit multiplies."""

    name: str
    block_elems: int
    block_bytes: int
    kind: Kind
    #: byte offsets (within a block) of the fp16 fields multiplied by the factor
    scales: tuple[int, ...] = ()

    @property
    def exact_factors_only(self) -> bool:
        """True where only ±2^k (and 0) can be written: the scales are not signed floats."""
        return self.kind in ("mxfp4", "nvfp4")


def _f(name: str, elems: int, size: int, kind: Kind, *scales: int) -> BlockFormat:
    return BlockFormat(name, elems, size, kind, tuple(scales))


#: Every type patchkit edits. Offsets from ggml-common.h (QK_K = 256). Not here: the intermediate types Q8_1 and
#: Q8_K (never stored in model files), Q1_0 and any type `gguf` cannot de-quantize (nothing to test against).
FORMATS: dict[str, BlockFormat] = {
    f.name: f
    for f in (
        _f("F32", 1, 4, "element"),
        _f("F16", 1, 2, "element"),
        _f("BF16", 1, 2, "element"),
        _f("Q4_0", 32, 18, "fp16", 0),
        _f("Q4_1", 32, 20, "fp16", 0, 2),  # d, m
        _f("Q5_0", 32, 22, "fp16", 0),
        _f("Q5_1", 32, 24, "fp16", 0, 2),  # d, m
        _f("Q8_0", 32, 34, "fp16", 0),
        _f("Q2_K", 256, 84, "fp16", 80, 82),  # scales[16] qs[64] d dmin
        _f("Q3_K", 256, 110, "fp16", 108),  # hmask[32] qs[64] scales[12] d
        _f("Q4_K", 256, 144, "fp16", 0, 2),  # d dmin scales[12] qs[128]
        _f("Q5_K", 256, 176, "fp16", 0, 2),  # d dmin scales[12] qh[32] qs[128]
        _f("Q6_K", 256, 210, "fp16", 208),  # ql[128] qh[64] scales[16] d
        _f("IQ2_XXS", 256, 66, "fp16", 0),
        _f("IQ2_XS", 256, 74, "fp16", 0),
        _f("IQ2_S", 256, 82, "fp16", 0),
        _f("IQ3_XXS", 256, 98, "fp16", 0),
        _f("IQ3_S", 256, 110, "fp16", 0),
        _f("IQ1_S", 256, 50, "fp16", 0),
        _f("IQ1_M", 256, 56, "iq1m", 48),  # qs[32] qh[16] scales[4 x u16]: d in their top nibbles
        _f("IQ4_NL", 32, 18, "fp16", 0),
        _f("IQ4_XS", 256, 136, "fp16", 0),
        _f("TQ1_0", 256, 54, "fp16", 52),  # qs[48] qh[4] d
        _f("TQ2_0", 256, 66, "fp16", 64),  # qs[64] d
        _f("MXFP4", 32, 17, "mxfp4", 0),  # e (E8M0) qs[16]
        _f("NVFP4", 64, 36, "nvfp4", 0),  # 4 x UE4M3 scales, qs[32]
    )
}


def format_of(type_name: str) -> BlockFormat | None:
    """The block format of a ggml type name, or None when patchkit cannot edit it without requantizing."""
    return FORMATS.get(type_name)


def _power_of_two(factor: float) -> int | None:
    """k where |factor| = 2**k exactly, else None."""
    mantissa, exponent = math.frexp(abs(factor))
    return exponent - 1 if mantissa == 0.5 else None


def factor_problem(type_name: str, op: str, factor: float) -> str | None:
    """Why `op` (with `factor`) cannot be written on a `type_name` tensor, judged from the type alone; else None."""
    fmt = FORMATS.get(type_name)
    if fmt is None:
        return (
            f"ggml type {type_name} has no scale field patchkit knows how to edit exactly; patchkit never "
            "requantizes: apply the recipe to an F16/BF16 or K-quant GGUF of the model"
        )
    if op == "scale" and fmt.exact_factors_only and (not math.isfinite(factor) or _power_of_two(factor) is None):
        return (
            f"{type_name} block scales are unsigned powers of two: a factor of {factor:g} cannot be written without "
            "requantizing; use ±2^k (e.g. 0.5, 2, -2), or apply it to a GGUF of another type"
        )
    return None


def _fp16_fields(blocks: np.ndarray, offsets: tuple[int, ...], op: str, factor: float) -> None:
    """Apply the op to the fp16 fields at `offsets` of every block (rows of `blocks`), in place."""
    for off in offsets:
        raw = np.ascontiguousarray(blocks[:, off : off + 2]).view("<u2").reshape(-1)
        new = _checked_f16(raw, op, factor)
        blocks[:, off : off + 2] = new.astype("<u2").view(np.uint8).reshape(-1, 2)


def _checked_f16(raw: np.ndarray, op: str, factor: float) -> np.ndarray:
    new = apply_op(raw, "F16", op, factor)
    if op == "scale":
        before = raw.view(np.float16)
        after = new.view(np.float16)
        if np.any(np.isfinite(before) & ~np.isfinite(after)):
            i = int(np.argmax(np.isfinite(before) & ~np.isfinite(after)))
            raise BlockEditError(
                f"scale field {float(before[i]):g} x {factor:g} overflows fp16 (block {i}); use a smaller factor"
            )
        lost = np.isfinite(before) & (np.abs(before) >= 2.0**-14) & (after != 0) & (np.abs(after) < 2.0**-14)
        if np.any(lost):
            i = int(np.argmax(lost))
            raise BlockEditError(
                f"scale field {float(before[i]):g} x {factor:g} falls below fp16's normal range (block {i}) and would "
                "lose precision; use a larger factor, or `op: zero`"
            )
        if np.any((before != 0) & (after == 0)):
            i = int(np.argmax((before != 0) & (after == 0)))
            raise BlockEditError(
                f"scale field {float(before[i]):g} x {factor:g} rounds to 0 in fp16 (block {i}): that would zero the "
                "block, not scale it; use `op: zero` or a larger factor"
            )
    return new


def _iq1m(blocks: np.ndarray, op: str, factor: float) -> None:
    sc = np.ascontiguousarray(blocks[:, 48:56]).view("<u2").reshape(-1, 4).copy()
    shifts = np.array([12, 8, 4, 0], dtype=np.uint16)
    parts = (sc & np.uint16(0xF000)) >> shifts
    d = (parts[:, 0] | parts[:, 1] | parts[:, 2] | parts[:, 3]).astype(np.uint16)
    new = _checked_f16(d, op, factor).astype(np.uint16)
    nibbles = ((new[:, None] >> np.uint16(4) * np.arange(4, dtype=np.uint16)) & np.uint16(0xF)) << np.uint16(12)
    sc = (sc & np.uint16(0x0FFF)) | nibbles.astype(np.uint16)
    blocks[:, 48:56] = sc.astype("<u2").view(np.uint8).reshape(-1, 8)


def _signed_fp4_payload(blocks: np.ndarray, start: int, op: str, factor: float) -> bool:
    """Invert / zero / sign part of a scale on the 4-bit E2M1 payload; True when the magnitude still needs 2^k."""
    if op == "zero":
        blocks[:, start:] = 0
        return False
    if op == "invert" or factor < 0:
        blocks[:, start:] ^= np.uint8(0x88)  # the sign bit of both nibbles
    return op == "scale" and abs(factor) != 1.0


def _mxfp4(blocks: np.ndarray, op: str, factor: float) -> None:
    if not _signed_fp4_payload(blocks, 1, op, factor):
        return
    k = _power_of_two(factor)
    assert k is not None  # factor_problem refused it before
    e = blocks[:, 0].astype(np.int32) + k
    if np.any((e < 0) | (e > 254)):
        raise BlockEditError(
            f"an E8M0 block exponent x {factor:g} leaves the range 2^-128..2^126; use a smaller factor"
        )
    blocks[:, 0] = e.astype(np.uint8)


def _ue4m3_values() -> np.ndarray:
    """The value of every UE4M3 byte as ggml (and `gguf.quants.NVFP4`) reads it: bit 7 is ignored, 0x00 and 0x7F
    are 0 (without the kvalues' factor 1/2, which an edit does not need)."""
    codes = np.arange(256, dtype=np.int32)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    vals = np.where(exp == 0, man * 2.0**-9, (1.0 + man / 8.0) * 2.0 ** (exp - 7.0))
    vals[(codes == 0) | (codes == 0x7F)] = 0.0
    return vals


_UE4M3 = _ue4m3_values()
#: value -> the 7-bit code that holds it (the read-as-zero code 0x7F and the zeros excluded)
_UE4M3_CODE = {float(_UE4M3[c]): c for c in range(1, 0x7F)}


def _nvfp4(blocks: np.ndarray, op: str, factor: float) -> None:
    if not _signed_fp4_payload(blocks, 4, op, factor):
        return
    codes = blocks[:, :4].reshape(-1).astype(np.int32)
    out = codes.copy()
    for i, code in enumerate(codes.tolist()):
        value = float(_UE4M3[code])
        if value == 0.0:
            continue  # a zero scale stays zero whatever the factor
        low = _UE4M3_CODE.get(value * abs(factor))
        new = None if low is None else (code & 0x80) | low
        if new is None or float(_UE4M3[new]) != value * abs(factor):
            raise BlockEditError(
                f"a UE4M3 block scale {value:g} x {abs(factor):g} has no exact code (sub-block {i}); "
                "use a smaller power of two"
            )
        out[i] = new
    blocks[:, :4] = out.astype(np.uint8).reshape(-1, 4)


def _elements(data: np.ndarray, type_name: str, op: str, factor: float) -> np.ndarray:
    raw = data.view(RAW_DTYPES[type_name])
    new = apply_op(raw, type_name, op, factor)
    if op == "scale":
        from patchkit.edit.bytes import to_float32

        before, after = to_float32(raw, type_name), to_float32(new, type_name)
        if np.any(np.isfinite(before) & ~np.isfinite(after)):
            raise BlockEditError(f"x {factor:g} overflows {type_name} for some weights; use a smaller factor")
        if np.any(before != 0) and not np.any(after != 0):
            raise BlockEditError(f"x {factor:g} flushes every nonzero {type_name} weight to 0; use `op: zero`")
    return np.ascontiguousarray(new).view(np.uint8).reshape(-1)


def edit_rows(type_name: str, data: np.ndarray | bytes | bytearray, op: str, factor: float) -> np.ndarray:
    """New bytes of `data` (whole blocks of `type_name`) multiplied by `factor` (`op`: invert, zero, scale).

    The input is not modified. Only scale fields change for block types (every quant bit is kept); element
    types change every element. Raises BlockEditError when the result would not be f x the input (a scale
    field overflows or flushes to zero, a factor MXFP4/NVFP4 cannot hold), and ValueError on a type patchkit
    does not edit or bytes that are not whole blocks.
    """
    fmt = FORMATS.get(type_name)
    if fmt is None:
        raise ValueError(f"ggml type {type_name} is not editable")
    problem = factor_problem(type_name, op, factor)
    if problem:
        raise BlockEditError(problem)
    buf = np.frombuffer(bytes(data), dtype=np.uint8).copy() if not isinstance(data, np.ndarray) else data.copy()
    if buf.size % fmt.block_bytes:
        raise ValueError(f"{buf.size} bytes are not whole {type_name} blocks of {fmt.block_bytes}")
    if op == "suppress":
        op = "zero"
    if op in ("invert", "zero"):
        factor = -1.0 if op == "invert" else 0.0
    if fmt.kind == "element":
        return _elements(buf, type_name, op, factor)
    blocks = buf.reshape(-1, fmt.block_bytes)
    if fmt.kind == "fp16":
        _fp16_fields(blocks, fmt.scales, op, factor)
    elif fmt.kind == "iq1m":
        _iq1m(blocks, op, factor)
    elif fmt.kind == "mxfp4":
        _mxfp4(blocks, op, factor)
    else:
        _nvfp4(blocks, op, factor)
    return buf
