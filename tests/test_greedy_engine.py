"""locate's batched greedy decoding (`patchkit.locate.greedy`) runs on the transformers backend's engine.

Every row carries its own candidate edit through one shared batch; the reference for each row is the same edit
applied to the whole model (`runtime_edits`) and a plain, uncached greedy loop from the row's prefix. Rows leave
the batch at different times and (with refill) join it mid-run, so the per-row edit selection must follow the
batch exactly for the tokens to match.
"""

from __future__ import annotations

import pytest
import torch
from loops_tiny import bigram_model, cycle, one_thread, tiny_model

from patchkit.checks.detect import loop_stop_test
from patchkit.edit.runtime import runtime_edits
from patchkit.locate.candidates import Candidate, Edit
from patchkit.locate.greedy import Row, greedy_generate
from patchkit.locate.hooks import ModelView, row_edits
from patchkit.recipe import ResolvedEdit


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=1, scale=0.3)


CANDIDATES = [
    Candidate(),
    Candidate((Edit(1, "neuron", 5, 0.0),)),
    Candidate((Edit(0, "neuron", 3, -1.0), Edit(1, "neuron", 9, 3.0))),
    Candidate((Edit(0, "neuron", 11, 0.0), Edit(0, "neuron", 12, 0.0), Edit(1, "neuron", 20, -0.8))),
]


def _reference(model, cand: Candidate, prefix: list[int], budget_left: int, eos: set[int]) -> tuple[list[int], str]:
    """Greedy continuation under `cand` applied to the whole model, one uncached forward pass per token."""
    edits = [ResolvedEdit(e.layer, "neuron", e.index, "scale", e.factor) for e in cand.edits]
    ids = list(prefix)
    new: list[int] = []
    with torch.inference_mode(), runtime_edits(model, edits):
        while len(new) < budget_left:
            tok = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if tok in eos:
                return new, "eos"
            new.append(tok)
            ids.append(tok)
    return new, "length"


def _rows(tok) -> list[Row]:
    prompts = ["List all states.", "Hi", "What is the capital of France? Tell me more.", "x", "Name every moon."]
    rows = []
    for c in range(len(CANDIDATES)):
        for p, text in enumerate(prompts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            done = [ids[-1]] * (p % 3)  # some rows continue from an answer already begun
            rows.append(Row(c, ids + done, list(done), max_new_tokens=6 + 5 * ((c + p) % 4)))
    return rows


@pytest.mark.parametrize("refill", [True, False])
@pytest.mark.parametrize("batch_size", [3, 32])
def test_rows_match_whole_model_edits_token_for_token(tiny, refill, batch_size):
    model, tok = tiny
    rows = _rows(tok)
    # an EOS the model really emits, so some rows stop on it and leave the batch early
    first, _ = _reference(model, Candidate(), rows[0].prefix, 8, set())
    eos = {first[2]}
    finished: list[Row] = []
    view = ModelView(model)
    with row_edits(view, CANDIDATES) as edits:
        out = greedy_generate(
            view,
            edits,
            rows,
            eos_ids=eos,
            pad_id=int(tok.pad_token_id),
            decode=lambda ids: tok.decode(ids),
            batch_size=batch_size,
            on_done=finished.append,
            refill=refill,
        )
        assert edits.active is None  # the selection is cleared afterwards
    assert out == rows and len(finished) == len(rows) and {id(r) for r in finished} == {id(r) for r in rows}
    stops = set()
    for row, fresh in zip(rows, _rows(tok), strict=True):
        new, stop = _reference(
            model, CANDIDATES[row.cand], fresh.prefix, fresh.max_new_tokens - len(fresh.generated), eos
        )
        assert row.generated == fresh.generated + new, (row.cand, fresh.prefix)
        assert row.stop == stop and row.loop_label is None
        stops.add(stop)
    assert stops == {"eos", "length"}
    # the candidates really differ, so a row given its neighbour's edit would have been caught
    assert len({tuple(r.generated) for r in rows if r.prefix == rows[0].prefix}) > 1


def test_same_rows_same_tokens_whatever_the_batching(tiny):
    model, tok = tiny
    view = ModelView(model)
    results = []
    for batch_size, refill in ((1, False), (4, True), (7, False), (64, True)):
        rows = _rows(tok)
        with row_edits(view, CANDIDATES) as edits:
            greedy_generate(
                view, edits, rows, eos_ids=set(), pad_id=0, decode=tok.decode, batch_size=batch_size, refill=refill
            )
        results.append([(r.generated, r.stop) for r in rows])
    assert all(r == results[0] for r in results[1:])


LOOP_MAP = {**cycle("Vega\n"), ":": "V", ".": "O", "O": "K", "K": "<eos>"}


def test_early_stop_on_a_certain_loop_and_rows_that_need_no_work():
    model, tok = bigram_model(LOOP_MAP)
    view = ModelView(model)
    eos = {tok.convert_tokens_to_ids("<|im_end|>")}
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    looping = Row(0, ids("List stars:"), [], max_new_tokens=400)
    stopping = Row(0, ids("Say it."), [], max_new_tokens=400)
    spent = Row(0, ids("List stars:") + ids("Vega"), ids("Vega"), max_new_tokens=4)  # budget used up already
    settled = Row(0, ids("x"), [5], max_new_tokens=400, stop="eos")  # finished before: left alone
    finished: list[Row] = []
    with row_edits(view, [Candidate()]) as edits:
        greedy_generate(
            view,
            edits,
            [looping, stopping, spent, settled],
            eos_ids=eos,
            pad_id=int(tok.pad_token_id),
            decode=tok.decode,
            early_stop=loop_stop_test,
            on_done=finished.append,
        )
    assert looping.stop == "loop" and looping.loop_label is not None
    assert 24 <= len(looping.generated) < 100  # stopped long before its 400-token budget
    assert tok.decode(looping.generated).startswith("Vega\nVega\n")
    assert stopping.stop == "eos" and tok.decode(stopping.generated) == "OK"
    assert spent.stop == "length" and spent.generated == ids("Vega")
    assert settled.stop == "eos" and settled.generated == [5]
    assert finished == [stopping, looping] or finished == [looping, stopping]


def test_no_rows_to_run_is_not_an_error(tiny):
    model, tok = tiny
    view = ModelView(model)
    done = Row(0, [5, 6], [6], max_new_tokens=1)
    with row_edits(view, [Candidate()]) as edits:
        assert greedy_generate(view, edits, [done], eos_ids=set(), pad_id=0, decode=tok.decode) == [done]
    assert done.stop == "length"
