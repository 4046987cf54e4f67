"""The CLI's error contract: one line, the command's own flag as the fix, documented exit codes, --json errors."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from fixtures.tiny_models import raw_llama_checkpoint
from test_apply import write_recipe

from patchkit.cli import main
from patchkit.cli._common import flag_for, handle_errors, json_option
from patchkit.errors import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    ApplyError,
    Fix,
    GateFailed,
)


@pytest.fixture
def base(tmp_path):
    return raw_llama_checkpoint(tmp_path / "base", "BF16", shards=3)


def test_library_error_names_the_parameter_and_carries_data():
    exc = ApplyError("output directory x already exists", fix=Fix("force", why="to replace it"), data={"out": "x"})
    assert str(exc) == "output directory x already exists (set force=True to replace it)"
    assert exc.to_json()["data"] == {"out": "x"} and exc.exit_code == EXIT_BAD_INPUT


def test_cli_renders_the_fix_as_its_own_flag_and_exits_2(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["apply", str(recipe), "--model", str(base), "-o", str(out)])
    assert result.exit_code == EXIT_BAD_INPUT
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: output directory {out} already exists (pass --force to replace it; or choose another output directory)"
    ]
    assert "force=True" not in result.output and (out / "keep.txt").read_text() == "mine"


def test_json_errors_are_data_on_stdout(tmp_path, base):
    recipe = write_recipe(tmp_path / "r.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    result = CliRunner().invoke(
        main, ["apply", str(recipe), "--model", str(base), "-o", str(tmp_path / "out"), "--json"]
    )
    payload = json.loads(result.stdout)
    assert result.exit_code == EXIT_BAD_INPUT and payload["ok"] is False
    assert payload["error"]["type"] == "ApplyError" and payload["error"]["fix"] == "pass --force to replace it"
    assert payload["error"]["data"] == {"out": str(tmp_path / "out")}


def _command(exc: BaseException) -> click.Command:
    @click.command()
    @click.option("--limit", type=int)
    @json_option
    @handle_errors
    def cmd(limit: int | None, as_json: bool) -> None:
        raise exc

    return cmd


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (GateFailed("loop rate 0.4 > max_loop_rate 0.1"), EXIT_GATE_FAILED),
        (ApplyError("bad"), EXIT_BAD_INPUT),
        (FileNotFoundError(2, "No such file or directory", "/nope"), EXIT_BAD_INPUT),
        (ZeroDivisionError("division by zero"), EXIT_INTERNAL),
    ],
)
def test_exit_codes_are_distinct_and_documented(exc, code, monkeypatch):
    monkeypatch.delenv("PATCHKIT_DEBUG", raising=False)
    result = CliRunner().invoke(_command(exc), [])
    assert result.exit_code == code
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    if code == EXIT_INTERNAL:
        assert "patchkit bug" in lines[0] and "PATCHKIT_DEBUG=1" in lines[0]


def test_a_fix_with_a_value_renders_the_metavar():
    cmd = _command(ApplyError("x"))
    assert flag_for(Fix("limit", "N", "(larger)"), cmd) == "pass --limit N (larger)"
    assert flag_for(Fix("unknown_param", 3), cmd) == "set unknown_param=3"


def test_ctrl_c_exits_130_not_the_gate_code(monkeypatch):
    result = CliRunner().invoke(_command(KeyboardInterrupt()), [])
    assert result.exit_code == EXIT_INTERRUPTED
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: interrupted (nothing half-written is left: outputs appear only when complete)"
    ]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_line(tmp_path, base):
    result = CliRunner().invoke(main, ["loops", str(base), "--device", "cuda", "--limit", "1"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "needs CUDA, but this torch has none" in result.output and "internal error" not in result.output


def test_a_typo_device_is_one_line(tmp_path, base):
    result = CliRunner().invoke(main, ["loops", str(base), "--device", "gpu0", "--limit", "1"])
    assert result.exit_code == EXIT_BAD_INPUT and "is not a torch device" in result.output


def test_locate_limit_zero_names_the_flag(tmp_path, base):
    result = CliRunner().invoke(main, ["locate", str(base), "--limit", "0", "-o", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2 and "--limit" in result.output and "suite" not in result.output


def test_a_checkpoint_without_a_tokenizer_is_one_line(tmp_path, tiny_llama):
    import shutil

    model = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, model)
    for path in model.glob("tokenizer*"):
        path.unlink()
    result = CliRunner().invoke(main, ["loops", str(model), "--limit", "1"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "no tokenizer files" in result.output and "internal error" not in result.output
