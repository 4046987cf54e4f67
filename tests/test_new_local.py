"""`patchkit new` from a local directory: no invented `repo: org/name`, no fake revision; the fields it cannot
know are marked TO FILL, the text still parses as an (unresolved) recipe, and `validate` says what to fill in."""

from __future__ import annotations

import json
import re
import shutil

from click.testing import CliRunner

from patchkit.cli import main
from patchkit.recipe import parse_recipe

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_new_from_a_local_dir_marks_repo_and_revision_to_fill(tmp_path, tiny_llama):
    local = tmp_path / "somewhere" / "my-llama"
    shutil.copytree(tiny_llama, local)
    out = tmp_path / "new.yaml"
    result = CliRunner().invoke(main, ["new", "--model", str(local), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert not re.search(r"^\s*repo:\s*\S*org/name", text, re.MULTILINE)  # nothing invented as a value
    assert not re.search(r"\b[0-9a-f]{40}\b", text) and "<40-hex" not in text  # no fake pin
    repo_line = next(line for line in text.splitlines() if line.strip().startswith("repo:"))
    revision_line = next(line for line in text.splitlines() if line.strip().startswith("revision:"))
    assert "TO FILL" in repo_line and "'my-llama'" in repo_line and "Hub repo id (org/name)" in repo_line
    assert "TO FILL" in revision_line and "40-hex commit sha" in revision_line
    assert str(tmp_path / "somewhere") not in text  # the directory's name only: recipes get published
    recipe = parse_recipe(text, "new.yaml")
    assert (recipe.model.repo, recipe.model.revision, recipe.model.architecture) == (None, None, "llama")
    assert not recipe.is_resolved


def test_validate_lists_what_to_fill_in_with_line_numbers(tmp_path, tiny_llama):
    out = tmp_path / "new.yaml"
    assert CliRunner().invoke(main, ["new", "--model", str(tiny_llama), "-o", str(out)]).exit_code == 0
    lines = out.read_text().splitlines()
    repo_no = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("repo:"))
    rev_no = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("revision:"))
    human = CliRunner().invoke(main, ["validate", str(out), "--model", str(tiny_llama)])
    assert human.exit_code == 0, human.output
    assert f"to fill in: {out}:{repo_no}:3: model.repo: write the base model's Hub repo id (org/name)" in human.output
    assert f"to fill in: {out}:{rev_no}:3: model.revision: write the 40-hex commit sha" in human.output
    assert re.search(rf"to fill in: {re.escape(str(out))}:\d+:1: edits: fill in `edits:`", human.output)
    report = json.loads(CliRunner().invoke(main, ["validate", str(out), "--json"]).stdout)
    assert [item.split(": ")[1] for item in report["to_fill"]] == ["model.repo", "model.revision", "edits"]


def test_new_from_an_hf_cache_snapshot_pins_repo_and_revision(tmp_path, monkeypatch, tiny_llama):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo_dir = tmp_path / "cache" / "models--org--tiny"
    snap = repo_dir / "snapshots" / SHA
    shutil.copytree(tiny_llama, snap)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SHA)
    result = CliRunner().invoke(main, ["new", "--model", "org/tiny"])
    assert result.exit_code == 0, result.output
    recipe = parse_recipe(result.output, "new.yaml")
    assert (recipe.model.repo, recipe.model.revision) == ("org/tiny", SHA)
    assert "TO FILL" not in result.output
    out = tmp_path / "r.yaml"
    out.write_text(result.output)
    report = json.loads(CliRunner().invoke(main, ["validate", str(out), "--json"]).stdout)
    assert [item.split(": ")[1] for item in report["to_fill"]] == ["edits"]


def test_new_from_an_architecture_alone_invents_nothing():
    result = CliRunner().invoke(main, ["new", "--arch", "gemma4"])
    assert result.exit_code == 0, result.output
    recipe = parse_recipe(result.output, "new.yaml")
    assert (recipe.model.repo, recipe.model.revision, recipe.model.architecture) == (None, None, "gemma4")
    assert result.output.count("TO FILL") == 2


def test_new_writes_with_out_and_keeps_output_as_a_hidden_old_name(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "--arch", "llama", "--out", str(tmp_path / "a.yaml")]).exit_code == 0
    assert runner.invoke(main, ["new", "--arch", "llama", "--output", str(tmp_path / "b.yaml")]).exit_code == 0
    assert (tmp_path / "a.yaml").read_text() == (tmp_path / "b.yaml").read_text()
    both = runner.invoke(main, ["new", "--arch", "llama", "-o", str(tmp_path / "c.yaml"), "--output", "d.yaml"])
    assert both.exit_code == 2 and not (tmp_path / "c.yaml").exists()
    shown = runner.invoke(main, ["new", "--help"]).output
    assert "-o, --out PATH" in shown and "--output" not in shown
