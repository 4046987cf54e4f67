"""`patchkit check` and `patchkit bench --recipe`, on the real recipe loader, apply, loop check and bench.

A zeroing recipe is caught by its own checks.bench gate; a recipe whose checks.loops gate the (looping) patched
model misses makes the whole check FAIL with the loop gate named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_tiny import make_tiny_llama, one_thread, write_recipe, zero_neurons_copy
from click.testing import CliRunner
from fixtures.cli_output import json_docs
from loops_tiny import bigram_model, cycle

from patchkit.cli import main
from patchkit.errors import EXIT_BAD_INPUT, PatchkitError
from patchkit.recipe.gates import BenchGates
from patchkit.workflows.check import CheckSettings, run_check

#: one enumeration item and one control, so the loop step runs 2 short generations per model
SUITE = """\
suite: check-mini
version: 1
probes:
  - id: stars
    kind: enumeration
    split: train
    category: astronomy
    truth: [Vega, Deneb, Altair, Sirius, Rigel]
    prompts: ["List bright stars"]
  - id: say-ok
    kind: control
    split: heldout
    category: misc
    prompts: ["Say OK"]
    answer: {any: [OK]}
    max_new_tokens: 12
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("check") / "base")


@pytest.fixture(scope="module")
def looping(tmp_path_factory) -> Path:
    """A llama whose greedy answer to anything is "Vega\\nVega\\n..." and whose MLPs are already zero, so a
    zeroing recipe leaves it unchanged: the patched model loops on every enumeration probe, for sure."""
    model, tok = bigram_model(cycle("Vega\n"))
    path = tmp_path_factory.mktemp("check") / "looping"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _loop_recipe(path: Path, suite: Path, *, max_loop_rate: float) -> Path:
    """write_recipe's recipe plus a checks.loops section (suite file, short budget, a loop-rate gate)."""
    recipe = write_recipe(path, layer=1, neurons=[0], bench={"max_kl": 50.0})
    doc = json.loads(recipe.read_text())
    doc["checks"]["loops"] = {"suite": str(suite), "max_new_tokens": 60, "max_loop_rate": max_loop_rate}
    recipe.write_text(json.dumps(doc))
    return recipe


def test_check_fails_on_kl_gate_and_names_it(base, tmp_path):
    recipe = write_recipe(tmp_path / "zero.yaml", layer=1, neurons=list(range(48)), bench={"max_kl": 0.001})
    out = tmp_path / "patched"
    result = CliRunner().invoke(
        main,
        [
            "check",
            str(recipe),
            "--model",
            str(base),
            "-o",
            str(out),
            "--limit",
            "3",
            "--skip-loops",
            "--tasks",
            "kl,ppl",
        ],
    )
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: check failed: bench: max_kl: mean per-token KL(base||patched)")
    assert "> 0.001" in last
    assert (out / "config.json").is_file()  # -o keeps the patched checkpoint


