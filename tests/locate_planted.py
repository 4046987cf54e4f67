"""A tiny llama whose greedy output is a counter (w30 -> w31 -> ...), plus a planted loop neuron and a decoy.

- Embeddings are random; lm_head row j is embedding j-1, attention writes nothing: the model maps token t to t+1.
- Planted neuron (layer 1): fires only on tokens w36..w79 and writes embedding w39 into the residual stream, so
  once a list reaches w36 the model repeats "w40 w40 w40 ...". Control prompts (w90...) never trigger it.
- Decoy neuron (layer 0): fires on every token with a huge activation but writes almost nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fixtures.tiny_models import save_checkpoint, tiny_llama, word_tokenizer

V, H, INTER = 128, 64, 32
PLANTED = (1, 7)
DECOY = (0, 3)
LOOP_TOKEN = 40


def build_planted(out: Path) -> Path:
    model = tiny_llama(
        std=None, vocab_size=V, hidden_size=H, intermediate_size=INTER, num_hidden_layers=2, max_position_embeddings=256
    )
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(V, H, generator=gen)
    u, v = torch.zeros(H), torch.zeros(H)
    u[0], v[1] = 1.0, 1.0
    emb[:, :2] = 0.0
    emb[36:80, 0] = 4.0  # "list region" marker read by the planted neuron
    emb[:, 1] = 4.0  # every token carries the decoy's direction
    head = torch.zeros(V, H)
    head[5:] = emb[4:-1]
    head[4] = emb[-1]
    head[:, :2] = 0.0  # the markers do not vote for any token
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(head)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                proj.weight.normal_(0.0, 0.02, generator=gen)
        li, n = PLANTED
        mlp = model.model.layers[li].mlp
        mlp.gate_proj.weight[n] = 3.0 * u
        mlp.up_proj.weight[n] = 3.0 * u
        mlp.down_proj.weight[:, n] = 0.6 * emb[LOOP_TOKEN - 1]
        li, n = DECOY
        mlp = model.model.layers[li].mlp
        mlp.gate_proj.weight[n] = 6.0 * v
        mlp.up_proj.weight[n] = 6.0 * v
        mlp.down_proj.weight[:, n] = 1e-4 * torch.randn(H, generator=gen)
    save_checkpoint(model, out, word_tokenizer())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(out)
    return out


SUITE = """\
suite: planted
version: 1
description: counter lists for the planted-loop model
probes:
  - id: count-a
    kind: enumeration
    split: train
    category: counting
    source: the counter model
    truth: [{truth_a}]
    prompts: ["w30 w31 w32", "w29 w30 w31"]
  - id: count-b
    kind: enumeration
    split: heldout
    category: counting
    source: the counter model
    truth: [{truth_b}]
    prompts: ["w31 w32 w33", "w32 w33 w34"]
  - id: ctrl-a
    kind: control
    split: train
    category: counting
    prompts: ["w90 w91", "w100 w101"]
    answer: {{regex: "w9[2-9]|w10[2-9]"}}
  - id: ctrl-b
    kind: control
    split: heldout
    category: counting
    prompts: ["w110 w111"]
    answer: {{regex: "w112"}}
"""


def write_suite(path: Path) -> Path:
    path.write_text(
        SUITE.format(
            truth_a=", ".join(f"w{i}" for i in range(30, 70)), truth_b=", ".join(f"w{i}" for i in range(31, 71))
        )
    )
    return path
