"""`patchkit push` of a patched GGUF (one file, or a split set) against the local Hub-protocol server: what goes
up, the card built from the provenance inside the file, the refusals, PR mode, and the post-push verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import pytest
from click.testing import CliRunner
from gguf_builders import split_paths, tiny_llama

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "alice/tiny-gguf"
RECIPE = """\
patchkit: 1
name: t1
description: Scales two neurons of the tiny test model.
model: {architecture: llama, repo: org/base-model}
source: {kind: manual}
edits:
  - {layer: 0, neuron: 3, op: invert}
  - {layer: 1, neuron: 5, op: scale, factor: 0.5}
publish: {license: apache-2.0}
"""


def run_cli(*args: str):
    from patchkit.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "t1.yaml"
    path.write_text(text)
    return path


def patched_gguf(tmp_path: Path, name: str = "tiny-Q4_K_M.gguf", recipe: str = RECIPE) -> tuple[Path, Path, Path]:
    """(source .gguf, recipe, patched .gguf)."""
    from patchkit.edit.gguf_apply import apply_gguf

    src = tiny_llama(tmp_path / "src.gguf", "Q4_K")
    recipe_path = write_recipe(tmp_path, recipe)
    out = tmp_path / "out" / name
    apply_gguf(recipe_path, model=src, out=out)
    return src, recipe_path, out


def patched_split(tmp_path: Path) -> tuple[list[Path], Path]:
    """(source parts, directory of patched parts): three parts, one block each."""
    from patchkit.edit.gguf_apply import apply_gguf

    (tmp_path / "src").mkdir()
    first = tiny_llama(tmp_path / "src" / "tiny-Q4_K_M.gguf", "Q4_K", blocks=3, split_max_tensors=4)
    parts = split_paths(first)
    assert len(parts) == 3
    out = tmp_path / "patched-split"
    apply_gguf(write_recipe(tmp_path), model=first, out=out)
    return parts, out


def remote_tree(hub, revision: str | None = None) -> dict:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=hub.token)
    return {f.path: f for f in api.list_repo_tree(REPO, revision=revision, recursive=True) if hasattr(f, "size")}


def remote_text(hub, path: str, revision: str | None = None) -> str:
    from huggingface_hub import HfApi

    local = HfApi(endpoint=hub.url, token=hub.token).hf_hub_download(REPO, path, revision=revision)
    return Path(local).read_text()


# ---------------------------------------------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------------------------------------------
def test_push_uploads_the_gguf_and_a_card_and_the_remote_matches(hub, tmp_path):
    from huggingface_hub import HfApi

    from patchkit.publish.card import card_metadata

    src, _, out = patched_gguf(tmp_path)
    result = run_cli("push", str(out), "--repo", REPO, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "gguf"
    assert [f["path"] for f in report["files"]] == ["tiny-Q4_K_M.gguf", "README.md"]
    assert report["files"][0] == {
        "path": "tiny-Q4_K_M.gguf",
        "size": out.stat().st_size,
        "sha256": sha256(out),
        "lfs": True,
    }
    assert report["verified"] == {"ok": True, "checked": 2, "mismatches": [], "extra": []}
    assert report["message"] == "patchkit: t1"
    assert len([r for r in hub.requests("POST", r"/commit/") if r.status == 200]) == 1

    tree = remote_tree(hub)
    assert set(tree) - {".gitattributes"} == {"tiny-Q4_K_M.gguf", "README.md"}
    remote = tree["tiny-Q4_K_M.gguf"]
    assert remote.lfs is not None and remote.lfs.sha256 == sha256(out) and remote.size == out.stat().st_size
    downloaded = HfApi(endpoint=hub.url, token=hub.token).hf_hub_download(REPO, "tiny-Q4_K_M.gguf")
    assert Path(downloaded).read_bytes() == out.read_bytes()

    card = remote_text(hub, "README.md")
    meta = card_metadata(card)
    assert meta["tags"][:4] == ["gguf", "patchkit", "llama.cpp", "ollama"]
    assert meta["base_model"] == "org/base-model" and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0"
    assert "library_name" not in meta  # GGUF is a file format the Hub detects, not a library
    assert "**Q4_K**" in card
    assert RECIPE.rstrip() in card  # verbatim
    assert "no requantization" in card and "block scale fields" in card
    assert f"llama-cli -hf {REPO}:Q4_K_M" in card
    assert f"llama-server -hf {REPO}:Q4_K_M" in card
    assert f"ollama run hf.co/{REPO}:Q4_K_M" in card
    assert f"llama-cli --hf-repo {REPO} --hf-file tiny-Q4_K_M.gguf" in card
    assert sha256(src) in card  # the source's sha256, from patchkit.source.sha256
    assert hashlib.sha256(RECIPE.encode()).hexdigest() in card
    assert sha256(out) in card  # the published file's own digest
    assert "patchkit verify t1.yaml --model src.gguf --patched patched/tiny-Q4_K_M.gguf" in card
    assert "patchkit diff src.gguf patched/tiny-Q4_K_M.gguf" in card
    assert "| 1 | 0 | neuron 3 | invert (×-1) | `blk.0.ffn_up.weight` | 3 | Q4_K |" in card
    assert "| 2 | 1 | neuron 5 | scale (×0.5) | `blk.1.ffn_up.weight` | 5 | Q4_K |" in card
    assert str(tmp_path) not in card  # the recipe's local path is never published


def test_the_card_commands_verify_and_diff_work_on_the_pulled_copy(hub, tmp_path):
    """The verify / diff commands the card prints succeed on what a reader downloads."""
    from patchkit.publish import hub as pkhub

    src, recipe, out = patched_gguf(tmp_path)
    pkhub.push(out, REPO, progress=False)
    pulled = pkhub.pull(REPO, local_dir=tmp_path / "patched")
    # no patchkit.json: the provenance is inside the .gguf, and pull checks the edited rows against it
    assert (pulled.provenance_ok, pulled.checked_against, pulled.gguf_files) == (True, "gguf", [out.name])
    verified = run_cli("verify", str(recipe), "--model", str(src), "--patched", str(pulled.path / out.name))
    assert verified.exit_code == 0, verified.output
    diffed = run_cli("diff", str(src), str(pulled.path / out.name), "--json")
    assert diffed.exit_code == 0, diffed.output


def test_a_file_name_without_a_quant_label_gets_untagged_run_commands(hub, tmp_path):
    from patchkit.publish import hub as pkhub

    _, _, out = patched_gguf(tmp_path, name="t1.gguf")
    plan = pkhub.plan_push(out, REPO)
    assert f"llama-server -hf {REPO}\n" in plan.card and f"ollama run hf.co/{REPO}\n" in plan.card
    assert f"{REPO}:" not in plan.card.replace(f"{REPO}:Q4", "")  # no invented tag
    assert "**Q4_K**" in plan.card  # the quant type still comes from the tensors


def test_dry_run_sends_nothing_and_prints_the_gguf_card(hub, tmp_path):
    _, _, out = patched_gguf(tmp_path)
    hub.server.reset()
    human = run_cli("push", str(out), "--repo", REPO, "--dry-run")
    assert human.exit_code == 0, human.output
    assert "tiny-Q4_K_M.gguf" in human.output and "LFS" in human.output and "nothing was sent" in human.output
    as_json = run_cli("push", str(out), "--repo", REPO, "--dry-run", "--json")
    plan = json.loads(as_json.stdout)
    assert plan["dry_run"] is True and plan["format"] == "gguf"
    assert plan["card"].startswith("---\n") and "base_model_relation: quantized" in plan["card"]
    assert hub.log == []


# ---------------------------------------------------------------------------------------------------------------
# split sets
# ---------------------------------------------------------------------------------------------------------------
def test_a_split_set_directory_uploads_every_part(hub, tmp_path):
    from patchkit.publish.card import card_metadata

    sources, out = patched_split(tmp_path)
    patched = sorted(out.iterdir())
    assert [p.name for p in patched] == [p.name for p in sources]
    result = run_cli("push", str(out), "--repo", REPO, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [f["path"] for f in report["files"]] == [p.name for p in patched] + ["README.md"]
    assert report["verified"]["ok"] is True and report["verified"]["checked"] == 4

    tree = remote_tree(hub)
    for part in patched:
        assert tree[part.name].lfs.sha256 == sha256(part), part.name
        assert tree[part.name].size == part.stat().st_size
    card = remote_text(hub, "README.md")
    assert card_metadata(card)["tags"][:4] == ["gguf", "patchkit", "llama.cpp", "ollama"]
    for part, source in zip(patched, sources, strict=True):
        assert f"| {part.name} |" in card
        assert sha256(source) in card  # every source part's sha256
    assert f"llama-server -hf {REPO}:Q4_K_M" in card  # llama.cpp fetches every part
    assert "llama-gguf-split --merge tiny-gguf/tiny-Q4_K_M-00001-of-00003.gguf tiny-gguf.gguf" in card
    assert "ollama run hf.co/" not in card  # Ollama cannot load a split set from the Hub
    assert "--hf-file" not in card


def test_any_part_of_a_split_set_names_the_whole_set(hub, tmp_path):
    from patchkit.publish import hub as pkhub

    _, out = patched_split(tmp_path)
    parts = sorted(out.iterdir())
    plan = pkhub.plan_push(parts[1], REPO)
    assert [f.path for f in plan.files] == [p.name for p in parts] + ["README.md"]
    assert [f.sha256 for f in plan.files[:-1]] == [sha256(p) for p in parts]


def test_a_directory_with_files_beside_the_gguf_is_refused_by_name(hub, tmp_path):
    _, out = patched_split(tmp_path)
    (out / "notes.txt").write_text("hello")
    result = run_cli("push", str(out), "--repo", REPO)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "notes.txt" in errors[0] and "not part of the GGUF" in errors[0]
    assert hub.log == []


def test_a_directory_with_two_gguf_models_is_refused(hub, tmp_path):
    _, _, out = patched_gguf(tmp_path)
    tiny_llama(out.parent / "other.gguf", "Q4_K", seed=1)
    result = run_cli("push", str(out.parent), "--repo", REPO)
    assert result.exit_code == 2 and "more than one GGUF model" in result.output
    assert hub.log == []


# ---------------------------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------------------------
def test_an_unpatched_gguf_is_refused_in_one_line_unless_allowed(hub, tmp_path):
    from patchkit.publish.card import card_metadata

    src = tiny_llama(tmp_path / "plain-Q4_K_M.gguf", "Q4_K")
    refused = run_cli("push", str(src), "--repo", REPO)
    assert refused.exit_code == 2
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.output
    assert "no patchkit metadata" in errors[0] and "--allow-unpatched" in refused.output
    assert hub.log == []

    allowed = run_cli("push", str(src), "--repo", REPO, "--allow-unpatched", "--json")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["verified"]["ok"] is True
    card = remote_text(hub, "README.md")
    assert "carries no patchkit provenance" in card
    assert "base_model" not in card_metadata(card)  # nothing says what it was made from
    assert "## Provenance" not in card


def test_a_gguf_patched_in_place_is_refused_with_a_pointer_to_its_sidecar(hub, tmp_path):
    from patchkit.edit.gguf_apply import apply_gguf

    src = tiny_llama(tmp_path / "inplace.gguf", "Q4_K")
    apply_gguf(write_recipe(tmp_path), model=src, in_place=True)
    result = run_cli("push", str(src), "--repo", REPO)
    assert result.exit_code == 2
    assert "patched in place" in result.output and "inplace.gguf.patchkit.json" in result.output
    assert hub.log == []


def test_a_gguf_changed_after_apply_is_refused(hub, tmp_path):
    from patchkit.model.gguf_model import open_gguf_model

    _, _, out = patched_gguf(tmp_path)
    _, tensor = open_gguf_model(out).tensors["blk.1.ffn_up.weight"]  # holds edit 2's row
    with open(out, "r+b") as handle:
        handle.seek(tensor.start)
        handle.write(bytes(tensor.end - tensor.start))
    result = run_cli("push", str(out), "--repo", REPO)
    assert result.exit_code == 2
    assert "blk.1.ffn_up.weight changed since `patchkit apply`" in result.output
    assert hub.log == []


def test_a_gguf_holding_the_token_is_refused_without_showing_it(hub, tmp_path):
    recipe = RECIPE.replace("source: {kind: manual}", f"source: {{kind: manual, reference: {hub.token}}}")
    _, _, out = patched_gguf(tmp_path, recipe=recipe)
    assert hub.token.encode() in out.read_bytes()  # the recipe is inside the file, verbatim
    result = run_cli("push", str(out), "--repo", REPO)
    assert result.exit_code == 2
    assert f"{out}: contains your Hugging Face token" in result.output
    assert hub.token not in result.output
    assert hub.log == []


def test_a_missing_path_is_named(hub, tmp_path):
    result = run_cli("push", str(tmp_path / "nope.gguf"), "--repo", REPO)
    assert result.exit_code == 2 and "nope.gguf: no such file or directory" in result.output


# ---------------------------------------------------------------------------------------------------------------
# PR mode and verification
# ---------------------------------------------------------------------------------------------------------------
def test_pr_mode_opens_a_pull_request_and_leaves_main_alone(hub, tmp_path):
    from huggingface_hub import HfApi

    from patchkit.publish import hub as pkhub

    _, _, out = patched_gguf(tmp_path)
    (tmp_path / "plain").mkdir()
    plain = tiny_llama(tmp_path / "plain" / out.name, "Q4_K", seed=7)  # same name, other bytes, no provenance
    pkhub.push(plain, REPO, allow_unpatched=True, progress=False)
    api = HfApi(endpoint=hub.url, token=hub.token)
    main_before = api.model_info(REPO).sha

    result = run_cli("push", str(out), "--repo", REPO, "--pr", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pr_url"] == f"{hub.url}/{REPO}/discussions/1"
    assert report["verified"]["ok"] is True

    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [b.target_commit for b in refs.branches if b.name == "main"] == [main_before]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", report["commit"])]
    on_main, on_pr = remote_tree(hub), remote_tree(hub, "refs/pr/1")
    assert on_main[out.name].lfs.sha256 == sha256(plain)
    assert on_pr[out.name].lfs.sha256 == sha256(out)
    assert "patchkit verify" in remote_text(hub, "README.md", "refs/pr/1")
    assert "patchkit verify" not in remote_text(hub, "README.md")


def test_a_remote_that_does_not_match_exits_one(hub, tmp_path):
    _, _, out = patched_gguf(tmp_path)
    hub.server.app.tree_overrides[out.name] = "0" * 64  # the store "lies" about the .gguf
    result = run_cli("push", str(out), "--repo", REPO)
    assert result.exit_code == 1
    assert "MISMATCH" in result.output and f"{out.name}: remote LFS sha256 000000000000" in result.output


# ---------------------------------------------------------------------------------------------------------------
# the card on its own
# ---------------------------------------------------------------------------------------------------------------
LOOPS = {
    "suite": "enumeration",
    "overall": {
        "base": {"loop_rate": {"value": 0.625, "k": 15, "n": 24, "ci": [0.427, 0.788]}},
        "patched": {"loop_rate": {"value": 0.125, "k": 3, "n": 24, "ci": [0.043, 0.31]}},
    },
}


def test_card_carries_report_rows_and_validates_with_the_server(hub, tmp_path):
    from huggingface_hub import ModelCard

    from patchkit.publish.card import card_for_gguf, card_metadata

    _, _, out = patched_gguf(tmp_path)
    card = card_for_gguf(out, loops_report=LOOPS, repo_id=REPO)
    text = str(card)
    assert "| loop rate | 0.625 (15/24) | 0.125 (3/24) |" in text
    meta = card_metadata(text)
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.125
    ModelCard(text).validate()  # POST /api/validate-yaml on the test server


def test_card_command_renders_a_gguf_card(tmp_path):
    _, _, out = patched_gguf(tmp_path)
    target = tmp_path / "README.md"
    result = run_cli("card", str(out), "--repo", REPO, "-o", str(target), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metadata"]["base_model_relation"] == "quantized"
    assert f"ollama run hf.co/{REPO}:Q4_K_M" in target.read_text()


def test_license_and_relation_come_from_the_recipe_or_the_file(tmp_path):
    from patchkit.edit.gguf_plan import provenance_of
    from patchkit.model.gguf_model import open_gguf_model
    from patchkit.publish.card import GGUFFile, build_gguf_card, card_metadata

    _, _, out = patched_gguf(tmp_path, recipe=RECIPE.replace("publish: {license: apache-2.0}\n", ""))
    prov = provenance_of(open_gguf_model(out).parts[0])
    files = [GGUFFile(out.name, out.stat().st_size)]
    assert "license" not in card_metadata(str(build_gguf_card(prov, files=files)))
    from_file = card_metadata(str(build_gguf_card(prov, files=files, gguf_license="mit")))
    assert from_file["license"] == "mit"
    assert "license" not in card_metadata(str(build_gguf_card(prov, files=files, gguf_license="Some License")))

    prov["base"]["repo"] = "org/base-model-GGUF"  # a recipe pinned to a GGUF repo: same quantized weights, edited
    meta = card_metadata(str(build_gguf_card(prov, files=files)))
    assert meta["base_model"] == "org/base-model-GGUF" and meta["base_model_relation"] == "finetune"


def test_the_file_license_is_read_from_general_license(tmp_path):
    from patchkit.edit.gguf_apply import apply_gguf
    from patchkit.publish.card import card_for_gguf, card_metadata

    src = tiny_llama(tmp_path / "src.gguf", "Q4_K", kv={"general.license": ("gemma", gguf.GGUFValueType.STRING)})
    recipe = write_recipe(tmp_path, RECIPE.replace("publish: {license: apache-2.0}\n", ""))
    out = tmp_path / "out.gguf"
    apply_gguf(recipe, model=src, out=out)
    assert card_metadata(str(card_for_gguf(out)))["license"] == "gemma"


@pytest.mark.parametrize(
    "name, label",
    [
        ("gemma-4-E2B-it-Q4_K_M.gguf", "Q4_K_M"),
        ("model.q8_0.gguf", "Q8_0"),
        ("Qwen2.5-7B-Instruct-IQ4_XS-00001-of-00002.gguf", "IQ4_XS"),
        ("gemma-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("llama-3-8b-f16.gguf", "F16"),
        ("t1.gguf", None),
        ("Qwen2.5-7B.gguf", None),
    ],
)
def test_quant_label(name, label):
    from patchkit.publish.card import quant_label

    assert quant_label(name) == label