def test_check_passes_with_generous_gate_and_reports_steps(base, tmp_path):
    recipe = write_recipe(tmp_path / "zero.yaml", layer=1, neurons=[0], bench={"max_kl": 50.0, "max_ppl_ratio": 10.0})
    result = CliRunner().invoke(
        main,
        ["check", str(recipe), "--model", str(base), "--limit", "3", "--json", "--tasks", "kl,ppl", "--skip-loops"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    steps = {s["step"]: s["status"] for s in payload["steps"]}
    assert steps == {"validate": "pass", "apply": "pass", "loops": "skipped", "bench": "pass"}
    assert payload["verdict"] == "PASS (skipped: loops)" and payload["loops"] is None
    assert payload["bench"]["tasks"] == ["kl", "ppl"]
    kl = next(f for f in payload["bench"]["figures"] if f["key"] == "kl.mean")
    assert 0 < kl["delta"] < 50.0 and kl["n"] > 0 and len(kl["delta_ci"]) == 2


def test_check_runs_the_loop_check_on_the_applied_model_and_gates_it(looping, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    failing = _loop_recipe(tmp_path / "strict.yaml", suite, max_loop_rate=0.0)
    out = tmp_path / "patched"
    report = run_check(failing, str(looping), out=out, settings=CheckSettings(tasks="kl", limit=2))
    steps = {s.step: s.status for s in report.steps}
    assert steps == {"validate": "pass", "apply": "pass", "loops": "fail", "bench": "pass"}
    # the loop check ran base vs the checkpoint apply wrote, with the recipe's suite and budget
    assert report.loops.base.model == str(looping) and report.loops.patched.model == str(out)
    assert report.loops.settings.suite == str(suite) and report.loops.settings.max_new_tokens == 60
    assert report.loops.settings.limit == 2
    assert not report.passed and report.verdict == "FAIL"
    assert report.failures == ["loops: max_loop_rate: patched loop rate 1.000 (1/1) > 0.0"]

    lenient = _loop_recipe(tmp_path / "lenient.yaml", suite, max_loop_rate=1.0)
    result = CliRunner().invoke(
        main, ["check", str(lenient), "--model", str(looping), "--limit", "2", "--tasks", "kl", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [s["status"] for s in payload["steps"]] == ["pass", "pass", "pass", "pass"]
    assert payload["verdict"] == "PASS"
    loops = payload["loops"]
    assert loops["gates"]["max_loop_rate"] == 1.0 and loops["failures"] == []
    assert loops["overall"]["patched"]["loop_rate"] == {"value": 1.0, "k": 1, "n": 1, "ci": [0.2065, 1.0]}

    result = CliRunner().invoke(main, ["check", str(failing), "--model", str(looping), "--limit", "2", "--tasks", "kl"])
    assert result.exit_code == 1, result.output
    assert "error: check failed: loops: max_loop_rate: patched loop rate 1.000 (1/1) > 0.0" in result.output


def test_check_raises_a_recipe_that_does_not_fit_as_bad_input(base, tmp_path):
    """Bad input is not a verdict: a recipe apply refuses is its one-line error (exit 2), never a FAIL (exit 1)."""
    recipe = write_recipe(tmp_path / "bad.yaml", layer=7, neurons=[0], bench={"max_kl": 1.0})  # the model has 2 layers
    steps: list[str] = []
    with pytest.raises(PatchkitError) as caught:
        run_check(
            recipe,
            str(base),
            settings=CheckSettings(tasks="kl", limit=2),
            step_callback=lambda s: steps.append(f"{s.step}: {s.status}"),
        )
    assert caught.value.exit_code == EXIT_BAD_INPUT and "layer 7" in str(caught.value)
    assert steps == ["validate: pass"]  # nothing was measured
    result = CliRunner().invoke(main, ["check", str(recipe), "--model", str(base), "--limit", "2", "--tasks", "kl"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output


def test_bench_recipe_gates_exit_code(base, tmp_path):
    recipe = write_recipe(
        tmp_path / "zero.yaml", layer=1, neurons=list(range(48)), bench={"max_kl": 0.001, "tasks": ["kl"]}
    )
    result = CliRunner().invoke(main, ["bench", str(base), "--recipe", str(recipe), "--limit", "3"])
    assert result.exit_code == 1
    assert "error: bench gate failed: max_kl:" in result.output
    # an already-applied checkpoint gated by the recipe's thresholds
    patched = zero_neurons_copy(base, tmp_path / "p", 1, list(range(48)))
    result = CliRunner().invoke(
        main, ["bench", str(base), "--patched", str(patched), "--recipe", str(recipe), "--limit", "3", "--json"]
    )
    assert result.exit_code == 1
    (payload,) = json_docs(result.stdout)  # a failed gate is a result: the report is the one JSON document
    assert payload["tasks"] == ["kl"] and payload["gates"]["max_kl"] == 0.001
    assert payload["failures"][0].startswith("max_kl:")


def test_bench_gates_model_accepts_new_field():
    gates = BenchGates(max_first_token_kl=0.1)
    assert gates.max_first_token_kl == 0.1
