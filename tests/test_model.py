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


@pytest.mark.parametrize(
    "files, pattern",
    [
        ({"config.json": "{}", "pytorch_model.bin": "x"}, r"only pickle weights \(\.bin/\.pt\) found"),
        ({"model.safetensors": ""}, r"no config\.json"),
        ({"config.json": "{nope"}, r"config\.json: is not valid JSON"),
        ({"config.json": "{}"}, r"no model\.safetensors or model\.safetensors\.index\.json"),
        ({"config.json": "{}", "model.safetensors.index.json": '{"weight_map": {}}'}, r"has no weight_map"),
        (
            {
                "config.json": "{}",
                "model.safetensors.index.json": '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}',
            },
            r"model-00001-of-00002\.safetensors is listed .* but missing",
        ),
    ],
)
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


def _raw_model(tmp_path, **kw):
    from fixtures.tiny_models import raw_llama_checkpoint

    return raw_llama_checkpoint(tmp_path / "m", "BF16", shards=3, **kw)


def _edit_index(model, fn):
    path = model / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    fn(index["weight_map"])
    path.write_text(json.dumps(index))


def test_weight_map_paths_are_normalised_and_must_stay_inside(tmp_path):
    model = _raw_model(tmp_path)
    _edit_index(model, lambda wm: wm.update({k: f"./{v}" for k, v in wm.items()}))
    ref = resolve_model(model)
    files = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    assert ref.weight_files() == files and sorted(ref.headers()) == files
    assert set(ref.weight_map().values()) == set(files)
    for bad, pattern in (
        ("/abs/x.safetensors", "absolute path"),
        ("~/x.safetensors", "absolute path"),
        ("a/../../x.safetensors", r"goes up a directory \(\.\.\)"),
        ("x\tb.safetensors", "plain file name"),
        ("model.bin", "not a .safetensors file"),
        (".", "not a .safetensors file"),
    ):
        _edit_index(model, lambda wm, bad=bad: wm.update({"model.norm.weight": bad}))
        with pytest.raises(ModelError, match=pattern) as info:
            resolve_model(model).weight_files()
        assert "model.safetensors.index.json: weight_map[model.norm.weight]" in str(info.value)


def test_index_and_headers_must_agree(tmp_path):
    model = _raw_model(tmp_path)
    _edit_index(model, lambda wm: wm.update({"model.norm.weight": "model-00001-of-00003.safetensors"}))
    with pytest.raises(
        ModelError,
        match=r"puts tensor model.norm.weight in model-00001-of-00003.safetensors, but "
        r".*model-00003-of-00003.safetensors holds it",
    ) as info:
        resolve_model(model).headers()
    assert info.value.data == {
        "tensor": "model.norm.weight",
        "index": "model-00001-of-00003.safetensors",
        "file": "model-00003-of-00003.safetensors",
    }
    _edit_index(model, lambda wm: wm.pop("model.norm.weight"))
    with pytest.raises(
        ModelError,
        match=r"model-00003-of-00003.safetensors: holds tensor model.norm.weight, which "
        r".*model.safetensors.index.json does not list",
    ):
        resolve_model(model).headers()


def test_model_dir_tree_is_checked_once_before_any_read(tmp_path):
    import os

    model = _raw_model(tmp_path)
    secret = tmp_path / "token"
    secret.write_text("hf_secret")
    (model / "tokenizer_config.json").unlink()
    (model / "tokenizer_config.json").symlink_to(secret)
    with pytest.raises(ModelError, match=r"tokenizer_config.json: is a link to .*token, outside the model directory"):
        _ = resolve_model(model).config
    (model / "tokenizer_config.json").unlink()
    (model / ".cache" / "huggingface").mkdir(parents=True)  # the download cache of `hf download --local-dir`:
    os.mkfifo(model / ".cache" / "huggingface" / "lock")  # never read, never carried over, so not checked
    (model / "tokenizer_config.json").symlink_to("generation_config.json")  # a link inside is fine
    ref = resolve_model(model)
    assert ref.config["model_type"] == "llama" and len(ref.headers()) == 3


def test_a_local_copy_never_falls_back_to_the_hub(tmp_path):
    model = _raw_model(tmp_path)
    hub_ref = resolve_model(model)
    object.__setattr__(hub_ref, "repo_id", "org/tiny")  # as for a Hub model: its snapshot is what gets patched
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    (copy / "model-00003-of-00003.safetensors").unlink()
    local = hub_ref.at(copy)
    assert local.local_only and local.repo_id == "org/tiny" and local.local_dir == copy.resolve()
    with pytest.raises(
        ModelError,
        match=r"model-00003-of-00003.safetensors is listed in model.safetensors.index.json "
        r"but missing",
    ):
        local.headers()
    assert resolve_model(model).at(model).local_only is False  # the same directory: the ref itself


def test_unusable_weight_files_count_as_present_and_are_refused_by_name(tmp_path):
    import os

    model = _raw_model(tmp_path)
    (model / "model-00002-of-00003.safetensors").unlink()
    os.mkfifo(model / "model-00002-of-00003.safetensors")
    ref = resolve_model(model)
    with pytest.raises(ModelError, match=r"model-00002-of-00003.safetensors: is a FIFO"):
        ref.has_local_weights() and ref.headers()
