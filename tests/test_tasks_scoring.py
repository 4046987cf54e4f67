"""The fast QA scoring path (one context pass per question, KV cache reused for options and the greedy answer)
gives the same numbers as the plain path (one pass per option, model.generate)."""

from __future__ import annotations

import numpy as np
import pytest
from bench_tiny import make_tiny_llama, one_thread, zero_neurons_copy

from patchkit.checks.tasks import (
    _greedy_answers,
    _loglik_batches,
    _loglik_shared,
    _option_requests,
    _stop_ids,
    load_tasks,
    score_tasks,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from patchkit.generate.loading import load_model

    root = tmp_path_factory.mktemp("scoring")
    base = make_tiny_llama(root / "base", seed=5)
    return [load_model(base), load_model(zero_neurons_copy(base, root / "zeroed", 0, list(range(32))))]


def test_shared_context_matches_plain_scoring(models):
    tasks = load_tasks().limited(8)
    tok = models[0][1]
    requests = _option_requests(tok, tasks.items)
    plain = _loglik_batches([m for m, _ in models], requests, tok.pad_token_id, 512, None)
    shared, generated = _loglik_shared(
        [m for m, _ in models],
        requests,
        tok.pad_token_id,
        512,
        None,
        generate=6,
        stop_ids=[_stop_ids(m, t) for m, t in models],
    )
    for a, b in zip(plain, shared, strict=True):
        assert np.allclose(a, b, atol=1e-4, rtol=1e-5)
    assert not np.allclose(shared[0], shared[1])  # the two models really differ
    # greedy answers decoded from the shared cache == model.generate's first line
    for (model, tok_), gen in zip(models, generated, strict=True):
        ref = _greedy_answers(model, tok_, tasks.items, 6, 8, None)
        ours = [tok_.decode(gen[i], skip_special_tokens=True) for i in range(len(tasks.items))]
        assert [r.split("\n")[0] for r in ref] == [o.split("\n")[0] for o in ours]


def test_score_tasks_is_deterministic_and_paired(models):
    tasks = load_tasks().limited(4)
    first = score_tasks(models, tasks)
    second = score_tasks(models, tasks)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.acc, b.acc) and np.array_equal(a.gold_logprob, b.gold_logprob)
        assert a.generations == b.generations
    assert len(first[0].acc) == len(tasks.items) == 12
