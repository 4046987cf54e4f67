"""`edit_rows` on every ggml block type patchkit edits, checked against gguf-py's own de-quantizers.

The claim under test: editing only a block's scale fields multiplies the whole block by f, exactly for -1, 0
and powers of two, and within the fp16 rounding of the new scale for any other factor, while every quant bit
stays as it was. Random quant bytes make the check independent of how a quantizer would choose them.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf_builders import random_rows, read_tensors, write_gguf

from patchkit.edit.gguf_blocks import FORMATS, BlockEditError, edit_rows, factor_problem

ALL = list(FORMATS)
BLOCK_TYPES = [t for t in ALL if FORMATS[t].kind != "element"]
FP16_SCALED = [t for t in ALL if FORMATS[t].kind in ("fp16", "iq1m")]
POW2_ONLY = [t for t in ALL if FORMATS[t].exact_factors_only]
ROWS = 4

#: (op, factor) pairs whose result is exactly f x the block for every type (when no scale leaves the normal range)
EXACT = [("invert", -1.0), ("zero", 0.0), ("scale", 2.0), ("scale", 0.5), ("scale", -2.0), ("scale", -1.0)]
ROUNDED = [("scale", 3.0), ("scale", -0.8)]


def _ne0(type_name: str) -> int:
    return max(256, FORMATS[type_name].block_elems)


def _rows(type_name: str, seed: int = 0) -> np.ndarray:
    return random_rows(type_name, ROWS, _ne0(type_name), np.random.default_rng(seed))


def _deq(type_name: str, raw: np.ndarray) -> np.ndarray:
    """float32 values of `raw` (shape (rows, row_bytes)), shape (rows, ne0)."""
    fmt = FORMATS[type_name]
    if fmt.kind == "element":
        if type_name == "BF16":
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return raw.view({"F32": np.float32, "F16": np.float16}[type_name]).astype(np.float32)
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])


def _edit(type_name: str, raw: np.ndarray, op: str, factor: float) -> np.ndarray:
    out = edit_rows(type_name, raw.reshape(-1), op, factor)
    assert out.dtype == np.uint8 and out.size == raw.size
    return out.reshape(raw.shape)


def _scale_parts(type_name: str, raw: np.ndarray) -> list[np.ndarray]:
    """The block values split by scale field: for `d*q - m*s` types, [d*q, -m*s] (each field alone, the other
    zeroed), else [the values]. The fp16 rounding of each field bounds the error of its own part."""
    fmt = FORMATS[type_name]
    if fmt.kind != "fp16" or len(fmt.scales) == 1:
        return [_deq(type_name, raw)]
    parts = []
    for keep in fmt.scales:
        alone = raw.copy()
        blocks = alone.reshape(-1, fmt.block_bytes)
        for off in fmt.scales:
            if off != keep:
                blocks[:, off : off + 2] = 0
        parts.append(_deq(type_name, alone))
    return parts


# --- exact factors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,factor", EXACT, ids=[f"{o}{f:g}" for o, f in EXACT])
@pytest.mark.parametrize("type_name", ALL)
def test_exact_factors_multiply_every_value(type_name, op, factor):
    """-1, 0 and ±2^k: the de-quantized edit is bit for bit f x the original (F16 halving aside, below)."""
    raw = _rows(type_name)
    before = raw.copy()
    x = _deq(type_name, raw)
    y = _deq(type_name, _edit(type_name, raw, op, factor))
    assert np.array_equal(raw, before), "edit_rows modified its input"
    want = np.float32(factor) * x
    if type_name == "F16" and factor == 0.5:
        # half of an fp16 subnormal is not always an fp16 value: exact where the result stays normal
        normal = np.abs(want) >= 2.0**-14
        assert np.array_equal(y[normal], want[normal])
        assert np.all(np.abs(y - want)[~normal] <= 2.0**-25)
    else:
        assert np.array_equal(y, want), f"{type_name} {op} x{factor:g} is not exact"
    if op == "zero":
        assert not np.any(y)
    else:
        assert np.any(y != x)  # the edit did something


# --- rounded factors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [3.0, -0.8])
@pytest.mark.parametrize("type_name", [t for t in ALL if t not in POW2_ONLY])
def test_other_factors_within_fp16_rounding_of_the_scale(type_name, factor):
    """x3 and x-0.8: each scale field becomes fp16(d·f), off from d·f by at most 2^-11 relative (round to
    nearest). So per block |y - f·x| ≤ 2^-10·|f|·Σ_fields max|part of the block from that field| (2^-10: a
    factor 2 of margin for float32 rounding inside the de-quantizer), the fields' parts taken separately so
    that a d·q - m·s block whose two terms cancel is still bounded by its terms. Element types round each
    value: F16 2^-11, BF16 2^-8 relative (+ 2^-25 absolute for fp16 subnormals); F32 exact."""
    raw = _rows(type_name, seed=1)
    x = _deq(type_name, raw)
    y = _deq(type_name, _edit(type_name, raw, "scale", factor))
    want = np.float32(factor) * x
    err = np.abs(y - want)
    fmt = FORMATS[type_name]
    if fmt.kind == "element":
        rel = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8}[type_name]
        assert np.all(err <= rel * np.abs(want) + (2.0**-25 if type_name == "F16" else 0.0))
        return
    per_block = lambda a: a.reshape(-1, fmt.block_elems)  # noqa: E731 - blocks follow each other along a row
    bound = sum(np.abs(per_block(p)).max(axis=1) for p in _scale_parts(type_name, raw))
    bound = 2.0**-10 * abs(factor) * bound + 1e-12
    assert np.all(per_block(err).max(axis=1) <= bound), f"{type_name} x{factor:g}: error beyond fp16 rounding"
    # and the rounding is really there to bound: the result is not merely f x the original by accident
    assert np.any(y)


@pytest.mark.parametrize("factor", [3.0, -0.8, 0.3, float("inf")])
@pytest.mark.parametrize("type_name", POW2_ONLY)
def test_power_of_two_scales_refuse_other_factors(type_name, factor):
    """MXFP4 (E8M0) and NVFP4 (UE4M3) scales hold only powers of two: anything else would need requantizing."""
    with pytest.raises(BlockEditError, match="powers of two") as info:
        edit_rows(type_name, _rows(type_name).reshape(-1), "scale", factor)
    assert "\n" not in str(info.value)
    assert "powers of two" in (factor_problem(type_name, "scale", factor) or "")
    assert factor_problem(type_name, "scale", -4.0) is None
    assert factor_problem(type_name, "invert", -1.0) is None


# --- only the scale fields change --------------------------------------------------------------------------


_FIELD_CASES = [
    (t, op, f)
    for t in BLOCK_TYPES
    for op, f in EXACT + ROUNDED
    if not (FORMATS[t].exact_factors_only and (op, f) in ROUNDED)
]


@pytest.mark.parametrize("type_name,op,factor", _FIELD_CASES, ids=[f"{t}-{o}{f:g}" for t, o, f in _FIELD_CASES])
def test_only_scale_fields_change(type_name, op, factor):
    """Every byte outside the scale fields is the original byte: no quant bit is rewritten. MXFP4/NVFP4 have
    unsigned scales, so invert and zero act on their 4-bit payload instead: exactly the sign bits (^0x88) or
    all of it (0), and a ±2^k scale touches only the scale bytes (plus the sign bits when negative)."""
    fmt = FORMATS[type_name]
    raw = _rows(type_name, seed=2)
    a = raw.reshape(-1, fmt.block_bytes)
    b = _edit(type_name, raw, op, factor).reshape(-1, fmt.block_bytes)
    if fmt.kind == "fp16":
        fixed = np.ones(fmt.block_bytes, dtype=bool)
        for off in fmt.scales:
            fixed[off : off + 2] = False
        assert np.array_equal(a[:, fixed], b[:, fixed])
        assert not np.array_equal(a[:, ~fixed], b[:, ~fixed])
    elif fmt.kind == "iq1m":
        # qs, qh and the low 12 bits of each of the 4 uint16 scales stay; d lives in their top nibbles
        assert np.array_equal(a[:, :48], b[:, :48])
        sa, sb = a[:, 48:].copy().view("<u2"), b[:, 48:].copy().view("<u2")
        assert np.array_equal(sa & 0x0FFF, sb & 0x0FFF)
        assert not np.array_equal(sa, sb)
    else:
        n_scale = 1 if fmt.kind == "mxfp4" else 4
        payload_a, payload_b = a[:, n_scale:], b[:, n_scale:]
        if op == "zero":
            assert not np.any(payload_b)
            assert np.array_equal(a[:, :n_scale], b[:, :n_scale])
        elif factor < 0:
            assert np.array_equal(payload_b, payload_a ^ np.uint8(0x88))
        else:
            assert np.array_equal(payload_a, payload_b)
        assert np.array_equal(a[:, :n_scale], b[:, :n_scale]) == (abs(factor) in (0.0, 1.0))


# --- refusals ----------------------------------------------------------------------------------------------


def _set_first_scale(type_name: str, raw: np.ndarray, value: float) -> None:
    """Set the first scale field of block 0 of `raw` (in place) to `value`."""
    fmt = FORMATS[type_name]
    blocks = raw.reshape(-1, fmt.block_bytes)
    d = np.array([value], dtype=np.float16).view(np.uint16)[0]
    if fmt.kind == "iq1m":
        sc = blocks[0, 48:56].copy().view("<u2")
        for i in range(4):
            sc[i] = (sc[i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        blocks[0, 48:56] = sc.view(np.uint8)
    else:
        blocks[0, fmt.scales[0] : fmt.scales[0] + 2] = np.array([d], dtype="<u2").view(np.uint8)


@pytest.mark.parametrize("type_name", FP16_SCALED)
def test_scale_field_overflow_is_refused(type_name):
    """A scale 30000 x3 = 90000 is past fp16's 65504: the block would become inf, not 3x; refused."""
    raw = _rows(type_name, seed=3)
    _set_first_scale(type_name, raw, 30000.0)
    with pytest.raises(BlockEditError, match="overflow") as info:
        edit_rows(type_name, raw.reshape(-1), "scale", 3.0)
    assert "\n" not in str(info.value)
    edit_rows(type_name, raw.reshape(-1), "scale", 2.0)  # 60000 still fits


