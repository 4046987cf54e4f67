"""Gemma 4 GGUFs: per-layer MLP widths (a double-wide layer) and the three ways an MoE file lays out its experts,
each with the bytes an expert suppression must (and must not) change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf_builders import read_tensors, tiny_gemma4_dense, tiny_gemma4_moe

from patchkit.edit.gguf_apply import apply_gguf
from patchkit.errors import RecipeError

HEAD = "patchkit: 1\nname: g4\nmodel: {architecture: gemma4}\nsource: {kind: manual}\nedits:\n"
E, F = 4, 32  # experts per layer and rows per expert half, as tiny_gemma4_moe builds them


def _apply(tmp_path: Path, model: Path, edits: str, out: str = "o.gguf") -> tuple[dict, dict]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD + edits)
    result = apply_gguf(recipe, model=model, out=tmp_path / out)
    return read_tensors(model), read_tensors(result.out)


def _unchanged_except(a: dict, b: dict, *names: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name not in names:
            assert a[name][1] == b[name][1], f"{name} changed"


def _slabs(raw: bytes, n: int) -> np.ndarray:
    """Raw bytes of a 3-D tensor, one row per expert."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, -1)


# --- dense, per-layer widths ---------------------------------------------------------------------------------


def test_dense_layers_have_their_own_width(tmp_path):
    """Layer 2 is double-wide (128 rows): neuron 100 is valid there and edits row 100 of its ffn_up; the same
    index in a 64-wide layer is refused, naming that layer's tensor."""
    model = tiny_gemma4_dense(tmp_path / "d.gguf", n_ff=(64, 64, 128))
    a, b = _apply(tmp_path, model, "  - {layer: 2, neuron: 100, op: invert}\n  - {layer: 0, neuron: 63, op: zero}\n")
    _unchanged_except(a, b, "blk.2.ffn_up.weight", "blk.0.ffn_up.weight")
    x, y = a["blk.2.ffn_up.weight"][2], b["blk.2.ffn_up.weight"][2]
    assert x.shape == (128, 256)
    assert np.array_equal(y[100], -x[100])
    assert np.array_equal(np.delete(y, 100, axis=0), np.delete(x, 100, axis=0))
    assert not np.any(b["blk.0.ffn_up.weight"][2][63])

    for layer in (0, 1):
        with pytest.raises(RecipeError, match=rf"blk\.{layer}\.ffn_up\.weight has 64 rows") as info:
            _apply(tmp_path, model, f"  - {{layer: {layer}, neuron: 100, op: invert}}\n", out="bad.gguf")
        assert "\n" not in str(info.value)
        assert info.value.data.get("tensor") == f"blk.{layer}.ffn_up.weight"
    with pytest.raises(RecipeError, match="neuron 128"):
        _apply(tmp_path, model, "  - {layer: 2, neuron: 128, op: invert}\n", out="bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


# --- MoE layouts -------------------------------------------------------------------------------------------------


def test_expert_suppression_zeroes_its_per_expert_scale(tmp_path):
    """With `ffn_down_exps.scale`, suppressing expert e sets element e to 0.0: the expert's output is multiplied
    by it, and nothing else (other experts' scales, the expert weights) changes."""
    model = tiny_gemma4_moe(tmp_path / "m.gguf", "scale")
    a, b = _apply(tmp_path, model, "  - {layer: 1, expert: 2, op: suppress}\n")
    name = "blk.1.ffn_down_exps.scale"
    _unchanged_except(a, b, name)
    x, y = a[name][2], b[name][2]
    assert x[2] != 0 and y[2] == 0.0
    assert np.array_equal(np.delete(y, 2), np.delete(x, 2))
    assert np.array_equal(np.delete(_slabs(b[name][1], E), 2, 0), np.delete(_slabs(a[name][1], E), 2, 0))


def test_expert_suppression_zeroes_the_up_half_of_its_fused_slab(tmp_path):
    """Fused gate/up without a scale tensor: expert e's slab holds F gate rows then F up rows; the up half
    de-quantizes to zeros (so gelu(gate)·up = 0), the gate half and every other expert are byte-identical."""
    model = tiny_gemma4_moe(tmp_path / "m.gguf", "fused")
    a, b = _apply(tmp_path, model, "  - {layer: 0, expert: 1, op: suppress}\n")
    name = "blk.0.ffn_gate_up_exps.weight"
    _unchanged_except(a, b, name)
    x, y = a[name][2], b[name][2]
    assert x.shape == (E, 2 * F, 256)
    assert not np.any(y[1, F:]) and np.any(x[1, F:])
    rows_a = np.frombuffer(a[name][1], dtype=np.uint8).reshape(E, 2 * F, -1)
    rows_b = np.frombuffer(b[name][1], dtype=np.uint8).reshape(E, 2 * F, -1)
    assert np.array_equal(rows_a[1, :F], rows_b[1, :F]), "the gate half changed"
    assert np.array_equal(np.delete(rows_a, 1, 0), np.delete(rows_b, 1, 0)), "another expert changed"


def test_expert_suppression_zeroes_its_rows_of_split_up_exps(tmp_path):
    """Split gate/up (Ollama's layout): every row of expert e in `ffn_up_exps` de-quantizes to 0; `ffn_gate_exps`
    and the other experts are unchanged."""
    model = tiny_gemma4_moe(tmp_path / "m.gguf", "split")
    a, b = _apply(tmp_path, model, "  - {layer: 1, expert: [0, 3], op: suppress}\n")
    name = "blk.1.ffn_up_exps.weight"
    _unchanged_except(a, b, name)
    x, y = a[name][2], b[name][2]
    assert x.shape == (E, F, 256)
    assert not np.any(y[[0, 3]]) and np.any(x[[0, 3]])
    assert np.array_equal(y[[1, 2]], x[[1, 2]])
    assert np.array_equal(_slabs(a[name][1], E)[[1, 2]], _slabs(b[name][1], E)[[1, 2]])


def test_expert_suppression_on_down_proj_zeroes_its_down_slab(tmp_path):
    """`tensor: down_proj` picks expert e's slab of `ffn_down_exps` instead (whatever the gate/up layout)."""
    model = tiny_gemma4_moe(tmp_path / "m.gguf", "scale")
    a, b = _apply(tmp_path, model, "  - {layer: 0, expert: 3, op: suppress, tensor: down_proj}\n")
    name = "blk.0.ffn_down_exps.weight"
    _unchanged_except(a, b, name)
    assert not np.any(b[name][2][3]) and np.any(a[name][2][3])
    assert np.array_equal(_slabs(a[name][1], E)[:3], _slabs(b[name][1], E)[:3])


@pytest.mark.parametrize(
    "layout,tensor",
    [
        ("scale", "blk.0.ffn_down_exps.scale"),
        ("fused", "blk.0.ffn_gate_up_exps.weight"),
        ("split", "blk.0.ffn_up_exps.weight"),
    ],
)
def test_expert_out_of_range_is_refused(tmp_path, layout, tensor):
    """Expert E of an E-expert layer does not exist: RecipeError naming the tensor that says so; nothing written."""
    model = tiny_gemma4_moe(tmp_path / "m.gguf", layout)
    with pytest.raises(
        RecipeError, match=rf"expert {E} is out of range.*{tensor.replace('.', '[.]')} has {E} experts"
    ) as info:
        _apply(tmp_path, model, f"  - {{layer: 0, expert: {E}, op: suppress}}\n")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.gguf").exists()


def test_expert_edit_on_a_dense_gemma4_and_a_llama_recipe_are_refused(tmp_path):
    """A dense file has no experts to suppress; a llama recipe does not apply to a gemma4 file."""
    dense = tiny_gemma4_dense(tmp_path / "d.gguf")
    with pytest.raises(RecipeError, match="has no experts"):
        _apply(tmp_path, dense, "  - {layer: 0, expert: 0, op: suppress}\n")
    recipe = tmp_path / "l.yaml"
    recipe.write_text(HEAD.replace("gemma4", "llama") + "  - {layer: 0, neuron: 1, op: invert}\n")
    with pytest.raises(RecipeError, match="llama"):
        apply_gguf(recipe, model=dense, out=tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()
