"""Local generation with transformers: batched, left-padded, KV-cached, with per-sequence early loop stop.

Why not `model.generate`: it keeps every row in the batch until the longest one is done. Here a row leaves
the batch (and the KV cache) as soon as it emits EOS, runs out of budget, or is certainly looping, so a
looping base model costs a fraction of its token budget. Greedy output is token-identical to
`model.generate` (tested); sampling draws every row from its own seeded generator, so a row's text does not
depend on which other prompts shared its batch.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from patchkit._io.progress import Progress
from patchkit.errors import CheckError, Fix
from patchkit.generate.early_stop import LoopWatch, StopTest
from patchkit.generate.loading import Placement
from patchkit.generate.thinking import split_thinking
from patchkit.generate.types import (
    REQUESTS_STAGE,
    TOKENS_STAGE,
    Generation,
    GenerationRequest,
    SamplingParams,
)

__all__ = ["TransformersBackend", "render_prompt", "require_chat_template", "require_thinking_template"]

#: Special tokens that open / close a thinking block (Gemma 4 channels, <think> tags).
_THINK_OPEN = ("<|channel>", "<think>")
_THINK_CLOSE = ("<channel|>", "</think>")
#: `generate`'s default decoding settings (SamplingParams is frozen, so one shared instance is safe).
_DEFAULT_PARAMS = SamplingParams()


def render_prompt(tokenizer: Any, request: GenerationRequest, enable_thinking: bool | None = None) -> str:
    """The exact text fed to the model: the chat template with a generation prompt, or the raw prompt."""
    if not request.chat:
        return request.prompt
    require_chat_template(tokenizer)
    messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
        {"role": "user", "content": request.prompt}
    ]
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)


def require_chat_template(tokenizer: Any) -> None:
    """Refuse, in one line, to chat with a tokenizer that has no chat template (a base model, not an instruct one).

    Why not fall back to raw text silently: a chat model's numbers depend on its template, so a raw prompt
    must be asked for (`chat=False`, `--no-chat`), never substituted.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise CheckError(
            f"{name}: the tokenizer has no chat template, so prompts cannot be sent as chat messages",
            fix=Fix("chat", False, "to send the prompts as raw text"),
            hint="or use a chat/instruct model",
        )


def require_thinking_template(tokenizer: Any) -> None:
    """Refuse, in one line, a thinking budget for a tokenizer whose chat template cannot turn thinking on.

    Why: a budget counts the tokens between the thinking markers; a template that ignores `enable_thinking`,
    or a vocabulary without the markers as tokens, would make every generation "within budget" and the study
    silently measure nothing. Supported: the template renders differently with enable_thinking on and off, and
    the tokenizer has a thinking open and close token (Gemma 4 channels, <think> tags).
    """
    require_chat_template(tokenizer)
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    probe = GenerationRequest("thinking-probe", "Hi")
    try:
        on, off = (render_prompt(tokenizer, probe, enable_thinking=flag) for flag in (True, False))
    except Exception as exc:  # a template that fails on the switch cannot honour it either
        raise CheckError(
            f"{name}: the chat template fails with enable_thinking ({str(exc).splitlines()[0][:120]})",
            hint="drop --thinking-budget, or use a model whose chat template supports thinking",
        ) from None
    if on == off:
        raise CheckError(
            f"{name}: the chat template has no thinking mode (enable_thinking changes nothing), "
            "so a thinking budget would measure nothing",
            hint="drop --thinking-budget, or use a thinking model (Gemma 4, Qwen 3, ...)",
        )
    if not (_token_ids(tokenizer, _THINK_OPEN) and _token_ids(tokenizer, _THINK_CLOSE)):
        raise CheckError(
            f"{name}: no thinking marker tokens ({', '.join(_THINK_OPEN + _THINK_CLOSE)}), "
            "so thinking tokens cannot be counted against a budget",
            hint="drop --thinking-budget",
        )


def _token_ids(tokenizer: Any, names: Sequence[str]) -> set[int]:
    ids: set[int] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    for name in names:
        if name in vocab and vocab[name] != unk:
            ids.add(int(vocab[name]))
    return ids


@dataclass
class _Row:
    index: int  # position in the caller's request list
    request: GenerationRequest
    generator: Any  # torch.Generator for sampling
    tokens: list[int] = field(default_factory=list)
    in_thinking: bool = False
    opened_by_prompt: bool = False  # the chat template opened the thinking block (the model never emits it)
    thinking_tokens: int = 0
    watch: LoopWatch | None = None
    stop: str | None = None
    loop_label: str | None = None
    started: float = 0.0


