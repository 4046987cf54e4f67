"""The thinking-budget study end to end: settings, a scripted OpenAI-compatible server with `reasoning_content`
(exact doom / committed counts per budget, base vs patched), and the tiny random model with the thinking
tokenizer through the transformers backend (budgets enforced), the CLI, the report directory and the refusals.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import StreamingResponse
from loops_tiny import one_thread
from test_doom_traces import circles, converging
from test_generate_openai import serve

from patchkit.checks.loop_report import write_sweep_report
from patchkit.checks.loops import LoopSettings, run_loops
from patchkit.checks.thinking_sweep import run_thinking_sweep
from patchkit.errors import CheckError
from patchkit.testing.tiny import byte_level_tokenizer, save_checkpoint, thinking_model, thinking_tokenizer, tiny_llama


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


COLOURS = ["Red", "Orange", "Yellow", "Green", "Blue", "Violet"]
PROMPTS = {
    "p-circle": "List the colours of the rainbow, carefully.",
    "p-short": "List the colours of the rainbow.",
    "p-long": "Name every colour of the rainbow.",
    "p-stuck": "Which colours are in a rainbow?",
}
SUITE = "suite: sweep\nversion: 1\ndescription: four rainbow prompts\nprobes:\n" + "".join(
    f"  - id: {pid}\n    kind: enumeration\n    split: train\n    category: colour\n"
    f"    truth: [{', '.join(COLOURS)}]\n    prompts: [{json.dumps(prompt)}]\n"
    for pid, prompt in PROMPTS.items()
)


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SUITE)
    return path


# --------------------------------------------------------------------------------------------------------------
# a scripted server: reasoning_content chunk by chunk (one word = one token), then the answer
# --------------------------------------------------------------------------------------------------------------
FULL = "\n".join(f"{i}. {c}" for i, c in enumerate(COLOURS, 1))
HALF = "\n".join(f"{i}. {c}" for i, c in enumerate(COLOURS[:3], 1))


def _words(text: str) -> list[str]:
    return [w + " " for w in text.split()]


def _circling(seed: int) -> list[str]:
    return _words(circles("the colour count", [6, 7, 8], 400, seed))


def _thinks(n_words: int, seed: int) -> list[str]:
    words = _words(converging(n_words, seed))[:n_words]
    assert len(words) == n_words
    return words


#: (model, probe) -> (thinking words, answer; None: it never closes its thinking)
SCRIPT: dict[tuple[str, str], tuple[list[str], str | None]] = {
    ("base", "p-circle"): (_circling(1), None),
    ("base", "p-short"): (_thinks(40, 2), FULL),
    ("base", "p-long"): (_thinks(100, 3), HALF),
    ("base", "p-stuck"): (_circling(4), None),
    ("patched", "p-circle"): (_thinks(40, 5), FULL),
    ("patched", "p-short"): (_thinks(40, 2), FULL),
    ("patched", "p-long"): (_thinks(30, 6), HALF),
    ("patched", "p-stuck"): (_circling(7), None),
}
BY_PROMPT = {prompt: pid for pid, prompt in PROMPTS.items()}


def _scripted_app():
    app = FastAPI()
    seen: list[dict] = []
    app.state.seen = seen

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "base", "object": "model"}, {"id": "patched", "object": "model"}]}

    async def events(body: dict):
        thinking, answer = SCRIPT[(body["model"], BY_PROMPT[body["messages"][-1]["content"]])]
        chunks = [{"reasoning_content": w} for w in thinking] + [
            {"content": line + "\n"} for line in (answer or "").splitlines()
        ]
        limit = int(body["max_tokens"])
        for delta in chunks[:limit]:
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            yield f"data: {json.dumps({'id': 'x', 'object': 'chunk', 'choices': [choice]})}\n\n"
            await asyncio.sleep(0)
        finish = "stop" if answer is not None and len(chunks) <= limit else "length"
        last = {"index": 0, "delta": {}, "finish_reason": finish}
        yield f"data: {json.dumps({'id': 'x', 'choices': [last]})}\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        return StreamingResponse(events(body), media_type="text/event-stream")

    return app


#: budget -> model -> (doom k, committed k, completeness of the committed answers), out of n = 4 probes.
#: Why no budget below 32: 16 words of circling hold only two corrections, too little to call doom (truncated).
EXPECTED = {
    32: {"base": (2, 0, None), "patched": (1, 1, 0.5)},
    64: {"base": (2, 1, 1.0), "patched": (1, 3, (1 + 1 + 0.5) / 3)},
    256: {"base": (2, 2, 0.75), "patched": (1, 3, (1 + 1 + 0.5) / 3)},
}


def test_sweep_over_an_openai_server_with_reasoning_content(suite_file, tmp_path):
    app = _scripted_app()
    settings = LoopSettings(
        suite=str(suite_file),
        backend="openai",
        base_url="http://placeholder/v1",
        thinking_budget="256,32,64",
        max_new_tokens=600,
        controls=False,
        concurrency=2,
    )
    with serve(app) as url:
        settings = settings.model_copy(update={"base_url": url})
        sweep = run_thinking_sweep("base", patched_ref="patched", settings=settings)
    # thinking on through the template switch, on every request; the client cut each trace at its budget
    assert len(app.state.seen) == 3 * 2 * 4
    assert all(b["chat_template_kwargs"] == {"enable_thinking": True} for b in app.state.seen)
    data = sweep.to_json()
    assert data["kind"] == "patchkit.loops.thinking-budget" and data["settings"]["thinking_budget"] == [32, 64, 256]
    assert [p["budget"] for p in data["budgets"]] == [32, 64, 256]
    for point in data["budgets"]:
        for model in ("base", "patched"):
            doom, done, completeness = EXPECTED[point["budget"]][model]
            figs = point[model]
            assert (figs["doom_rate"]["k"], figs["doom_rate"]["n"]) == (doom, 4), (point["budget"], model)
            assert (figs["committed_rate"]["k"], figs["committed_rate"]["n"]) == (done, 4), (point["budget"], model)
            assert figs["budget_stop_rate"]["k"] == 4 - done
            lo, hi = figs["doom_rate"]["ci"]
            assert lo <= doom / 4 <= hi and hi - lo > 0.2  # a Wilson interval on n = 4 is wide
            comp = figs["committed_completeness"]
            assert comp["n"] == done
            if completeness is None:
                assert comp["value"] is None
            else:
                assert comp["value"] == pytest.approx(completeness)
                assert comp["ci"][0] <= comp["value"] <= comp["ci"][1]
            assert "loop_rate" in figs and figs["loop_rate"]["n"] == 4  # the loop figures of today, too
    for point in sweep.points:
        for _, run in point.report.runs():
            for r in run.results:
                assert r.generation.meta["thinking_tokens"] <= point.budget
                if r.generation.stop_reason == "budget":
                    assert r.generation.text == "" and r.generation.meta["thinking_tokens"] == point.budget
    written = write_sweep_report(sweep, tmp_path / "report")
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "loops.json").read_text())["budgets"][1]["budget"] == 64
    assert (tmp_path / "report" / "budget-32" / "loops.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# the tiny random model with the thinking tokenizer, through the transformers backend and the CLI
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def thinking_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("thinking")
    out = {}
    for name, seed in (("base", 0), ("patched", 1)):
        model, tok = thinking_model(seed)
        out[name] = save_checkpoint(model, root / name, tok)
    plain = byte_level_tokenizer(["<eos>"], chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    out["plain"] = save_checkpoint(
        tiny_llama(vocab_size=len(plain), hidden_size=32, intermediate_size=64, num_hidden_layers=2),
        root / "plain",
        plain,
    )
    return out


def test_thinking_tokenizer_template_switches_thinking():
    from patchkit.generate.transformers_backend import render_prompt, require_thinking_template
    from patchkit.generate.types import GenerationRequest

    tok = thinking_tokenizer()
    on = render_prompt(tok, GenerationRequest("a", "Hi"), enable_thinking=True)
    off = render_prompt(tok, GenerationRequest("a", "Hi"), enable_thinking=False)
    assert on.endswith("<|turn>model\n<|channel>thought\n") and "<|think|>" in on
    assert off.endswith("<|turn>model\n") and "<|channel>" not in off
    require_thinking_template(tok)  # no error


def test_transformers_sweep_enforces_every_budget(thinking_dirs, suite_file):
    settings = LoopSettings(suite=str(suite_file), thinking_budget=(3, 9), max_new_tokens=14, controls=False)
    sweep = run_thinking_sweep(str(thinking_dirs["base"]), patched_ref=str(thinking_dirs["patched"]), settings=settings)
    assert sweep.budgets == [3, 9]
    for point in sweep.points:
        for name, run in point.report.runs():
            assert len(run.results) == 4, name
            for r in run.results:
                gen = r.generation
                assert gen.meta["thinking_tokens"] <= point.budget
                assert gen.thinking is not None  # the template opened the channel: there is always a trace
                if gen.stop_reason == "budget":
                    assert gen.meta["thinking_tokens"] == point.budget and gen.text == ""
                    assert r.verdict.label in ("doom", "truncated", "verbatim", "decay")
        figs = point.figures()
        assert set(figs) == {"base", "patched"}
        for name in ("base", "patched"):
            assert figs[name]["committed_rate"].n == 4 and figs[name]["doom_rate"].ci is not None
    # a random model rarely closes its thinking: at budget 3 nearly all stop there, never after more thinking
    assert sweep.points[0].figures()["base"]["budget_stop_rate"].k >= 3


def test_cli_sweep_json_and_report(thinking_dirs, suite_file, tmp_path):
    from patchkit.cli import main

    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "loops",
            str(thinking_dirs["base"]),
            "--patched",
            str(thinking_dirs["patched"]),
            "--suite",
            str(suite_file),
            "--thinking-budget",
            "8,2",
            "--max-new-tokens",
            "12",
            "--no-controls",
            "--json",
            "--report",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["budget"] for p in data["budgets"]] == [2, 8]
    assert set(data["budgets"][0]) == {"budget", "base", "patched", "failures"}
    for key in ("doom_rate", "committed_rate", "committed_completeness", "loop_rate", "control_accuracy"):
        assert "n" in data["budgets"][0]["patched"][key]
    assert (out / "thinking-budget.png").stat().st_size > 1000
    assert (out / "budget-2" / "loops.png").is_file() and (out / "budget-8" / "transcripts").is_dir()


def test_a_single_budget_is_the_ordinary_report(thinking_dirs, suite_file):
    settings = LoopSettings(suite=str(suite_file), thinking_budget=5, max_new_tokens=10, controls=False)
    report = run_loops(str(thinking_dirs["base"]), settings=settings)
    data = report.to_json()
    assert data["kind"] == "patchkit.loops"
    assert data["settings"]["thinking_budget"] == 5 and data["settings"]["enable_thinking"] is True
    assert all(r.generation.meta["thinking_tokens"] <= 5 for r in report.base.results)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--thinking-budget", "4,x"], "not a token count"),
        (["--thinking-budget", "4,4"], "given twice"),
        (["--thinking-budget", "0"], ">= 1 token"),
        (["--thinking-budget", "4,8", "--no-thinking"], "needs thinking on"),
        (["--thinking-budget", "4,8", "--no-chat"], "needs chat prompts"),
    ],
)
def test_bad_budgets_are_one_line_exit_2(thinking_dirs, suite_file, args, message):
    from patchkit.cli import main

    result = CliRunner().invoke(main, ["loops", str(thinking_dirs["base"]), "--suite", str(suite_file), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 3


def test_a_template_without_thinking_is_refused_in_one_line(thinking_dirs, suite_file):
    from patchkit.cli import main

    args = ["loops", str(thinking_dirs["plain"]), "--suite", str(suite_file), "--no-controls"]
    result = CliRunner().invoke(main, [*args, "--thinking-budget", "4,8"])
    assert result.exit_code == 2, result.output
    assert "no thinking mode" in result.output
    with pytest.raises(CheckError, match="no thinking mode"):
        run_loops(str(thinking_dirs["plain"]), settings=LoopSettings(suite=str(suite_file), thinking_budget=4))
