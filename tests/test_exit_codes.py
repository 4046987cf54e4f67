"""Exit codes of validate, apply, diff and verify: 0 ok, 1 only for a found difference (verify; diff with
--exit-code), 2 for bad input or usage (never 1), 3 for an internal error (a bug), as patchkit.errors documents."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from fixtures.tiny_models import raw_llama_checkpoint
from test_apply import write_recipe

from patchkit.cli import main
from patchkit.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_OK


@pytest.fixture(autouse=True)
def _engine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def setup(tmp_path):
    """A base, a recipe for it, and the recipe applied (`out`)."""
    base = raw_llama_checkpoint(tmp_path / "base", "F32", shards=2)
    recipe = write_recipe(tmp_path / "r.yaml")
    result = CliRunner().invoke(main, ["apply", str(recipe), "--model", str(base), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_OK, result.output
    return base, recipe, tmp_path / "out"


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _one_line_error(output: str) -> bool:
    lines = [line for line in output.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ")


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


# --- validate ------------------------------------------------------------------------------------------------


def test_validate_exit_codes(setup, tmp_path, monkeypatch):
    base, recipe, _ = setup
    assert run("validate", recipe, "--model", base)[0] == EXIT_OK
    code, out = run("validate", tmp_path / "nope.yaml")
    assert code == EXIT_BAD_INPUT and _one_line_error(out) and "recipe file not found" in out
    bad = write_recipe(tmp_path / "bad.yaml", ["{layer: 9, neuron: 5, op: invert}"])
    code, out = run("validate", bad, "--model", base)
    assert code == EXIT_BAD_INPUT and _one_line_error(out) and "bad.yaml:" in out
    code, out = run("validate", recipe, "--model", tmp_path / "no-model")
    assert code == EXIT_BAD_INPUT and _one_line_error(out) and "no-model" in out
    monkeypatch.setattr("patchkit.recipe.validate.validate_recipe", _boom)
    code, out = run("validate", recipe, "--model", base)
    assert code == EXIT_INTERNAL and "internal error: RuntimeError: boom" in out


# --- apply ---------------------------------------------------------------------------------------------------


def test_apply_exit_codes(setup, tmp_path, monkeypatch):
    base, recipe, out = setup
    assert run("apply", recipe, "--model", base, "--out", tmp_path / "again")[0] == EXIT_OK
    code, text = run("apply", tmp_path / "nope.yaml", "--model", base)
    assert code == EXIT_BAD_INPUT and _one_line_error(text)
    code, text = run("apply", recipe, "--model", tmp_path / "no-model", "--out", tmp_path / "x")
    assert code == EXIT_BAD_INPUT and _one_line_error(text) and "no-model" in text
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("not patchkit's")
    code, text = run("apply", recipe, "--model", base, "--out", tmp_path / "taken")
    assert code == EXIT_BAD_INPUT and _one_line_error(text)
    monkeypatch.setattr("patchkit.edit.apply.apply_recipe", _boom)
    code, text = run("apply", recipe, "--model", base, "--out", tmp_path / "y")
    assert code == EXIT_INTERNAL and "internal error" in text


# --- diff ----------------------------------------------------------------------------------------------------


def test_diff_reports_differences_with_exit_0_unless_asked(setup):
    base, _, out = setup
    code, text = run("diff", base, out)
    assert code == EXIT_OK and "inverted" in text  # a found difference is the normal result
    code, text = run("diff", base, out, "--exit-code")
    assert code == EXIT_GATE_FAILED and "inverted" in text  # the report is still printed
    code, text = run("diff", base, out, "--exit-code", "--json")
    assert code == EXIT_GATE_FAILED and json.loads(text)["differs"] is True
    code, text = run("diff", base, out, "--exit-code", "--as-recipe")
    assert code == EXIT_GATE_FAILED and "op: invert" in text


def test_diff_exit_code_is_0_for_identical_checkpoints(setup, tmp_path):
    base, recipe, out = setup
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    code, text = run("diff", base, copy, "--exit-code")
    assert code == EXIT_OK and "identical weights" in text
    # two outputs of the same apply differ only in patchkit.json (it records when): not a difference
    assert run("apply", recipe, "--model", base, "--out", tmp_path / "out2")[0] == EXIT_OK
    record = tmp_path / "out2" / "patchkit.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "created": "2000-01-01T00:00:00Z"}))
    code, text = run("diff", out, tmp_path / "out2", "--exit-code", "--json")
    report = json.loads(text)
    assert code == EXIT_OK and report["other_files_changed"] == ["patchkit.json"] and report["differs"] is False
    # any other file counts, as in `git diff --exit-code`: same weights, another config
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "note": 1}', 1))
    code, text = run("diff", base, copy, "--exit-code")
    assert code == EXIT_GATE_FAILED and "other file differs: config.json" in text


def test_diff_exit_code_on_gguf(tmp_path):
    pytest.importorskip("gguf")
    from gguf_builders import tiny_llama

    src = tiny_llama(tmp_path / "base.gguf", "Q8_0")
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(src, copy)
    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        "patchkit: 1\nname: g\nmodel: {architecture: llama}\nsource: {kind: manual}\n"
        "edits:\n  - {layer: 0, neuron: 1, op: invert}\n"
    )
    patched = tmp_path / "patched.gguf"
    assert run("apply", recipe, "--model", src, "--out", patched)[0] == EXIT_OK
    assert run("diff", src, copy, "--exit-code")[0] == EXIT_OK
    assert run("diff", src, patched)[0] == EXIT_OK
    code, text = run("diff", src, patched, "--exit-code", "--json")
    assert code == EXIT_GATE_FAILED and json.loads(text)["differs"] is True
    # verify on GGUF: 0 match, 1 difference, 2 for every input it cannot read
    assert run("verify", recipe, "--model", src, "--patched", patched)[0] == EXIT_OK
    assert run("verify", recipe, "--model", src, "--patched", copy)[0] == EXIT_GATE_FAILED
    (tmp_path / "junk.gguf").write_bytes(b"GGUFjunk")
    for args in (
        ("--model", tmp_path / "no-source.gguf", "--patched", patched),
        ("--model", src, "--patched", tmp_path / "no-patched.gguf"),
        ("--model", src, "--patched", tmp_path / "junk.gguf"),
    ):
        code, text = run("verify", recipe, *args)
        assert code == EXIT_BAD_INPUT and _one_line_error(text), (args, text)


def test_diff_bad_input_and_internal_errors(setup, tmp_path, monkeypatch):
    base, _, out = setup
    for args in (
        (base, tmp_path / "nope"),  # no such checkpoint
        (base, tmp_path / "nope", "--exit-code"),  # bad input stays 2 with --exit-code
        (base, tmp_path / "x.gguf"),  # a .gguf with a directory
        (base, out, "-o", tmp_path / "from-diff.yaml"),  # -o without --as-recipe: nothing would be written
    ):
        code, text = run("diff", *args)
        assert code == EXIT_BAD_INPUT, (args, text)
    assert not (tmp_path / "from-diff.yaml").exists()
    code, text = run("diff", base, tmp_path / "nope", "--json")
    assert code == EXIT_BAD_INPUT and json.loads(text.splitlines()[-1])["error"]["exit_code"] == EXIT_BAD_INPUT
    monkeypatch.setattr("patchkit.workflows.resolve.diff_refs", _boom)
    code, text = run("diff", base, out, "--exit-code")
    assert code == EXIT_INTERNAL and "internal error" in text


# --- verify --------------------------------------------------------------------------------------------------


def test_verify_exit_codes(setup, tmp_path, monkeypatch):
    base, recipe, out = setup
    assert run("verify", recipe, "--model", base, "--patched", out)[0] == EXIT_OK
    other = write_recipe(tmp_path / "other.yaml", ["{layer: 0, neuron: 3, op: invert}"])
    code, text = run("verify", other, "--model", base, "--patched", out)
    assert code == EXIT_GATE_FAILED and "differs" in text  # a found difference: the only exit 1
    bad_input = {
        "missing recipe": ("verify", tmp_path / "nope.yaml", "--model", base, "--patched", out),
        "recipe is a directory": ("verify", tmp_path, "--model", base, "--patched", out),
        "missing model": ("verify", recipe, "--model", tmp_path / "no-model", "--patched", out),
        "missing patched": ("verify", recipe, "--model", base, "--patched", tmp_path / "no-out"),
        "no reference to re-check": ("verify", recipe, "--model", base),
    }
    for why, args in bad_input.items():
        code, text = run(*args)
        assert code == EXIT_BAD_INPUT and _one_line_error(text), (why, code, text)
    code, text = run("verify", recipe, "--model", base, "--json")
    assert code == EXIT_BAD_INPUT and json.loads(text.splitlines()[-1])["ok"] is False
    monkeypatch.setattr("patchkit.edit.verify.verify_patched", _boom)
    code, text = run("verify", recipe, "--model", base, "--patched", out)
    assert code == EXIT_INTERNAL and "internal error" in text
