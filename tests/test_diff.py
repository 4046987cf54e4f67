"""diff: finds exactly the changed neurons, classifies them, and turns them into recipe edits."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures.tiny_models import encode, raw_llama_checkpoint, write_file

from patchkit.edit.apply import write_patched
from patchkit.edit.diff import DiffError, diff_checkpoints, recipe_edits, recipe_text
from patchkit.edit.plan import plan_edits
from patchkit.model.safetensors_io import read_header


def _pair(layer, index, op, factor=None, tensor="down_proj"):
    e = SimpleNamespace(layer=layer, kind="neuron", index=index, op=op, factor=factor, tensor=tensor)
    return e, SimpleNamespace(
        tensor=f"model.layers.{layer}.mlp.{tensor}.weight", axis=1 if tensor == "down_proj" else 0, index=index
    )


def _patched_copy(src_dir, dst_dir, pairs):
    """dst = src with `pairs` applied (untouched shards copied, not linked: diff must read them)."""
    files = sorted(p.name for p in src_dir.glob("*.safetensors"))
    headers = {f: read_header(src_dir / f) for f in files}
    plan = plan_edits(pairs, headers, source_dir=src_dir, weight_files=files)
    shutil.copytree(src_dir, dst_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    for f in files:
        if f in plan.files_to_rewrite:
            write_patched(src_dir / f, dst_dir / f, plan.files_to_rewrite[f])
        else:
            shutil.copyfile(src_dir / f, dst_dir / f)
    return dst_dir


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_diff_classifies_each_changed_neuron(tmp_path, dtype):
    a = raw_llama_checkpoint(tmp_path / "a", dtype, shards=2)
    b = _patched_copy(
        a,
        tmp_path / "b",
        [
            _pair(0, 3, "invert"),
            _pair(1, 4, "scale", 0.5),
            _pair(1, 9, "scale", 0.3),
            _pair(2, 7, "zero"),
            _pair(2, 11, "invert", tensor="up_proj"),
        ],
    )
    report = diff_checkpoints(a, b)
    got = {(c.tensor, s.index): (s.classification, s.factor) for c in report.changed for s in c.slices}
    assert got == {
        ("model.layers.0.mlp.down_proj.weight", 3): ("inverted", -1.0),
        ("model.layers.1.mlp.down_proj.weight", 4): ("scaled", 0.5),
        ("model.layers.1.mlp.down_proj.weight", 9): ("scaled", 0.3),
        ("model.layers.2.mlp.down_proj.weight", 7): ("zeroed", 0.0),
        ("model.layers.2.mlp.up_proj.weight", 11): ("inverted", -1.0),
    }
    assert not report.added and not report.removed and not report.reshaped
    inv = next(c for c in report.changed if c.layer == 0)
    assert inv.changed_elements == 16 and inv.max_rel == pytest.approx(2.0)
    edits = recipe_edits(report)
    assert {"layer": 1, "neuron": 4, "op": "scale", "factor": 0.5} in edits
    assert {"layer": 2, "neuron": 11, "op": "invert", "tensor": "up_proj"} in edits
    assert {"layer": 0, "neuron": 3, "op": "invert"} in edits


def test_identical_and_hardlinked_checkpoints(tmp_path):
    a = raw_llama_checkpoint(tmp_path / "a", "BF16", shards=2)
    b = tmp_path / "b"
    shutil.copytree(a, b, copy_function=os.link)
    report = diff_checkpoints(a, b)
    assert report.identical and report.bytes_compared == 0 and report.bytes_skipped > 0
    with pytest.raises(DiffError, match="identical"):
        recipe_edits(report)


def test_arbitrary_change_refuses_recipe_naming_the_tensor(tmp_path):
    a = raw_llama_checkpoint(tmp_path / "a", "F32", shards=1)
    b = raw_llama_checkpoint(tmp_path / "b", "F32", shards=1)
    tensors = {}
    header = read_header(a / "model.safetensors")
    for name, info in sorted(header.tensors.items(), key=lambda kv: kv[1].begin):
        data = bytearray((a / "model.safetensors").read_bytes()[slice(*header.absolute(name))])
        if name == "model.layers.1.mlp.down_proj.weight":
            data[4 * 30 : 4 * 31] = encode(np.array([123.0]), "F32")  # one element of neuron 6
        tensors[name] = (info.dtype, info.shape, bytes(data))
    write_file(b / "model.safetensors", tensors, {"format": "pt"})
    report = diff_checkpoints(a, b)
    (change,) = report.changed
    assert change.changed_elements == 1 and [s.index for s in change.slices] == [6]
    assert change.slices[0].classification == "arbitrary"
    with pytest.raises(DiffError, match=r"model.layers.1.mlp.down_proj.weight index 6: change is not"):
        recipe_edits(report)


def test_added_removed_reshaped_and_other_files(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    f32 = lambda *s: ("F32", s, encode(np.ones(s), "F32"))  # noqa: E731
    write_file(a / "model.safetensors", {"keep": f32(2), "gone": f32(3), "shape": f32(2, 2)})
    write_file(b / "model.safetensors", {"keep": f32(2), "new": f32(1), "shape": f32(4)})
    (a / "config.json").write_text("{}")
    (b / "config.json").write_text('{"x": 1}')
    report = diff_checkpoints(a, b)
    assert report.added == ["new"] and report.removed == ["gone"]
    assert report.reshaped == [
        {"tensor": "shape", "a": {"dtype": "F32", "shape": [2, 2]}, "b": {"dtype": "F32", "shape": [4]}}
    ]
    assert report.other_files_changed == ["config.json"]
    with pytest.raises(DiffError, match="tensor new was added; a recipe only edits existing tensors"):
        recipe_edits(report)


def test_gate_proj_change_is_refused(tmp_path):
    a = raw_llama_checkpoint(tmp_path / "a", "BF16", shards=1)
    b = _patched_copy(
        a,
        tmp_path / "b",
        [
            (
                SimpleNamespace(layer=0, kind="neuron", index=1, op="invert", factor=-1.0),
                SimpleNamespace(tensor="model.layers.0.mlp.gate_proj.weight", axis=0, index=1),
            )
        ],
    )
    report = diff_checkpoints(a, b)
    assert report.changed[0].slices[0].classification == "inverted"
    with pytest.raises(DiffError, match="gate_proj.weight changed but is not"):
        recipe_edits(report)


def test_recipe_text_is_yaml_with_the_edits(tmp_path):
    a = raw_llama_checkpoint(tmp_path / "a", "BF16", shards=1)
    b = _patched_copy(a, tmp_path / "b", [_pair(0, 1, "invert"), _pair(0, 2, "invert")])
    text = recipe_text(diff_checkpoints(a, b), name="x-fix", repo="org/x", revision="a" * 40, architecture="llama")
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(text)
    assert doc["edits"] == [{"layer": 0, "neuron": [1, 2], "op": "invert"}]
    assert doc["model"] == {"repo": "org/x", "revision": "a" * 40, "architecture": "llama"}
    assert doc["source"]["kind"] == "diff"


def test_expert_suppression_is_found_and_expressed(tmp_path):
    """Zeroed experts.down_proj slabs and router.per_expert_scale elements become `suppress` edits."""
    from fixtures.tiny_models import encode

    a = tmp_path / "a"
    a.mkdir()
    rng = np.random.default_rng(3)
    p = "model.language_model.layers.1"
    write_file(
        a / "model.safetensors",
        {
            f"{p}.router.per_expert_scale": ("BF16", (8,), encode(rng.standard_normal(8) + 2, "BF16")),
            f"{p}.experts.down_proj": ("BF16", (8, 6, 4), encode(rng.standard_normal((8, 6, 4)), "BF16")),
        },
    )
    ex = lambda i: SimpleNamespace(layer=1, kind="expert", index=i, op="suppress", factor=0.0, tensor=None)  # noqa: E731
    b = _patched_copy(
        a,
        tmp_path / "b",
        [
            (ex(5), SimpleNamespace(tensor=f"{p}.router.per_expert_scale", axis=0, index=5)),
            (ex(2), SimpleNamespace(tensor=f"{p}.experts.down_proj", axis=0, index=2)),
        ],
    )
    report = diff_checkpoints(a, b)
    got = {(c.role, s.index, s.classification, s.changed_elements) for c in report.changed for s in c.slices}
    assert got == {("router.per_expert_scale", 5, "zeroed", 1), ("experts.down_proj", 2, "zeroed", 24)}
    assert sorted(recipe_edits(report), key=lambda e: e["expert"]) == [
        {"layer": 1, "expert": 2, "op": "suppress", "tensor": "down_proj"},
        {"layer": 1, "expert": 5, "op": "suppress"},
    ]
