"""verify (exit 0 iff byte-identical to apply's result), the diff --as-recipe round trip, and the CLI shells."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from fixtures.tiny_models import raw_llama_checkpoint
from test_apply import snapshot, write_recipe

from patchkit.cli import main
from patchkit.edit.apply import apply_recipe
from patchkit.edit.diff import diff_checkpoints, recipe_text
from patchkit.edit.verify import verify_patched
from patchkit.model.safetensors_io import read_header


@pytest.fixture(autouse=True)
def _engine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def applied(tmp_path):
    base = raw_llama_checkpoint(tmp_path / "base", "F32", shards=3)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        ["{layer: 0, neuron: 3, op: invert}", "{layer: 1, neuron: [4, 9], op: scale, factor: 0.25}"],
    )
    apply_recipe(recipe, model=str(base), out=tmp_path / "out")
    return base, recipe, tmp_path / "out"


def _flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 1]))


def test_verify_accepts_the_apply_output(applied):
    base, recipe, out = applied
    result = verify_patched(recipe, model=str(base), patched=out)
    assert result.ok and result.first_difference is None and result.files_checked >= 5


def test_verify_names_the_first_differing_tensor(applied):
    base, recipe, out = applied
    shard = out / "model-00003-of-00003.safetensors"
    tmp = shard.with_suffix(".tmp")  # break the hard link before editing: the base must stay intact
    tmp.write_bytes(shard.read_bytes())
    os.replace(tmp, shard)
    start, _ = read_header(shard).absolute("model.layers.2.mlp.up_proj.weight")
    _flip_byte(shard, start + 10)
    result = verify_patched(recipe, model=str(base), patched=out)
    assert not result.ok
    assert result.first_difference == {
        "file": "model-00003-of-00003.safetensors",
        "offset": start + 10,
        "tensor": "model.layers.2.mlp.up_proj.weight",
        "reason": "bytes differ from the base file (apply leaves this file untouched)",
    }
    # a rewritten shard: the comparison is against the recipe's result
    shard = out / "model-00002-of-00003.safetensors"
    start, _ = read_header(shard).absolute("model.layers.1.mlp.gate_proj.weight")
    _flip_byte(shard, start + 3)
    _flip_byte(out / "model-00003-of-00003.safetensors", read_header(shard).data_start)  # later file: not reached first
    result = verify_patched(recipe, model=str(base), patched=out)
    assert result.first_difference["file"] == "model-00002-of-00003.safetensors"
    assert result.first_difference["tensor"] == "model.layers.1.mlp.gate_proj.weight"
    assert result.first_difference["reason"] == "bytes differ from the recipe's result"


def test_verify_rejects_a_different_recipe_and_extra_files(applied, tmp_path):
    base, _, out = applied
    other = write_recipe(tmp_path / "other.yaml", ["{layer: 0, neuron: 3, op: invert}"])
    result = verify_patched(other, model=str(base), patched=out)
    assert not result.ok and result.first_difference["tensor"] == "model.layers.1.mlp.down_proj.weight"
    (out / "extra.txt").write_text("x")
    result = verify_patched(tmp_path / "r.yaml", model=str(base), patched=out)
    assert not result.ok and result.first_difference["file"] == "extra.txt"


def test_diff_as_recipe_round_trips(applied, tmp_path):
    base, _, out = applied
    text = recipe_text(
        diff_checkpoints(base, out),
        name="roundtrip",
        repo="test-org/tiny-llama",
        revision="a" * 40,
        architecture="llama",
    )
    recipe2 = tmp_path / "roundtrip.yaml"
    recipe2.write_text(text)
    assert verify_patched(recipe2, model=str(base), patched=out).ok
    apply_recipe(recipe2, model=str(base), out=tmp_path / "again")
    again, first = snapshot(tmp_path / "again"), snapshot(out)
    again.pop("patchkit.json"), first.pop("patchkit.json")
    assert again == first


def test_cli_apply_diff_verify(tmp_path):
    base = raw_llama_checkpoint(tmp_path / "base", "BF16", shards=2)
    recipe = write_recipe(tmp_path / "r.yaml", ["{layer: 2, neuron: 7, op: invert}"])
    runner = CliRunner()
    res = runner.invoke(
        main, ["apply", str(recipe), "--model", str(base), "-o", str(tmp_path / "out"), "--dry-run", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["plan"]["files_rewritten"] == ["model-00002-of-00002.safetensors"]
    assert not (tmp_path / "out").exists()
    res = runner.invoke(main, ["apply", str(recipe), "--model", str(base), "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["provenance"]["edits"][0]["index"] == 7
    res = runner.invoke(main, ["apply", str(recipe), "--model", str(base), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "error:" in res.stderr and "already exists" in res.stderr
    res = runner.invoke(main, ["diff", str(base), str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    (change,) = json.loads(res.stdout)["changed"]
    assert change["slices"][0]["classification"] == "inverted" and change["slices"][0]["index"] == 7
    res = runner.invoke(main, ["diff", str(base), str(tmp_path / "out"), "--as-recipe", "-o", str(tmp_path / "d.yaml")])
    assert res.exit_code == 0, res.output
    assert "neuron: 7" in (tmp_path / "d.yaml").read_text()
    res = runner.invoke(main, ["verify", str(recipe), "--model", str(base), "--patched", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["verify", str(recipe), "--model", str(base), "--patched", str(base), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["first_difference"]["tensor"] == "model.layers.2.mlp.down_proj.weight"
    res = runner.invoke(main, ["verify", str(recipe), "--model", str(base), "--patched", str(base)])
    assert res.exit_code == 1 and "model.layers.2.mlp.down_proj.weight" in res.stderr


def test_verify_catches_a_write_through_a_hard_link(tmp_path, monkeypatch):
    """With `link=True` an output shard is the base's inode: a write into it changes both, so comparing them proves
    nothing; verify hashes it and checks the sha256 the output's patchkit.json recorded."""
    monkeypatch.setattr("patchkit.edit.stream.LINK_MIN_BYTES", 4096)
    monkeypatch.setattr("patchkit.edit.stream._reflink", lambda src, dst: False)
    base = raw_llama_checkpoint(tmp_path / "base", "F32", shards=3)
    recipe = write_recipe(tmp_path / "r.yaml", ["{layer: 1, neuron: 4, op: invert}"])
    out = tmp_path / "out"
    apply_recipe(recipe, model=str(base), out=out, link=True)
    shard = out / "model-00003-of-00003.safetensors"
    assert os.path.samefile(shard, base / shard.name)
    assert verify_patched(recipe, model=str(base), patched=out).ok
    st = os.stat(shard)
    shard.chmod(0o644)  # the read-only mode apply set is what a careless tool would have to defeat first
    _flip_byte(shard, st.st_size - 1)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = verify_patched(recipe, model=str(base), patched=out)
    assert not result.ok and result.first_difference["file"] == shard.name
    assert "hard link to the base file, the base changed too" in result.first_difference["reason"]
