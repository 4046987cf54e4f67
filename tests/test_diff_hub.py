"""diff between two Hub repos: shards with equal LFS sha256 are never downloaded, the changed one is explained."""

from __future__ import annotations

import pytest
from hubserver.checkpoints import EDIT_LAYER, EDIT_NEURON, SHARDS, make_base, make_patched

from patchkit.workflows.resolve import diff_refs

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_diff_of_two_hub_repos_skips_identical_shards(hub, tmp_path):
    from huggingface_hub import HfApi

    base = make_base(tmp_path / "base")
    patched = make_patched(base, tmp_path / "patched")
    api = HfApi(endpoint=hub.url, token=hub.token)
    for repo, folder in (("alice/tiny-base", base), ("alice/tiny-patched", patched)):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    report = diff_refs("alice/tiny-base", "alice/tiny-patched")
    assert report.identical_files == [SHARDS[0]]
    assert not (report.b / SHARDS[0]).exists()  # never downloaded
    (change,) = report.changed
    assert change.tensor == f"model.layers.{EDIT_LAYER}.mlp.down_proj.weight"
    assert [(s.index, s.classification) for s in change.slices] == [(EDIT_NEURON, "inverted")]
    assert report.other_files_changed == ["patchkit.json"]
