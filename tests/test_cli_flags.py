"""CLI flags from the usability issue, each through `patchkit.cli:main` (click's CliRunner):

* `--no-chat` on loops, bench, check and locate; without it, a tokenizer with no chat template is one line
  naming the flag (exit 2), never a traceback;
* `--base-url` without `--backend openai` is refused, not ignored;
* `--max-new-tokens` caps the control probes too;
* `detect --exit-code` exits 1 when a text loops;
* `check` exits 2 on bad input (unreadable recipe, missing model) and 1 only on a failed gate;
* `-o` means `--out`, and every option says what it does.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from bench_tiny import make_tiny_llama, one_thread, write_recipe
from click.testing import CliRunner
from fixtures.cli_output import json_docs
from fixtures.tiny_models import build, word_tokenizer

from patchkit.checks.loops import LoopSettings, build_requests
from patchkit.checks.probes import load_suite
from patchkit.cli import main
from patchkit.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, CheckError, PatchkitError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A tiny llama whose tokenizer has no chat template (a base model): word tokenizer, f32."""
    return build("llama", tmp_path_factory.mktemp("plain") / "model")


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _recipe(tmp_path: Path, *, loops: dict | None = None) -> Path:
    recipe = write_recipe(tmp_path / "r.yaml", layer=1, neurons=[0])
    if loops is not None:
        doc = json.loads(recipe.read_text())
        doc["checks"] = {"loops": loops}
        recipe.write_text(json.dumps(doc))
    return recipe


# ---------------------------------------------------------------------------------------------- --no-chat


