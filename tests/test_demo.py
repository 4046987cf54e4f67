"""`patchkit demo`: the report directory, the no-recipe stop, the CLI, and one reduced run on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loops_tiny import save_tiny_model

from patchkit.workflows import demo as pd

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SUITE = """\
suite: demo-test
version: 1
description: two list prompts and one control, for a fast demo run
probes:
  - id: primary-colours
    kind: enumeration
    split: train
    category: test
    truth: [red, yellow, blue]
    prompts: ["List the primary colours."]
  - id: us-states
    kind: enumeration
    split: heldout
    category: geography
    truth: [Alabama, Alaska, Arizona, Arkansas, California, Colorado, Connecticut, Delaware, Florida, Georgia]
    prompts: ["List all 50 US states."]
  - id: capital-france
    kind: control
    split: train
    category: geography
    prompts: ["What is the capital of France?"]
    answer: {any: [Paris]}
"""

RECIPE = """\
patchkit: 1
name: demo-test-invert-one-neuron
description: Invert one MLP neuron (a test edit, not a fix).
model: {{repo: HuggingFaceTB/SmolLM2-135M-Instruct, architecture: llama}}
source: {{kind: manual, reference: tests/test_demo.py}}
edits:
  - {{layer: {layer}, neuron: {neuron}, op: invert}}
