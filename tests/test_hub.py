"""Push / pull / PR / dry run / verification against the local Hub-protocol server, with the real client."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from click.testing import CliRunner
from hubserver.checkpoints import EDIT_LAYER, EDIT_NEURON, SHARDS, make_base, make_patched

from patchkit.errors import PatchkitError
from patchkit.model import hub_client

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def dirs(tmp_path):
    base = make_base(tmp_path / "base")
    return base, make_patched(base, tmp_path / "patched")


def run_cli(*args: str):
    from patchkit.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_round_trip_push_pull_is_byte_identical_and_loads(hub, tmp_path, monkeypatch):
    """apply -> push -> pull into a fresh cache -> byte-identical -> verifies against the recipe -> loads."""
    base = make_base(tmp_path / "base")
    patched = make_patched(base, tmp_path / "patched")
    pushed = run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--json")
    assert pushed.exit_code == 0, pushed.output
    report = json.loads(pushed.stdout)
    assert report["verified"] == {"ok": True, "checked": 6, "mismatches": [], "extra": []}
    assert report["commit_url"] == f"{hub.url}/alice/tiny-fix/commit/{report['commit']}"
    # exactly one commit on main beyond the repo's initial one
    commits = [r for r in hub.requests("POST", r"/commit/") if r.status == 200]
    assert len(commits) == 1

    # pull into a fresh cache
    fresh = tmp_path / "fresh_home"
    monkeypatch.setenv("HF_HOME", str(fresh))
    monkeypatch.setenv("HF_HUB_CACHE", str(fresh / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fresh / "hub"))
    pulled = run_cli("pull", "alice/tiny-fix", "--json")
    assert pulled.exit_code == 0, pulled.output
    info = json.loads(pulled.stdout)
    assert info["provenance_ok"] is True and info["commit"] == report["commit"]
    path = __import__("pathlib").Path(info["path"])
    assert str(path).startswith(str(fresh))
    for item in patched.iterdir():
        if item.name != "README.md":
            assert (path / item.name).read_bytes() == item.read_bytes(), item.name
    card = (path / "README.md").read_text()
    assert "base_model: test-org/tiny-llama" in card and "base_model_relation: finetune" in card

    # `patchkit verify` the pulled copy against the recipe and the base
    from patchkit.edit.verify import verify_patched

    # The Hub copy differs from the apply output in two files by design: README.md is the card push wrote,
    # .gitattributes is the Hub's. Everything else must match the recipe applied to the base, byte for byte.
    view = tmp_path / "pulled-view"
    view.mkdir()
    for item in path.iterdir():
        if item.name not in ("README.md", ".gitattributes"):
            (view / item.name).symlink_to(item.resolve())
    (view / "README.md").symlink_to((patched / "README.md").resolve())
    verdict = verify_patched(tmp_path / "tiny-llama-loopfix.yaml", model=str(base), patched=view)
    assert verdict.ok, verdict.message
    assert verdict.files_checked == len([p for p in base.iterdir()])

    # the pulled checkpoint loads in transformers and carries the edit
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    got = model.model.layers[EDIT_LAYER].mlp.down_proj.weight[:, EDIT_NEURON]
    want = ref.model.layers[EDIT_LAYER].mlp.down_proj.weight[:, EDIT_NEURON]
    assert torch.equal(got, -want)
    other = [i for i in range(model.config.intermediate_size) if i != EDIT_NEURON]
    assert torch.equal(
        model.model.layers[EDIT_LAYER].mlp.down_proj.weight[:, other],
        ref.model.layers[EDIT_LAYER].mlp.down_proj.weight[:, other],
    )


def test_pull_revision_into_local_dir(hub, dirs, tmp_path):
    from patchkit.publish import hub as pkhub

    _, patched = dirs
    first = pkhub.push(patched, "alice/tiny-fix", progress=False)
    target = tmp_path / "local"
    result = pkhub.pull(f"alice/tiny-fix@{first.commit_oid}", local_dir=target)
    assert result.path.resolve() == target.resolve()
    assert (target / SHARDS[1]).read_bytes() == (patched / SHARDS[1]).read_bytes()
    assert result.revision == result.commit == first.commit_oid and result.provenance_ok is True


def test_pr_mode_opens_a_pull_request_and_leaves_main_alone(hub, dirs, tmp_path):
    from huggingface_hub import HfApi

    from patchkit.publish import hub as pkhub

    base, patched = dirs
    pkhub.push(base, "alice/tiny-fix", allow_unpatched=True, progress=False)
    api = HfApi(endpoint=hub.url, token=hub.token)
    main_before = api.model_info("alice/tiny-fix").sha

    result = run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--pr", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pr_url"] == f"{hub.url}/alice/tiny-fix/discussions/1"

    refs = api.list_repo_refs("alice/tiny-fix", include_pull_requests=True)
    assert [b.target_commit for b in refs.branches if b.name == "main"] == [main_before]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", report["commit"])]
    assert report["verified"]["ok"] is True
    on_main = {f.path: f for f in api.list_repo_tree("alice/tiny-fix", recursive=True)}
    on_pr = {f.path: f for f in api.list_repo_tree("alice/tiny-fix", revision="refs/pr/1", recursive=True)}
    assert "patchkit.json" in on_pr and "patchkit.json" not in on_main
    assert on_pr[SHARDS[1]].lfs.sha256 != on_main[SHARDS[1]].lfs.sha256
    assert on_pr[SHARDS[0]].lfs.sha256 == on_main[SHARDS[0]].lfs.sha256
    discussions = list(api.get_repo_discussions("alice/tiny-fix"))
    assert [(d.num, d.is_pull_request) for d in discussions] == [(1, True)]


def test_revision_pushes_to_a_new_branch(hub, dirs):
    from huggingface_hub import HfApi

    from patchkit.publish import hub as pkhub

    _, patched = dirs
    result = pkhub.push(patched, "patchkit-org/tiny-fix", revision="loopfix", progress=False)
    refs = HfApi(endpoint=hub.url, token=hub.token).list_repo_refs("patchkit-org/tiny-fix")
    branches = {b.name: b.target_commit for b in refs.branches}
    assert branches["loopfix"] == result.commit_oid and branches["main"] != result.commit_oid


def test_dry_run_sends_zero_requests(hub, dirs):
    _, patched = dirs
    hub.server.reset()
    human = run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--dry-run")
    assert human.exit_code == 0, human.output
    for item in patched.iterdir():
        if item.name != "README.md":
            assert item.name in human.output
    assert "15.1 KB" in human.output or "15.3 KB" in human.output  # shard sizes
    assert "base_model_relation: finetune" in human.output and "nothing was sent" in human.output
    as_json = run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--dry-run", "--json")
    plan = json.loads(as_json.stdout)
    sizes = {f["path"]: f["size"] for f in plan["files"]}
    assert sizes[SHARDS[1]] == (patched / SHARDS[1]).stat().st_size
    assert plan["card"].startswith("---\n") and plan["dry_run"] is True
    assert hub.log == []


def test_refuses_directory_without_provenance_unless_allowed(hub, dirs):
    base, _ = dirs
    refused = run_cli("push", str(base), "--repo", "alice/plain")
    assert refused.exit_code == 2
    assert "no patchkit.json" in refused.output and "--allow-unpatched" in refused.output
    assert hub.log == []
    allowed = run_cli("push", str(base), "--repo", "alice/plain", "--allow-unpatched", "--json")
    assert allowed.exit_code == 0, allowed.output


def test_refuses_files_changed_since_apply(hub, dirs):
    _, patched = dirs
    with open(patched / SHARDS[1], "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x80\x7f")
    result = run_cli("push", str(patched), "--repo", "alice/tiny-fix")
    assert result.exit_code == 2 and "changed since `patchkit apply`" in result.output
    assert hub.log == []


def test_verification_mismatch_exits_non_zero(hub, dirs):
    _, patched = dirs
    hub.server.app.tree_overrides["model-00002-of-00002.safetensors"] = "0" * 64  # the store "lies"
    result = run_cli("push", str(patched), "--repo", "alice/tiny-fix")
    assert result.exit_code == 1
    assert "MISMATCH" in result.output and "remote LFS sha256 000000000000" in result.output
    assert f"{hub.url}/alice/tiny-fix/commit/" in result.output


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("no_token", "no Hugging Face token found"),
        ("bad_token", "the Hub rejected the token (401)"),
        ("read_token", "no permission (403)"),
        ("other_namespace", "no permission (403)"),
        ("conflict", "conflict (409)"),
    ],
)
def test_errors_are_one_line_with_a_fix(hub, dirs, monkeypatch, setup, expected):
    _, patched = dirs
    repo = "alice/tiny-fix"
    if setup == "no_token":
        monkeypatch.delenv("HF_TOKEN")
    elif setup == "bad_token":
        monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 32)
    elif setup == "read_token":
        monkeypatch.setenv("HF_TOKEN", hub.read_token)
    elif setup == "other_namespace":
        repo = "someone-else/tiny-fix"
    elif setup == "conflict":
        hub.inject("409", method="POST", path=r"/commit/")
    result = run_cli("push", str(patched), "--repo", repo)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "(" in lines[0] and ")" in lines[0]  # carries a hint


def test_pull_missing_repo_and_revision(hub, dirs):
    from patchkit.publish import hub as pkhub

    missing = run_cli("pull", "alice/nope")
    assert missing.exit_code == 2 and "alice/nope not found (404)" in missing.output
    _, patched = dirs
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    bad_rev = run_cli("pull", "alice/tiny-fix@no-such-branch")
    assert bad_rev.exit_code == 2 and "revision 'no-such-branch' not found" in bad_rev.output
    bad_ref = run_cli("pull", "not a repo")
    assert bad_ref.exit_code == 2 and "ORG/NAME" in bad_ref.output


def test_token_never_appears_in_output_logs_or_files(hub, dirs, caplog, capfd, monkeypatch):
    from patchkit.publish import hub as pkhub

    caplog.set_level(logging.DEBUG)
    _, patched = dirs
    outputs = []
    outputs.append(run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--json").output)
    outputs.append(run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--dry-run").output)
    outputs.append(run_cli("pull", "alice/tiny-fix").output)
    outputs.append(run_cli("push", str(patched), "--repo", "someone-else/x").output)
    monkeypatch.setenv("HF_TOKEN", hub.read_token)
    outputs.append(run_cli("push", str(patched), "--repo", "alice/tiny-fix").output)
    pkhub.pull("alice/tiny-fix")
    captured = capfd.readouterr()
    everything = "\n".join(outputs) + captured.out + captured.err + caplog.text
    assert everything.strip()
    for token in (hub.token, hub.read_token):
        assert token not in everything
        for path in hub.store.root.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path
        for path in patched.rglob("*"):
            assert token.encode() not in path.read_bytes()


def test_fetch_differing_shards_downloads_only_changed_lfs_files(hub, dirs):
    from patchkit.publish import hub as pkhub

    base, patched = dirs
    pkhub.push(base, "alice/tiny", allow_unpatched=True, progress=False)
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    hub.server.reset()
    dir_a, dir_b, identical = hub_client.fetch_differing_shards("alice/tiny", "alice/tiny-fix")
    assert identical == [SHARDS[0]]
    assert not (dir_a / SHARDS[0]).exists() and not (dir_b / SHARDS[0]).exists()
    assert (dir_a / SHARDS[1]).read_bytes() == (base / SHARDS[1]).read_bytes()
    assert (dir_b / SHARDS[1]).read_bytes() == (patched / SHARDS[1]).read_bytes()
    assert (dir_b / "config.json").is_file() and (dir_b / "model.safetensors.index.json").is_file()
    shard0 = hashlib.sha256((base / SHARDS[0]).read_bytes()).hexdigest()
    downloaded = [r.path for r in hub.requests("GET", r"^/cdn/lfs/")]
    assert len(downloaded) == 2 and not any(shard0 in p for p in downloaded)


def test_pr_with_nothing_new_opens_no_pull_request(hub, dirs):
    from patchkit.publish import hub as pkhub

    _, patched = dirs
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    result = run_cli("push", str(patched), "--repo", "alice/tiny-fix", "--pr")
    assert result.exit_code == 0 and "no pull request was opened" in result.output
    assert "nothing to push: alice/tiny-fix@main already holds these files" in result.output
    assert "pushed" not in result.output  # nothing was
    assert [r.query for r in hub.requests("POST", r"/commit/")] == [""]  # only the first push committed
    assert hub.store.repos["alice/tiny-fix"].pr_refs == {}


def test_client_features_work_against_the_server(hub, dirs):
    """get_safetensors_metadata (HTTP Range), hf_hub_download (cross-host redirect, auth dropped at the CDN)."""
    from huggingface_hub import HfApi, hf_hub_download

    from patchkit.publish import hub as pkhub

    _, patched = dirs
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    meta = HfApi(endpoint=hub.url).get_safetensors_metadata("alice/tiny-fix")
    assert meta.sharded and meta.weight_map[f"model.layers.{EDIT_LAYER}.mlp.down_proj.weight"] == SHARDS[1]
    assert meta.files_metadata[SHARDS[1]].tensors[f"model.layers.{EDIT_LAYER}.mlp.down_proj.weight"].shape == [16, 32]
    ranged = [r for r in hub.requests("GET", r"^/cdn/lfs/")]
    assert ranged and all(r.status == 206 for r in ranged)
    path = hf_hub_download("alice/tiny-fix", SHARDS[1], endpoint=hub.url)
    assert open(path, "rb").read() == (patched / SHARDS[1]).read_bytes()
    assert all(r.status in (200, 206) for r in hub.requests(path=r"^/cdn/"))  # no auth ever reached the CDN
    api = HfApi(endpoint=hub.url, token=hub.token)
    siblings = {s.rfilename: s for s in api.model_info("alice/tiny-fix", files_metadata=True).siblings}
    assert siblings[SHARDS[1]].lfs.sha256 == hashlib.sha256((patched / SHARDS[1]).read_bytes()).hexdigest()
    assert (
        siblings["config.json"].lfs is None and siblings["config.json"].size == (patched / "config.json").stat().st_size
    )
    [info] = api.get_paths_info("alice/tiny-fix", [SHARDS[1], "nope.txt"])
    assert info.lfs.sha256 == hashlib.sha256((patched / SHARDS[1]).read_bytes()).hexdigest()
    assert api.file_exists("alice/tiny-fix", "config.json") and not api.file_exists("alice/tiny-fix", "x.json")
    api.delete_repo("alice/tiny-fix")
    assert not api.repo_exists("alice/tiny-fix")


def test_remote_safetensors_header_uses_range_requests(hub, dirs):
    from safetensors import safe_open

    from patchkit.publish import hub as pkhub

    _, patched = dirs
    pushed = pkhub.push(patched, "alice/tiny-fix", progress=False)
    hub.server.reset()
    length, header = hub_client.read_safetensors_header("alice/tiny-fix", SHARDS[1], revision=pushed.commit_oid)
    local = (patched / SHARDS[1]).read_bytes()
    assert length == int.from_bytes(local[:8], "little")
    with safe_open(patched / SHARDS[1], "np") as handle:
        assert set(header) - {"__metadata__"} == set(handle.keys())
    assert all(r.status == 206 for r in hub.requests("GET", r"^/cdn/lfs/"))  # no full download
    with hub_client.open_remote("alice/tiny-fix", SHARDS[1]) as remote:
        remote.seek(len(local) - 16)
        assert remote.read() == local[-16:]
    with pytest.raises(PatchkitError, match="no file 'nope.safetensors'"):
        hub_client.read_safetensors_header("alice/tiny-fix", "nope.safetensors")


def test_remote_model_refs_resolve_through_the_server(hub, dirs):
    """patchkit.model.refs (owned by the core engine) resolves Hub refs through the same client and server."""
    from patchkit.model.refs import ensure_local, resolve_model
    from patchkit.publish import hub as pkhub

    _, patched = dirs
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    ref = resolve_model("alice/tiny-fix")
    assert ref.is_remote and ref.repo_id == "alice/tiny-fix"
    assert sorted(ref.weight_files()) == list(SHARDS)
    headers = ref.headers()
    assert set(headers) == set(SHARDS)
    local = ensure_local(ref)
    assert (local / SHARDS[1]).read_bytes() == (patched / SHARDS[1]).read_bytes()


def test_token_from_the_login_store_and_a_pulled_dir_can_be_pushed_again(hub, dirs, tmp_path, monkeypatch):
    """`hf auth login` writes HF_HOME/token: used when HF_TOKEN is unset. A `--local-dir` pull re-pushes cleanly."""
    from patchkit.publish import hub as pkhub

    _, patched = dirs
    monkeypatch.delenv("HF_TOKEN")
    (hub.hf_home / "token").write_text(hub.token)
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    pulled = pkhub.pull("alice/tiny-fix", local_dir=tmp_path / "again").path
    assert (pulled / ".cache").is_dir()  # huggingface_hub's local-dir metadata, which push must skip
    result = pkhub.push(pulled, "patchkit-org/tiny-fix-copy", progress=False)
    assert result.check.ok and not any(".cache" in f.path for f in result.plan.files)
    assert {f.path for f in result.plan.files} == {f.path for f in pkhub.plan_push(patched, "alice/x").files}


def test_a_card_the_hub_rejects_stops_the_push_before_any_upload(hub, dirs, monkeypatch):
    import patchkit.publish.card

    _, patched = dirs
    monkeypatch.setattr(patchkit.publish.card, "BASE_MODEL_RELATION", "tweak")  # not one the Hub accepts
    result = run_cli("push", str(patched), "--repo", "alice/tiny-fix")
    assert result.exit_code == 2 and "the Hub refused the model card" in result.output
    assert hub.requests("PUT") == [] and hub.requests("POST", r"/commit/") == []


def test_pull_flags_a_repo_whose_files_no_longer_match_its_provenance(hub, dirs, tmp_path):
    from huggingface_hub import HfApi

    from patchkit.publish import hub as pkhub

    base, patched = dirs
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    # someone replaces the patched shard with the base one, without touching patchkit.json
    HfApi(endpoint=hub.url, token=hub.token).upload_file(
        path_or_fileobj=str(base / SHARDS[1]), path_in_repo=SHARDS[1], repo_id="alice/tiny-fix"
    )
    result = run_cli("pull", "alice/tiny-fix", "--local-dir", str(tmp_path / "pulled"))
    assert result.exit_code == 1
    assert (
        f"{SHARDS[1]}: differs from patchkit.json" in result.output and "files match patchkit.json: NO" in result.output
    )


def test_pushing_to_an_open_pull_request_updates_it(hub, dirs, tmp_path):
    from huggingface_hub import HfApi

    from patchkit.publish import hub as pkhub

    base, patched = dirs
    pkhub.push(base, "alice/tiny-fix", allow_unpatched=True, progress=False)
    opened = pkhub.push(patched, "alice/tiny-fix", create_pr=True, progress=False)
    loops = {"overall": {"base": {"n": 8, "loop_rate": 0.5}, "patched": {"n": 8, "loop_rate": 0.125}}}
    updated = pkhub.push(patched, "alice/tiny-fix", revision="refs/pr/1", loops_report=loops, progress=False)
    refs = HfApi(endpoint=hub.url, token=hub.token).list_repo_refs("alice/tiny-fix", include_pull_requests=True)
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", updated.commit_oid)]
    assert updated.commit_oid != opened.commit_oid and updated.pr_url is None and updated.check.ok
    assert hub.requests("POST", r"/branch/") == []


def test_diff_between_two_hub_repos_skips_identical_shards(hub, dirs):
    """`patchkit diff` (core engine) on two Hub refs goes through fetch_differing_shards."""
    from patchkit.publish import hub as pkhub
    from patchkit.workflows.resolve import diff_refs

    base, patched = dirs
    pkhub.push(base, "alice/tiny", allow_unpatched=True, progress=False)
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    hub.server.reset()
    report = diff_refs("alice/tiny", "alice/tiny-fix")
    assert report.identical_files == [SHARDS[0]]
    assert [c.tensor for c in report.changed] == [f"model.layers.{EDIT_LAYER}.mlp.down_proj.weight"]
    shard0 = hashlib.sha256((base / SHARDS[0]).read_bytes()).hexdigest()
    assert not any(shard0 in r.path for r in hub.requests("GET", r"^/cdn/lfs/"))


def test_remote_headers_carry_the_real_header_length(hub, dirs):
    from patchkit.model.refs import resolve_model
    from patchkit.publish import hub as pkhub

    _, patched = dirs
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    headers = resolve_model("alice/tiny-fix").headers()
    for shard in SHARDS:  # absolute offsets (data_start + begin) of remote tensors must match the file
        real_len = int.from_bytes((patched / shard).read_bytes()[:8], "little")
        assert headers[shard].header_len == real_len


def test_validate_and_apply_accept_a_hub_model_ref(hub, dirs, tmp_path):
    """`patchkit validate --model ORG/NAME` and `apply --model ORG/NAME` resolve through the same server."""
    from hubserver.checkpoints import RECIPE_TEXT

    from patchkit.publish import hub as pkhub

    base, patched = dirs
    pushed = pkhub.push(base, "patchkit-org/tiny-llama", allow_unpatched=True, progress=False)
    recipe = tmp_path / "hub-recipe.yaml"
    recipe.write_text(
        RECIPE_TEXT.replace("test-org/tiny-llama", "patchkit-org/tiny-llama").replace("a" * 40, pushed.commit_oid)
    )
    validated = run_cli("validate", str(recipe), "--model", "patchkit-org/tiny-llama")
    assert validated.exit_code == 0, validated.output
    assert hub.requests("GET", r"^/cdn/lfs/") and all(r.status == 206 for r in hub.requests("GET", r"^/cdn/lfs/"))
    out = tmp_path / "from-hub"
    applied = run_cli("apply", str(recipe), "--model", f"patchkit-org/tiny-llama@{pushed.commit_oid}", "-o", str(out))
    assert applied.exit_code == 0, applied.output
    for shard in SHARDS:
        assert (out / shard).read_bytes() == (patched / shard).read_bytes()


def test_push_refuses_a_file_containing_the_token_and_never_shows_it(hub, dirs, tmp_path):
    """A token pasted into a config (or a shard) is found before any request; the message names the file only."""
    from patchkit.publish import hub as pkhub

    _, patched = dirs
    config = patched / "config.json"
    clean = config.read_text()
    plan = pkhub.plan_push(patched, "alice/tiny-fix", token="hf_" + "n" * 32)  # scanned for another token
    config.write_text(clean.rstrip().rstrip("}") + f', "hub_token": "{hub.token}"}}')
    result = run_cli("push", str(patched), "--repo", "alice/tiny-fix")
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert str(config) in lines[0] and "contains your Hugging Face token" in lines[0]
    assert hub.token not in result.output
    # an explicit token is scanned for too
    config.write_text(config.read_text().replace(hub.token, hub.read_token))
    with pytest.raises(PatchkitError, match="contains your Hugging Face token") as info:
        pkhub.push(patched, "alice/tiny-fix", token=hub.read_token, progress=False)
    assert hub.read_token not in str(info.value)
    # a plan scanned for another token is scanned again, for the token the upload uses, before any request
    with pytest.raises(PatchkitError, match="config.json: contains your Hugging Face token"):
        pkhub.execute_push(plan, token=hub.read_token)
    assert hub.log == []
