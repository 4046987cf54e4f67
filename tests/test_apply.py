"""apply end to end on small synthetic checkpoints: output layout, provenance, refusals, in-place + undo."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from fixtures.tiny_models import raw_llama_checkpoint

from patchkit.edit.apply import apply_recipe
from patchkit.edit.provenance import PROVENANCE_FILE
from patchkit.errors import ApplyError
from patchkit.model.safetensors_io import read_header

RECIPE = """patchkit: 1
name: tiny-fix
description: test recipe
model: {{repo: test-org/tiny-llama, revision: {rev}, architecture: llama}}
source: {{kind: manual, reference: unit test}}
edits:
{edits}
"""


@pytest.fixture(autouse=True)
def _engine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


def write_recipe(path, edits=("{layer: 1, neuron: 5, op: invert}",), name="tiny-fix"):
    text = RECIPE.format(rev="a" * 40, edits="\n".join(f"  - {e}" for e in edits)).replace("tiny-fix", name)
    path.write_text(text)
    return path


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory):
    return {p.relative_to(directory).as_posix(): sha(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def base(tmp_path):
    return raw_llama_checkpoint(tmp_path / "base", "BF16", shards=3)


def test_apply_rewrites_only_the_edited_shard(tmp_path, base, monkeypatch):
    monkeypatch.setattr("patchkit.edit.stream.LINK_MIN_BYTES", 4096)  # the tiny shards count as large here
    recipe = write_recipe(
        tmp_path / "r.yaml",
        ["{layer: 1, neuron: [5, 6], op: scale, factor: 0.5}", "{layer: 1, neuron: 2, op: invert, tensor: up_proj}"],
    )
    before = snapshot(base)
    result = apply_recipe(recipe, model=str(base), out=tmp_path / "out")
    out = tmp_path / "out"
    assert result.out_dir == out and snapshot(base) == before
    edited = "model-00002-of-00003.safetensors"
    assert sorted(result.plan.files_to_rewrite) == [edited]
    for rel, digest in before.items():
        if rel != edited:
            assert sha(out / rel) == digest, rel
    assert sha(out / edited) != before[edited]
    # only the edited slices differ
    header = read_header(base / edited)
    a, b = np.frombuffer((base / edited).read_bytes(), np.uint8), np.frombuffer((out / edited).read_bytes(), np.uint8)
    changed = np.flatnonzero(a != b)
    allowed = set()
    for e in result.plan.edits:
        for lo, hi in e.selection.element_ranges():
            allowed.update(range(e.tensor_start + lo * 2, e.tensor_start + hi * 2))
    assert changed.size and set(changed.tolist()) <= allowed
    down0, _ = header.absolute("model.layers.1.mlp.down_proj.weight")
    assert any(down0 <= c < down0 + 16 * 24 * 2 for c in changed)
    # untouched files are copies (or reflinks), never hard links: writing into the output cannot reach the base
    for rel in before:
        assert os.stat(out / rel).st_ino != os.stat(base / rel).st_ino, rel
        assert os.stat(base / rel).st_mode & 0o200, rel  # the base stays writable


def test_link_hard_links_big_untouched_shards_read_only(tmp_path, base, monkeypatch):
    monkeypatch.setattr("patchkit.edit.stream.LINK_MIN_BYTES", 4096)  # the tiny shards count as large here
    monkeypatch.setattr("patchkit.edit.stream._reflink", lambda src, dst: False)  # as on ext4
    recipe = write_recipe(tmp_path / "r.yaml")
    result = apply_recipe(recipe, model=str(base), out=tmp_path / "out", link=True)
    out = tmp_path / "out"
    linked = "model-00001-of-00003.safetensors"
    assert os.stat(out / linked).st_ino == os.stat(base / linked).st_ino
    # one inode, one mode: the linked file is read-only in the output and therefore in the base too
    assert not os.stat(out / linked).st_mode & 0o222 and not os.stat(base / linked).st_mode & 0o222
    # the rewritten shard and small files (configs, cards) are never linked
    assert os.stat(out / "config.json").st_ino != os.stat(base / "config.json").st_ino
    assert os.stat(out / "model-00002-of-00003.safetensors").st_mode & 0o200
    assert result.provenance["output_files"][linked]["sha256"] == sha(base / linked)


def test_provenance_follows_the_contract(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    result = apply_recipe(recipe, model=str(base), out=tmp_path / "out")
    prov = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    assert prov == result.provenance
    assert set(prov) >= {"patchkit_version", "created", "recipe", "base", "source_files", "output_files", "edits"}
    assert prov["recipe"]["text"] == recipe.read_text()
    assert prov["recipe"]["sha256"] == sha(recipe)
    assert prov["recipe"]["normalized"]["name"] == "tiny-fix"
    assert set(prov["source_files"]) == {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}
    for rel, meta in prov["source_files"].items():
        assert meta == {"sha256": sha(base / rel), "size": (base / rel).stat().st_size}
    out_files = {p.name for p in (tmp_path / "out").iterdir()} - {PROVENANCE_FILE}
    assert set(prov["output_files"]) == out_files
    for rel, meta in prov["output_files"].items():
        assert meta["sha256"] == sha(tmp_path / "out" / rel)
        assert meta["rewritten"] == (rel == "model-00002-of-00003.safetensors")
    (edit,) = prov["edits"]
    assert edit["tensor"] == "model.layers.1.mlp.down_proj.weight" and edit["op"] == "invert" and edit["factor"] == -1.0
    assert edit["before_sha256"] != edit["after_sha256"]


def test_dry_run_writes_nothing(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    result = apply_recipe(recipe, model=str(base), out=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()
    assert result.dry_run and result.provenance is None
    assert result.plan.bytes_to_write == (base / "model-00002-of-00003.safetensors").stat().st_size
    assert result.plan.bytes_edited == 16 * 2


def test_existing_output_is_refused_unless_forced(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        ApplyError, match=r"out already exists .set force=True to replace it; or choose another output directory."
    ):
        apply_recipe(recipe, model=str(base), out=out)
    apply_recipe(recipe, model=str(base), out=out, force=True)  # an empty directory may be replaced
    assert (out / PROVENANCE_FILE).exists()
    first = json.loads((out / PROVENANCE_FILE).read_text())["created"]
    apply_recipe(write_recipe(tmp_path / "r2.yaml", name="other"), model=str(base), out=out, force=True)
    assert json.loads((out / PROVENANCE_FILE).read_text())["recipe"]["normalized"]["name"] == "other" and first
    assert not [p for p in tmp_path.iterdir() if ".patchkit-tmp-" in p.name]


def test_force_replaces_only_what_patchkit_wrote(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(
        ApplyError, match=r"mine is not empty and not a patchkit apply output .* refusing to replace it"
    ):
        apply_recipe(recipe, model=str(base), out=mine, force=True)
    assert (mine / "keep.txt").read_text() == "mine"
    # an apply output the user added a file to
    out = tmp_path / "out"
    apply_recipe(recipe, model=str(base), out=out)
    (out / "eval-results.json").write_text("{}")
    with pytest.raises(ApplyError, match=r"holds eval-results.json, which patchkit did not write"):
        apply_recipe(recipe, model=str(base), out=out, force=True)
    assert (out / "eval-results.json").exists()
    # a model patched in place carries a patchkit.json too, but it is the user's model
    inplace = tmp_path / "inplace"
    shutil.copytree(base, inplace)
    apply_recipe(recipe, model=str(inplace), in_place=True)
    with pytest.raises(ApplyError, match="is a model patched in place"):
        apply_recipe(recipe, model=str(base), out=inplace, force=True)
    # a file, or a link, is never replaced by a directory
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ApplyError, match="is not a directory"):
        apply_recipe(recipe, model=str(base), out=tmp_path / "afile", force=True)
    (tmp_path / "alink").symlink_to(out)
    with pytest.raises(ApplyError, match="is a symlink"):
        apply_recipe(recipe, model=str(base), out=tmp_path / "alink", force=True)
    assert (tmp_path / "afile").read_text() == "x" and (out / "eval-results.json").exists()


def test_reapplying_onto_own_output_is_refused(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    apply_recipe(recipe, model=str(base), out=tmp_path / "out")
    with pytest.raises(ApplyError, match=r"was produced by this recipe \(tiny-fix\) already"):
        apply_recipe(recipe, model=str(tmp_path / "out"), out=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_output_inside_source_is_refused(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    with pytest.raises(ApplyError, match="overlaps the source model"):
        apply_recipe(recipe, model=str(base), out=base / "sub")


def test_hf_cache_symlinks_are_resolved_never_written_through(tmp_path, base):
    snap = tmp_path / "hub" / "snapshots" / ("c" * 40)
    blobs = tmp_path / "hub" / "blobs"
    snap.mkdir(parents=True), blobs.mkdir()
    for f in base.iterdir():
        blob = blobs / sha(f)
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    blob_state = snapshot(blobs)
    recipe = write_recipe(tmp_path / "r.yaml")
    result = apply_recipe(recipe, model=str(snap), out=tmp_path / "out")
    assert snapshot(blobs) == blob_state
    assert not any(p.is_symlink() for p in (tmp_path / "out").iterdir())
    # blob names are sha256: provenance takes them without re-reading
    assert result.provenance["source_files"]["model-00001-of-00003.safetensors"]["sha256"] == sha(
        base / "model-00001-of-00003.safetensors"
    )
    with pytest.raises(ApplyError, match="is a symlink"):
        apply_recipe(recipe, model=str(snap), in_place=True)


def test_in_place_with_undo_restores_the_original(tmp_path, base):
    recipe = write_recipe(
        tmp_path / "r.yaml", ["{layer: 0, neuron: 3, op: invert}", "{layer: 2, neuron: [1, 4], op: invert}"]
    )
    before = snapshot(base)
    result = apply_recipe(recipe, model=str(base), in_place=True)
    assert result.in_place and result.undo_recipe == base / "patchkit-undo.yaml"
    after = snapshot(base)
    assert after["model-00001-of-00003.safetensors"] != before["model-00001-of-00003.safetensors"]
    assert after["model-00002-of-00003.safetensors"] == before["model-00002-of-00003.safetensors"]
    with pytest.raises(ApplyError, match="already"):
        apply_recipe(recipe, model=str(base), in_place=True)
    apply_recipe(result.undo_recipe, model=str(base), in_place=True)
    restored = snapshot(base)
    for rel, digest in before.items():
        assert restored[rel] == digest, rel


def test_in_place_refuses_non_invertible_ops(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml", ["{layer: 0, neuron: 3, op: zero}"])
    before = snapshot(base)
    with pytest.raises(ApplyError, match="op zero cannot be undone exactly"):
        apply_recipe(recipe, model=str(base), in_place=True)
    assert snapshot(base) == before


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_failures_leave_nothing_behind(tmp_path, base, monkeypatch, err):
    recipe = write_recipe(tmp_path / "r.yaml")
    before = snapshot(base)

    def failing_write(*args):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr("patchkit.edit.stream._copy_range", failing_write)
    with pytest.raises(ApplyError, match=os.strerror(err)) as info:
        apply_recipe(recipe, model=str(base), out=tmp_path / "out")
    assert "\n" not in str(info.value) and "nothing was changed" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["base", "r.yaml"]
    assert snapshot(base) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_is_reported(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ApplyError, match="Permission denied"):
            apply_recipe(recipe, model=str(base), out=ro / "out")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_in_place_failure_between_shard_renames_rolls_back(tmp_path, base, monkeypatch):
    recipe = write_recipe(
        tmp_path / "r.yaml", ["{layer: 0, neuron: 3, op: invert}", "{layer: 2, neuron: 1, op: invert}"]
    )
    before = snapshot(base)
    calls = []
    real_replace = os.replace

    def replace_once(src, dst):
        if str(dst).endswith(".safetensors"):
            calls.append(dst)
            if len(calls) == 2:  # the second shard's swap fails; the rollback's own renames go through
                raise OSError(errno.EIO, "simulated failure between two shard renames", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr("patchkit.edit.in_place.os.replace", replace_once)
    with pytest.raises(ApplyError, match="rolled back: every shard is the original again"):
        apply_recipe(recipe, model=str(base), in_place=True)
    assert calls and snapshot(base) == before  # the first shard was replaced, then put back
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no journal, lock, temps or backups left
