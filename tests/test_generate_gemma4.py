"""Gemma 4 specifics: a tiny Gemma4ForCausalLM (sliding-window + full layers) through the batched backend, and
Gemma 4's thinking channel markers (<|channel>thought ... <channel|>) with a thinking budget."""

from __future__ import annotations

import pytest
import torch
from fixtures.tiny_models import gemma4_causal_lm
from loops_tiny import one_thread, tiny_model

from patchkit.checks.detect import detect
from patchkit.generate.transformers_backend import TransformersBackend, _mergeable, render_prompt
from patchkit.generate.types import GenerationRequest, SamplingParams


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def _tokenizer_with(extra: list[str]):
    from loops_tiny import tiny_tokenizer

    return tiny_tokenizer(tuple(extra))


def test_tiny_gemma4_batched_matches_generate():
    tok = _tokenizer_with([])
    model = gemma4_causal_lm(tok, seed=0)
    requests = [
        GenerationRequest(f"r{i}", p, max_new_tokens=20 + 6 * i)
        for i, p in enumerate(["List all states.", "Hi", "What is the capital of France? Tell me more please.", "x"])
    ]
    backend = TransformersBackend(model, tok, batch_size=2, early_stop=None)
    gens = backend.generate(requests)
    for gen, req in zip(gens, requests, strict=True):
        ids = tok(render_prompt(tok, req), add_special_tokens=False, return_tensors="pt")
        assert ids["input_ids"].shape[1] > 16 or req.prompt in ("Hi", "x")  # prompts cross the sliding window
        out = model.generate(**ids, max_new_tokens=req.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        assert gen.text == tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    from transformers import DynamicCache

    assert not _mergeable(DynamicCache(config=model.config))  # sliding layers: static batches, no cache merging


def test_gemma4_thinking_channel_and_budget():
    """The model opens <|channel>thought itself; a budget stops it inside; after <channel|> comes the answer."""
    tok = _tokenizer_with(["<|channel>", "<channel|>"])
    model, _ = tiny_model(0)
    model.resize_token_embeddings(len(tok))
    # bigram chain: "\n" (end of the chat prompt) -> <|channel> "thought\n" "OK" <channel|> "Prs" <eos>
    chain = [
        "\n",
        "<|channel>",
        "t",
        "h",
        "o",
        "u",
        "g",
        "T",
        "\t",
        "O",
        "K",
        "<channel|>",
        "P",
        "r",
        "s",
        "<|im_end|>",
    ]

    def tid(text):
        out = tok(text, add_special_tokens=False)["input_ids"]
        assert len(out) == 1, text
        return out[0]

    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros_like(model.lm_head.weight)
        for src, dst in zip(chain, chain[1:], strict=False):  # consecutive pairs: chain[1:] is one shorter
            head[tid(dst)] += 6.0 * emb[tid(src)] / emb[tid(src)].norm()
        model.lm_head.weight.copy_(head)
    backend = TransformersBackend(model, tok, early_stop=None)
    done = backend.generate([GenerationRequest("a", "Why?", max_new_tokens=50)], SamplingParams(thinking_budget=50))[0]
    assert done.stop_reason == "eos" and done.text == "Prs" and done.thinking == "thougT\tOK"
    stuck = backend.generate([GenerationRequest("b", "Why?", max_new_tokens=50)], SamplingParams(thinking_budget=4))[0]
    assert stuck.stop_reason == "budget" and stuck.text == "" and stuck.thinking == "thou"
    assert stuck.tokens == 5  # <|channel> + 4 thinking tokens
    verdict = detect(stuck.text, thinking=stuck.thinking, finished=stuck.finished)
    assert verdict.label == "truncated" and verdict.evidence.where == "thinking"
