"""The GGUF user path through the CLI: validate, apply, diff (and --as-recipe), verify; --json everywhere.

The round trip that matters: a recipe written by `diff --as-recipe A.gguf B.gguf`, applied to A, gives a file
that `verify` accepts against A, and whose tensor data equals B's byte for byte. That is what a user relies on
to rebuild someone's patched GGUF from their own copy of the base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf_builders import read_tensors, tiny_gemma4_moe, tiny_llama

from patchkit.cli import main

RECIPE = """\
patchkit: 1
name: cli-gguf
model: {architecture: ARCH}
source: {kind: manual}
edits:
EDITS
"""


def _recipe(tmp_path: Path, arch: str, edits: str) -> Path:
    path = tmp_path / f"{arch}.yaml"
    path.write_text(RECIPE.replace("ARCH", arch).replace("EDITS", edits))
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "Q8_0"])
def test_validate_apply_diff_verify_round_trip(tmp_path, type_name):
    src = tiny_llama(tmp_path / "base.gguf", type_name)
    recipe = _recipe(
        tmp_path,
        "llama",
        "  - {layer: 0, neuron: [1, 4], op: invert}\n"
        "  - {layer: 1, neuron: 7, op: scale, factor: 0.5}\n"
        "  - {layer: 1, neuron: 9, op: zero}\n",
    )
    code, out = _run("validate", recipe, "--model", src, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["against"] == "gguf" and len(report["plan"]["edits"]) == 4
    assert {e["tensor"] for e in report["plan"]["edits"]} == {"blk.0.ffn_up.weight", "blk.1.ffn_up.weight"}

    patched = tmp_path / "patched.gguf"
    code, out = _run("apply", recipe, "--model", src, "-o", patched, "--json")
    assert code == 0, out
    assert json.loads(out)["out"] == str(patched)

    code, out = _run("diff", src, patched, "--json")
    assert code == 0, out
    changes = {c["tensor"]: c for c in json.loads(out)["changed"]}
    assert set(changes) == {"blk.0.ffn_up.weight", "blk.1.ffn_up.weight"}
    kinds = {
        (c["tensor"], s["index"]): (s["classification"], s["factor"]) for c in changes.values() for s in c["slices"]
    }
    assert kinds == {
        ("blk.0.ffn_up.weight", 1): ("inverted", None),
        ("blk.0.ffn_up.weight", 4): ("inverted", None),
        ("blk.1.ffn_up.weight", 7): ("scaled", 0.5),
        ("blk.1.ffn_up.weight", 9): ("zeroed", None),
    }

    derived = tmp_path / "derived.yaml"
    code, out = _run("diff", src, patched, "--as-recipe", "-o", derived)
    assert code == 0, out
    rebuilt = tmp_path / "rebuilt.gguf"
    assert _run("apply", derived, "--model", src, "-o", rebuilt)[0] == 0
    assert _run("verify", derived, "--model", src, "--patched", rebuilt)[0] == 0
    assert {k: v[1] for k, v in read_tensors(rebuilt).items()} == {k: v[1] for k, v in read_tensors(patched).items()}

    code, out = _run("verify", recipe, "--model", src, "--patched", patched, "--json")
    assert code == 0 and json.loads(out)["ok"] and "byte for byte" in json.loads(out)["message"]
    # the derived recipe is another recipe: its provenance does not match the first output
    code, out = _run("verify", derived, "--model", src, "--patched", patched, "--json")
    assert code == 1 and json.loads(out)["first_difference"]["reason"] == "its patchkit.recipe is not this recipe"


def test_verify_names_the_tensor_of_a_changed_byte(tmp_path):
    src = tiny_llama(tmp_path / "base.gguf", "Q4_0")
    recipe = _recipe(tmp_path, "llama", "  - {layer: 1, neuron: 3, op: invert}\n")
    patched = tmp_path / "p.gguf"
    assert _run("apply", recipe, "--model", src, "-o", patched)[0] == 0
    from patchkit.model.gguf_header import scan_gguf_header

    t = next(t for t in scan_gguf_header(patched).tensors if t.name == "blk.0.ffn_down.weight")
    data = bytearray(patched.read_bytes())
    data[t.start + 5] ^= 0x01  # one quant bit of a tensor the recipe does not touch
    patched.write_bytes(bytes(data))
    code, out = _run("verify", recipe, "--model", src, "--patched", patched, "--json")
    assert code == 1
    first = json.loads(out)["first_difference"]
    assert first["tensor"] == "blk.0.ffn_down.weight" and first["reason"] == "tensor bytes differ"


def test_diff_as_recipe_on_gemma4_expert_suppression(tmp_path):
    """Experts suppressed through the per-expert scale come back from diff --as-recipe as `suppress` edits."""
    src = tiny_gemma4_moe(tmp_path / "moe.gguf", "scale")
    recipe = _recipe(tmp_path, "gemma4", "  - {layer: 1, expert: [0, 3], op: suppress}\n")
    patched = tmp_path / "moe-p.gguf"
    assert _run("apply", recipe, "--model", src, "-o", patched)[0] == 0
    code, out = _run("diff", src, patched, "--as-recipe")
    assert code == 0, out
    assert "expert: [0, 3]" in out and "op: suppress" in out and "architecture: gemma4" in out


def test_diff_of_a_gguf_with_a_directory_is_a_usage_error(tmp_path):
    src = tiny_llama(tmp_path / "base.gguf", "Q4_0")
    code, out = _run("diff", src, tmp_path)
    assert code == 2 and "compare a .gguf with a .gguf" in out


def test_undo_without_in_place_is_a_usage_error(tmp_path):
    src = tiny_llama(tmp_path / "base.gguf", "Q4_0")
    recipe = _recipe(tmp_path, "llama", "  - {layer: 1, neuron: 3, op: invert}\n")
    code, out = _run("apply", recipe, "--model", src, "--undo")
    assert code == 2 and "--undo goes with --in-place" in out


def test_the_patched_file_does_not_carry_the_authors_directories(tmp_path):
    """A published GGUF carries the recipe's text and file name, never the local path it was applied from."""
    from patchkit.edit.gguf_plan import read_patchkit_metadata
    from patchkit.model.gguf_header import scan_gguf_header

    src = tiny_llama(tmp_path / "base.gguf", "Q4_0")
    recipe = _recipe(tmp_path, "llama", "  - {layer: 1, neuron: 3, op: invert}\n")
    patched = tmp_path / "p.gguf"
    assert _run("apply", recipe, "--model", src, "-o", patched)[0] == 0
    meta = read_patchkit_metadata(scan_gguf_header(patched))
    assert json.loads(meta["patchkit.provenance"])["recipe"]["file"] == "llama.yaml"
    assert not any(str(tmp_path) in value for value in meta.values())
