"""Batched greedy decoding from token-id prefixes where every row may carry a different candidate edit.

The sweep's workhorse: rows are (candidate, probe) pairs, each continuing from its own prefix (the prompt, or
the prompt plus the base output up to the first token the edit changes). Finished rows (EOS, budget, certain
loop) leave the batch and the KV cache at once.

There is one decoding engine in patchkit: `patchkit.generate.transformers_backend.TransformersBackend`
(left-padded KV-cached batches, rows leaving at EOS / budget / certain loop, waiting rows merged in when slots
free up). This module only adapts it to locate, in three ways:

- token ids in and out: rows start from token-id prefixes (not prompts to render) and their new tokens are
  appended to `Row.generated` itself, so the budget and the loop watch see the whole answer, as before;
- per-row edits: a forward pre-hook on the model tells `RowEdits` which candidate each batch row holds before
  every forward pass (prefill of new rows, and every decoding step after rows left or joined);
- no text: a finished row is not decoded (locate classifies the token ids itself).

The adapter overrides the engine's per-batch steps (`_prefill`, `_finish`) and drives `_run_stream`: those are
the backend's internal extension points today, and `tests/test_greedy_engine.py` checks the result against
whole-model edits token for token, so a change there cannot silently break locate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from patchkit.errors import PatchkitError
from patchkit.generate.early_stop import StopTest
from patchkit.generate.transformers_backend import TransformersBackend
from patchkit.generate.types import Generation, GenerationRequest, SamplingParams
from patchkit.locate.hooks import ModelView, RowEdits

__all__ = ["Row", "greedy_generate"]

_GREEDY = SamplingParams()


@dataclass
class Row:
    """One sequence to continue. `tokens` already generated (part of the prefix) count towards the budget."""

    cand: int  # index into the RowEdits table (its candidate)
    prefix: list[int]  # prompt ids + any already-generated tokens
    generated: list[int] = field(default_factory=list)  # tokens of the answer so far (tail of prefix)
    max_new_tokens: int = 400
    stop: str | None = None
    loop_label: str | None = None


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
    refill: bool = True,
) -> list[Row]:
    """Continue every row greedily (in place) until EOS, budget, or a certain loop.

    Rows that already have a stop reason are left alone; a row whose budget is already spent stops with
    "length" without a forward pass. `on_done(row)` is called as each row finishes. `refill` lets waiting
    rows join the running batch as slots free up (the backend's default; False decodes in fixed chunks).
    """
    import torch

    todo = [r for r in rows if r.stop is None]
    for r in todo:
        if len(r.generated) >= r.max_new_tokens:
            r.stop = "length"
    todo = sorted((r for r in todo if r.stop is None), key=lambda r: -len(r.prefix))  # similar lengths batch
    if not todo:
        return list(rows)
    engine = _RowEngine(
        view,
        edits,
        todo,
        eos_ids=eos_ids,
        pad_id=pad_id,
        decode=decode,
        batch_size=batch_size,
        early_stop=early_stop,
        refill=refill,
        on_done=on_done,
    )
    handle = view.model.register_forward_pre_hook(engine.before_forward, with_kwargs=True)
    try:
        with torch.inference_mode():
            engine.run()
    finally:
        handle.remove()
        edits.select(None)
    return list(rows)


class _TokenIds:
    """The tokenizer facts the engine needs when it is fed token ids: the pad id, and `decode` for the loop watch.

    No vocabulary: locate's prefixes are already templated ids, EOS ids come from the caller, and there are no
    thinking markers to track (a thinking budget is a `SamplingParams` setting locate does not use).
    """

    unk_token_id = None
    eos_token_id = None

    def __init__(self, pad_id: int, decode: Callable[[list[int]], str]):
        self.pad_token_id = int(pad_id)
        self._decode = decode

    def get_vocab(self) -> dict[str, int]:
        return {}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._decode(ids)


class _RowEngine(TransformersBackend):
    """The transformers backend decoding locate `Row`s, with the `RowEdits` selection following its batch."""

    def __init__(
        self,
        view: ModelView,
        edits: RowEdits,
        rows: list[Row],
        *,
        eos_ids: set[int],
        pad_id: int,
        decode: Callable[[list[int]], str],
        batch_size: int,
        early_stop: StopTest | None,
        refill: bool,
        on_done: Callable[[Row], None] | None,
    ):
        super().__init__(
            view.model, _TokenIds(pad_id, decode), batch_size=batch_size, early_stop=early_stop, refill=refill
        )
        self.eos_ids = set(eos_ids)
        self._edits = edits
        self._rows = rows
        self._device = view.device
        self._on_done = on_done
        self._live: list[Any] = []  # the engine's rows, in batch order
        self._incoming: list[int] | None = None  # candidates of the rows being prefilled right now

    def run(self) -> None:
        items = [
            (i, GenerationRequest(id=str(i), prompt="", max_new_tokens=r.max_new_tokens), list(r.prefix))
            for i, r in enumerate(self._rows)
        ]
        state = {"done": 0, "tokens": 0}
        for _index, _generation in self._run_stream(items, _GREEDY, None, state, len(items)):
            pass  # `_finish` already wrote each row back

    # -- the engine's per-batch steps -----------------------------------------------------------------------
    def _prefill(self, batch: list[tuple[int, GenerationRequest, list[int]]]) -> tuple[list[Any], Any, Any, Any, Any]:
        self._incoming = [self._rows[index].cand for index, _, _ in batch]
        try:
            out = super()._prefill(batch)
        finally:
            self._incoming = None
        new_rows = out[0]
        for engine_row in new_rows:
            # new tokens go straight into the answer so far: the budget and the loop watch count all of it
            engine_row.tokens = self._rows[engine_row.index].generated
        self._live.extend(new_rows)  # merged after the running rows, or a fresh batch (then _live is empty)
        return out

    def _finish(self, row: Any) -> Generation:
        self._live = [r for r in self._live if r is not row]
        target = self._rows[row.index]
        target.stop, target.loop_label = row.stop or "length", row.loop_label
        if self._on_done is not None:
            self._on_done(target)
        return Generation(
            id=row.request.id, text="", tokens=len(row.tokens), stop_reason=target.stop, loop_label=row.loop_label
        )

    # -- the hook -------------------------------------------------------------------------------------------
    def before_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: select the candidate of every row of the batch about to run."""
        import torch

        cands = self._incoming if self._incoming is not None else [self._rows[r.index].cand for r in self._live]
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or int(ids.shape[0]) != len(cands):
            got = "no input_ids" if ids is None else f"{int(ids.shape[0])} rows"
            raise PatchkitError(
                f"internal error: the generation batch has {got} but locate tracks {len(cands)}: the "
                "transformers backend's batching changed under locate's per-row edits"
            )
        self._edits.select(torch.tensor(cands, dtype=torch.long, device=self._device))
