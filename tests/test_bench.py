"""patchkit bench on tiny random llama checkpoints: identity gives exactly zero drift, edits are measured and gated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_tiny import make_tiny_llama, one_thread, zero_neurons_copy
from click.testing import CliRunner

from patchkit.checks.bench import BenchSettings, check_same_tokenizer, parse_tasks, run_bench
from patchkit.checks.teacher_forcing import ScoredSequence, compare_teacher_forced, pack_batches
from patchkit.cli import main
from patchkit.errors import CheckError, ModelError
from patchkit.recipe.gates import BenchGates

LIMIT = 6  # items per source: keeps every run well under a second on the tiny model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    base = make_tiny_llama(root / "base")
    return {
        "root": root,
        "base": base,
        # zero 48 of the 64 neurons of the last layer: a large, certain change
        "zeroed": zero_neurons_copy(base, root / "zeroed", 1, list(range(48))),
        "other_vocab": make_tiny_llama(root / "other_vocab", extra_tokens=("<extra>",)),
    }


@pytest.fixture(scope="module")
def loaded(tiny):
    from patchkit.generate.loading import load_model

    return {"base": load_model(tiny["base"]), "zeroed": load_model(tiny["zeroed"])}


def test_model_against_itself_is_exactly_identical(loaded):
    model, tok = loaded["base"]
    seen = []
    report = run_bench(
        (model, tok),
        (model, tok),
        settings=BenchSettings(limit=LIMIT),
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    kl, top1, ppl = report.comparison("kl.mean"), report.comparison("kl.top1"), report.comparison("ppl.ratio")
    assert kl.n > 100
    assert kl.delta.value == 0.0 and report.comparison("kl.max").delta.value == 0.0
    assert report.comparison("kl.first_token").delta.value == 0.0
    assert top1.delta.value == 1.0 and top1.delta.k == top1.n
    assert ppl.delta.value == 1.0 and ppl.p_value == 1.0 and ppl.base.value == ppl.patched.value
    for key in ("qa.acc", "qa.acc_norm", "qa.exact_match"):
        row = report.comparison(key)
        assert row.delta.value == 0 and row.p_value == 1.0 and row.base.k == row.patched.k
    # progress: done is absolute per stage, never decreasing, and every stage finishes
    assert [s for s in dict.fromkeys(s for s, _, _ in seen)] == ["controls", "teacher-forced", "qa"]
    for stage in ("controls", "teacher-forced", "qa"):
        calls = [(d, t) for s, d, t in seen if s == stage]
        assert calls[0][0] == 0 and [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert calls[-1][0] == calls[-1][1] > 0, (stage, calls)
    assert report.passed and report.failures == []


def test_zeroed_neurons_shift_distribution_and_fail_gate(loaded):
    report = run_bench(
        loaded["base"],
        loaded["zeroed"],
        settings=BenchSettings(limit=LIMIT),
        gates=BenchGates(max_kl=0.001, min_top1_agreement=0.999, max_ppl_ratio=100.0),
    )
    kl = report.comparison("kl.mean")
    assert kl.delta.value > 0.001
    lo, hi = kl.delta.ci
    assert 0 < lo <= kl.delta.value <= hi
    assert report.comparison("kl.top1").delta.value < 1.0
    assert report.comparison("ppl.ratio").delta.value != 1.0
    assert any(f.startswith("max_kl:") and "0.001" in f for f in report.failures)
    assert any(f.startswith("min_top1_agreement:") for f in report.failures)
    assert not any(f.startswith("max_ppl_ratio") for f in report.failures)  # generous limit passes
    # every measure carries n and an uncertainty
    for row in report.comparisons:
        assert row.n > 0
        assert row.delta.ci is not None or row.key == "kl.p99"


def test_gate_reports_unmeasured_thresholds(loaded):
    report = run_bench(
        loaded["base"],
        loaded["zeroed"],
        settings=BenchSettings(tasks="kl", limit=3),
        gates=BenchGates(max_accuracy_drop=0.05, max_ppl_ratio=1.1),
    )
    assert report.comparison("qa.acc") is None
    assert "max_accuracy_drop: no accuracy was measured (run with --tasks qa)" in report.failures
    assert any(f.startswith("max_ppl_ratio:") and "not measured" in f for f in report.failures)


def test_teacher_forcing_scores_only_requested_positions(loaded):
    model, tok = loaded["base"]
    ids = tuple(tok("a short text to score")["input_ids"])
    full = compare_teacher_forced(model, loaded["zeroed"][0], [ScoredSequence("a", ids, 1)])
    tail = compare_teacher_forced(model, loaded["zeroed"][0], [ScoredSequence("a", ids, len(ids) - 3)])
    assert full.sequences[0].n == len(ids) - 1 and tail.sequences[0].n == 3
    # the last 3 per-token KLs are the same whichever prefix is scored (same forward pass, right padding)
    assert tail.token_kl == pytest.approx(full.token_kl[-3:], abs=1e-6)
    # batching (padding with a longer neighbour) does not change the numbers
    longer = tuple(tok("a much longer neighbouring text that forces padding in the batch")["input_ids"])
    both = compare_teacher_forced(model, loaded["zeroed"][0], [ScoredSequence("a", ids), ScoredSequence("b", longer)])
    assert both.sequences[0].kl_sum == pytest.approx(full.sequences[0].kl_sum, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError):
        ScoredSequence("x", (1, 2), 3)


def test_pack_batches_respects_budget():
    lengths = [5, 50, 7, 49, 20, 3]
    batches = pack_batches(lengths, token_budget=100)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1


def test_parse_tasks():
    assert parse_tasks(None) == ["kl", "ppl", "qa"]
    assert parse_tasks("kl, qa,lmeval:patchkit_qa") == ["kl", "qa", "lmeval:patchkit_qa"]
    with pytest.raises(CheckError, match="unknown task 'mmlu'"):
        parse_tasks("kl,mmlu")
    with pytest.raises(CheckError, match="no task"):
        parse_tasks(",")
    # the settings parse and check their tasks the same way, as soon as they are made
    assert BenchSettings(tasks="kl, lmeval:x").tasks == ("kl", "lmeval:x") and BenchSettings().tasks is None
    with pytest.raises(CheckError, match="unknown task 'mmlu'"):
        BenchSettings(tasks=["kl", "mmlu"])
    assert BenchSettings().with_gate_defaults(BenchGates(tasks=["ppl"])).tasks == ("ppl",)
    assert BenchSettings(tasks="kl").with_gate_defaults(BenchGates(tasks=["ppl"])).tasks == ("kl",)


def test_mismatched_tokenizers_are_refused(tiny, loaded):
    from patchkit.generate.loading import load_model

    other = load_model(tiny["other_vocab"])
    with pytest.raises(CheckError, match="tokenizers differ between base and patched: vocab sizes 259 vs 260"):
        check_same_tokenizer(loaded["base"][1], other[1])
    result = CliRunner().invoke(
        main, ["bench", str(tiny["base"]), "--patched", str(tiny["other_vocab"]), "--tasks", "kl"]
    )
    assert result.exit_code == 2
    assert "error: tokenizers differ between base and patched" in result.output


def test_missing_model_and_url_backend_errors(tiny):
    with pytest.raises(ModelError, match="no such checkpoint directory"):
        run_bench(tiny["root"] / "nope", tiny["base"])
    with pytest.raises(CheckError, match="OpenAI-compatible backend"):
        run_bench(tiny["base"], "http://127.0.0.1:8000/v1")
    with pytest.raises(CheckError, match="--patched DIR or --recipe"):
        run_bench(tiny["base"])
    result = CliRunner().invoke(main, ["bench", str(tiny["root"] / "nope"), "--patched", str(tiny["base"])])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: base model")


def test_empty_task_file_is_a_clear_error(tiny, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = CliRunner().invoke(
        main, ["bench", str(tiny["base"]), "--patched", str(tiny["base"]), "--tasks", "qa", "--task-file", str(empty)]
    )
    assert result.exit_code == 2
    assert f"error: {empty}: task file is empty" in result.output
    no_items = tmp_path / "no_items.yaml"
    no_items.write_text("version: 1\nitems: []\n")
    with pytest.raises(CheckError, match="task file has no items"):
        run_bench(tiny["base"], tiny["base"], settings=BenchSettings(tasks="qa", task_file=no_items))


def test_cli_json_and_report_files(tiny, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        ["bench", str(tiny["base"]), "--patched", str(tiny["zeroed"]), "--limit", "4", "--json", "--report", str(out)],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    keys = {f["key"] for f in payload["figures"]}
    assert {"kl.mean", "kl.top1", "ppl.ratio", "qa.acc", "qa.exact_match"} <= keys
    assert payload["passed"] is True and payload["gates"] is None
    saved = json.loads((out / "bench.json").read_text())
    assert saved["figures"] == payload["figures"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fig in payload["figures"]:
        assert fig["n"] > 0
        if fig["p_value"] is not None:
            assert 0 <= fig["p_value"] <= 1 and not math.isnan(fig["p_value"])


def test_special_token_mismatch_is_refused():
    from bench_tiny import byte_tokenizer

    a, b = byte_tokenizer(), byte_tokenizer()
    check_same_tokenizer(a, b)  # identical: no error
    b.eos_token = "<|im_end|>"
    with pytest.raises(CheckError, match=r"eos_token_id 256 vs 258"):
        check_same_tokenizer(a, b)