def test_no_chat_template_is_one_line_naming_no_chat_in_every_command(plain, tmp_path):
    recipe = _recipe(tmp_path)
    for args in (
        ["loops", str(plain), "--limit", "1", "--max-new-tokens", "4"],
        ["bench", str(plain), "--patched", str(plain), "--limit", "2", "--tasks", "kl"],
        ["check", str(recipe), "--model", str(plain), "--limit", "1", "--tasks", "kl"],
        ["locate", str(plain), "--limit", "1", "-o", str(tmp_path / "found.yaml")],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == EXIT_BAD_INPUT, (args[0], result.output)
        errors = _errors(result.output)
        assert len(errors) == 1 and "has no chat template" in errors[0], (args[0], result.output)
        assert "pass --no-chat" in errors[0] and "Traceback" not in result.output, (args[0], errors)
    assert not (tmp_path / "found.yaml").exists()


def test_no_chat_runs_loops_bench_and_check_on_raw_prompts(plain, tmp_path):
    result = CliRunner().invoke(main, ["loops", str(plain), "--limit", "1", "--max-new-tokens", "4", "--no-chat"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["bench", str(plain), "--patched", str(plain), "--limit", "2", "--tasks", "kl", "--no-chat", "--json"]
    )
    assert result.exit_code == 0, result.output
    (bench,) = json_docs(result.stdout)
    assert bench["details"]["kl"]["by_source"]["controls"]["texts"] > 0  # the control prompts were asked raw
    recipe = _recipe(tmp_path, loops={"max_new_tokens": 4, "max_loop_rate": 1.0})
    result = CliRunner().invoke(
        main, ["check", str(recipe), "--model", str(plain), "--limit", "1", "--tasks", "kl", "--no-chat", "--json"]
    )
    assert result.exit_code == 0, result.output
    (check,) = json_docs(result.stdout)
    assert [s["status"] for s in check["steps"]] == ["pass", "pass", "pass", "pass"]
    assert check["loops"]["settings"]["chat"] is False


def test_locate_no_chat_feeds_the_raw_prompt_ids(plain, tmp_path):
    """locate --no-chat tokenizes a probe exactly as the transformers backend tokenizes a raw prompt."""
    from patchkit.locate.generation import prompt_ids
    from patchkit.locate.run import _raw_prompts

    probe = load_suite("enumeration").probes[0]
    bos = word_tokenizer()
    from tokenizers import processors

    bos._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    for tok in (word_tokenizer(), bos):
        raw = _raw_prompts(tok)
        assert prompt_ids(raw, probe) == list(tok(probe.prompt)["input_ids"])
        assert tok.chat_template is None  # the caller's tokenizer is left as it was
    assert prompt_ids(_raw_prompts(bos), probe)[0] == 2

    out = tmp_path / "found.yaml"
    result = CliRunner().invoke(
        main,
        ["locate", str(plain), "--no-chat", "--limit", "1", "--heldout-limit", "1", "--max-new-tokens", "6"]
        + ["--budget-minutes", "1", "-o", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    (payload,) = json_docs(result.stdout)
    assert payload["recipe"] == str(out) and out.is_file()


# ---------------------------------------------------------------------------------------------- --base-url


def test_base_url_without_the_openai_backend_is_refused(plain):
    result = CliRunner().invoke(
        main, ["loops", str(plain), "--base-url", "http://127.0.0.1:9/v1", "--no-chat", "--limit", "1"]
    )
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    (error,) = _errors(result.output)
    assert "base_url http://127.0.0.1:9/v1 is only used by the openai backend" in error
    assert "pass --backend openai" in error
    with pytest.raises(CheckError, match="set backend='openai'"):
        LoopSettings(base_url="http://127.0.0.1:9/v1")
    assert LoopSettings(base_url="http://127.0.0.1:9/v1", backend="openai").base_url == "http://127.0.0.1:9/v1"


# ---------------------------------------------------------------------------------------------- --max-new-tokens


def test_max_new_tokens_caps_the_control_probes():
    suite = load_suite("controls")
    own = {p.id: p.max_new_tokens for p in suite.probes if p.kind == "control"}
    assert own and all(8 < budget < 400 for budget in own.values())  # the controls carry their own budgets
    capped = build_requests(suite, LoopSettings(max_new_tokens=8))
    assert {req.max_new_tokens for _, _, req in capped} == {8}
    roomy = build_requests(suite, LoopSettings(max_new_tokens=400))
    assert {p.id: req.max_new_tokens for p, _, req in roomy if p.kind == "control"} == own  # smaller ones stay


def test_max_new_tokens_bounds_every_generation(tmp_path):
    """A random model rarely says EOS, so its control answers run on: --max-new-tokens must stop them too."""
    path = make_tiny_llama(tmp_path / "chatty")
    result = CliRunner().invoke(
        main,
        ["loops", str(path), "--suite", "controls", "--limit", "2", "--max-new-tokens", "5", "--no-early-stop"]
        + ["--report", str(tmp_path / "report")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "loops.json").read_text())
    controls = [r for r in report["base"]["results"] if r["kind"] == "control"]
    assert controls and max(r["tokens"] for r in controls) == 5


# ---------------------------------------------------------------------------------------------- detect --exit-code


def test_detect_exit_code_is_opt_in_and_1_only_when_a_text_loops(tmp_path):
    (tmp_path / "loop.txt").write_text("Planets: Mercury, Venus, Earth, Mars" + ", Mars" * 40)
    (tmp_path / "ok.txt").write_text("Planets: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.")
    looping, fine = str(tmp_path / "loop.txt"), str(tmp_path / "ok.txt")
    runner = CliRunner()
    assert runner.invoke(main, ["detect", looping]).exit_code == 0  # without the flag: 0 either way
    result = runner.invoke(main, ["detect", "--exit-code", fine, looping])
    assert result.exit_code == EXIT_GATE_FAILED and not _errors(result.output), result.output
    assert runner.invoke(main, ["detect", "--exit-code", fine]).exit_code == 0
    result = runner.invoke(main, ["detect", "--exit-code", "--json", looping])
    assert result.exit_code == EXIT_GATE_FAILED
    (payload,) = json_docs(result.stdout)  # the result is the one JSON document
    assert payload["loops"] == 1 and payload["results"][0]["is_loop"] is True
    missing = runner.invoke(main, ["detect", "--exit-code", "/nonexistent/x.txt"])
    assert missing.exit_code == EXIT_BAD_INPUT  # bad input stays 2, with or without the flag


# ---------------------------------------------------------------------------------------------- check exit codes


def test_check_exits_2_on_bad_input_and_1_only_on_a_failed_gate(plain, tmp_path):
    recipe = _recipe(tmp_path)
    runner = CliRunner()
    unreadable = runner.invoke(main, ["check", str(tmp_path / "nope.yaml"), "--model", str(plain)])
    assert unreadable.exit_code == EXIT_BAD_INPUT, unreadable.output
    missing = runner.invoke(main, ["check", str(recipe), "--model", str(tmp_path / "no-model"), "--skip-loops"])
    assert missing.exit_code == EXIT_BAD_INPUT, missing.output
    assert len(_errors(missing.output)) == 1 and "no-model" in _errors(missing.output)[0]
    misfit = write_recipe(tmp_path / "misfit.yaml", layer=9, neurons=[0])  # the model has 3 layers
    result = runner.invoke(main, ["check", str(misfit), "--model", str(plain), "--skip-loops", "--json"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    (payload,) = json_docs(result.stdout)
    assert payload["ok"] is False and "layer" in payload["error"]["message"]
    # a measured model that misses a gate is the only exit 1
    strict = write_recipe(tmp_path / "strict.yaml", layer=1, neurons=list(range(48)), bench={"max_kl": 1e-9})
    result = runner.invoke(
        main,
        ["check", str(strict), "--model", str(plain), "--skip-loops", "--limit", "2", "--tasks", "ppl,kl"]
        + ["--no-chat"],
    )
    assert result.exit_code == EXIT_GATE_FAILED, result.output
    assert _errors(result.output)[-1].startswith("error: check failed: bench: max_kl")


def test_a_checkpoint_without_a_tokenizer_is_one_line_in_every_command(plain, tmp_path):
    import shutil

    model = tmp_path / "no-tokenizer"
    shutil.copytree(plain, model)
    for path in model.glob("tokenizer*"):
        path.unlink()
    recipe = _recipe(tmp_path)
    for args in (
        ["bench", str(model), "--patched", str(model), "--tasks", "ppl", "--no-chat"],
        ["check", str(recipe), "--model", str(model), "--no-chat", "--limit", "1"],
        ["locate", str(model), "--no-chat", "-o", str(tmp_path / "found.yaml")],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == EXIT_BAD_INPUT, (args[0], result.output)
        errors = _errors(result.output)
        assert len(errors) == 1 and "no tokenizer files" in errors[0] and "Traceback" not in result.output, args[0]


def test_run_check_raises_bad_input_instead_of_a_fail_verdict(plain, tmp_path):
    from patchkit.workflows.check import CheckSettings, run_check

    steps: list[str] = []
    with pytest.raises(PatchkitError) as caught:
        run_check(
            _recipe(tmp_path),
            str(tmp_path / "no-model"),
            settings=CheckSettings(skip_loops=True),
            step_callback=lambda s: steps.append(f"{s.step}:{s.status}"),
        )
    assert caught.value.exit_code == EXIT_BAD_INPUT and steps == ["validate:pass"]


# ---------------------------------------------------------------------------------------------- option hygiene


def _options(name: str) -> list[click.Option]:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


@pytest.mark.parametrize("name", ["detect", "loops", "bench", "check", "locate"])
def test_every_option_has_help_and_o_means_out(name):
    for option in _options(name):
        assert option.help and option.help.strip(), (name, option.opts)
        if "-o" in option.opts:
            assert "--out" in option.opts, (name, option.opts)
        if "--dtype" in option.opts:
            default = "auto" if name != "locate" else "float32"
            assert option.default is None or option.default == default
            assert default in option.help.split(".")[0] or f"[default: {default}]" in option.help, (name, option.help)


@pytest.mark.parametrize("name", ["loops", "bench", "check", "locate"])
def test_no_chat_is_a_flag_of_every_command_that_chats(name):
    flags = {opt for option in _options(name) for opt in option.opts + option.secondary_opts}
    assert {"--chat", "--no-chat"} <= flags


def test_locate_o_is_out_and_output_still_works(plain, tmp_path):
    result = CliRunner().invoke(main, ["locate", "--help"])
    assert "-o, --out PATH" in result.output and "--output" not in result.output
    both = CliRunner().invoke(
        main, ["locate", str(plain), "-o", str(tmp_path / "a.yaml"), "--output", str(tmp_path / "b.yaml")]
    )
    assert both.exit_code == EXIT_BAD_INPUT and "give -o/--out once" in both.output


def test_locate_settings_name_a_zero_limit_not_the_suite():
    from patchkit.locate.run import LocateSettings

    with pytest.raises(PatchkitError, match="train_limit 0: must be at least 1") as caught:
        LocateSettings(train_limit=0)
    assert "suite" not in str(caught.value)
    with pytest.raises(PatchkitError, match="max_new_tokens 0"):
        LocateSettings(max_new_tokens=0)
