"""`patchkit check` and `patchkit bench --recipe`: a zeroing recipe is caught by its own checks.bench gate.

Uses the real patchkit.recipe / patchkit.edit.apply when they are importable; otherwise a minimal local stand-in
(JSON recipe -> zeroed down_proj columns) so the composition logic is still tested.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench_tiny import one_thread, make_tiny_llama, write_recipe, zero_neurons_copy
from patchkit.cli import main
from patchkit.recipe.gates import BenchGates, Checks


def _real(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - a missing or half-written module counts as absent
        return False


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture
def recipe_api(monkeypatch):
    """Real recipe/apply modules when present, else stand-ins with the contract's signatures."""
    if all(_real(m) for m in ("patchkit.recipe", "patchkit.edit.apply", "patchkit.model.refs", "patchkit.model.adapters")):
        return "real"

    class StandInRecipe:
        def __init__(self, path: Path):
            doc = json.loads(Path(path).read_text())
            self.name = doc["name"]
            self.edits = doc["edits"]
            self.checks = Checks(**doc.get("checks", {}))

        def expanded_edits(self):
            return [(e["layer"], n) for e in self.edits for n in e["neuron"]]

    def load_recipe(path):
        return StandInRecipe(path)

    def apply_recipe(recipe, *, model=None, out=None, **_):
        recipe = recipe if isinstance(recipe, StandInRecipe) else StandInRecipe(recipe)
        edit = recipe.edits[0]
        zero_neurons_copy(Path(model), Path(out), edit["layer"], edit["neuron"])
        return types.SimpleNamespace(out_dir=Path(out))

    monkeypatch.setitem(sys.modules, "patchkit.recipe", types.SimpleNamespace(load_recipe=load_recipe))
    monkeypatch.setitem(sys.modules, "patchkit.edit.apply", types.SimpleNamespace(apply_recipe=apply_recipe))
    return "stand-in"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("check") / "base")


def test_check_fails_on_kl_gate_and_names_it(base, tmp_path, recipe_api):
    recipe = write_recipe(tmp_path / "zero.yaml", layer=1, neurons=list(range(48)), bench={"max_kl": 0.001})
    out = tmp_path / "patched"
    result = CliRunner().invoke(main, ["check", str(recipe), "--model", str(base), "-o", str(out), "--limit", "3",
                                       "--skip-loops", "--tasks", "kl,ppl"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: check failed: bench: max_kl: mean per-token KL(base||patched)")
    assert "> 0.001" in last
    assert (out / "config.json").is_file()  # -o keeps the patched checkpoint


def test_check_passes_with_generous_gate_and_reports_steps(base, tmp_path, recipe_api):
    recipe = write_recipe(tmp_path / "zero.yaml", layer=1, neurons=[0], bench={"max_kl": 50.0, "max_ppl_ratio": 10.0})
    result = CliRunner().invoke(main, ["check", str(recipe), "--model", str(base), "--limit", "3", "--json",
                                       "--tasks", "kl,ppl", "--skip-loops"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    steps = {s["step"]: s["status"] for s in payload["steps"]}
    assert steps == {"validate": "pass", "apply": "pass", "loops": "skipped", "bench": "pass"}
    assert payload["verdict"] == "PASS (skipped: loops)"
    assert 0 < payload["bench"]["figures"][0]["delta"] < 50.0


def test_check_composes_loop_check(base, tmp_path, recipe_api, monkeypatch):
    recipe = write_recipe(tmp_path / "zero.yaml", layer=1, neurons=[0], bench={"max_kl": 50.0})
    from patchkit.workflows.check import run_check

    monkeypatch.setitem(sys.modules, "patchkit.checks.loops", None)
    report = run_check(recipe, str(base), tasks="kl", limit=2)
    loops = next(s for s in report.steps if s.step == "loops")
    assert loops.status == "skipped" and "loop check unavailable" in loops.summary

    calls = {}

    def run_loops(base, patched, gates=None, limit=None):
        calls.update(base=base, patched=patched)
        return types.SimpleNamespace(failures=["max_loop_rate: patched loop rate 0.5 > 0.1"], to_json=lambda: {})

    monkeypatch.setitem(sys.modules, "patchkit.checks.loops", types.SimpleNamespace(run_loops=run_loops))
    report = run_check(recipe, str(base), tasks="kl", limit=2)
    assert calls["base"] == str(base) and Path(calls["patched"]).name == "patched"
    assert not report.passed and report.verdict == "FAIL"
    assert report.failures == ["loops: max_loop_rate: patched loop rate 0.5 > 0.1"]


def test_bench_recipe_gates_exit_code(base, tmp_path, recipe_api):
    recipe = write_recipe(tmp_path / "zero.yaml", layer=1, neurons=list(range(48)),
                          bench={"max_kl": 0.001, "tasks": ["kl"]})
    result = CliRunner().invoke(main, ["bench", str(base), "--recipe", str(recipe), "--limit", "3"])
    assert result.exit_code == 1
    assert "error: bench gate failed: max_kl:" in result.output
    # an already-applied checkpoint gated by the recipe's thresholds
    patched = zero_neurons_copy(base, tmp_path / "p", 1, list(range(48)))
    result = CliRunner().invoke(main, ["bench", str(base), "--patched", str(patched), "--recipe", str(recipe),
                                       "--limit", "3", "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["tasks"] == ["kl"] and payload["gates"]["max_kl"] == 0.001
    assert payload["failures"][0].startswith("max_kl:")


def test_bench_gates_model_accepts_new_field():
    gates = BenchGates(max_first_token_kl=0.1)
    assert gates.max_first_token_kl == 0.1
