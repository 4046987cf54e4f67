"""Generation through an OpenAI-compatible HTTP server (vLLM, llama.cpp server, `transformers serve`, patchkit's own).

This is how a 31B or 26B-A4B model is checked: serve it with tensor parallelism elsewhere and point
`patchkit loops --backend openai --base-url http://host:8000/v1` at it. Chat prompts go to
`/v1/chat/completions`, raw prompts (`chat=False`) to `/v1/completions`. Requests run in parallel up to
`concurrency`; connection errors, timeouts, 429 and 5xx are retried with exponential backoff; an unreachable
server or an unknown model name is one clear error before any work starts.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from patchkit._io.progress import Progress
from patchkit.errors import CheckError
from patchkit.generate.thinking import split_thinking
from patchkit.generate.types import (
    REQUESTS_STAGE,
    TOKENS_STAGE,
    Generation,
    GenerationRequest,
    SamplingParams,
)

__all__ = ["OpenAIBackend"]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: `generate`'s default decoding settings (SamplingParams is frozen, so one shared instance is safe).
_DEFAULT_PARAMS = SamplingParams()


class OpenAIBackend:
    """Client for an OpenAI-compatible server. `model` is the served model name."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        concurrency: int = 8,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 1.0,
        api_key: str | None = None,
        check_server: bool = True,
    ):
        import httpx

        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise CheckError(f"base_url {base_url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8000/v1")
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            headers=headers,
            limits=httpx.Limits(max_connections=self.concurrency),
        )
        self._lock = threading.Lock()
        if check_server:
            self.check_server()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------
    def check_server(self) -> list[str]:
        """GET /models: fail early and clearly when the server is down or does not serve `self.model`."""
        import httpx

        try:
            resp = self._client.get(f"{self.base_url}/models", timeout=min(10.0, self.timeout))
        except httpx.HTTPError as exc:
            raise CheckError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({_why(exc)})",
                hint="start the server (vLLM, llama.cpp, transformers serve, python -m "
                "patchkit.workflows.serve) or fix --base-url",
            ) from None
        if resp.status_code in (401, 403):
            raise CheckError(
                f"{self.base_url}/models: HTTP {resp.status_code} (the server wants an API key)",
                hint="set OPENAI_API_KEY",
            )
        if resp.status_code != 200:
            return []  # some servers have no /models; the first real request will tell
        try:
            served = [str(m.get("id")) for m in resp.json().get("data", [])]
        except (ValueError, AttributeError):
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

    def _payload(self, request: GenerationRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": request.seed,
        }
        if request.chat:
            messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
                {"role": "user", "content": request.prompt}
            ]
            body["messages"] = messages
            if params.enable_thinking is not None:  # vLLM / SGLang / transformers serve pass these to the template
                body["chat_template_kwargs"] = {"enable_thinking": params.enable_thinking}
            return "/chat/completions", body
        body["prompt"] = request.prompt
        return "/completions", body

    def _one(self, request: GenerationRequest, params: SamplingParams) -> Generation:
        import httpx

        path, body = self._payload(request, params)
        url = self.base_url + path
        started = time.perf_counter()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.75 + 0.5 * random.random()))
            try:
                resp = self._client.post(url, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g}s"
                continue
            except httpx.HTTPError as exc:
                last = _why(exc)
                continue
            if resp.status_code in _RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_detail(resp)}"
                continue
            if resp.status_code != 200:
                raise CheckError(f"{url}: HTTP {resp.status_code} for request {request.id}: {_detail(resp)}")
            return self._parse(request, resp.json(), path, time.perf_counter() - started)
        raise CheckError(
            f"{url}: request {request.id} failed after {self.retries + 1} attempt(s): {last}",
            hint="check the server, or raise the timeout / lower the concurrency",
        )

    def _parse(self, request: GenerationRequest, data: dict[str, Any], path: str, seconds: float) -> Generation:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise CheckError(f"{self.base_url}{path}: response has no choices: {str(data)[:200]}") from None
        if path == "/chat/completions":
            message = choice.get("message") or {}
            content = message.get("content") or ""
            thinking = message.get("reasoning_content") or message.get("reasoning")
        else:
            content, thinking = choice.get("text") or "", None
        if thinking is None:
            thinking, content, _closed = split_thinking(content)
        finish = choice.get("finish_reason")
        stop = {"stop": "eos", "length": "length", "eos": "eos"}.get(str(finish), "eos" if finish else "length")
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        if not isinstance(tokens, int):
            tokens = max(1, len((thinking or "") + content) // 4)  # rough: ~4 characters a token
        return Generation(
            id=request.id,
            text=content.strip(),
            tokens=tokens,
            stop_reason=stop,
            thinking=thinking.strip() if isinstance(thinking, str) else None,
            seconds=seconds,
            meta={"finish_reason": finish},
        )


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200]


def _detail(resp: Any) -> str:
    try:
        data = resp.json()
        if isinstance(data, dict):
            err = data.get("error") or data.get("detail") or data
            if isinstance(err, dict):
                err = err.get("message") or err
            return str(err)[:200]
    except ValueError:
        pass
    return resp.text[:200]
