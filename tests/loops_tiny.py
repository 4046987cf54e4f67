"""A tiny random Llama + byte-level tokenizer for the generation/loop tests (from fixtures.tiny_models).

The chat template honours `enable_thinking` the way Gemma 4 / Qwen 3 templates do: it pre-opens a
thinking block (`<think>`) in the assistant turn.
"""

from __future__ import annotations

from pathlib import Path

from fixtures.tiny_models import byte_level_tokenizer, save_checkpoint

from patchkit.testing.tiny import chat_llama

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking %}<think>\n{% endif %}{% endif %}"
)


def tiny_tokenizer(extra_specials: tuple[str, ...] = ()):
    """Byte-level tokenizer with SPECIALS (+ extra_specials), the thinking-aware chat template, left padding."""
    return byte_level_tokenizer((*SPECIALS, *extra_specials), chat_template=TEMPLATE, padding_side="left")


def tiny_model(seed: int = 0, *, scale: float = 0.15):
    """(model, tokenizer): 2 layers, hidden 32 - random but with peaked, input-dependent distributions."""
    tok = tiny_tokenizer()
    return chat_llama(tok, "<|im_end|>", seed=seed, std=scale), tok


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    model, tok = tiny_model(seed)
    return save_checkpoint(model, path, tok)


def bigram_model(mapping: dict[str, str], *, seed: int = 0):
    """(model, tokenizer) whose greedy next token depends only on the current one: `mapping[c]` follows `c`.

    Attention and MLP outputs are zeroed, so the residual stream is the token embedding; lm_head rows point
    at the embedding of their source token. `mapping` values may be "<eos>" (the model's EOS, <|im_end|>).
    A cycle in `mapping` is a guaranteed greedy loop; a path to "<eos>" a guaranteed clean stop.
    """
    import torch

    model, tok = tiny_model(seed)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros_like(model.lm_head.weight)
        for src, dst in mapping.items():
            s = _single_id(tok, src)
            d = eos if dst == "<eos>" else _single_id(tok, dst)
            head[d] += 6.0 * emb[s] / emb[s].norm()
        model.lm_head.weight.copy_(head)
    return model, tok


def _single_id(tok, ch: str) -> int:
    ids = tok(ch, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (ch, ids)
    return ids[0]


def cycle(text: str) -> dict[str, str]:
    """Mapping for a bigram model that repeats `text` forever (its characters must be distinct)."""
    assert len(set(text)) == len(text), "cycle characters must be distinct"
    return {c: text[(i + 1) % len(text)] for i, c in enumerate(text)}


def one_thread():
    """Generator for a module fixture: tiny models run fastest on one torch thread (and do not fight other jobs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
