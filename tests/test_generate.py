"""Transformers backend: batched + left-padded + KV-cached generation equals model.generate; seeds; early stop; thinking."""

from __future__ import annotations

import pytest
import torch
from loops_tiny import bigram_model, cycle, one_thread, tiny_model

from patchkit.checks.detect import detect, loop_stop_test
from patchkit.errors import ModelError
from patchkit.generate.transformers_backend import TransformersBackend, render_prompt
from patchkit.generate.types import GenerationRequest, SamplingParams


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


PROMPTS = ["List all states.", "Hi", "What is the capital of France? Tell me more please.", "x", "Name every moon."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0, scale=0.3)


def _reference(model, tok, request):
    ids = tok(render_prompt(tok, request), add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=request.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_batched_greedy_matches_model_generate(tiny):
    model, tok = tiny
    requests = [GenerationRequest(f"r{i}", p, max_new_tokens=40) for i, p in enumerate(PROMPTS)]
    gens = TransformersBackend(model, tok, batch_size=8, early_stop=None).generate(requests)
    assert [g.id for g in gens] == [r.id for r in requests]  # request order, though batches are length-sorted
    for gen, req in zip(gens, requests, strict=True):
        assert gen.text == _reference(model, tok, req), req.prompt
        assert gen.stop_reason in ("eos", "length") and 1 <= gen.tokens <= 40
    # rows leaving the batch early (different budgets) do not disturb the others
    mixed = [GenerationRequest(r.id, r.prompt, max_new_tokens=5 + 10 * i) for i, r in enumerate(requests)]
    small_batches = TransformersBackend(model, tok, batch_size=2, early_stop=None).generate(mixed)
    one_batch = TransformersBackend(model, tok, batch_size=8, early_stop=None).generate(mixed)
    assert [g.text for g in small_batches] == [g.text for g in one_batch]
    # merging waiting prompts into a running batch (refill) changes nothing either
    many = [GenerationRequest(f"m{i}", p, max_new_tokens=4 + 7 * (i % 5)) for i, p in enumerate(PROMPTS * 3)]
    refilled = TransformersBackend(model, tok, batch_size=4, early_stop=None).generate(many)
    static = TransformersBackend(model, tok, batch_size=4, early_stop=None, refill=False).generate(many)
    single = TransformersBackend(model, tok, batch_size=1, early_stop=None).generate(many)
    assert [g.text for g in refilled] == [g.text for g in static] == [g.text for g in single]
    assert [g.tokens for g in refilled] == [g.tokens for g in single]


def test_sampling_is_seeded_per_request_and_batch_independent(tiny):
    model, tok = tiny
    params = SamplingParams(temperature=1.0, top_p=0.9)
    requests = [GenerationRequest(f"r{i}", p, max_new_tokens=25, seed=3) for i, p in enumerate(PROMPTS)]
    backend = TransformersBackend(model, tok, early_stop=None)
    first = [g.text for g in backend.generate(requests, params)]
    again = [g.text for g in backend.generate(requests, params)]
    alone = [backend.generate([r], params)[0].text for r in requests[:2]]
    assert first == again
    assert first[:2] == alone
    reseeded = [
        g.text for g in backend.generate([GenerationRequest(r.id, r.prompt, 25, seed=4) for r in requests], params)
    ]
    assert reseeded != first
    greedy = [g.text for g in backend.generate(requests)]
    assert greedy != first


LOOP_MAP = {**cycle("Vega\n"), ":": "V", ".": "O", "O": "K", "K": "<eos>"}


def test_early_stop_cuts_a_certain_loop_and_detect_agrees():
    model, tok = bigram_model(LOOP_MAP)
    requests = [
        GenerationRequest("loop", "List stars:", max_new_tokens=300, chat=False),
        GenerationRequest("stop", "Say it.", max_new_tokens=300, chat=False),
    ]
    full = TransformersBackend(model, tok, early_stop=None).generate(requests)
    early = TransformersBackend(model, tok, early_stop=loop_stop_test).generate(requests)
    assert full[0].stop_reason == "length" and full[0].tokens == 300
    assert early[0].stop_reason == "loop" and early[0].tokens < 100 and early[0].loop_label in ("decay", "verbatim")
    assert full[0].text.startswith(early[0].text)  # same trajectory, just cut
    assert detect(early[0].text, finished=early[0].finished).is_loop
    assert detect(full[0].text, finished=False).label == "verbatim"
    assert early[1].text == full[1].text == "OK" and early[1].stop_reason == "eos"


def test_thinking_budget_stops_inside_thinking():
    model, tok = bigram_model({**cycle("Hmwait,\n"), ".": "O", "O": "K", "K": "<eos>"})
    params = SamplingParams(enable_thinking=True, thinking_budget=20)
    text = render_prompt(tok, GenerationRequest("a", "Why?"), enable_thinking=True)
    assert text.endswith("<think>\n")
    gen = TransformersBackend(model, tok, early_stop=None).generate(
        [GenerationRequest("a", "Why?", max_new_tokens=200)], params
    )[0]
    assert gen.stop_reason == "budget" and gen.text == "" and gen.thinking.startswith("Hmwait")
    assert gen.tokens == 20
    verdict = detect(gen.text, thinking=gen.thinking, finished=gen.finished)
    assert verdict.label in ("doom", "verbatim", "decay", "truncated")
    # without thinking the same prompt is answered normally (no thinking trace)
    plain = TransformersBackend(model, tok, early_stop=None).generate(
        [GenerationRequest("b", "Why?", max_new_tokens=10)], SamplingParams(enable_thinking=False)
    )[0]
    assert plain.thinking is None


def test_load_from_directory_and_dtype(tmp_path):
    from loops_tiny import save_tiny_model

    from patchkit.errors import ModelError
    from patchkit.generate.loading import load_model

    path = save_tiny_model(tmp_path / "tiny")
    backend = TransformersBackend.load(path, dtype="bf16")
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    gen = backend.generate([GenerationRequest("a", "Hi", max_new_tokens=8)])[0]
    assert gen.tokens <= 8
    with pytest.raises(ModelError):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelError):
        load_model(path, dtype="int3")


def test_auto_device_spreads_over_several_gpus(monkeypatch):
    import torch

    from patchkit.generate.loading import resolve_device

    assert resolve_device("cpu") == ("cpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == ("cpu", False)
    with pytest.raises(ModelError, match="needs CUDA, but this torch has none"):
        resolve_device("cuda:1")  # asked for explicitly on a CPU-only torch: one line, not a traceback
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == ("cuda", False)
    with pytest.raises(ModelError, match="only 1 GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto") == ("cuda", True)  # load_model then passes device_map="auto"
    assert resolve_device("cuda:1") == ("cuda:1", False)