"""


@pytest.fixture
def suite_file(tmp_path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    return save_tiny_model(tmp_path / "tiny")


class Recorder(pd.DemoEvents):
    def __init__(self):
        self.steps, self.notes, self.cards = [], [], []

    def step(self, key, title):
        self.steps.append(key)

    def note(self, text):
        self.notes.append(text)

    def card(self, text):
        self.cards.append(text)


def _assert_common_report(report_dir: Path, n_enum: int) -> dict:
    for name in pd.REPORT_FILES:
        assert (report_dir / name).is_file(), name
    assert (report_dir / "before-after.png").read_bytes()[:8] == PNG_MAGIC
    report = json.loads((report_dir / "report.json").read_text())
    loops = json.loads((report_dir / "loops.json").read_text())
    base = loops["overall"]["base"]
    assert base["loop_rate"]["n"] == n_enum and 0.0 <= base["loop_rate"]["value"] <= 1.0
    assert base["control_accuracy"]["n"] == 1
    assert loops["base"]["tokens"] > 0 and all(r["tokens"] > 0 for r in loops["base"]["results"])
    assert report["numbers"]["base"]["loop_rate"] == base["loop_rate"]
    assert [p.name for p in report_dir.parent.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    return report


def test_without_a_recipe_the_demo_stops_after_the_base_check(tmp_path, suite_file, tiny_dir, monkeypatch):
    monkeypatch.setattr(pd, "default_recipe_path", lambda: None)
    events = Recorder()
    out = tmp_path / "reports" / "r1"
    result = pd.run_demo(
        settings=pd.DemoSettings(model_dir=tiny_dir, suite=str(suite_file), max_new_tokens=12), out=out, events=events
    )
    assert result.stopped == "no recipe" and not result.complete and result.report_dir == out
    assert any("smollm2-135m.yaml does not exist" in n and "--recipe" in n for n in events.notes)
    assert events.steps == ["import", "base-loops", "report"] and events.cards == []
    report = _assert_common_report(out, n_enum=2)
    assert report["complete"] is False and report["messages"] == result.messages
    assert not (out / "patched-model").exists() and not (out / "transcripts" / "patched.md").exists()
    assert "List the primary colours." in (out / "transcripts" / "base.md").read_text()
    assert [r["patched"] for r in report["summary"]] == [None] * len(report["summary"])


def test_an_unresolved_default_recipe_is_reported_plainly(tmp_path, suite_file, tiny_dir, monkeypatch):
    recipe = tmp_path / "smollm2-135m.yaml"
    recipe.write_text(
        "patchkit: 1\nname: smollm2-none\nmodel: {repo: HuggingFaceTB/SmolLM2-135M-Instruct, "
        "architecture: llama}\nsource: {kind: locate, reference: docs/locate.md}\nedits: []\n"
        "resolution: {status: unresolved, method: locate, reference: no edit passed the gates}\n"
    )
    monkeypatch.setattr(pd, "default_recipe_path", lambda: recipe)
    events = Recorder()
    result = pd.run_demo(
        settings=pd.DemoSettings(model_dir=tiny_dir, suite=str(suite_file), max_new_tokens=8),
        out=tmp_path / "r",
        events=events,
    )
    assert result.stopped == "no recipe" and any("unresolved" in n for n in events.notes)


def test_an_unresolved_locate_recipe_runs_its_candidate_labelled_unconfirmed(
    tmp_path, suite_file, tiny_dir, monkeypatch
):
    recipe = tmp_path / "smollm2-135m.yaml"
    recipe.write_text(
        "patchkit: 1\nname: smollm2-locate\nmodel: {repo: HuggingFaceTB/SmolLM2-135M-Instruct, architecture: llama}\n"
        "source:\n  kind: locate\n  reference: patchkit locate\n  scores:\n    heldout:\n"
        "      base: {loop_rate: {k: 33, n: 45}}\n      edited: {loop_rate: {k: 34, n: 45}}\n"
        "resolution:\n  status: unresolved\n  method: locate\n  constraints:\n    last_locate:\n"
        "      best_candidate: L1 n3 x0.5\n      candidate_edits: [{layer: 1, neuron: 3, op: scale, factor: 0.5}]\n"
        "edits: []\n"
    )
    monkeypatch.setattr(pd, "default_recipe_path", lambda: recipe)
    events = Recorder()
    out = tmp_path / "r"
    result = pd.run_demo(
        settings=pd.DemoSettings(
            model_dir=tiny_dir, suite=str(suite_file), max_new_tokens=8, limit=1, bench_tasks="kl"
        ),
        out=out,
        events=events,
    )
    assert result.complete and result.recipe_origin == "unconfirmed-candidate"
    assert any("UNCONFIRMED candidate, not a fix" in n and "held-out loops 33/45 -> 34/45" in n for n in events.notes)
    diff = json.loads((out / "diff.json").read_text())
    assert diff["as_recipe_edits"] == [{"layer": 1, "neuron": 3, "op": "scale", "factor": 0.5}]
    assert "UNCONFIRMED" in (out / "recipe.yaml").read_text() and "unconfirmed" in (out / "card.md").read_text()


def test_bad_inputs_fail_before_any_generation(tmp_path, tiny_dir):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(pd.DemoError, match="busy: report directory exists and is not empty"):
        pd.run_demo(settings=pd.DemoSettings(model_dir=tiny_dir), out=busy)
    events = Recorder()
    with pytest.raises(pd.DemoError, match="nope.yaml: recipe file not found"):
        pd.run_demo(
            settings=pd.DemoSettings(model_dir=tiny_dir, recipe=tmp_path / "nope.yaml"),
            out=tmp_path / "r",
            events=events,
        )
    assert "base-loops" not in events.steps and not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_full_pipeline_on_a_tiny_model(tmp_path, suite_file, tiny_dir):
    recipe = tmp_path / "invert.yaml"
    recipe.write_text(RECIPE.format(layer=1, neuron=3))
    events = Recorder()
    out = tmp_path / "r"
    result = pd.run_demo(
        settings=pd.DemoSettings(
            model_dir=tiny_dir, suite=str(suite_file), recipe=recipe, max_new_tokens=12, limit=2, bench_tasks="kl,ppl"
        ),
        out=out,
        events=events,
    )
    assert result.complete and result.recipe_origin == "argument"
    assert events.steps == ["import", "base-loops", "apply", "diff", "patched-loops", "bench", "push", "report"]
    report = _assert_common_report(out, n_enum=2)
    diff = json.loads((out / "diff.json").read_text())
    assert [c["tensor"] for c in diff["changed"]] == ["model.layers.1.mlp.down_proj.weight"]
    assert diff["as_recipe_edits"] and diff["as_recipe_edits"][0]["op"] == "invert"
    bench = json.loads((out / "bench.json").read_text())
    kl = next(f for f in bench["figures"] if f["key"] == "kl.mean")
    assert kl["delta"] > 0  # the edit changes the distribution
    assert report["numbers"]["bench"]["kl.mean"]["delta"] == kl["delta"]
    assert (out / "transcripts" / "patched.md").is_file() and (out / "recipe.yaml").read_text() == recipe.read_text()
    card = (out / "card.md").read_text()
    assert events.cards == [card] and "demo-test-invert-one-neuron" in card
    assert (out / "patched-model" / "patchkit.json").is_file()
    rows = {r["metric"]: r for r in report["summary"]}
    assert rows["enumeration loops"]["patched"] is not None and "KL(base||patched), nats/token" in rows


def test_cli_json(tmp_path, suite_file, tiny_dir, monkeypatch):
    from click.testing import CliRunner

    from patchkit.cli import main

    monkeypatch.setattr(pd, "default_recipe_path", lambda: None)
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--model",
            str(tiny_dir),
            "--suite",
            str(suite_file),
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["report_dir"] == str(out) and payload["stopped"] == "no recipe"
    assert (out / "report.json").is_file()
    bad = CliRunner().invoke(
        main,
        ["demo", "--model", str(tiny_dir), "--recipe", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")],
    )
    assert bad.exit_code == 2 and "error:" in bad.output and "missing.yaml: recipe file not found" in bad.output


@pytest.mark.slow
def test_reduced_demo_on_the_real_model(tmp_path, suite_file, smollm2_dir):
    """The real pipeline on SmolLM2 with few probes and tokens: every report file holds measured numbers."""
    recipe = tmp_path / "invert.yaml"
    recipe.write_text(RECIPE.format(layer=28, neuron=1095))  # a high-activation neuron: visibly changes outputs
    out = tmp_path / "real"
    result = pd.run_demo(
        settings=pd.DemoSettings(
            model_dir=smollm2_dir,
            suite=str(suite_file),
            recipe=recipe,
            max_new_tokens=24,
            limit=1,
            bench_tasks="kl,ppl",
            bench_options={"control_max_new_tokens": 12, "max_text_tokens": 64},
        ),
        out=out,
    )
    assert result.complete
    report = _assert_common_report(out, n_enum=1)
    loops = json.loads((out / "loops.json").read_text())
    assert loops["overall"]["base"]["control_accuracy"]["value"] == 1.0  # "Paris"
    assert {r["probe"] for r in loops["patched"]["results"]} == {r["probe"] for r in loops["base"]["results"]}
    texts = {name: [r["text"] for r in loops[name]["results"]] for name in ("base", "patched")}
    assert texts["base"] != texts["patched"]  # inverting this neuron visibly changes greedy outputs
    bench = json.loads((out / "bench.json").read_text())
    kl = next(f for f in bench["figures"] if f["key"] == "kl.mean")
    assert 0 < kl["delta"] < 10
    diff = json.loads((out / "diff.json").read_text())
    assert [c["tensor"] for c in diff["changed"]] == ["model.layers.28.mlp.down_proj.weight"]
    assert report["timings_s"]["total"] > 0 and "demo-test-invert-one-neuron" in (out / "card.md").read_text()
    # the same recipe on the GGUF the model was imported from: written next to the safetensors, byte-verified
    # against its source, and running like the patched safetensors (an inversion is exact up to float noise)
    from patchkit.edit.gguf_check import verify_gguf
    from patchkit.workflows.gguf_import import EMBEDDED_PACKAGE, find_package_gguf

    assert verify_gguf(recipe, model=find_package_gguf(EMBEDDED_PACKAGE)[0], patched=out / "patched-model.gguf").ok
    agreement = json.loads((out / "gguf-agreement.json").read_text())
    assert agreement["edited_layers"] == [28]
    assert agreement["top1_agree"] == agreement["positions"] > 0
    assert agreement["relative"] < 1e-5


def test_a_recipe_that_does_not_fit_fails_before_generation(tmp_path, tiny_dir):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.format(layer=7, neuron=3))  # the tiny model has 2 layers
    events = Recorder()
    with pytest.raises(Exception, match="layer"):
        pd.run_demo(settings=pd.DemoSettings(model_dir=tiny_dir, recipe=recipe), out=tmp_path / "r", events=events)
    assert "base-loops" not in events.steps and not (tmp_path / "r").exists()


def test_demo_recipe_may_be_a_shipped_name(tmp_path):
    """`demo --recipe NAME` finds a shipped recipe by its short name (here an unresolved one, refused as such,
    not as a missing file)."""
    events = pd.DemoEvents() if hasattr(pd, "DemoEvents") else None
    with pytest.raises(pd.DemoError, match="no resolved edits"):
        pd._choose_recipe("e2b", events, [], tmp_path)
