"""Batched greedy decoding from token-id prefixes where every row may carry a different candidate edit.

The sweep's workhorse: rows are (candidate, probe) pairs, each continuing from its own prefix (the prompt, or
the prompt plus the base output up to the first token the edit changes). Finished rows (EOS, budget, certain
loop) leave the batch and the KV cache at once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from patchkit.generate.early_stop import StopTest
from patchkit.locate.hooks import ModelView, RowEdits

__all__ = ["Row", "greedy_generate"]


@dataclass
class Row:
    """One sequence to continue. `tokens` already generated (part of the prefix) count towards the budget."""

    cand: int  # index into the RowEdits table (its candidate)
    prefix: list[int]  # prompt ids + any already-generated tokens
    generated: list[int] = field(default_factory=list)  # tokens of the answer so far (tail of prefix)
    max_new_tokens: int = 400
    stop: str | None = None
    loop_label: str | None = None


def _cache_kw(model: Any) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_generate(
    view: ModelView,
    edits: RowEdits,
    rows: Sequence[Row],
    *,
    eos_ids: set[int],
    pad_id: int,
    decode: Callable[[list[int]], str],
    batch_size: int = 32,
    early_stop: StopTest | None = None,
    on_done: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Continue every row greedily (in place) until EOS, budget, or a certain loop."""
    import torch
    from transformers import DynamicCache

    from patchkit.generate.early_stop import LoopWatch

    model = view.model
    device = view.device
    kw = _cache_kw(model)
    todo = [r for r in rows if r.stop is None]
    for r in todo:
        if len(r.generated) >= r.max_new_tokens:
            r.stop = "length"
    todo = sorted((r for r in todo if r.stop is None), key=lambda r: -len(r.prefix))
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            width = max(len(r.prefix) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for b, r in enumerate(batch):
                ids[b, width - len(r.prefix) :] = torch.tensor(r.prefix, dtype=torch.long)
                attn[b, width - len(r.prefix) :] = 1
            ids, attn = ids.to(device), attn.to(device)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            watches = [LoopWatch(early_stop) if early_stop else None for _ in batch]
            edits.select(torch.tensor([r.cand for r in batch], dtype=torch.long, device=device))
            cache = DynamicCache(config=model.config)
            out = model(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1, **{kw: cache}
            )
            next_pos = pos[:, -1:] + 1
            live = list(range(len(batch)))
            while live:
                chosen = out.logits[:, -1, :].argmax(-1).tolist()
                keep: list[int] = []
                for slot, b in enumerate(live):
                    r, tok = batch[b], chosen[slot]
                    if tok in eos_ids:
                        r.stop = "eos"
                    else:
                        r.generated.append(tok)
                        if len(r.generated) >= r.max_new_tokens:
                            r.stop = "length"
                        elif (watch := watches[b]) is not None:
                            label = watch.check(len(r.generated), functools.partial(decode, r.generated))
                            if label is not None:
                                r.stop, r.loop_label = "loop", label
                    if r.stop is None:
                        keep.append(slot)
                    elif on_done is not None:
                        on_done(r)
                if not keep:
                    break
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long)  # CPU: indexes caches on any GPU
                    cache.batch_select_indices(index)
                    attn, next_pos = attn[index], next_pos[index]
                live = [live[s] for s in keep]
                edits.select(torch.tensor([batch[b].cand for b in live], dtype=torch.long, device=device))
                tokens = torch.tensor([[chosen[s]] for s in keep], dtype=torch.long, device=device)
                attn = torch.cat([attn, torch.ones((len(live), 1), dtype=attn.dtype, device=device)], dim=1)
                out = model(input_ids=tokens, attention_mask=attn, position_ids=next_pos, use_cache=True, **{kw: cache})
                next_pos = next_pos + 1
    edits.select(None)
    return list(rows)
