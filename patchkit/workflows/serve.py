"""A small OpenAI-compatible server over the transformers backend (FastAPI + uvicorn).

It exists so the HTTP backend can be tested against a real server offline, and so a patched checkpoint can
be served to tools that speak the OpenAI API. Endpoints: GET /v1/models, POST /v1/chat/completions,
POST /v1/completions (no streaming). Concurrent requests are micro-batched: those that arrive while a batch
is running are generated together in the next one.

    python -m patchkit.workflows.serve ./patched --port 8000 [--name my-model] [--dtype bf16] [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from patchkit.generate.types import Generation, GenerationRequest, SamplingParams

__all__ = ["create_app", "main"]


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


class ChatBody(_Common):
    messages: list[dict[str, Any]]
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionBody(_Common):
    prompt: str


class _Batcher:
    """Collects requests with equal sampling settings and runs them as one batched generate call."""

    def __init__(self, backend: Any, max_batch: int = 32):
        self.backend = backend
        self.max_batch = max_batch
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None

    async def submit(self, request: GenerationRequest, params: SamplingParams) -> Generation:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, params, fut))
        return await fut

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            first = await self.queue.get()
            pending = [first]
            while not self.queue.empty() and len(pending) < self.max_batch:
                pending.append(self.queue.get_nowait())
            groups: dict[SamplingParams, list[Any]] = {}
            for item in pending:
                groups.setdefault(item[1], []).append(item)
            for params, items in groups.items():
                reqs = [r for r, _, _ in items]
                try:
                    gens = await asyncio.to_thread(self.backend.generate, reqs, params)
                except Exception as exc:  # noqa: BLE001 - reported to each waiting client as a 500
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, _, fut), gen in zip(items, gens, strict=True):
                    if not fut.done():
                        fut.set_result(gen)


def create_app(backend: Any, model_name: str, *, max_batch: int = 32) -> Any:
    """FastAPI app serving `backend` (a TransformersBackend) under the name `model_name`."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="patchkit serve")
    batcher = _Batcher(backend, max_batch=max_batch)
    created = int(time.time())

    def _check(body: _Common) -> int:
        if body.model != model_name:
            raise HTTPException(
                404, detail={"message": f"model {body.model!r} not found; this server serves {model_name!r}"}
            )
        if body.stream:
            raise HTTPException(400, detail={"message": "stream=true is not supported by patchkit serve"})
        return body.max_completion_tokens or body.max_tokens or 256

    def _response(kind: str, gen: Generation, prompt_tokens: int) -> dict[str, Any]:
        finish = "stop" if gen.stop_reason == "eos" else "length"
        if kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": gen.text}
            if gen.thinking is not None:
                message["reasoning_content"] = gen.thinking
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": gen.text, "finish_reason": finish}
            obj = "text_completion"
        return {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": obj,
            "created": int(time.time()),
            "model": model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": gen.tokens,
                "total_tokens": prompt_tokens + gen.tokens,
            },
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "patchkit"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody) -> dict[str, Any]:
        budget = _check(body)
        users = [m for m in body.messages if m.get("role") == "user"]
        systems = [m for m in body.messages if m.get("role") == "system"]
        if not users:
            raise HTTPException(400, detail={"message": "messages need a user message"})
        thinking = (body.chat_template_kwargs or {}).get("enable_thinking")
        req = GenerationRequest(
            id=uuid.uuid4().hex,
            prompt=str(users[-1].get("content", "")),
            max_new_tokens=budget,
            seed=body.seed or 0,
            chat=True,
            system=str(systems[0].get("content")) if systems else None,
        )
        gen = await batcher.submit(req, SamplingParams(body.temperature, body.top_p, thinking))
        return _response("chat", gen, 0)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> dict[str, Any]:
        budget = _check(body)
        req = GenerationRequest(
            id=uuid.uuid4().hex, prompt=body.prompt, max_new_tokens=budget, seed=body.seed or 0, chat=False
        )
        gen = await batcher.submit(req, SamplingParams(body.temperature, body.top_p))
        return _response("completion", gen, 0)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m patchkit.workflows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint dir, org/name[@rev], or a .gguf file")
    parser.add_argument("--name", default=None, help="served model name (default: MODEL as given)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument(
        "--early-stop", action="store_true", help="cut generations at a certain loop (finish_reason length)"
    )
    args = parser.parse_args(argv)
    import uvicorn

    from patchkit.checks.detect import loop_stop_test
    from patchkit.generate.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.max_batch,
        early_stop=loop_stop_test if args.early_stop else None,
    )
    app = create_app(backend, args.name or args.model, max_batch=args.max_batch)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
