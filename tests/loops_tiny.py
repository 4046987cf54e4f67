"""A tiny random Llama + byte-level tokenizer for the generation/loop tests (built in-process, no downloads).

The chat template honours `enable_thinking` the way Gemma 4 / Qwen 3 templates do: it pre-opens a
thinking block (`<think>`) in the assistant turn.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking %}<think>\n{% endif %}{% endif %}"
)


def tiny_tokenizer(extra_specials: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for tok in (*SPECIALS, *extra_specials):
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:] + list(extra_specials))
    tok.chat_template = TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_model(seed: int = 0, *, scale: float = 0.15):
    """(model, tokenizer): 2 layers, hidden 32 - random but with peaked, input-dependent distributions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale)
    model.eval()
    return model, tok


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    model, tok = tiny_model(seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


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
