"""lm-evaluation-harness integration, offline: a local task (YAML + JSONL written by patchkit), real simple_evaluate."""

from __future__ import annotations

import sys

import pytest
from bench_tiny import make_tiny_llama, one_thread, zero_neurons_copy

ITEMS = """\
version: 1
passages:
  shop: "Ada runs a shop on Hill Road. It opens at nine and closes at five. She sells tea, maps and kites."
items:
  - {id: f1, kind: fact, question: "What is the capital of France?", options: [Paris, Lyon, Nice], answer: Paris}
  - {id: f2, kind: fact, question: "How many legs does a spider have?", options: ["8", "6", "4"], answer: "8"}
  - {id: f3, kind: fact, question: "What colour is grass?", options: [green, blue, red], answer: green}
  - {id: a1, kind: arithmetic, question: "What is 2 + 3?", options: ["5", "6", "4"], answer: "5"}
  - {id: a2, kind: arithmetic, question: "What is 9 - 4?", options: ["5", "3", "13"], answer: "5"}
  - {id: a3, kind: arithmetic, question: "What is 6 times 7?", options: ["42", "36", "48"], answer: "42"}
  - {id: r1, kind: reading, passage: shop, question: "Where is the shop?", options: [Hill Road, Mill Lane], answer: Hill Road}
  - {id: r2, kind: reading, passage: shop, question: "When does it open?", options: [nine, five, ten], answer: nine}
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'patchkit-llm[eval]')")
    from patchkit.generate.loading import load_model

    root = tmp_path_factory.mktemp("lmeval")
    base = make_tiny_llama(root / "base", seed=3)
    zeroed = zero_neurons_copy(base, root / "zeroed", 1, list(range(48)))
    task_file = root / "tasks.yaml"
    task_file.write_text(ITEMS)
    return {"base": load_model(base), "zeroed": load_model(zeroed), "task_file": task_file, "root": root}


def test_local_task_runs_offline_and_matches_our_scoring(setup, monkeypatch):
    import patchkit.checks.lmeval as lmeval
    from patchkit.checks.tasks import load_tasks, score_tasks

    # point the generated local task at our small item file
    original = lmeval.write_local_task
    monkeypatch.setattr(lmeval, "write_local_task", lambda d, **kw: original(d, task_file=setup["task_file"]))
    raw = lmeval.run_lmeval(setup["base"], setup["zeroed"], [lmeval.LOCAL_TASK], batch_size=4)
    ours = score_tasks([setup["base"], setup["zeroed"]], load_tasks(setup["task_file"]), exact_match=False)
    for role, scores in zip(("base", "patched"), ours, strict=True):
        metrics = raw[role][lmeval.LOCAL_TASK]
        assert metrics["acc"]["n"] == 8
        assert metrics["acc"]["stderr"] is not None and metrics["acc"]["stderr"] >= 0
        # lm-eval's acc (argmax of summed option log-likelihood) is the same measure as our qa.acc
        assert metrics["acc"]["value"] == pytest.approx(float(scores.acc.mean()))
    figs = lmeval.lmeval_figures(raw)
    keys = {f.key for f in figs}
    assert {"lmeval.patchkit_qa.acc", "lmeval.patchkit_qa.acc_norm"} <= keys
    acc = next(f for f in figs if f.key == "lmeval.patchkit_qa.acc")
    assert acc.is_accuracy and acc.n == 8 and 0 <= acc.p_value <= 1
    assert acc.delta.value == pytest.approx(acc.patched.value - acc.base.value)


def test_write_local_task(tmp_path):
    from patchkit.checks.lmeval import LOCAL_TASK, write_local_task

    out = write_local_task(tmp_path, limit=2)
    lines = (out / f"{LOCAL_TASK}.jsonl").read_text().splitlines()
    assert len(lines) == 6  # 2 per kind
    assert f"task: {LOCAL_TASK}" in (out / f"{LOCAL_TASK}.yaml").read_text()


def test_bench_skips_lmeval_cleanly_without_the_package(setup, monkeypatch):
    from patchkit.checks.bench import BenchSettings, run_bench

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    report = run_bench(setup["base"], setup["zeroed"], settings=BenchSettings(tasks="kl,lmeval:patchkit_qa", limit=2))
    assert "lm-eval is not installed" in report.skipped["lmeval:patchkit_qa"]
    assert "pip install 'patchkit-llm[eval]'" in report.skipped["lmeval:patchkit_qa"]
    assert report.comparison("kl.mean") is not None
