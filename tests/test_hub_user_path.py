"""The whole user path against the local Hub server, for a dense and an MoE tiny Gemma 4: `apply` from a Hub ref,
then `push`, `pull`, `verify`, and `push --pr` twice with nothing changed — through the CLI, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

BASE, FIX = "alice/tiny-g4", "alice/tiny-g4-fix"
#: dense: a neuron of a double-wide (KV-shared) layer and one of a normal layer; MoE: an expert and a dense neuron
EDITS = {
    "gemma4": "  - {layer: 3, neuron: 95, op: invert}\n  - {layer: 0, neuron: 7, op: scale, factor: 0.5}\n",
    "gemma4-moe": "  - {layer: 1, expert: 3, op: suppress}\n  - {layer: 0, neuron: 7, op: invert}\n",
}


def run_cli(*args: str):
    from patchkit.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def upload_base(hub, kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A tiny `kind` checkpoint uploaded to BASE (the server adds its own .gitattributes); (local copy, commit)."""
    from fixtures.tiny_models import build
    from huggingface_hub import HfApi

    base = build(kind, tmp_path / "base")
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(BASE)
    commit = api.upload_folder(repo_id=BASE, folder_path=str(base)).oid
    assert ".gitattributes" in api.list_repo_files(BASE)
    return base, commit


def write_recipe(tmp_path: Path, kind: str, commit: str) -> Path:
    """A recipe pinned to the uploaded commit that names no architecture (patchkit.json must still record one)."""
    recipe = tmp_path / "fix.yaml"
    recipe.write_text(
        f"patchkit: 1\nname: tiny-g4-fix\nsource: {{kind: manual}}\nmodel: {{repo: {BASE}, revision: '{commit}'}}\n"
        f"edits:\n{EDITS[kind]}publish: {{license: apache-2.0}}\n"
    )
    return recipe


@pytest.mark.parametrize("kind", ["gemma4", "gemma4-moe"])
def test_apply_from_the_hub_then_push_pull_verify_and_pr(hub, tmp_path, kind):
    from huggingface_hub import HfApi

    from patchkit.publish.card import card_metadata

    _, commit = upload_base(hub, kind, tmp_path)
    recipe = write_recipe(tmp_path, kind, commit)
    out = tmp_path / "out"

    applied = run_cli("apply", str(recipe), "--model", BASE, "-o", str(out))
    assert applied.exit_code == 0, applied.output
    prov = json.loads((out / "patchkit.json").read_text())
    # the Hub manages .gitattributes: it is no part of a checkpoint, so apply neither copies nor records it
    assert not (out / ".gitattributes").exists() and ".gitattributes" not in prov["output_files"]
    assert prov["base"] == {"ref": BASE, "repo": BASE, "revision": commit, "architecture": "gemma4"}

    card = run_cli("card", str(out), "--repo", FIX, "-o", str(tmp_path / "card.md"))  # -o is --out everywhere
    assert card.exit_code == 0 and (tmp_path / "card.md").read_text().startswith("---\n"), card.output
    assert run_cli("card", str(out), "--out", str(tmp_path / "card2.md")).exit_code == 0
    assert "gemma4" in card_metadata((tmp_path / "card.md").read_text())["tags"]  # from base.architecture

    pushed = run_cli("push", str(out), "--repo", FIX, "--json")
    assert pushed.exit_code == 0, pushed.output
    report = json.loads(pushed.stdout)
    assert report["verified"]["ok"] is True and report["verified"]["mismatches"] == []
    api = HfApi(endpoint=hub.url, token=hub.token)
    main_sha = api.model_info(FIX).sha
    assert report["commit"] == main_sha

    pulled = run_cli("pull", FIX, "--json")
    assert pulled.exit_code == 0, pulled.output
    info = json.loads(pulled.stdout)
    assert info["provenance_ok"] is True and info["commit"] == main_sha and info["mismatches"] == []
    path = Path(info["path"])
    for name, meta in prov["output_files"].items():
        if name != "README.md":
            assert (path / name).stat().st_size == meta["size"], name

    # what the card tells a reader to run: verify an apply output against the Hub base, diff the two Hub repos
    verified = run_cli("verify", str(recipe), "--model", BASE, "--patched", str(out))
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("ok: ")
    diffed = run_cli("diff", BASE, FIX, "--json")
    assert diffed.exit_code == 0, diffed.output
    changed = json.loads(diffed.stdout)
    assert sorted({c["tensor"] for c in changed["changed"]}) == sorted({e["tensor"] for e in prov["edits"]})

    for _ in range(2):  # --pr with nothing changed: said so, no pull request, no commit, no "pushed N files"
        again = run_cli("push", str(out), "--repo", FIX, "--pr")
        assert again.exit_code == 0, again.output
        assert f"nothing to push: {FIX}@main already holds these files" in again.output
        assert "no pull request was opened" in again.output
        assert "pushed" not in again.output
    refs = api.list_repo_refs(FIX, include_pull_requests=True)
    assert refs.pull_requests == [] and [b.target_commit for b in refs.branches if b.name == "main"] == [main_sha]
    assert len([r for r in hub.requests("POST", r"/commit/") if r.status == 200]) == 2  # the base upload + the push


