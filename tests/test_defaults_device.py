"""Defaults that fit the model: `loops`, `bench` and `check` load on the best device torch sees, in the
checkpoint's own dtype (bf16 stays bf16; f16 becomes f32 on CPU), and say what they chose and why.

The tiny checkpoints come from fixtures.tiny_models (`build`), saved in bf16 and in f32, so their config.json
records the dtype the way a release does. No GPU here: CUDA and MPS are simulated by monkeypatching torch's
availability checks, which is all `resolve_placement` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_tiny import one_thread
from click.testing import CliRunner
from fixtures.cli_output import json_docs
from fixtures.tiny_models import build

from patchkit.checks.bench import BenchSettings
from patchkit.checks.loops import LoopSettings
from patchkit.cli import main
from patchkit.errors import EXIT_BAD_INPUT, ModelError
from patchkit.generate.loading import Placement, checkpoint_dtype, load_checkpoint, resolve_placement
from patchkit.workflows.check import CheckSettings

LOOPS_QUICK = ["--limit", "1", "--max-new-tokens", "4", "--no-chat"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory) -> Path:
    """A tiny llama saved in bf16: config.json says `"dtype": "bfloat16"` (word tokenizer, no chat template)."""
    return build("llama", tmp_path_factory.mktemp("bf16") / "model", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory) -> Path:
    return build("llama", tmp_path_factory.mktemp("f32") / "model")


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as a CPU-only one, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _config_dir(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "cfg"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


# ---------------------------------------------------------------------------------------------- the library


def test_the_checks_default_to_auto_device_and_dtype():
    for settings in (LoopSettings(), BenchSettings(), CheckSettings()):
        assert (settings.device, settings.dtype) == ("auto", "auto"), type(settings).__name__


def test_auto_dtype_is_the_checkpoint_dtype_on_cpu(bf16_model, f32_model, no_gpu):
    bf16 = resolve_placement(bf16_model)
    assert (bf16.device, bf16.dtype, bf16.spread) == ("cpu", "bfloat16", False)
    assert bf16.device_reason == "no CUDA or MPS" and bf16.dtype_reason.startswith("config.json dtype")
    assert bf16.describe().startswith("device: cpu (no CUDA or MPS), dtype: bfloat16 (config.json dtype")
    f32 = resolve_placement(f32_model)
    assert (f32.device, f32.dtype, f32.dtype_reason) == ("cpu", "float32", "config.json dtype")
    # an explicit choice wins and says so
    given = resolve_placement(bf16_model, dtype="f32", device="cpu")
    assert (given.device, given.dtype, given.device_reason, given.dtype_reason) == (
        "cpu",
        "float32",
        "as given",
        "as given",
    )


def test_float16_checkpoints_run_in_float32_on_cpu_and_in_float16_on_a_gpu(tmp_path, monkeypatch, no_gpu):
    path = _config_dir(tmp_path, {"model_type": "llama", "torch_dtype": "float16"})
    cpu = resolve_placement(path)
    assert cpu.dtype == "float32" and "float16, slow on CPU" in cpu.dtype_reason
    assert "config.json torch_dtype" in cpu.dtype_reason  # transformers 4 configs name it torch_dtype
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu = resolve_placement(path)
    assert (gpu.device, gpu.dtype, gpu.spread, gpu.device_reason) == ("cuda", "float16", False, "CUDA GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_placement(path).spread is True


def test_auto_device_takes_mps_when_there_is_no_cuda(tmp_path, monkeypatch, no_gpu):
    path = _config_dir(tmp_path, {"model_type": "llama", "dtype": "bfloat16"})
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    mps = resolve_placement(path)
    assert (mps.device, mps.dtype, mps.device_reason) == ("mps", "bfloat16", "Apple MPS; no CUDA")


def test_mps_asked_for_where_there_is_none_is_one_line(tmp_path, no_gpu):
    with pytest.raises(ModelError, match="needs Apple MPS"):
        resolve_placement(_config_dir(tmp_path, {"model_type": "llama"}), device="mps")


def test_checkpoint_dtype_reads_text_config_and_ignores_junk():
    # Gemma 4 multimodal releases may carry the dtype only in text_config
    assert checkpoint_dtype({"text_config": {"dtype": "bfloat16"}}) == ("bfloat16", "config.json text_config.dtype")
    assert checkpoint_dtype({"dtype": "float32", "torch_dtype": "bfloat16"}) == ("float32", "config.json dtype")
    assert checkpoint_dtype({"torch_dtype": "int8"})[0] is None
    assert checkpoint_dtype({}) == (None, "config.json names no dtype")


def test_a_config_without_a_dtype_loads_in_float32(tmp_path, no_gpu):
    placement = resolve_placement(_config_dir(tmp_path, {"model_type": "llama"}))
    assert (placement.dtype, placement.dtype_reason) == ("float32", "config.json names no dtype")


def test_load_checkpoint_loads_in_the_chosen_dtype_and_logs_it_first(bf16_model, no_gpu):
    lines: list[str] = []
    loaded = load_checkpoint(bf16_model, dtype="auto", device="auto", log=lines.append)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.placement == Placement(
        "cpu", "bfloat16", False, "no CUDA or MPS", loaded.placement.dtype_reason
    ) and lines == [loaded.placement.describe()]


# ---------------------------------------------------------------------------------------------- the CLI


def test_loops_prints_the_placement_and_records_it(bf16_model, f32_model, no_gpu):
    result = CliRunner().invoke(main, ["loops", str(bf16_model), *LOOPS_QUICK, "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("device:")]
    assert lines == [
        "device: cpu (no CUDA or MPS), dtype: bfloat16 (config.json dtype; on CPU: half the memory of float32, "
        "slower per token)"
    ]
    (payload,) = json_docs(result.stdout)  # stdout stays one JSON document
    assert payload["placement"]["base"]["dtype"] == "bfloat16" and payload["placement"]["base"]["device"] == "cpu"

    result = CliRunner().invoke(main, ["loops", str(f32_model), *LOOPS_QUICK])
    assert result.exit_code == 0, result.output
    assert "device: cpu (no CUDA or MPS), dtype: float32 (config.json dtype)" in result.output


def test_bench_defaults_to_the_checkpoint_dtype(bf16_model, no_gpu):
    result = CliRunner().invoke(
        main, ["bench", str(bf16_model), "--patched", str(bf16_model), "--tasks", "ppl", "--limit", "2", "--no-chat"]
    )
    assert result.exit_code == 0, result.output
    # base and patched get the same placement: printed once
    assert result.output.count("device: cpu (no CUDA or MPS), dtype: bfloat16") == 1
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(bf16_model),
            "--patched",
            str(bf16_model),
            "--tasks",
            "ppl",
            "--limit",
            "2",
            "--no-chat",
            "--json",
        ],
    )
    (payload,) = json_docs(result.stdout)
    assert payload["provenance"]["dtype"] == "bfloat16" and payload["provenance"]["device"] == "cpu"
    assert payload["provenance"]["placement"]["patched"]["dtype"] == "bfloat16"


def test_dtype_and_device_help_match_their_default():
    for command in ("loops", "bench", "check"):
        result = CliRunner().invoke(main, [command, "--help"], terminal_width=400)
        text = " ".join(result.output.split())
        for flag in ("--dtype", "--device"):
            start = text.index(f"{flag} TEXT")
            help_text = text[start : start + 400]
            assert "[default: auto]" in help_text and "auto (" in help_text, (command, flag, help_text)


def test_cuda_on_a_cpu_only_torch_is_one_line_for_every_command(bf16_model, tmp_path, no_gpu):
    from bench_tiny import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", layer=1, neurons=[0])
    for args in (
        ["bench", str(bf16_model), "--patched", str(bf16_model), "--device", "cuda"],
        ["check", str(recipe), "--model", str(bf16_model), "--device", "cuda", "--skip-loops"],
        ["locate", str(bf16_model), "--device", "cuda", "--no-chat", "-o", str(tmp_path / "out.yaml")],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == EXIT_BAD_INPUT, (args[0], result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "needs CUDA, but this torch has none" in errors[0], (args[0], result.output)
        assert "Traceback" not in result.output
