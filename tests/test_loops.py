"""run_suite / run_loops / LoopReport / gates / report directory / `patchkit loops` and `patchkit detect` CLIs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fixtures.cli_output import json_docs
from loops_tiny import bigram_model, cycle, one_thread

from patchkit.checks.loops import LoopSettings, run_loops, run_suite
from patchkit.checks.probes import load_suite
from patchkit.publish.card import report_rows
from patchkit.recipe.gates import LoopGates


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


# Looping model: every chat answer is "Vega\nVega\n..." (the chat template ends in "\n" -> "V").
LOOPING = {**cycle("Vega\n"), ".": "O", "O": "K", "K": "<eos>"}
# Fixed model: after the newline it lists distinct stars, then stops.
LISTING = {"\n": "V", "V": "e", "e": "g", "g": "a", "a": ",", ",": " ", " ": "D", "D": "n", "n": "b", "b": "<eos>"}

SUITE = """\
suite: mini
version: 1
description: two enumeration items and two controls
probes:
  - id: bright-stars
    kind: enumeration
    split: train
    category: astronomy
    source: hand-written for the tests
    truth: [Vega, Deneb, Altair, Sirius, Rigel, Polaris]
    prompts: ["List bright stars", "Name bright stars"]
  - id: more-stars
    kind: enumeration
    split: heldout
    category: astronomy
    truth: [Vega, Capella]
    prompts: ["List more stars"]
  - id: say-vega
    kind: control
    split: train
    category: misc
    prompts: ["Name a star"]
    answer: {any: [Vega]}
    max_new_tokens: 12
  - id: say-seven
    kind: control
    split: heldout
    category: misc
    prompts: ["What is 3 + 4?"]
    answer: {number: 7}
    max_new_tokens: 12