def test_verify_accepts_a_pulled_copy(hub, tmp_path):
    """`patchkit verify --patched` on what `pull` downloaded: every checkpoint file matches; README.md is the card."""
    from patchkit.publish import hub as pkhub

    _, commit = upload_base(hub, "gemma4", tmp_path)
    recipe = write_recipe(tmp_path, "gemma4", commit)
    assert run_cli("apply", str(recipe), "--model", BASE, "-o", str(tmp_path / "out")).exit_code == 0
    pkhub.push(tmp_path / "out", FIX, progress=False)
    pulled = pkhub.pull(FIX)
    verified = run_cli("verify", str(recipe), "--model", BASE, "--patched", str(pulled.path))
    assert verified.exit_code == 0, verified.output


GGUF_REPO = "alice/tiny-gguf"
GGUF_RECIPE = """\
patchkit: 1
name: t1
model: {architecture: llama, repo: org/base-model}
source: {kind: manual}
edits:
  - {layer: 0, neuron: 3, op: invert}
  - {layer: 1, neuron: 5, op: scale, factor: 0.5}
"""


def test_pull_checks_a_patched_gguf_against_the_metadata_inside_it(hub, tmp_path):
    """A GGUF repo has no patchkit.json: pull checks the edited rows against the sha256 the file records, and a
    file whose edited rows were changed after apply fails the pull (exit 1) naming the rows."""
    from gguf_builders import tiny_llama
    from huggingface_hub import HfApi

    from patchkit.edit.gguf_apply import apply_gguf
    from patchkit.edit.gguf_plan import provenance_of
    from patchkit.model.gguf_model import open_gguf_model
    from patchkit.publish import hub as pkhub

    src = tiny_llama(tmp_path / "src.gguf", "Q4_K")
    recipe = tmp_path / "t1.yaml"
    recipe.write_text(GGUF_RECIPE)
    out = tmp_path / "out" / "tiny-Q4_K_M.gguf"
    apply_gguf(recipe, model=src, out=out)
    pkhub.push(out, GGUF_REPO, progress=False)

    good = run_cli("pull", GGUF_REPO, "--local-dir", str(tmp_path / "good"), "--json")
    assert good.exit_code == 0, good.output
    report = json.loads(good.stdout)
    assert (report["provenance_ok"], report["checked_against"], report["gguf_files"]) == (
        True,
        "gguf",
        ["tiny-Q4_K_M.gguf"],
    )
    human = run_cli("pull", GGUF_REPO, "--local-dir", str(tmp_path / "good"))
    assert "edited rows match the patchkit metadata of tiny-Q4_K_M.gguf: yes" in human.output
    assert "nothing to check against" not in human.output

    # someone re-uploads the file with one byte of an edited row changed (its metadata still says otherwise)
    model = open_gguf_model(out)
    edit = provenance_of(model.parts[0])["edits"][1]
    _, tensor = model.tensor(edit["tensor"])
    first, end = edit["rows"]
    offset = tensor.start + first * (edit["bytes"] // (end - first))
    data = bytearray(out.read_bytes())
    data[offset] ^= 0x01
    HfApi(endpoint=hub.url, token=hub.token).upload_file(
        path_or_fileobj=bytes(data), path_in_repo=out.name, repo_id=GGUF_REPO
    )
    bad = run_cli("pull", GGUF_REPO, "--local-dir", str(tmp_path / "bad"))
    assert bad.exit_code == 1
    assert "edited rows match the patchkit metadata of tiny-Q4_K_M.gguf: NO" in bad.output
    rows = f"rows {first}–{end - 1} of {edit['tensor']}"
    assert f"tiny-Q4_K_M.gguf: {rows} changed since `patchkit apply`" in bad.output
