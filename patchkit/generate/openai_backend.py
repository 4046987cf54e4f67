"""Generation through an OpenAI-compatible HTTP server (vLLM, llama.cpp server, `transformers serve`, patchkit's own).

This is how a 31B or 26B-A4B model is checked: serve it with tensor parallelism elsewhere and point
`patchkit loops --backend openai --base-url http://host:8000/v1` at it. Chat prompts go to
`/v1/chat/completions`, raw prompts (`chat=False`) to `/v1/completions`.

The HTTP side is the official `openai` client (`pip install 'patchkit-llm[openai]'`): its connection pool, its
timeouts, and its retries (connection errors, timeouts, HTTP 408, 409, 429 and 5xx, with exponential backoff from
0.5 s, jittered, capped at 8 s, honouring the server's Retry-After). What is patchkit's own here: requests run
in parallel threads over one client, at most `concurrency` in flight; an unreachable server or an unknown model
name is one clear error before any work starts; a thinking model's reasoning is split from its answer the same
way for every backend (`reasoning_content` / `reasoning` fields, else the template's markers); and with
`early_stop` the responses are streamed, so a generation whose loop is certain is cut there and its stream
closed (the server stops generating it) instead of running to its token budget.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from patchkit._io.progress import Progress
from patchkit.errors import CheckError
from patchkit.generate.early_stop import LoopWatch, StopTest
from patchkit.generate.thinking import split_thinking
from patchkit.generate.types import (
    REQUESTS_STAGE,
    TOKENS_STAGE,
    Generation,
    GenerationRequest,
    SamplingParams,
)

__all__ = ["OpenAIBackend"]

_CHAT = "/chat/completions"
_COMPLETIONS = "/completions"
#: `generate`'s default decoding settings (SamplingParams is frozen, so one shared instance is safe).
_DEFAULT_PARAMS = SamplingParams()
#: the client needs a key; local servers ignore it (vLLM's documented placeholder)
_NO_KEY = "EMPTY"
#: how a server that cannot stream answers `stream: true` (bad request, unprocessable, not implemented)
_NO_STREAMING = (400, 422, 501)


def _openai() -> Any:
    """The `openai` module, or one line naming the extra that installs it."""
    try:
        import openai
    except ImportError:
        raise CheckError(
            "the openai backend needs the `openai` package", hint="pip install 'patchkit-llm[openai]'"
        ) from None
    return openai


def _retried(status: int) -> bool:
    """The statuses the openai client retries (so a failure with one of them used every attempt)."""
    return status in (408, 409, 429) or status >= 500


class OpenAIBackend:
    """Client for an OpenAI-compatible server. `model` is the served model name.

    `timeout` is seconds per request (connecting: at most 10 s); `retries` is how many times a failed request is
    tried again. `early_stop` (e.g. `patchkit.checks.detect.loop_stop_test`) streams every response and cuts it
    once its loop is certain (vLLM, llama.cpp and `transformers serve` stream; a server that refuses a streamed
    request with 400, 422 or 501, such as patchkit's own, which cuts loops itself with `--early-stop`, is asked
    again unstreamed, and so is every later request: generation then runs to the server's own stop).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        concurrency: int = 8,
        timeout: float = 300.0,
        retries: int = 3,
        api_key: str | None = None,
        early_stop: StopTest | None = None,
        check_every: int = 8,
        check_server: bool = True,
    ):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise CheckError(f"base_url {base_url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8000/v1")
        openai = _openai()
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.early_stop = early_stop
        self.check_every = check_every
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key or _NO_KEY,
            timeout=openai.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            max_retries=self.retries,
        )
        self._lock = threading.Lock()
        self._streams = True  # False once the server refused a streamed request
        if check_server:
            try:
                self.check_server()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------
    def check_server(self) -> list[str]:
        """GET /models once (no retries): fail early and clearly when the server is down or does not serve
        `self.model`. Returns the served model names ([] when the server does not list them)."""
        openai = _openai()
        try:
            page = self._client.with_options(max_retries=0, timeout=min(10.0, self.timeout)).models.list()
        except openai.APIConnectionError as exc:  # timeouts included
            raise CheckError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({_why(exc)})",
                hint="start the server (vLLM, llama.cpp, transformers serve, python -m "
                "patchkit.workflows.serve) or fix --base-url",
            ) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise CheckError(
                    f"{self.base_url}/models: HTTP {exc.status_code} (the server wants an API key)",
                    hint="set OPENAI_API_KEY",
                ) from None
            return []  # some servers have no /models; the first real request will tell
        except openai.APIError:
            return []  # not a model list; the first real request will tell
        try:
            served = [str(m.id) for m in (page.data or [])]
        except (AttributeError, TypeError):
            return []
        if served and self.model not in served:
            raise CheckError(
                f"{self.base_url} does not serve model {self.model!r}", hint=f"it serves: {', '.join(served[:8])}"
            )
        return served

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        params: SamplingParams = _DEFAULT_PARAMS,
        *,
        progress: Progress | None = None,
    ) -> list[Generation]:
        """Run all requests (at most `concurrency` in flight); results in request order."""
        results: dict[str, Generation] = {}
        state = {"done": 0, "tokens": 0}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._one, r, params): r for r in requests}
            try:
                for fut in as_completed(futures):
                    gen = fut.result()
                    results[gen.id] = gen
                    with self._lock:
                        state["done"] += 1
                        state["tokens"] += gen.tokens
                    if progress is not None:
                        progress(REQUESTS_STAGE, state["done"], len(requests))
                        progress(TOKENS_STAGE, state["tokens"], 0)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return [results[r.id] for r in requests]

    # ------------------------------------------------------------------------------------------------------
    def _payload(self, request: GenerationRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": request.seed,
        }
        if not request.chat:
            return _COMPLETIONS, {**body, "prompt": request.prompt}
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
            {"role": "user", "content": request.prompt}
        ]
        body["messages"] = messages
        if params.enable_thinking is not None:  # vLLM / SGLang / transformers serve pass these to the template
            body["extra_body"] = {"chat_template_kwargs": {"enable_thinking": params.enable_thinking}}
        return _CHAT, body

    def _create(self, path: str, body: dict[str, Any], *, stream: bool) -> Any:
        resource = self._client.chat.completions if path == _CHAT else self._client.completions
        return resource.create(**body, stream=stream)

    def _one(self, request: GenerationRequest, params: SamplingParams) -> Generation:
        openai = _openai()
        path, body = self._payload(request, params)
        url = self.base_url + path
        started = time.perf_counter()
        budget = params.thinking_budget if path == _CHAT else None
        try:
            if (self.early_stop is not None or budget is not None) and self._streams:
                try:
                    gen = self._stream(
                        request, path, self._create(path, body, stream=True), self.early_stop, budget=budget
                    )
                except openai.APIStatusError as exc:
                    if exc.status_code not in _NO_STREAMING:
                        raise
                    # a server that does not stream (patchkit's own refuses with 400): ask again, and from now on
                    # ask every request unstreamed, without the early loop stop
                    gen = self._parse(request, path, self._create(path, body, stream=False))
                    self._streams = False
            else:
                gen = self._parse(request, path, self._create(path, body, stream=False))
            if budget is not None and "thinking_tokens" not in gen.meta:
                gen.meta["thinking_budget_enforced"] = False  # unstreamed: the server's own stop only
        except openai.APITimeoutError:
            raise self._gave_up(url, request, f"timed out after {self.timeout:g}s") from None
        except openai.APIConnectionError as exc:
            raise self._gave_up(url, request, _why(exc)) from None
        except openai.APIStatusError as exc:
            if _retried(exc.status_code):
                raise self._gave_up(url, request, f"HTTP {exc.status_code}: {_detail(exc)}") from None
            raise CheckError(f"{url}: HTTP {exc.status_code} for request {request.id}: {_detail(exc)}") from None
        except openai.APIError as exc:  # a response that is not what an OpenAI-compatible server sends
            raise CheckError(f"{url}: unexpected response for request {request.id}: {_first_line(exc)}") from None
        gen.seconds = time.perf_counter() - started
        return gen

    def _gave_up(self, url: str, request: GenerationRequest, last: str) -> CheckError:
        return CheckError(
            f"{url}: request {request.id} failed after {self.retries + 1} attempt(s): {last}",
            hint="check the server, or raise the timeout / lower the concurrency",
        )

    def _parse(self, request: GenerationRequest, path: str, response: Any) -> Generation:
        choices = getattr(response, "choices", None)
        if not choices:
            raise CheckError(f"{self.base_url}{path}: response has no choices: {str(response)[:200]}")
        choice = choices[0]
        if path == _CHAT:
            message = choice.message
            content = (message.content if message is not None else None) or ""
            thinking = _reasoning(message)
        else:
            content, thinking = choice.text or "", None
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "completion_tokens", None)
        if not isinstance(tokens, int):
            tokens = max(1, len((thinking or "") + content) // 4)  # rough: ~4 characters a token
        return _generation(request, content, thinking, choice.finish_reason, tokens)

    def _stream(
        self,
        request: GenerationRequest,
        path: str,
        stream: Iterable[Any],
        test: StopTest | None,
        *,
        budget: int | None = None,
    ) -> Generation:
        """Read a streamed response; cut it (closing the stream) once `test` finds a certain loop, or once the
        thinking trace (`reasoning_content` chunks before any answer) reaches `budget` tokens.

        Tokens are counted as content-bearing chunks (one token each on vLLM, llama.cpp and transformers serve)
        unless the server reports usage at the end. Why the budget is enforced here: servers differ in whether
        and how they take a thinking budget, and counting reasoning chunks works on any that streams them.
        """
        openai = _openai()
        watch = LoopWatch(test, every=self.check_every) if test is not None else None
        content: list[str] = []
        reasoning: list[str] = []
        chunks, finish, usage_tokens, label = 0, None, None, None
        thinking_tokens, over_budget = 0, False
        iterator = iter(stream)
        try:
            while label is None and not over_budget:
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                except openai.APIError:
                    raise
                except Exception as exc:  # the transport failed mid-stream: the client does not wrap these
                    raise CheckError(
                        f"{self.base_url}{path}: the stream of request {request.id} broke off ({_first_line(exc)})",
                        hint="check the server, or raise the timeout / lower the concurrency",
                    ) from exc
                reported = getattr(getattr(chunk, "usage", None), "completion_tokens", None)
                if isinstance(reported, int):
                    usage_tokens = reported
                if not getattr(chunk, "choices", None):
                    continue
                choice = chunk.choices[0]
                finish = choice.finish_reason or finish
                if path == _CHAT:
                    delta = choice.delta
                    text, think = (delta.content or "", _reasoning(delta)) if delta is not None else ("", None)
                else:
                    text, think = choice.text or "", None
                if not text and not think:
                    continue
                content.append(text)
                reasoning.append(think or "")
                chunks += 1
                if think and not "".join(content).strip():
                    thinking_tokens += 1
                    over_budget = budget is not None and thinking_tokens >= budget
                if watch is not None and not over_budget:
                    label = watch.check(chunks, lambda: "".join(reasoning) + "".join(content))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # a cut stream: the server sees the disconnect and stops generating
        cut = label is not None or over_budget
        tokens = usage_tokens if usage_tokens is not None and not cut else chunks
        gen = _generation(request, "".join(content), "".join(reasoning) or None, finish, max(1, tokens))
        gen.meta["thinking_tokens"] = thinking_tokens
        if label is not None:
            gen.stop_reason, gen.loop_label = "loop", label
        elif over_budget:
            gen.stop_reason = "budget"
        return gen


def _reasoning(message: Any) -> str | None:
    """The thinking trace servers send beside the answer (vLLM / SGLang `reasoning_content`, others `reasoning`)."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def _generation(request: GenerationRequest, content: str, thinking: str | None, finish: Any, tokens: int) -> Generation:
    if thinking is None:
        thinking, content, _closed = split_thinking(content)
    stop = {"stop": "eos", "length": "length", "eos": "eos"}.get(str(finish), "eos" if finish else "length")
    return Generation(
        id=request.id,
        text=content.strip(),
        tokens=tokens,
        stop_reason=stop,
        thinking=thinking.strip() if isinstance(thinking, str) else None,
        meta={"finish_reason": finish},
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]


def _why(exc: BaseException) -> str:
    """A connection failure in a few words: the client says "Connection error."; its cause says why."""
    cause = exc.__cause__ or exc.__context__
    for err in (cause, exc):
        if err is not None and "refused" in str(err).lower():
            return "connection refused"
    return _first_line(cause if cause is not None and str(cause) else exc)


def _detail(exc: Any) -> str:
    """The server's own error message from an HTTP error response (OpenAI `error.message`, FastAPI `detail`)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("message") or body.get("detail") or body
        if isinstance(err, dict):
            err = err.get("message") or err
        return str(err)[:200]
    if isinstance(body, str) and body:
        return body[:200]
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    return (text or getattr(exc, "message", "") or "")[:200]