@pytest.mark.parametrize("type_name,value", [("F16", 30000.0), ("BF16", 3e38), ("F32", 3e38)])
def test_element_overflow_is_refused(type_name, value):
    """The same for unquantized rows: an element that would become inf is refused."""
    raw = _rows(type_name, seed=3)
    flat = raw.reshape(-1).view({"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[type_name])
    if type_name == "BF16":
        flat[0] = np.array([value], dtype=np.float32).view(np.uint32)[0] >> 16
    else:
        flat[0] = value
    with pytest.raises(BlockEditError, match="overflow"):
        edit_rows(type_name, raw.reshape(-1), "scale", 3.0)


@pytest.mark.parametrize("type_name", FP16_SCALED)
def test_scale_field_underflow_is_refused(type_name):
    """0.002..0.05 x 1e-8 rounds to 0 in fp16: that would zero the blocks, not scale them; refused with a
    pointer to `op: zero`."""
    raw = _rows(type_name, seed=4)
    with pytest.raises(BlockEditError, match="rounds to 0") as info:
        edit_rows(type_name, raw.reshape(-1), "scale", 1e-8)
    assert "op: zero" in str(info.value)


@pytest.mark.parametrize("type_name,factor", [("MXFP4", 2.0**-120), ("MXFP4", 2.0**130), ("NVFP4", 2.0**-20)])
def test_power_of_two_scale_out_of_range_is_refused(type_name, factor):
    """An E8M0 exponent leaving 0..254, or a UE4M3 scale with no code for the result, is refused."""
    with pytest.raises(BlockEditError):
        edit_rows(type_name, _rows(type_name).reshape(-1), "scale", factor)


def test_unknown_type_and_partial_blocks_are_refused():
    """Types with no editable scale (Q8_1, I8) are named by factor_problem and refused; so are partial blocks."""
    for t in ("Q8_1", "I8", "Q8_K"):
        assert "no scale field" in (factor_problem(t, "invert", -1.0) or "")
        with pytest.raises(ValueError):
            edit_rows(t, b"\0" * 36, "invert", -1.0)
    with pytest.raises(ValueError, match="whole"):
        edit_rows("Q8_0", b"\0" * 35, "invert", -1.0)


# --- the gguf writer agrees ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_name", ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0", "MXFP4"]
)
def test_writer_and_edit_rows_agree_on_a_whole_tensor(tmp_path, type_name):
    """gguf-py quantizes 2x and x/2 with the same quants and a scale times 2 (resp. /2): so a tensor quantized
    from 2·w and written by GGUFWriter must be, byte for byte, edit_rows(x2) of the tensor written from w."""
    qt = gguf.GGMLQuantizationType[type_name]
    w = np.random.default_rng(5).standard_normal((16, 256)).astype(np.float32)
    w = np.copysign(np.maximum(np.abs(w), 2.0**-12), w)  # no fp16 subnormal: halving one rounds twice
    tensors = {}
    for name, f in (("base", 1.0), ("twice", 2.0), ("half", 0.5)):
        q = gguf.quants.quantize(np.float32(f) * w, qt)
        tensors[name] = (type_name, np.ascontiguousarray(q).view(np.uint8), (16, 256))
    path = write_gguf(tmp_path / "w.gguf", "llama", 1, tensors)
    back = read_tensors(path)
    base = np.frombuffer(back["base"][1], dtype=np.uint8)
    assert back["base"][0] == type_name
    assert np.array_equal(edit_rows(type_name, base, "scale", 2.0), np.frombuffer(back["twice"][1], dtype=np.uint8))
    assert np.array_equal(edit_rows(type_name, base, "scale", 0.5), np.frombuffer(back["half"][1], dtype=np.uint8))
