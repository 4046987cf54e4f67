"""A tiny llama counter (w30 -> w31 -> ...) whose list loop is caused by a planted SET of 8 MLP units.

The counter is the one of `locate_planted.py`: attention writes nothing (o_proj is zero), lm_head row j reads
the token part of embedding j-1 (token parts are random, all of norm sqrt(H - 3)), so greedy decoding maps
wN -> wN+1. The residual stream has three reserved dims:

- dim 0 "list marker": 4.0 on the list region w36..w79 and on the loop token w20, else 0;
- dim 1 "bias": a constant B = 4 sqrt(H) on every token. It dominates the RMS, so what the planted units add
  barely changes the RMSNorm scale (their effects stay close to additive); the MLP norms weight it rms/B (it
  reaches the MLPs as 1.0) and every other dim rms (the MLPs see them unscaled: marker 4.0, token part ~N(0, 1));
- dim 2 "loop feature": only the planted units write it; lm_head row w20 (the loop token) reads only this dim,
  with a gain that makes one unit of loop drive (S = 1, dim 2 = 0.5) tie w20 with the correct next token. Greedy
  output is w20 exactly where the total drive S > 1 (a sharp threshold, the same for every token).
The final norm scales logits so the correct token scores sqrt(H - 3) (~7.8 at H = 64) and the others ~N(0, 1).

Ordinary units (everywhere, and in the 8 places in the unplanted model): gate/up rows N(0, 0.8/sqrt(H))
(pre-activations ~N(0, 0.8)), down columns N(0, 0.3/sqrt(inter)) on the token dims and 0 on the reserved dims;
each layer's MLP moves the token part by ~0.12 of a token embedding, too little to break the counter.

Planted units (PLANTED_UNITS): gate and up read only the list marker (weights g ~ 0.30..0.37, u ~ 0.275..0.24),
so each fires only in the list region, with activation silu(4g) * 4u = 1.0..1.15 - within the range of the
ordinary units (median |act| ~0.13, layer max 3..8 on the same tokens) - and exactly 0 elsewhere (controls,
prompts below w36):
- 7 loop units spread over the layers (>= 4 distinct ones): each writes +a_i to the loop feature, a_i in
  1.75..1.95 (no unit dominates), plus an ordinary random column on the token dims;
- 1 brake (layer 2 * layers // 3): writes -0.45 to the loop feature and nothing else ("anti-repeat", too weak).

Planted drive S = sum a_i - 0.45 ~ 12.5: "w33 w34 w35 w36" goes on "w20 w20 w20 ..." (w20 carries the marker,
so the loop holds). The drive is 7-fold redundant: ANY single loop unit left at x1 gives S = a_i - 0.45 >= 1.30
and keeps the loop, so a search must reduce all 7 loop units - or 6 of them and amplify the brake, since
a_i - 3 * 0.45 <= 0.60 < 1. The intended fix (FIX_FACTORS: loop units x0, brake x3) gives S = -1.35. Zeroing all
7 without the brake (S = -0.45) also ends the loop - necessarily: with the 7 zeroed the model is the unplanted
one plus the brake, which only pushes against the loop. The brake buys slack: it rescues any one missed loop
unit. Its gradient is ~1/4 of a loop unit's (0.45 vs ~1.85 drive) and ~3x the largest ordinary unit's.

w20 is never a correct answer on the probes (lists start at w29..w34 and stop within 48 tokens, before the
counter could wrap around to w20; controls count from w90.. for 16 tokens), so pushing the loop feature
negative (the brake x3, an inverted loop unit) cannot hurt a correct answer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from fixtures.tiny_models import save_checkpoint, tiny_llama, word_tokenizer

V = 128
LOOP_TOKEN = 20
LIST_REGION = range(36, 80)
MARKER, LOOP_GAIN_UNIT = 4.0, 0.5  # list-marker value; dim-2 value of one unit of loop drive
LOOP_STRENGTHS = (1.78, 1.92, 1.84, 1.88, 1.75, 1.95, 1.81)  # a_i, in units of the w20 threshold
BRAKE_STRENGTH = 0.45
RESERVED = 3  # dims 0 (marker), 1 (bias), 2 (loop feature)


def planted_units(layers: int = 6, inter: int = 32) -> tuple[tuple[int, int, str], ...]:
    """(layer, neuron, "reduce" | "amplify") of the 8 planted units for a geometry (seed-independent).

    The 7 loop units come first, in layer order, then the brake. The loop units sit at layers
    round(i * (layers - 1) / 6), i = 0..6 (every layer when layers = 7, at least 4 distinct layers when
    layers >= 4); the brake at layer 2 * layers // 3. Neuron indices are drawn per layer from a fixed generator,
    distinct within a layer.
    """
    if layers < 4 or inter < 8:
        raise ValueError("the planted set needs layers >= 4 and inter >= 8")
    loop_layers = [int(i * (layers - 1) / 6 + 0.5) for i in range(7)]
    wanted = [(layer, "reduce") for layer in loop_layers] + [(2 * layers // 3, "amplify")]
    gen = torch.Generator().manual_seed(1234)
    perms: dict[int, list[int]] = {}
    out = []
    for layer, kind in wanted:
        if layer not in perms:
            perms[layer] = torch.randperm(inter, generator=gen).tolist()
        out.append((layer, perms[layer].pop(), kind))
    return tuple(out)


def fix_factors(units: tuple[tuple[int, int, str], ...]) -> dict[tuple[int, int], float]:
    """The intended fix: loop units x0, the brake x3."""
    return {(layer, n): (3.0 if kind == "amplify" else 0.0) for layer, n, kind in units}


PLANTED_UNITS = planted_units()
FIX_FACTORS = fix_factors(PLANTED_UNITS)


def geometry(hidden: int) -> dict[str, float]:
    """The scales the builder uses for a hidden size (exposed for the tests' arithmetic)."""
    e2 = float(hidden - RESERVED)  # |token part of an embedding|^2
    bias = 4.0 * math.sqrt(hidden)
    rms = math.sqrt((bias**2 + e2 + MARKER**2) / hidden)  # RMS of a list-region embedding
    return {"e2": e2, "bias": bias, "rms": rms, "loop_head": e2 / LOOP_GAIN_UNIT}


def build_planted_set(
    out: Path, *, planted: bool = True, layers: int = 6, hidden: int = 64, inter: int = 32, seed: int = 0
) -> Path:
    """Write the planted-set counter (or, planted=False, the same model with ordinary units in their place)."""
    units = planted_units(layers, inter)
    geo = geometry(hidden)
    model = tiny_llama(
        std=None,
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        max_position_embeddings=256,
    )
    gen = torch.Generator().manual_seed(seed)
    tok_dims = slice(RESERVED, hidden)
    emb = torch.zeros(V, hidden)
    part = torch.randn(V, hidden - RESERVED, generator=gen)
    emb[:, tok_dims] = part / part.norm(dim=1, keepdim=True) * math.sqrt(geo["e2"])
    emb[:, 1] = geo["bias"]
    emb[list(LIST_REGION) + [LOOP_TOKEN], 0] = MARKER
    head = torch.zeros(V, hidden)
    head[5:, tok_dims] = emb[4:-1, tok_dims]
    head[4, tok_dims] = emb[-1, tok_dims]
    head[LOOP_TOKEN] = 0.0  # w20 is read from the loop feature only, never from a token
    head[LOOP_TOKEN, 2] = geo["loop_head"]
    norm_w = torch.full((hidden,), geo["rms"])
    norm_w[1] = geo["rms"] / geo["bias"]
    sd_in, sd_out = 0.8 / math.sqrt(hidden), 0.3 / math.sqrt(inter)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(head)
        # logits = <x_token, e_{j-1}> / sqrt(e2): the correct token scores sqrt(e2), others ~ N(0, 1)
        model.model.norm.weight.fill_(geo["rms"] / math.sqrt(geo["e2"]))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.post_attention_layernorm.weight.copy_(norm_w)
            mlp = layer.mlp
            mlp.gate_proj.weight.normal_(0.0, sd_in, generator=gen)
            mlp.up_proj.weight.normal_(0.0, sd_in, generator=gen)
            mlp.down_proj.weight.normal_(0.0, sd_out, generator=gen)
            mlp.down_proj.weight[:RESERVED] = 0.0  # ordinary units never write the reserved dims
        if planted:
            strengths = iter(LOOP_STRENGTHS)
            for k, (li, n, kind) in enumerate(units):
                mlp = model.model.layers[li].mlp
                g, u = 0.30 + 0.01 * k, 0.275 - 0.005 * k  # silu(4g) * 4u ~ 1.0, a little different per unit
                for proj, w in ((mlp.gate_proj, g), (mlp.up_proj, u)):
                    proj.weight[n] = 0.0
                    proj.weight[n, 0] = w  # reads the list marker only: exactly 0 off the list region
                act = torch.nn.functional.silu(torch.tensor(MARKER * g)).item() * MARKER * u
                strength = next(strengths) if kind == "reduce" else -BRAKE_STRENGTH
                mlp.down_proj.weight[2, n] = strength * LOOP_GAIN_UNIT / act
                if kind == "amplify":
                    mlp.down_proj.weight[RESERVED:, n] = 0.0  # the brake writes only against the loop feature
    save_checkpoint(model, out, word_tokenizer())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(out)
    return out


SUITE = """\
suite: planted-set
version: 1
description: counter lists for the planted-set loop model
probes:
  - id: count-a
    kind: enumeration
    split: train
    category: counting
    source: the counter model
    truth: [{truth_a}]
    prompts: ["w30 w31 w32", "w29 w30 w31", "w31 w32", "w30 w31 w32 w33"]
    max_new_tokens: 48
  - id: count-b
    kind: enumeration
    split: train
    category: counting
    source: the counter model
    truth: [{truth_b}]
    prompts: ["w32 w33 w34", "w33 w34"]
    max_new_tokens: 48
  - id: count-c
    kind: enumeration
    split: heldout
    category: counting
    source: the counter model
    truth: [{truth_c}]
    prompts: ["w31 w32 w33", "w29 w30", "w33 w34 w35"]
    max_new_tokens: 48
  - id: count-d
    kind: enumeration
    split: heldout
    category: counting
    source: the counter model
    truth: [{truth_d}]
    prompts: ["w34 w35", "w30 w31"]
    max_new_tokens: 48
  - id: ctrl-a
    kind: control
    split: train
    category: counting
    prompts: ["w90 w91", "w100 w101"]
    answer: {{regex: "w9[2-9]|w10[2-9]"}}
    max_new_tokens: 16
  - id: ctrl-b
    kind: control
    split: train
    category: counting
    prompts: ["w95 w96 w97"]
    answer: {{regex: "w98"}}
    max_new_tokens: 16
  - id: ctrl-c
    kind: control
    split: heldout
    category: counting
    prompts: ["w110 w111", "w93 w94"]
    answer: {{regex: "w112|w95"}}
    max_new_tokens: 16
"""


def _words(lo: int, hi: int) -> str:
    return ", ".join(f"w{i}" for i in range(lo, hi))


def write_suite(path: Path) -> Path:
    """The suite: 6 train + 5 heldout enumeration prompts (truth w29..w70ish), 3 + 2 control prompts."""
    path.write_text(
        SUITE.format(truth_a=_words(29, 69), truth_b=_words(32, 72), truth_c=_words(29, 70), truth_d=_words(30, 71))
    )
    return path
