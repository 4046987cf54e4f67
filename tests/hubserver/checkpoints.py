"""Tiny Llama checkpoints for the Hub tests: a 2-shard base model and a patched copy with patchkit.json.

The base is `fixtures.tiny_models.raw_llama_checkpoint` at this module's geometry (f32, layer 0 and the
embedding in the first shard); `make_patched` runs the real `patchkit.edit.apply.apply_recipe` on it.
"""

from __future__ import annotations

from pathlib import Path

from fixtures.tiny_models import raw_llama_checkpoint, shard_names

HIDDEN, INTER, LAYERS, VOCAB, HEADS = 16, 32, 2, 64, 2
EDIT_LAYER, EDIT_NEURON = 1, 5
SHARDS = tuple(shard_names(2))

BASE_CARD = """---
license: apache-2.0
license_link: https://www.apache.org/licenses/LICENSE-2.0
tags:
- tiny
pipeline_tag: text-generation
---
# tiny-llama (test base model)
"""

RECIPE_TEXT = f"""patchkit: 1
name: tiny-llama-loopfix
description: Invert neuron {EDIT_NEURON} of layer {EDIT_LAYER}, which drives list-repetition loops.
model: {{repo: test-org/tiny-llama, revision: {"a" * 40}, architecture: llama}}
source: {{kind: manual, reference: "unit test"}}
edits:
  - {{layer: {EDIT_LAYER}, neuron: {EDIT_NEURON}, op: invert}}
publish: {{repo: alice/tiny-llama-loopfix, license: apache-2.0}}
"""


def make_base(directory: Path) -> Path:
    """Random f32 llama (N(0, 0.02), numpy seed 0) in SHARDS: the embedding and layer 0 first, the rest second."""
    return raw_llama_checkpoint(
        directory,
        "F32",
        shards=2,
        seed=0,
        std=0.02,
        hidden=HIDDEN,
        inter=INTER,
        layers=LAYERS,
        vocab=VOCAB,
        heads=HEADS,
        files={"README.md": BASE_CARD},
        config_extra={"bos_token_id": 1, "eos_token_id": 2},
    )


def make_patched(base: Path, out: Path) -> Path:
    """`patchkit apply` of RECIPE_TEXT (neuron EDIT_NEURON of layer EDIT_LAYER inverted) to `base`, into `out`.

    The recipe is written next to `out` as tiny-llama-loopfix.yaml (patchkit.json records that path).
    """
    from patchkit.edit.apply import apply_recipe

    recipe_path = out.parent / "tiny-llama-loopfix.yaml"
    recipe_path.write_text(RECIPE_TEXT)
    apply_recipe(recipe_path, model=str(base), out=out)
    return out