class TransformersBackend:
    """Generate with a loaded (model, tokenizer). `batch_size` rows share one KV-cached forward pass."""

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        early_stop: StopTest | None = None,
        check_every: int = 8,
        refill: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.early_stop = early_stop
        self.check_every = check_every
        self.refill = refill
        self._cache_kw = "past_key_values"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        self.think_open = _token_ids(tokenizer, _THINK_OPEN)
        self.think_close = _token_ids(tokenizer, _THINK_CLOSE)
        self.placement: Placement | None = None  # set by `load`; None for a model the caller loaded

    @classmethod
    def load(
        cls,
        ref: Any,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        log: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> TransformersBackend:
        """Load `ref` (see `patchkit.generate.loading.load_checkpoint`; "auto" dtype/device allowed) and wrap it.

        The chosen placement is kept as `.placement`; `log` receives its one-line description before loading.
        """
        from patchkit.generate.loading import load_checkpoint

        loaded = load_checkpoint(ref, dtype=dtype, device=device, log=log)
        backend = cls(loaded.model, loaded.tokenizer, **kwargs)
        backend.placement = loaded.placement
        return backend

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        ids |= _token_ids(self.tokenizer, ("<|im_end|>", "<turn|>", "<end_of_turn>", "<|eot_id|>"))
        return ids

    # ------------------------------------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        params: SamplingParams = _DEFAULT_PARAMS,
        *,
        progress: Progress | None = None,
    ) -> list[Generation]:
        """Complete every request; results come back in request order."""
        import torch

        texts = [render_prompt(self.tokenizer, r, params.enable_thinking) for r in requests]
        encoded = [
            self.tokenizer(t, add_special_tokens=not r.chat)["input_ids"] for t, r in zip(texts, requests, strict=True)
        ]
        order = sorted(range(len(requests)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
        results: list[Generation | None] = [None] * len(requests)
        state = {"done": 0, "tokens": 0}
        with torch.inference_mode():
            items = [(i, requests[i], encoded[i]) for i in order]
            for index, gen in self._run_stream(items, params, progress, state, len(requests)):
                results[index] = gen
        return [g for g in results if g is not None]

    def _prefill(self, batch: list[tuple[int, GenerationRequest, list[int]]]) -> tuple[list[_Row], Any, Any, Any, Any]:
        """Left-pad and run the prompts of `batch`: (rows, cache, attention mask, next positions, last logits)."""
        import torch
        from transformers import DynamicCache

        device = self.model.get_input_embeddings().weight.device  # the first GPU when layers span several
        pad = int(self.tokenizer.pad_token_id)
        width = max(len(ids) for _, _, ids in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        rows: list[_Row] = []
        for b, (index, request, ids) in enumerate(batch):
            input_ids[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attn[b, width - len(ids) :] = 1
            gen = torch.Generator(device="cpu")
            gen.manual_seed(zlib.crc32(f"{request.seed}:{request.id}".encode()) & 0x7FFFFFFF)
            # a template that pre-opens the thinking block leaves the model inside it
            last_open = max((ids.index(t) for t in self.think_open if t in ids), default=-1)
            last_close = max((ids.index(t) for t in self.think_close if t in ids), default=-1)
            rows.append(
                _Row(
                    index,
                    request,
                    gen,
                    in_thinking=last_open > last_close,
                    opened_by_prompt=last_open > last_close,
                    watch=LoopWatch(self.early_stop, every=self.check_every) if self.early_stop else None,
                    started=time.perf_counter(),
                )
            )
        input_ids, attn = input_ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attn,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        return rows, cache, attn, positions[:, -1:] + 1, out.logits[:, -1, :].float()

    def _run_stream(
        self,
        items: list[tuple[int, GenerationRequest, list[int]]],
        params: SamplingParams,
        progress: Progress | None,
        state: dict[str, int],
        total: int,
    ) -> Iterator[tuple[int, Generation]]:
        """Decode all items with at most `batch_size` rows in flight.

        A row leaves the batch (and its KV cache) as soon as it is done. When a quarter of the slots are free,
        waiting prompts are prefilled and merged into the running batch (their caches left-padded to a common
        length), so the batch stays full instead of draining to a few slow rows.
        """
        import torch

        self._cache_kw = self._cache_kwarg()
        pending = deque(items)
        rows, cache, attn, next_pos, logits = self._prefill(
            [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
        )
        refill = self.refill and _mergeable(cache)
        device = attn.device
        while rows:
            chosen = self._choose(logits, rows, params)
            keep: list[int] = []
            for slot, row in enumerate(rows):
                token = chosen[slot]
                state["tokens"] += 1
                if token in self.eos_ids:
                    row.stop = "eos"
                else:
                    row.tokens.append(token)
                    self._track_thinking(row, token, params)
                    if row.stop is None and len(row.tokens) >= row.request.max_new_tokens:
                        row.stop = "length"
                    if row.stop is None and row.watch is not None:
                        label = row.watch.check(len(row.tokens), functools.partial(self._decode, row.tokens))
                        if label is not None:
                            row.stop, row.loop_label = "loop", label
                if row.stop is None:
                    keep.append(slot)
                else:
                    state["done"] += 1
                    yield row.index, self._finish(row)
            if progress is not None:
                progress(REQUESTS_STAGE, state["done"], total)
                progress(TOKENS_STAGE, state["tokens"], 0)
            if keep:
                if len(keep) < len(rows):
                    index = torch.tensor(keep, dtype=torch.long)  # CPU: indexes caches on any GPU
                    cache.batch_select_indices(index)
                    attn, next_pos = attn[index], next_pos[index]
                    if refill:
                        attn = _trim_left(cache, attn)
                rows = [rows[s] for s in keep]
                next_tokens = torch.tensor([[chosen[s]] for s in keep], dtype=torch.long, device=device)
                attn = torch.cat([attn, torch.ones((len(rows), 1), dtype=attn.dtype, device=device)], dim=1)
                out = self.model(
                    input_ids=next_tokens,
                    attention_mask=attn,
                    position_ids=next_pos,
                    use_cache=True,
                    **{self._cache_kw: cache},
                )
                next_pos = next_pos + 1
                logits = out.logits[:, -1, :].float()
            else:
                rows = []
            free = self.batch_size - len(rows)
            if pending and (not rows or (refill and free >= max(1, self.batch_size // 4))):
                new = [pending.popleft() for _ in range(min(free, len(pending)))]
                n_rows, n_cache, n_attn, n_pos, n_logits = self._prefill(new)
                if not rows:
                    rows, cache, attn, next_pos, logits = n_rows, n_cache, n_attn, n_pos, n_logits
                else:
                    attn = _merge(cache, attn, n_cache, n_attn)
                    rows = rows + n_rows
                    next_pos = torch.cat([next_pos, n_pos])
                    logits = torch.cat([logits, n_logits])

    def _cache_kwarg(self) -> str:
        """transformers >= 5.2x names the KV cache argument `cache`; earlier 5.x `past_key_values`."""
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _choose(self, logits: Any, rows: list[_Row], params: SamplingParams) -> list[int]:
        import torch

        if params.greedy:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(dim=-1)
            drop = cum - sorted_p > params.top_p  # keep the smallest prefix reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
        probs = probs.cpu()
        return [int(torch.multinomial(probs[i], 1, generator=row.generator)) for i, row in enumerate(rows)]

    def _track_thinking(self, row: _Row, token: int, params: SamplingParams) -> None:
        if token in self.think_open:
            row.in_thinking = True
        elif token in self.think_close:
            row.in_thinking = False
        elif row.in_thinking:
            row.thinking_tokens += 1
            if params.thinking_budget is not None and row.thinking_tokens >= params.thinking_budget:
                row.stop = "budget"

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _finish(self, row: _Row) -> Generation:
        raw = self.tokenizer.decode(row.tokens, skip_special_tokens=False)
        thinking, answer, _closed = split_thinking(raw)
        if thinking is None and row.opened_by_prompt:
            # the template opened the block: the thinking runs to the first close marker (or to the end)
            thinking, answer = _split_opened(raw)
        clean = lambda s: self._strip_special(s)  # noqa: E731
        return Generation(
            id=row.request.id,
            text=clean(answer).strip(),
            tokens=len(row.tokens) + (row.stop == "eos"),
            stop_reason=row.stop or "length",
            thinking=clean(thinking).strip() if thinking is not None else None,
            seconds=time.perf_counter() - row.started,
            loop_label=row.loop_label,
            meta={"thinking_tokens": row.thinking_tokens},
        )

    def _strip_special(self, text: str) -> str:
        for tok in self.tokenizer.all_special_tokens:
            if tok:
                text = text.replace(tok, "")
        return text


def _split_opened(raw: str) -> tuple[str, str]:
    """(thinking, answer) of a generation whose thinking block the prompt opened: split at the first close."""
    ends = [(at, close) for close in _THINK_CLOSE if (at := raw.find(close)) >= 0]
    if not ends:
        return raw, ""
    at, close = min(ends)
    return raw[:at], raw[at + len(close) :]


def _mergeable(cache: Any) -> bool:
    """Only plain full-attention cache layers can be trimmed and merged (not sliding-window / linear-attention)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    return all(type(layer) is DynamicLayer for layer in layers)


def _left_pad(t: Any, length: int, dim: int) -> Any:
    import torch

    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def _merge(cache: Any, attn: Any, new_cache: Any, new_attn: Any) -> Any:
    """Append the rows of (new_cache, new_attn) to (cache, attn) in place; returns the merged attention mask."""
    import torch

    length = max(attn.shape[1], new_attn.shape[1])
    for layer, new in zip(cache.layers, new_cache.layers, strict=True):
        layer.keys = torch.cat([_left_pad(layer.keys, length, 2), _left_pad(new.keys, length, 2)], dim=0)
        layer.values = torch.cat([_left_pad(layer.values, length, 2), _left_pad(new.values, length, 2)], dim=0)
    return torch.cat([_left_pad(attn, length, 1), _left_pad(new_attn, length, 1)], dim=0)


def _trim_left(cache: Any, attn: Any) -> Any:
    """Drop leading cache positions that are padding for every remaining row."""
    used = attn.sum(dim=0).nonzero()
    start = int(used[0]) if used.numel() else 0
    if start == 0:
        return attn
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, start:]
        layer.values = layer.values[:, :, start:]
    return attn[:, start:]
