"""The model card: front matter parsed back field by field, body content, validation, the `card` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hubserver.checkpoints import EDIT_LAYER, EDIT_NEURON, SHARDS, make_base, make_patched

pytest_plugins = ["hubserver.plugin"]


def _rate(k: int, n: int, lo: float, hi: float) -> dict:
    return {"value": k / n, "k": k, "n": n, "ci": [lo, hi]}


#: the shape `patchkit loops --json` writes (LoopReport.to_json), trimmed to what the card reads
LOOPS = {
    "kind": "patchkit.loops",
    "version": 1,
    "suite": "enumeration",
    "overall": {
        "base": {
            "loop_rate": _rate(15, 24, 0.427, 0.788),
            "completeness": {"value": 0.71, "n": 24},
            "control_accuracy": _rate(8, 8, 0.676, 1.0),
            "control_failures": [],
            "mean_tokens": {"value": 380.0, "n": 32},
        },
        "patched": {
            "loop_rate": _rate(3, 24, 0.043, 0.31),
            "completeness": {"value": 0.69, "n": 24},
            "control_accuracy": _rate(8, 8, 0.676, 1.0),
            "control_failures": [],
            "mean_tokens": {"value": 120.5, "n": 32},
        },
    },
}


def bench_report() -> dict:
    """A report in the exact shape `patchkit bench --json` writes (BenchReport.to_json)."""
    from patchkit.checks.bench import BenchReport
    from patchkit.checks.figure import Comparison, Figure

    comparisons = [
        Comparison(
            key="kl.mean",
            label="mean KL(base||patched)",
            kind="comparison",
            unit="nats",
            delta=Figure(value=0.0031, n=4096, ci=(0.0027, 0.0036)),
        ),
        Comparison(
            key="ppl.ratio",
            label="perplexity ratio",
            kind="ratio",
            base=Figure(value=12.4, n=4096),
            patched=Figure(value=12.5, n=4096),
            delta=Figure(value=1.008, n=4096, ci=(1.002, 1.013)),
        ),
        Comparison(
            key="qa.acc",
            label="control QA accuracy",
            kind="paired",
            unit="acc",
            base=Figure(value=0.8, n=40, ci=(0.65, 0.9)),
            patched=Figure(value=0.775, n=40, ci=(0.62, 0.88)),
            delta=Figure(value=-0.025, n=40, ci=(-0.1, 0.05)),
            p_value=1.0,
            is_accuracy=True,
        ),
    ]
    return BenchReport(base="base", patched="patched", tasks=["kl", "ppl", "qa"], comparisons=comparisons).to_json()


@pytest.fixture
def patched(tmp_path):
    return make_patched(make_base(tmp_path / "base"), tmp_path / "patched")


def test_front_matter_round_trips_field_by_field(patched, tmp_path):
    from patchkit.publish.card import card_for_dir, card_metadata

    (tmp_path / "bench.json").write_text(json.dumps(bench_report()))
    card = card_for_dir(patched, loops_report=LOOPS, bench_report=tmp_path / "bench.json", repo_id="alice/tiny-fix")
    meta = card_metadata(str(card))
    assert meta["base_model"] == "test-org/tiny-llama"
    assert meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0"
    assert meta["license_link"] == "https://www.apache.org/licenses/LICENSE-2.0"  # inherited with the license
    assert meta["tags"][:3] == ["patchkit", "loop-fix", "llama"]
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == "transformers"
    [entry] = meta["model-index"]
    assert entry["name"] == "tiny-fix"
    metrics = {m["type"]: m["value"] for r in entry["results"] for m in r["metrics"]}
    assert metrics["loop_rate"] == 0.125 and metrics["completeness"] == 0.69 and metrics["control_accuracy"] == 1.0
    assert "mean_tokens" not in metrics  # only headline loop metrics go to model-index
    assert metrics["kl.mean"] == 0.0031 and metrics["ppl.ratio"] == 1.008 and metrics["qa.acc"] == 0.775
    datasets = {r["dataset"]["type"] for r in entry["results"]}
    assert datasets == {"patchkit/probes-enumeration", "patchkit/bench"}


def test_body_explains_the_change_and_carries_numbers_and_provenance(patched):
    from patchkit.publish.card import card_for_dir

    provenance = json.loads((patched / "patchkit.json").read_text())
    text = str(card_for_dir(patched, loops_report=LOOPS, bench_report=bench_report(), repo_id="alice/tiny-fix"))
    body = text.split("\n---\n", 1)[1]
    assert f"Invert neuron {EDIT_NEURON} of layer {EDIT_LAYER}" in body
    assert (
        f"| 1 | {EDIT_LAYER} | neuron | {EDIT_NEURON} | invert | -1.0 | `model.layers.{EDIT_LAYER}.mlp.down_proj.weight`"
        in body
    )
    assert "1 of 2 weight files rewritten" in body
    assert "| loop rate | 0.625 (15/24) | 0.125 (3/24) | -0.500 | 24 | [0.427, 0.788] / [0.043, 0.310] / – |" in body
    assert "| mean tokens | 380 | 120.5 | -259.5 | 32 |" in body
    assert (
        "| control QA accuracy | 0.800 | 0.775 | -0.025 | 40 | [0.650, 0.900] / [0.620, 0.880] / [-0.100, 0.050] |"
        in body
    )
    assert "patchkit apply tiny-llama-loopfix.yaml --model test-org/tiny-llama@" + "a" * 40 in body
    assert provenance["recipe"]["text"].strip() in body
    for shard in SHARDS:
        assert provenance["output_files"][shard]["sha256"] in body
        assert provenance["source_files"][shard]["sha256"] in body
    assert "patchkit version: `0.1.0`" in body and "a" * 40 in body


def test_license_falls_back_to_the_base_card_and_is_omitted_when_unknown(patched):
    from patchkit.publish.card import build_card, card_metadata

    provenance = json.loads((patched / "patchkit.json").read_text())
    del provenance["recipe"]["normalized"]["publish"]
    base_card = "---\nlicense: other\nlicense_name: gemma\nlicense_link: https://ai.google.dev/gemma/terms\n---\n"
    meta = card_metadata(str(build_card(provenance, base_card=base_card)))
    assert (meta["license"], meta["license_name"]) == ("other", "gemma")
    assert "license" not in card_metadata(str(build_card(provenance)))
    assert "model-index" not in card_metadata(str(build_card(provenance)))


def test_card_validates_with_the_client_and_the_server(hub, patched):
    from huggingface_hub import ModelCard

    from patchkit.publish.card import card_for_dir

    card = card_for_dir(patched, loops_report=LOOPS, bench_report=bench_report(), repo_id="alice/tiny-fix")
    ModelCard(str(card)).validate()  # POST /api/validate-yaml on the test server
    bad = ModelCard(str(card).replace("base_model_relation: finetune", "base_model_relation: patched"))
    with pytest.raises(ValueError, match="base_model_relation"):
        bad.validate()


def test_card_command_writes_readme_and_json(patched, tmp_path):
    from patchkit.cli import main

    (tmp_path / "loops.json").write_text(json.dumps(LOOPS))
    out = tmp_path / "card" / "README.md"
    result = CliRunner().invoke(
        main, ["card", str(patched), "--loops-report", str(tmp_path / "loops.json"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("---\nbase_model: test-org/tiny-llama\n")
    as_json = CliRunner().invoke(main, ["card", str(patched), "--json"])
    payload = json.loads(as_json.stdout)
    assert payload["metadata"]["base_model_relation"] == "finetune" and payload["card"].startswith("---")


def test_bad_report_is_a_one_line_error(patched, tmp_path):
    from patchkit.cli import main

    (tmp_path / "loops.json").write_text("{not json")
    result = CliRunner().invoke(main, ["card", str(patched), "--loops-report", str(tmp_path / "loops.json")])
    assert result.exit_code == 2
    assert (
        result.output.startswith("error: ")
        and "loops.json: is not valid JSON" in result.output
        and "patchkit loops --json" in result.output
    )
    missing = CliRunner().invoke(main, ["card", str(patched), "--bench-report", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "bench report not found" in missing.output


def test_a_check_report_feeds_both_tables(patched):
    from patchkit.publish.card import card_for_dir, card_metadata

    check = {"verdict": "PASS", "steps": [], "loops": LOOPS, "bench": bench_report()}
    meta = card_metadata(str(card_for_dir(patched, loops_report=check, bench_report=check, repo_id="alice/x")))
    metrics = {m["type"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert {"loop_rate", "kl.mean", "qa.acc"} <= metrics


@pytest.mark.parametrize("shape", ["per_model", "per_metric", "flat"])
def test_loop_report_shapes_are_all_read(shape):
    from patchkit.publish.card import report_rows

    if shape == "per_model":
        report = {
            "models": {
                "base": {"overall": {"n": 10, "loop_rate": 0.5}},
                "patched": {"overall": {"n": 10, "loop_rate": {"rate": 0.1, "ci": [0.02, 0.4]}}},
            }
        }
    elif shape == "per_metric":
        report = {"overall": {"loop_rate": {"base": 0.5, "patched": 0.1, "n": 10, "patched_ci": [0.02, 0.4]}}}
    else:
        report = {"overall": {"n": 10, "loop_rate": 0.1, "loop_rate_ci": [0.02, 0.4]}}
    [row] = report_rows(report, "loops")
    assert (row.key, row.patched, row.n, row.patched_ci) == ("loops.loop_rate", 0.1, 10, (0.02, 0.4))
    assert row.base == (None if shape == "flat" else 0.5)


def test_a_local_base_falls_back_to_the_recipe_repo_and_hides_the_path(patched):
    from patchkit.publish.card import build_card, card_metadata

    provenance = json.loads((patched / "patchkit.json").read_text())
    provenance["base"].update(repo=None, revision=None, ref="/home/someone/models/tiny-llama")
    text = str(build_card(provenance))
    assert card_metadata(text)["base_model"] == "test-org/tiny-llama"
    assert "/home/someone" not in text
    assert "--model test-org/tiny-llama@" + "a" * 40 in text  # the pinned revision of the recipe


def test_a_real_loop_report_renders(patched):
    """A LoopReport built by patchkit.checks.loops from scored generations, straight into the card."""
    from patchkit.checks import loops
    from patchkit.checks.probes import load_suite
    from patchkit.generate.types import Generation
    from patchkit.publish.card import card_for_dir, card_metadata

    suite = load_suite("smoke")
    probes = suite.probes[:4]

    def run(name: str, text: str):
        pairs = [
            (
                p,
                0,
                Generation(id=p.id, text=text if p.kind == "enumeration" else "Paris.", tokens=40, stop_reason="eos"),
            )
            for p in probes
        ]
        return loops.RunResult(model=name, results=loops.score_generations(pairs))

    looping = "1. red\n2. blue\n" + "3. green\n" * 30
    report = loops.LoopReport(
        settings=loops.LoopSettings(suite="smoke"),
        suite=suite,
        base=run("base", looping),
        patched=run("patched", "1. red\n2. blue\n3. green\n"),
    )
    data = json.loads(json.dumps(report.to_json()))
    text = str(card_for_dir(patched, loops_report=data))
    results = card_metadata(text)["model-index"][0]["results"]
    metrics = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    overall = data["overall"]["patched"]
    assert metrics["loop_rate"] == round(overall["loop_rate"]["value"], 6)
    n = overall["loop_rate"]["n"]
    assert f"| {n} |" in text and "loop rate" in text
