"""The openai backend's own parts, against real HTTP servers on 127.0.0.1 speaking the OpenAI wire format.

What the official `openai` client does (pooling, timeouts, retries) is exercised in test_generate_openai.py; here:
the missing-extra error, what goes on the wire, thinking fields, authentication, odd servers, and streaming with
an early loop stop that closes the stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse
from test_generate_openai import serve

from patchkit.checks.detect import detect, loop_stop_test
from patchkit.errors import CheckError
from patchkit.generate.openai_backend import OpenAIBackend
from patchkit.generate.types import GenerationRequest, SamplingParams


def _app(
    *,
    reply=None,
    stream_text: str = "",
    key: str | None = None,
    models: bool = True,
    delay: float = 0.002,
    streams: bool = True,
):
    """A server recording every request body. `reply(body)` gives a non-streamed JSON answer; streamed requests
    get `stream_text` repeated to `max_tokens` chunks (one character each), then finish_reason "length" (or,
    with `streams=False`, a 400 like patchkit's own server)."""
    app = FastAPI()
    state: dict = {"bodies": [], "headers": [], "sent": 0, "completed": 0}
    app.state.stats = state

    def _denied(request: Request):
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return None

    if models:

        @app.get("/v1/models")
        async def list_models(request: Request):
            return _denied(request) or {"object": "list", "data": [{"id": "m", "object": "model"}]}

    async def _events(body: dict, chat: bool):
        for i in range(int(body["max_tokens"])):
            ch = stream_text[i % len(stream_text)]
            choice = {"index": 0, "finish_reason": None}
            choice.update({"delta": {"content": ch}} if chat else {"text": ch})
            state["sent"] += 1
            yield f"data: {json.dumps({'id': 'x', 'object': 'chunk', 'choices': [choice]})}\n\n"
            await asyncio.sleep(delay)
        last = {"index": 0, "finish_reason": "length"}
        last.update({"delta": {}} if chat else {"text": ""})
        yield f"data: {json.dumps({'id': 'x', 'choices': [last], 'usage': {'completion_tokens': 999}})}\n\n"
        yield "data: [DONE]\n\n"
        state["completed"] += 1

    async def _answer(request: Request, chat: bool):
        denied = _denied(request)
        if denied is not None:
            return denied
        body = await request.json()
        state["bodies"].append(body)
        state["headers"].append(dict(request.headers))
        if body.get("stream") and not streams:
            return JSONResponse({"detail": {"message": "stream=true is not supported"}}, status_code=400)
        if body.get("stream"):
            return StreamingResponse(_events(body, chat), media_type="text/event-stream")
        return reply(body)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _answer(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _answer(request, False)

    return app


def _chat_reply(message: dict, finish: str = "stop", usage: dict | None = None):
    def reply(body):
        out = {
            "id": "c",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        if usage is not None:
            out["usage"] = usage
        return out

    return reply


def test_missing_openai_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` raises ImportError
    with pytest.raises(CheckError) as exc:
        OpenAIBackend("http://127.0.0.1:9/v1", model="m")
    assert "pip install 'patchkit-llm[openai]'" in str(exc.value) and "\n" not in str(exc.value)


def test_what_goes_on_the_wire(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    app = _app(reply=_chat_reply({"role": "assistant", "content": "Paris"}, usage={"completion_tokens": 2}))
    with serve(app) as url:
        backend = OpenAIBackend(url, model="m")
        params = SamplingParams(temperature=0.7, top_p=0.9, enable_thinking=False)
        gen = backend.generate(
            [GenerationRequest("q", "Capital?", max_new_tokens=17, seed=5, system="Be brief.")], params
        )
        backend.close()
    assert gen[0].text == "Paris" and gen[0].tokens == 2 and gen[0].stop_reason == "eos" and gen[0].thinking is None
    body = app.state.stats["bodies"][0]
    assert body["model"] == "m" and body["max_tokens"] == 17 and body["seed"] == 5
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and not body.get("stream")
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert app.state.stats["headers"][0]["authorization"] == "Bearer EMPTY"  # no key: the local-server placeholder


@pytest.mark.parametrize(
    "message, thinking, text",
    [
        ({"role": "assistant", "content": "42", "reasoning_content": "six times seven"}, "six times seven", "42"),
        ({"role": "assistant", "content": "42", "reasoning": "six times seven"}, "six times seven", "42"),
        ({"role": "assistant", "content": "<think>six times seven</think>\n42"}, "six times seven", "42"),
        ({"role": "assistant", "content": "<think>six times seven, six times"}, "six times seven, six times", ""),
        ({"role": "assistant", "content": None}, None, ""),
    ],
)
def test_thinking_fields_and_markers(message, thinking, text):
    finish = "length" if text == "" else "stop"
    with serve(_app(reply=_chat_reply(message, finish))) as url:
        gen = OpenAIBackend(url, model="m").generate([GenerationRequest("q", "6*7?")])[0]
    assert gen.thinking == thinking and gen.text == text
    assert gen.stop_reason == ("length" if finish == "length" else "eos") and gen.tokens >= 1


def test_api_key_from_argument_or_environment(monkeypatch):
    reply = _chat_reply({"role": "assistant", "content": "ok"})
    with serve(_app(reply=reply, key="sekrit")) as url:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with pytest.raises(CheckError, match=r"HTTP 401 \(the server wants an API key\).*OPENAI_API_KEY"):
            OpenAIBackend(url, model="m")
        assert OpenAIBackend(url, model="m", api_key="sekrit").generate([GenerationRequest("a", "hi")])[0].text == "ok"
        monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
        assert OpenAIBackend(url, model="m").generate([GenerationRequest("a", "hi")])[0].text == "ok"


def test_server_without_a_model_list_and_odd_answers():
    with serve(_app(reply=lambda body: {"id": "c", "object": "chat.completion", "choices": []}, models=False)) as url:
        backend = OpenAIBackend(url, model="m")  # no /models: the first request tells
        assert backend.check_server() == []
        with pytest.raises(CheckError, match="response has no choices"):
            backend.generate([GenerationRequest("a", "hi")])


def test_streaming_cuts_a_certain_loop_and_closes_the_stream():
    app = _app(stream_text="Vega\n", delay=0.005)
    with serve(app) as url:
        backend = OpenAIBackend(url, model="m", early_stop=loop_stop_test, concurrency=2)
        gens = backend.generate(
            [
                GenerationRequest("chat", "List stars", max_new_tokens=200),
                GenerationRequest("raw", "List stars:", max_new_tokens=200, chat=False),
            ]
        )
        time.sleep(200 * 0.005 + 0.5)  # long enough for a stream nobody closed to reach its end
    assert all(b["stream"] is True for b in app.state.stats["bodies"])
    for gen in gens:
        assert gen.stop_reason == "loop" and gen.loop_label in ("decay", "verbatim")
        assert 24 <= gen.tokens < 100 and gen.text.startswith("Vega\nVega\n")
        assert detect(gen.text, finished=gen.finished).is_loop  # stopping early never changes the verdict
    # the server saw both streams closed long before their 200 chunks each
    assert app.state.stats["completed"] == 0 and app.state.stats["sent"] < 200


def test_streaming_to_the_end_uses_the_reported_usage():
    app = _app(stream_text="abc ", delay=0.0)
    with serve(app) as url:
        gen = OpenAIBackend(url, model="m", early_stop=lambda text: None).generate(
            [GenerationRequest("a", "go", max_new_tokens=12, chat=False)]
        )[0]
    assert gen.text == "abc abc abc" and gen.stop_reason == "length" and gen.tokens == 999  # the server's usage
    assert app.state.stats["completed"] == 1


def test_a_server_that_does_not_stream_is_asked_again_unstreamed():
    app = _app(reply=_chat_reply({"role": "assistant", "content": "Vega"}), streams=False)
    with serve(app) as url:
        backend = OpenAIBackend(url, model="m", early_stop=loop_stop_test, concurrency=1)
        gens = backend.generate([GenerationRequest(f"r{i}", "List stars") for i in range(3)])
    assert [g.text for g in gens] == ["Vega"] * 3 and all(g.stop_reason == "eos" for g in gens)
    # one refused streamed request, then every request unstreamed
    assert [bool(b.get("stream")) for b in app.state.stats["bodies"]] == [True, False, False, False]
