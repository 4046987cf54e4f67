"""OpenAI-compatible backend against real HTTP servers on 127.0.0.1 (patchkit's own server, and fault injectors)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest
import uvicorn
from fixtures.tiny_models import save_checkpoint
from loops_tiny import bigram_model, cycle, one_thread

from patchkit.errors import CheckError
from patchkit.generate.openai_backend import OpenAIBackend
from patchkit.generate.types import GenerationRequest, SamplingParams


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


LOOP_MAP = {**cycle("Vega\n"), ":": "V", ".": "O", "O": "K", "K": "<eos>"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app):
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def tiny_server():
    from patchkit.generate.transformers_backend import TransformersBackend
    from patchkit.workflows.serve import create_app

    model, tok = bigram_model(LOOP_MAP)
    with serve(create_app(TransformersBackend(model, tok, early_stop=None), "tiny-bigram")) as url:
        yield url


def test_chat_and_completions_against_patchkit_server(tiny_server):
    backend = OpenAIBackend(tiny_server, model="tiny-bigram", concurrency=3)
    requests = [
        GenerationRequest("stop", "Say it.", max_new_tokens=30, chat=False),
        GenerationRequest("loop", "List stars:", max_new_tokens=30, chat=False),
        GenerationRequest("chat", "List stars", max_new_tokens=25),
    ]
    done = []
    gens = backend.generate(requests, SamplingParams(), progress=lambda stage, d, t: done.append((stage, d, t)))
    assert [g.id for g in gens] == ["stop", "loop", "chat"]
    assert gens[0].text == "OK" and gens[0].stop_reason == "eos"
    assert gens[1].text.startswith("Vega\nVega") and gens[1].stop_reason == "length" and gens[1].tokens == 30
    assert gens[2].text.startswith("Vega") and gens[2].tokens == 25  # chat template ends in "\n" -> "V"
    requests_seen = [(d, t) for stage, d, t in done if stage == "requests"]
    tokens_seen = [d for stage, d, _ in done if stage == "tokens"]
    assert requests_seen[-1] == (3, 3) and tokens_seen[-1] == sum(g.tokens for g in gens)
    assert tokens_seen == sorted(tokens_seen)  # absolute counts, never deltas


def test_loop_check_runs_over_http(tiny_server, tmp_path):
    from patchkit.checks.loops import LoopSettings, run_loops

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "suite: http\nversion: 1\nprobes:\n"
        "  - {id: stars, kind: enumeration, split: train, category: x, truth: [Vega, Deneb],"
        " prompts: ['List stars']}\n"
        "  - {id: ok, kind: control, split: heldout, category: x, prompts: ['Say OK'],"
        " answer: {any: [OK]}, max_new_tokens: 12}\n"
    )
    report = run_loops(
        "tiny-bigram",
        patched_ref="tiny-bigram",
        settings=LoopSettings(
            suite=str(suite), backend="openai", base_url=tiny_server, max_new_tokens=80, controls=False
        ),
    )
    base = report.base.metrics()
    assert base.n == 1 and base.loops == 1 and report.patched.metrics().loops == 1
    assert report.to_json()["backend"] == "openai"


def test_unreachable_server_is_one_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(CheckError) as exc:
        OpenAIBackend(url, model="m", timeout=5)
    msg = str(exc.value)
    assert "cannot reach the OpenAI-compatible server" in msg and url in msg and "\n" not in msg


def test_unknown_model_and_bad_url(tiny_server):
    with pytest.raises(CheckError, match="does not serve model 'other'.*tiny-bigram"):
        OpenAIBackend(tiny_server, model="other")
    with pytest.raises(CheckError, match="not an http"):
        OpenAIBackend("localhost:8000", model="m")


def _fault_app(*, fail_first: int = 0, delay: float = 0.0, status: int = 503):
    """A real server that fails the first N completions, or answers slowly, and records concurrency."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    state = {"calls": 0, "in_flight": 0, "max_in_flight": 0}
    app.state.stats = state

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "m"}]}

    @app.post("/v1/completions")
    async def completions(body: dict):
        state["calls"] += 1
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            if state["calls"] <= fail_first:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=status)
            await asyncio.sleep(delay)
            return {
                "choices": [{"text": f"echo {body['prompt']}", "finish_reason": "stop"}],
                "usage": {"completion_tokens": 2},
            }
        finally:
            state["in_flight"] -= 1

    return app


def test_retries_with_backoff_then_succeeds():
    app = _fault_app(fail_first=2)
    with serve(app) as url:
        backend = OpenAIBackend(url, model="m", retries=3)
        start = time.monotonic()
        gen = backend.generate([GenerationRequest("a", "hi", chat=False)])[0]
        assert gen.text == "echo hi" and gen.stop_reason == "eos"
        assert app.state.stats["calls"] == 3
        assert time.monotonic() - start >= (0.5 + 1.0) * 0.75  # the openai client's backoff: 0.5 s, 1 s (jitter -25%)


def test_gives_up_after_retries_and_on_client_errors():
    with serve(_fault_app(fail_first=100)) as url:
        backend = OpenAIBackend(url, model="m", retries=1)
        with pytest.raises(CheckError, match=r"failed after 2 attempt\(s\): HTTP 503: overloaded"):
            backend.generate([GenerationRequest("a", "hi", chat=False)])
    with serve(_fault_app(fail_first=100, status=400)) as url:
        with pytest.raises(CheckError, match="HTTP 400 for request a"):
            OpenAIBackend(url, model="m", retries=3).generate([GenerationRequest("a", "hi", chat=False)])


def test_timeout_and_concurrency_limit():
    slow = _fault_app(delay=0.8)
    with serve(slow) as url:
        backend = OpenAIBackend(url, model="m", timeout=0.3, retries=0)
        with pytest.raises(CheckError, match="timed out after 0.3s"):
            backend.generate([GenerationRequest("a", "hi", chat=False)])
    quick = _fault_app(delay=0.15)
    with serve(quick) as url:
        backend = OpenAIBackend(url, model="m", concurrency=2)
        gens = backend.generate([GenerationRequest(f"r{i}", str(i), chat=False) for i in range(6)])
        assert [g.text for g in gens] == [f"echo {i}" for i in range(6)]
        assert quick.state.stats["max_in_flight"] == 2


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory):
    """`transformers serve` (the real CLI, offline) preloading a tiny bigram checkpoint on 127.0.0.1."""
    import os
    import shutil
    import subprocess
    import sys

    import openai  # noqa: F401  (transformers serve needs it)

    exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("the transformers CLI is not installed")
    path = tmp_path_factory.mktemp("served") / "tiny"
    model, tok = bigram_model(LOOP_MAP)
    save_checkpoint(model, path, tok)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {proc.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "transformers serve did not start within 90 s"
            time.sleep(0.3)
        yield url, str(path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_against_transformers_serve(transformers_serve):
    url, name = transformers_serve
    backend = OpenAIBackend(url, model=name, concurrency=2)
    gens = backend.generate(
        [
            GenerationRequest("stop", "go.", max_new_tokens=10, chat=False),
            GenerationRequest("loop", "List stars", max_new_tokens=40),
        ]
    )
    assert gens[0].text == "OK" and gens[0].stop_reason == "eos"
    assert gens[1].text.startswith("Vega\nVega") and gens[1].stop_reason == "length" and gens[1].tokens == 40
    from patchkit.checks.detect import detect

    assert detect(gens[1].text, finished=gens[1].finished).is_loop
