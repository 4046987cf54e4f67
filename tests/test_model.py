"""Model references: local dirs (single-file, sharded), the HF cache (offline), the Hub (headers by Range only)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from patchkit.errors import ModelError, PatchkitError
from patchkit.model.refs import cached_model, check_revision_pin, ensure_local, resolve_model
from patchkit.model.safetensors_io import read_header

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_local_single_file(tiny_llama):
    ref = resolve_model(str(tiny_llama))
    assert (ref.local_dir, ref.repo_id, ref.revision, ref.is_remote) == (tiny_llama.resolve(), None, None, False)
    assert ref.weight_files() == ["model.safetensors"]
    assert ref.config["model_type"] == "llama" and ref.architecture == "llama"
    header = ref.headers()["model.safetensors"]
    assert header.tensors["model.layers.2.mlp.down_proj.weight"].shape == (64, 48)
    assert "model.layers.0.mlp.up_proj.weight" in ref.tensor_names()
    assert ref.has_local_weights() and ensure_local(ref) == tiny_llama.resolve()


def test_local_sharded_reads_every_shard_named_by_the_index(tiny_llama_sharded_bf16):
    ref = resolve_model(tiny_llama_sharded_bf16)
    index = json.loads((tiny_llama_sharded_bf16 / "model.safetensors.index.json").read_text())
    files = ref.weight_files()
    assert len(files) > 1 and files == sorted(set(index["weight_map"].values()))
    headers = ref.headers()
    for tensor, shard in index["weight_map"].items():
        assert tensor in headers[shard].tensors
        assert headers[shard].tensors[tensor].dtype == "BF16"


@pytest.mark.parametrize("files, pattern", [
    ({"config.json": "{}", "pytorch_model.bin": "x"}, r"only pickle weights \(\.bin/\.pt\) found"),
    ({"model.safetensors": ""}, r"no config\.json"),
    ({"config.json": "{nope"}, r"config\.json is not valid JSON"),
    ({"config.json": "{}"}, r"no model\.safetensors or model\.safetensors\.index\.json"),
    ({"config.json": "{}", "model.safetensors.index.json": '{"weight_map": {}}'}, r"has no weight_map"),
    ({"config.json": "{}", "model.safetensors.index.json": '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'},
     r"model-00001-of-00002\.safetensors is listed .* but missing"),
])
def test_broken_local_dirs_give_one_line_errors(tmp_path, files, pattern):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ref = resolve_model(tmp_path)
    with pytest.raises(ModelError, match=pattern) as info:
        ref.config, ref.headers()
    assert "\n" not in str(info.value)


def test_bad_references(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        resolve_model(tmp_path / "file.txt")
    for ref in ("not a repo", "a/b/c", "../x"):
        with pytest.raises(ModelError, match="not a Hub repo id"):
            resolve_model(ref)


def _fake_cache(root, repo, model_dir, sha=SHA):
    """Lay out `model_dir` as an HF cache snapshot of `repo` at `sha` (refs/main -> sha), as huggingface_hub does."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / sha
    shutil.copytree(model_dir, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(sha)
    return snap


def test_hf_cache_is_used_offline_and_pins_are_checked(tmp_path, monkeypatch, tiny_llama):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snap = _fake_cache(tmp_path, "org/tiny", tiny_llama)
    for text in ("org/tiny", f"org/tiny@{SHA}"):
        ref = resolve_model(text)
        assert (ref.local_dir, ref.repo_id, ref.revision, ref.is_remote) == (snap, "org/tiny", SHA, False)
        assert ref.weight_files() == ["model.safetensors"] and ref.has_local_weights()
        assert ensure_local(ref) == snap
    assert cached_model("org/tiny").revision == SHA and cached_model("org/other") is None
    # a snapshot directory given as a path keeps its identity, so the recipe pin can be checked
    by_path = resolve_model(snap)
    assert (by_path.repo_id, by_path.revision) == ("org/tiny", SHA)
    assert check_revision_pin(SimpleNamespace(revision=SHA), by_path) is None
    assert check_revision_pin(SimpleNamespace(revision=SHA[:10]), by_path) is None
    assert "does not pin" in check_revision_pin(SimpleNamespace(revision=None), by_path)
    assert "branch or tag" in check_revision_pin(SimpleNamespace(revision="main"), by_path)
    with pytest.raises(ModelError, match=f"pins revision {'f' * 40} but .* is at {SHA}"):
        check_revision_pin(SimpleNamespace(revision="f" * 40), by_path)
    # offline and not cached: one line that says so
    with pytest.raises(PatchkitError, match=r"org/absent: not in the local Hugging Face cache and the Hub is offline"):
        resolve_model("org/absent")


def test_validate_without_model_uses_the_cache(tmp_path, monkeypatch, tiny_gemma4):
    import huggingface_hub.constants as constants

    from patchkit.errors import RecipeError
    from patchkit.recipe.validate import validate_recipe

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _fake_cache(tmp_path / "cache", "org/g4", tiny_gemma4)
    recipe = tmp_path / "r.yaml"
    head = f"patchkit: 1\nname: t\nsource: {{kind: manual}}\nmodel: {{repo: org/g4, revision: '{SHA}'}}\n"
    recipe.write_text(head + "edits: [{layer: 3, neuron: 95, op: invert}]\n")
    report = validate_recipe(recipe)
    assert (report.against, report.architecture, report.warnings) == ("model", "gemma4", [])
    recipe.write_text(head + "edits: [{layer: 1, neuron: 95, op: invert}]\n")  # layer 1 is not double-wide
    with pytest.raises(RecipeError, match=r"r\.yaml:5:9: edits\[0\]: neuron 95 is out of range for layer 1"):
        validate_recipe(recipe)
    recipe.write_text(head.replace("org/g4", "org/elsewhere") + "edits: [{layer: 1, neuron: 95, op: invert}]\n")
    assert validate_recipe(recipe).against in ("schema-only", "profile")


def test_hub_model_reads_headers_by_range_without_downloading_weights(hub, tmp_path, tiny_llama_sharded_bf16):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("alice/tiny")
    commit = api.upload_folder(repo_id="alice/tiny", folder_path=str(tiny_llama_sharded_bf16)).oid
    hub.reset()
    ref = resolve_model("alice/tiny")
    assert (ref.is_remote, ref.repo_id, ref.revision) == (True, "alice/tiny", commit)
    local = resolve_model(tiny_llama_sharded_bf16)
    assert ref.config == local.config and ref.weight_files() == local.weight_files()
    remote_headers = ref.headers()
    for name, header in local.headers().items():
        assert remote_headers[name].tensors == header.tensors
        assert remote_headers[name].header_len == header.header_len
    shard_gets = [r for r in hub.requests("GET", r"\.safetensors$")]
    assert shard_gets and all(r.range for r in shard_gets), "shards must only be read with Range requests"
    cache = hub.hf_home / "hub"
    assert not [p for p in cache.rglob("*.safetensors")], "validation must not download weights"
    # config.json is cached now, the shards are not: the ref resolves through the cache and still reads headers remotely
    again = resolve_model(f"alice/tiny@{commit}")
    assert not again.is_remote and not again.has_local_weights()
    assert set(again.headers()) == set(local.headers())
    # a full snapshot for loading
    snap = ensure_local(again)
    for name in local.weight_files():
        assert read_header(snap / name).tensors == local.headers()[name].tensors
    with pytest.raises(PatchkitError, match="not found"):
        resolve_model("alice/missing")
