"""Raw-byte edit semantics: bit-exact against torch's arithmetic, selections against brute force,
and streamed shard patching touches exactly the selected bytes."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures.tiny_models import raw_llama_checkpoint

from patchkit.edit.apply import write_patched
from patchkit.edit.bytes import Selection, apply_op, from_float32, to_float32
from patchkit.edit.plan import plan_edits
from patchkit.model.safetensors_io import read_header, read_tensor_bytes

DTYPES = ["BF16", "F16", "F32"]


def _torch_reference(values: np.ndarray, dtype: str, factor: float):
    import torch

    tdt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    t = torch.from_numpy(values).to(tdt)
    raw_t = torch.int16 if dtype != "F32" else torch.int32
    raw = t.view(raw_t).numpy().view(np.uint16 if dtype != "F32" else np.uint32)
    scaled = (t.float() * torch.tensor(factor, dtype=torch.float32)).to(tdt)
    return raw.copy(), scaled.view(raw_t).numpy().view(raw.dtype), (-t).view(raw_t).numpy().view(raw.dtype)


def _hard_values(n: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(1)
    v = (rng.standard_normal(n) * np.logspace(-45, 38, n)).astype(np.float32)
    v[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38]
    return v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", [0.5, 1.7, -3.25, 0.1, 1e30])
def test_scale_is_bit_exact_with_torch(dtype, factor):
    raw, want, _ = _torch_reference(_hard_values(), dtype, factor)
    got = apply_op(raw, dtype, "scale", factor)
    nan = np.isnan(to_float32(want, dtype))
    assert np.array_equal(np.isnan(to_float32(got, dtype)), nan)
    assert np.array_equal(got[~nan], want[~nan])


@pytest.mark.parametrize("dtype", DTYPES)
def test_invert_flips_sign_bits_and_is_an_involution(dtype):
    raw, _, negated = _torch_reference(_hard_values(), dtype, 1.0)
    once = apply_op(raw, dtype, "invert")
    assert np.array_equal(once[1:], negated[1:])  # [0] is NaN: torch may canonicalise its payload
    assert np.array_equal(apply_op(once, dtype, "invert"), raw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_writes_positive_zero_bytes(dtype):
    raw = from_float32(_hard_values(), dtype)
    assert not apply_op(raw, dtype, "zero").any()
    assert not apply_op(raw, dtype, "suppress").any()


def test_bf16_rounding_ties_to_even():
    # 1 + 2^-8 lies exactly between two bf16 values: ties go to the even mantissa (1.0); 1 + 3*2^-8 rounds up.
    vals = np.array([1 + 2**-8, 1 + 3 * 2**-8], dtype=np.float32)
    assert to_float32(from_float32(vals, "BF16"), "BF16").tolist() == [1.0, 1 + 2**-6]


def test_selection_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(400):
        nd = int(rng.integers(1, 4))
        shape = tuple(int(v) for v in rng.integers(1, 9, nd))
        axis = int(rng.integers(0, nd))
        index = int(rng.integers(0, shape[axis]))
        n = int(np.prod(shape))
        want = np.sort(np.take(np.arange(n).reshape(shape), index, axis=axis).ravel())
        e0 = int(rng.integers(0, n))
        e1 = int(rng.integers(e0 + 1, n + 1))
        pos = Selection.of(shape, axis, index).positions_in(e0, e1)
        got = pos + e0 if isinstance(pos, np.ndarray) else [i + e0 for lo, hi in pos for i in range(lo, hi)]
        assert list(got) == list(want[(want >= e0) & (want < e1)])


def _edit(layer, index, op, factor=None, tensor="down_proj", axis=None):
    name = f"model.layers.{layer}.mlp.{tensor}.weight"
    e = SimpleNamespace(layer=layer, kind="neuron", index=index, op=op, factor=factor, tensor=tensor)
    return e, SimpleNamespace(tensor=name, axis=1 if tensor == "down_proj" else 0, index=index)


def _plan(ckpt, pairs):
    files = sorted(p.name for p in ckpt.glob("*.safetensors"))
    headers = {f: read_header(ckpt / f) for f in files}
    return plan_edits(pairs, headers, source_dir=ckpt, weight_files=files), headers


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_patch_touches_only_the_selected_bytes(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr("patchkit.edit.apply.CHUNK", 64, raising=False)
    monkeypatch.setattr("patchkit.model.safetensors_io.CHUNK", 64)
    ckpt = raw_llama_checkpoint(tmp_path / "m", dtype, shards=1)
    plan, headers = _plan(
        ckpt, [_edit(1, 5, "invert"), _edit(1, 7, "scale", 0.5), _edit(2, 3, "zero", tensor="up_proj")]
    )
    src = ckpt / "model.safetensors"
    out = tmp_path / "out.safetensors"
    res = write_patched(src, out, plan.edits)
    a, b = src.read_bytes(), out.read_bytes()
    assert res.source_sha256 == hashlib.sha256(a).hexdigest()
    assert res.output_sha256 == hashlib.sha256(b).hexdigest()
    header = headers["model.safetensors"]
    allowed = np.zeros(len(a), dtype=bool)
    for e in plan.edits:
        item = e.itemsize
        for lo, hi in e.selection.element_ranges():
            allowed[e.tensor_start + lo * item : e.tensor_start + hi * item] = True
    changed = np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8)
    assert changed.any() and not (changed & ~allowed).any()
    # values: column 5 negated, column 7 halved, up_proj row 3 zero
    down_a = to_float32(
        np.frombuffer(a, np.uint8)[slice(*header.absolute("model.layers.1.mlp.down_proj.weight"))].view(
            np.uint16 if dtype != "F32" else np.uint32
        ),
        dtype,
    ).reshape(16, 24)
    down_b = to_float32(
        np.frombuffer(b, np.uint8)[slice(*header.absolute("model.layers.1.mlp.down_proj.weight"))].view(
            np.uint16 if dtype != "F32" else np.uint32
        ),
        dtype,
    ).reshape(16, 24)
    assert np.array_equal(down_b[:, 5], -down_a[:, 5])
    assert np.allclose(down_b[:, 7], down_a[:, 7] * 0.5)
    # per-slice checksums are of the selected bytes, before and after
    before, after = res.slice_hashes[0]
    col = np.frombuffer(a, np.uint8)[slice(*header.absolute("model.layers.1.mlp.down_proj.weight"))]
    col = col.view(np.uint16 if dtype != "F32" else np.uint32).reshape(16, 24)[:, 5]
    assert before == hashlib.sha256(col.tobytes()).hexdigest() and before != after


def test_invert_twice_restores_the_file(tmp_path):
    ckpt = raw_llama_checkpoint(tmp_path / "m", "BF16", shards=1)
    plan, _ = _plan(ckpt, [_edit(0, 2, "invert"), _edit(2, 23, "invert", tensor="up_proj")])
    once, twice = tmp_path / "once.safetensors", tmp_path / "twice.safetensors"
    write_patched(ckpt / "model.safetensors", once, plan.edits)
    assert once.read_bytes() != (ckpt / "model.safetensors").read_bytes()
    write_patched(once, twice, plan.edits)
    assert twice.read_bytes() == (ckpt / "model.safetensors").read_bytes()


def test_plan_rejects_out_of_range_index_and_unknown_tensor(tmp_path):
    from patchkit.errors import ApplyError

    ckpt = raw_llama_checkpoint(tmp_path / "m", "F32", shards=1)
    with pytest.raises(ApplyError, match=r"has 24 entries on axis 1; index 24 is out of range"):
        _plan(ckpt, [_edit(0, 24, "invert")])
    with pytest.raises(ApplyError, match=r"model.layers.9.mlp.down_proj.weight .* is not in any weight file"):
        _plan(ckpt, [_edit(9, 1, "invert")])


def test_plan_refuses_fp8_weights_with_a_clear_message(tmp_path):
    from fixtures.tiny_models import write_file

    from patchkit.errors import SafetensorsError

    ckpt = tmp_path / "q"
    ckpt.mkdir()
    write_file(ckpt / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": ("F8_E4M3", (16, 24), b"\1" * 384)})
    with pytest.raises(
        SafetensorsError, match=r"model.layers.0.mlp.down_proj.weight is stored as F8_E4M3 \(quantized/fp8\)"
    ):
        _plan(ckpt, [_edit(0, 1, "invert")])


@pytest.mark.parametrize("inter, tensor", [(24, "down_proj"), (1100, "down_proj"), (1100, "up_proj")])
def test_plan_reads_exactly_the_scaled_slice(tmp_path, inter, tensor):
    """The plan-time read of a scaled slice (span read for narrow rows, one read per row for wide ones, one read
    for a row) yields exactly the selected elements."""
    from patchkit._io.fs import open_regular
    from patchkit.edit.plan import _slice_values

    ckpt = raw_llama_checkpoint(tmp_path / "m", "F32", shards=1, inter=inter, hidden=16)
    plan, headers = _plan(ckpt, [_edit(1, 7, "scale", 0.5, tensor=tensor)])
    (e,) = plan.edits
    header = headers["model.safetensors"]
    full = np.frombuffer(read_tensor_bytes(header, e.tensor), np.uint32).reshape(e.shape)
    want = full[:, 7] if tensor == "down_proj" else full[7, :]
    with open_regular(ckpt / "model.safetensors") as fh:
        got = np.concatenate(list(_slice_values(fh, e)))
    assert np.array_equal(got, want)


@pytest.mark.parametrize(
    "dtype, factor, std, pattern",
    [
        (
            "F16",
            60000.0,
            2.0,
            r"by 60000.0 overflows F16: \d+ of 16 elements become infinite .*largest factor that fits",
        ),
        ("BF16", 3e38, 4.0, r"overflows BF16"),
        ("F32", 3e38, 4.0, r"overflows F32"),
        ("F16", 1e-6, 0.001, r"underflows: every nonzero element becomes 0 in F16"),
        (
            "BF16",
            1.001,
            0.5,
            r"factor 1.001 is exactly 1.0 in BF16: .*nearest BF16 factors are 0.99609375 and 1.0078125",
        ),
        ("F32", 1e39, 0.5, r"factor 1e\+39 is inf in F32"),
        ("F16", 1e-9, 0.5, r"factor 1e-09 is 0 in F16"),
        ("BF16", -1.001, 0.5, r"is exactly -1.0 in BF16: it only flips signs; use `op: invert`"),
    ],
)
def test_plan_refuses_scales_that_are_wrong_in_the_dtype(tmp_path, dtype, factor, std, pattern):
    from patchkit.errors import RecipeError

    ckpt = raw_llama_checkpoint(tmp_path / "m", dtype, shards=1, std=std)
    with pytest.raises(RecipeError, match=pattern) as info:
        _plan(ckpt, [_edit(1, 5, "scale", factor)])
    assert "model.layers.1.mlp.down_proj.weight" in str(info.value) and dtype in str(info.value)


def test_plan_accepts_sound_scales_including_a_partial_underflow(tmp_path):
    ckpt = raw_llama_checkpoint(tmp_path / "m", "F16", shards=1)
    plan, _ = _plan(ckpt, [_edit(1, 5, "scale", 2.0), _edit(1, 6, "scale", 1e-5), _edit(1, 7, "scale", -1.0)])
    assert [e.factor for e in plan.edits] == [2.0, 1e-5, -1.0]


def test_scale_check_counts():
    from patchkit.edit.bytes import ScaleCheck

    raw = from_float32(np.array([0.0, 1.0, -2.0, np.nan, 60000.0], np.float32), "F16")
    check = ScaleCheck("F16", 2.0)
    check.update(raw[:2])
    check.update(raw[2:])
    assert (check.elements, check.nonzero, check.overflowed, check.max_abs) == (5, 3, 1, 60000.0)
    assert "overflows F16: 1 of 5 elements" in check.problem()
    zero = ScaleCheck("BF16", 0.5)
    zero.update(from_float32(np.zeros(4, np.float32), "BF16"))
    assert zero.problem() == "changes nothing in BF16 (every element is 0)"
    literal_zero = ScaleCheck("BF16", 0.0)
    literal_zero.update(from_float32(np.ones(4, np.float32), "BF16"))
    assert literal_zero.problem() is None  # `factor: 0` means what it says