"""


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, mapping in (("looping", LOOPING), ("listing", LISTING)):
        model, tok = bigram_model(mapping)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def test_run_suite_on_loaded_model_scores_everything(suite_file):
    model, tok = bigram_model(LOOPING)
    suite = load_suite(suite_file, controls=False)
    run = run_suite(suite, model=model, tokenizer=tok, settings=LoopSettings(max_new_tokens=120), label="tiny")
    m = run.metrics()
    assert m.n == 3 and m.loops == 3 and m.label_count("decay") + m.label_count("verbatim") == 3
    assert all(r.generation.stop_reason == "loop" and r.generation.tokens < 120 for r in m.enumeration)
    assert m.completeness.value == pytest.approx((1 / 6 + 1 / 6 + 1 / 2) / 3) and m.completeness.n == 3
    assert m.good_lists == 0 and m.loop_rate.k == 3 and m.loop_rate.value == 1.0
    # controls: 12-token budget "Vega\nVega\nVe" is not a certain loop; "Vega" answers say-vega, 3+4 is wrong
    by_probe = {r.probe.id: r for r in m.controls}
    assert by_probe["say-vega#0"].correct is True and by_probe["say-seven#0"].correct is False
    assert m.control_failures == ["say-seven#0@0"]
    data = run.to_json()
    assert data["overall"]["loop_rate"]["k"] == 3 and data["overall"]["loop_rate"]["n"] == 3
    assert data["by_split"]["heldout"]["loop_rate"]["n"] == 1


def test_run_loops_base_vs_patched_report_and_gates(suite_file, model_dirs, tmp_path):
    from patchkit.checks.loop_report import write_report

    seen = []

    def progress(stage, done, total):
        seen.append((stage, done, total))

    settings = LoopSettings(suite=str(suite_file), max_new_tokens=100, controls=False)
    report = run_loops(model_dirs["looping"], patched_ref=model_dirs["listing"], settings=settings, progress=progress)
    base, patched = report.base.metrics(), report.patched.metrics()
    assert (base.loops, patched.loops) == (3, 0)
    # "Vega, Dnb": only Vega is true
    assert patched.completeness.value == pytest.approx((1 / 6 + 1 / 6 + 1 / 2) / 3)
    assert {s for s, _, _ in seen} == {"base", "patched"}
    # done is absolute: it starts at 0, never goes back, and ends at 3 enumeration + 2 control probes
    for stage in ("base", "patched"):
        dones = [d for s, d, t in seen if s == stage]
        assert dones[0] == 0 and dones[-1] == 5 and dones == sorted(dones)
        assert {t for s, _, t in seen if s == stage} == {5}
    # same probes and seeds on both sides
    assert [(r.probe.id, r.seed) for r in report.base.results] == [(r.probe.id, r.seed) for r in report.patched.results]

    assert report.gate(LoopGates(max_loop_rate=0.1, min_reduction=0.5)) == []
    fails = report.gate(LoopGates(max_loop_rate=0.0, min_completeness=0.9, max_control_failures=0))
    assert [f.split(":")[0] for f in fails] == ["max_control_failures", "min_completeness"]
    assert "0.278 < 0.9" in fails[1]
    flipped = run_loops(model_dirs["listing"], patched_ref=model_dirs["looping"], settings=settings)
    fails = flipped.gate(LoopGates(max_loop_rate=0.5, min_reduction=0.2))
    assert fails[0].startswith("max_loop_rate: patched loop rate 1.000 (3/3) > 0.5")
    assert fails[1].startswith("min_reduction: the base model does not loop")

    data = report.to_json()
    assert data["overall"]["base"]["loop_rate"]["ci"][0] > 0.3 and data["overall"]["patched"]["loop_rate"]["value"] == 0
    assert data["n_probes"] == 5 and len(data["per_probe"]) == 5
    assert len(data["base"]["results"]) == 5 and data["base"]["results"][0]["verdict"]["evidence"]["span"]
    json.dumps(data)  # serialisable

    written = write_report(report, tmp_path / "rep")
    assert json.loads(written["json"].read_text())["suite"] == "mini"
    transcripts = sorted(p.name for p in (tmp_path / "rep" / "transcripts" / "base").iterdir())
    assert transcripts[0] == "bright-stars#0@0.txt" and len(transcripts) == 5
    assert (tmp_path / "rep" / "loops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rows_feed_the_model_card(suite_file, model_dirs):
    report = run_loops(
        model_dirs["looping"],
        patched_ref=model_dirs["listing"],
        settings=LoopSettings(suite=str(suite_file), max_new_tokens=60, controls=False),
    )
    rows = {r.key: r for r in report_rows(report.to_json(transcripts=False), "loops")}
    assert rows["loops.loop_rate"].base == 1.0 and rows["loops.loop_rate"].patched == 0.0
    assert rows["loops.loop_rate"].n == 3 and rows["loops.loop_rate"].base_ci is not None


def test_sampling_seeds_and_samples(suite_file, model_dirs):
    report = run_loops(
        model_dirs["listing"],
        settings=LoopSettings(
            suite=str(suite_file),
            samples=3,
            temperature=0.7,
            seed=5,
            max_new_tokens=40,
            controls=False,
            split="heldout",
            limit=1,
        ),
    )
    assert [(r.probe.id, r.sample, r.seed) for r in report.base.results] == [
        ("more-stars#0", 0, 5),
        ("more-stars#0", 1, 6),
        ("more-stars#0", 2, 7),
        ("say-seven#0", 0, 5),
        ("say-seven#0", 1, 6),
        ("say-seven#0", 2, 7),
    ]
    greedy = run_loops(
        model_dirs["listing"],
        settings=LoopSettings(suite=str(suite_file), samples=3, max_new_tokens=40, controls=False),
    )
    assert greedy.settings.effective_samples() == 1 and len(greedy.base.results) == 5


def test_settings_are_frozen_strict_and_take_only_unset_fields_from_the_gates():
    from pydantic import ValidationError

    settings = LoopSettings(max_new_tokens=50)
    with pytest.raises(ValidationError):
        settings.max_new_tokens = 10  # frozen
    for bad in ({"model": "x"}, {"base": "x"}, {"patched": "x"}, {"split": "dev"}, {"samples": 0}):
        with pytest.raises(ValidationError):
            LoopSettings(**bad)  # no aliases, no unknown or out-of-range values
    gates = LoopGates(suite="smoke", samples=3, temperature=0.5, max_new_tokens=99)
    filled = settings.with_gate_defaults(gates)
    assert (filled.suite, filled.samples, filled.temperature, filled.max_new_tokens) == ("smoke", 3, 0.5, 50)
    assert settings.with_gate_defaults(None) is settings
    # an explicit value equal to the default still wins over the gate
    assert LoopSettings(suite="enumeration").with_gate_defaults(gates).suite == "enumeration"


def test_cli_flags_are_derived_from_the_settings():
    from patchkit.checks.bench import BenchSettings
    from patchkit.cli._options import settings_from_options
    from patchkit.cli.bench import bench_cmd
    from patchkit.cli.loops import loops_cmd

    for cmd, model in ((loops_cmd, LoopSettings), (bench_cmd, BenchSettings)):
        params = {p.name: p for p in cmd.params}
        assert set(model.model_fields) <= set(params), cmd.name
        for name, info in model.model_fields.items():
            assert params[name].help.startswith(info.description.split(" [default")[0][:20]), name
    flags = {o for p in loops_cmd.params for o in p.opts + p.secondary_opts}
    assert {
        "--no-controls",
        "--no-early-stop",
        "--thinking",
        "--no-thinking",
        "--thinking-budget",
        "--max-new-tokens",
        "--top-p",
        "--split",
        "--base-url",
        "--batch-size",
        "--concurrency",
        "--timeout",
    } <= flags
    given = settings_from_options(
        LoopSettings,
        {"suite": None, "max_new_tokens": 20, "enable_thinking": None, "controls": False, "report_dir": None},
    )
    assert given.model_fields_set == {"max_new_tokens", "controls"} and given.controls is False


def test_cli_loops_json_report_and_errors(suite_file, model_dirs, tmp_path):
    from patchkit.cli import main

    runner = CliRunner()
    out = tmp_path / "report"
    result = runner.invoke(
        main,
        [
            "loops",
            str(model_dirs["looping"]),
            "--patched",
            str(model_dirs["listing"]),
            "--suite",
            str(suite_file),
            "--max-new-tokens",
            "80",
            "--no-controls",
            "--json",
            "--report",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["overall"]["base"]["loop_rate"]["k"] == 3 and data["overall"]["patched"]["loop_rate"]["k"] == 0
    assert (out / "loops.json").is_file() and (out / "loops.png").is_file()
    assert len(list((out / "transcripts" / "patched").iterdir())) == 5

    human = runner.invoke(
        main,
        [
            "loops",
            str(model_dirs["looping"]),
            "--suite",
            str(suite_file),
            "--max-new-tokens",
            "60",
            "--no-controls",
            "--limit",
            "1",
        ],
    )
    assert human.exit_code == 0, human.output
    assert "loop rate" in human.output and "1.00 [0.21, 1.00] (1/1)" in human.output

    bad = runner.invoke(main, ["loops", str(model_dirs["looping"]), "--suite", "nonesuch"])
    assert bad.exit_code == 2 and "error: unknown suite 'nonesuch'" in bad.output
    both = runner.invoke(main, ["loops", "m", "--patched", "a", "--recipe", "b.yaml"])
    assert both.exit_code == 2 and "either --patched or --recipe" in both.output
    http_recipe = runner.invoke(
        main, ["loops", "m", "--recipe", "r.yaml", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"]
    )
    assert (
        http_recipe.exit_code == 2
        and "a recipe is applied locally: it needs the transformers backend" in http_recipe.output
    )


def test_cli_gates_from_recipe_exit_1(suite_file, model_dirs, tmp_path, monkeypatch):
    """A recipe's checks.loops thresholds turn into exit 1 naming the failed gate."""
    from types import SimpleNamespace

    import patchkit.checks.loops as loops_mod
    from patchkit.cli import main
    from patchkit.generate import loading

    recipe = SimpleNamespace(
        name="fake",
        checks=SimpleNamespace(loops=LoopGates(max_loop_rate=0.2, suite=str(suite_file), max_new_tokens=60)),
    )
    monkeypatch.setattr(loops_mod, "_load_recipe", lambda r: recipe)

    import contextlib

    @contextlib.contextmanager
    def fake_patched(recipe_obj, base_ref):  # the "patched" model is the looping one itself
        yield model_dirs["looping"]

    monkeypatch.setattr(loading, "patched_checkpoint", fake_patched)
    result = CliRunner().invoke(
        main, ["loops", str(model_dirs["looping"]), "--recipe", str(tmp_path / "r.yaml"), "--no-controls", "--json"]
    )
    assert result.exit_code == 1, result.output
    assert "gate failed: max_loop_rate: patched loop rate 1.000 (3/3) > 0.2" in result.output
    (report,) = json_docs(result.stdout)  # a failed gate is a result: the report is the one JSON document
    assert report["failures"][0].startswith("max_loop_rate")
    # the recipe's checks.loops filled in what the command line did not set
    assert report["settings"]["suite"] == str(suite_file) and report["settings"]["max_new_tokens"] == 60


def test_cli_detect(tmp_path):
    from patchkit.cli import main

    loop = tmp_path / "loop.txt"
    loop.write_text("The states:\n" + "".join(f"{i}. New Mexico\n" for i in range(1, 30)))
    fine = tmp_path / "fine.txt"
    fine.write_text("1. Alabama\n2. Alaska\n3. Arizona\n")
    truth = tmp_path / "truth.txt"
    truth.write_text("Alabama\nAlaska\nArizona\nNew Mexico\n")
    result = CliRunner().invoke(main, ["detect", str(loop), str(fine), "--truth", str(truth), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["label"] for r in data["results"]] == ["decay", "ok"] and data["loops"] == 1
    assert data["results"][0]["evidence"]["span"] == "New Mexico"
    assert data["results"][1]["completeness"]["found"] == 3
    human = CliRunner().invoke(main, ["detect", str(loop), "--unfinished"])
    assert human.exit_code == 0 and "decay" in human.output
    missing = CliRunner().invoke(main, ["detect", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "file not found" in missing.output
