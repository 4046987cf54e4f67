"""apply with a Hub model reference: the snapshot lands in the HF cache, is read through its symlinks and
never written; provenance records the repo and the resolved commit; a wrong pin is refused."""

from __future__ import annotations

import hashlib
import json

import pytest
from hubserver.checkpoints import EDIT_LAYER, EDIT_NEURON, SHARDS, make_base

from patchkit.edit.apply import apply_recipe
from patchkit.errors import PatchkitError

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

RECIPE = """patchkit: 1
name: hub-fix
model: {{repo: alice/tiny-base{rev}, architecture: llama}}
source: {{kind: manual, reference: unit test}}
edits:
  - {{layer: {layer}, neuron: {neuron}, op: invert}}
"""


def _tree(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_apply_from_a_hub_repo(hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "hashes"))
    base = make_base(tmp_path / "base")
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("alice/tiny-base")
    commit = api.upload_folder(repo_id="alice/tiny-base", folder_path=str(base)).oid
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(rev="", layer=EDIT_LAYER, neuron=EDIT_NEURON))
    result = apply_recipe(recipe, out=tmp_path / "out")
    assert any("does not pin" in w for w in result.warnings)
    prov = json.loads((tmp_path / "out" / "patchkit.json").read_text())
    assert prov["base"]["repo"] == "alice/tiny-base" and prov["base"]["revision"] == commit
    for shard in SHARDS:
        assert prov["source_files"][shard]["sha256"] == hashlib.sha256((base / shard).read_bytes()).hexdigest()
    assert [f for f, m in prov["output_files"].items() if m["rewritten"]] == [SHARDS[1]]
    cache = hub.hf_home / "hub"
    blobs_before = _tree(cache)
    apply_recipe(recipe, out=tmp_path / "out2")  # second run: from the cache, which stays untouched
    assert _tree(cache) == blobs_before
    recipe.write_text(RECIPE.format(rev=", revision: '" + "b" * 40 + "'", layer=EDIT_LAYER, neuron=EDIT_NEURON))
    with pytest.raises(PatchkitError):
        apply_recipe(recipe, out=tmp_path / "out3")
    assert not (tmp_path / "out3").exists()
