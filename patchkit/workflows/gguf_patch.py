"""Recipes on GGUF files: validate a recipe against a .gguf (or split set) by planning it, without writing.

`patchkit validate RECIPE --model X.gguf` runs the whole GGUF plan: the units' tensors and ranges from the GGUF
shapes, the quant type of every touched tensor, and the new scale bytes of every edited row (a scale field that
would overflow is found here, not half way through an apply). It reads the header and the edited rows only.

Also here: what the demo and the equivalence tests use to show that a patched GGUF runs as the recipe says: the
base model with the patched file's de-quantized `ffn_up` rows put in (`model_with_gguf_mlp`), compared on logits
with a reference (`logits_agreement`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit.edit.gguf_apply import refuse_journaled
from patchkit.edit.gguf_plan import GGUFPlan, plan_gguf, provenance_of
from patchkit.model.gguf_model import open_gguf_model
from patchkit.recipe import load_recipe
from patchkit.recipe.validate import ValidationReport

__all__ = ["GGUFAgreement", "logits_agreement", "model_with_gguf_mlp", "validate_gguf_recipe"]


def validate_gguf_recipe(recipe: Any, *, model: str | os.PathLike[str]) -> tuple[ValidationReport, GGUFPlan | None]:
    """Check a recipe against a GGUF file: every edit's tensor, range, quant type and exact representability.

    Returns the report (against="gguf") and the plan (None for an unresolved recipe, whose search space is
    reported instead). Raises RecipeError / ModelError as apply would, before anything is written.
    """
    rec = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    gguf_model = open_gguf_model(model)
    refuse_journaled(gguf_model)
    warnings: list[str] = []
    plan = None
    edits = rec.expanded_edits()
    if rec.is_resolved:
        plan = plan_gguf(rec, gguf_model)
    else:
        from patchkit.recipe.resolution import how_to_resolve

        warnings.append(f"the recipe is unresolved (no edits yet): {how_to_resolve(rec)}")
    if provenance_of(gguf_model.parts[0]) is not None:
        warnings.append(f"{gguf_model.path.name} is itself a patchkit output (it carries patchkit.* metadata)")
    report = ValidationReport(
        recipe=str(rec.path),
        name=rec.name,
        resolved=rec.is_resolved,
        against="gguf",
        model=str(gguf_model.path),
        architecture=gguf_model.architecture,
        edits=len(rec.edits),
        slices=len(edits),
        layers=sorted({e.layer for e in edits}),
        warnings=warnings,
    )
    return report, plan


@dataclass
class GGUFAgreement:
    """How closely a patched GGUF reproduces a reference (the patched safetensors model, or runtime hooks)."""

    edited_layers: list[int]
    positions: int
    max_abs_logit_diff: float
    max_logit: float
    top1_agree: int

    @property
    def relative(self) -> float:
        return self.max_abs_logit_diff / self.max_logit if self.max_logit else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "edited_layers": self.edited_layers,
            "positions": self.positions,
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "max_abs_logit": self.max_logit,
            "relative": self.relative,
            "top1_agree": self.top1_agree,
        }


def model_with_gguf_mlp(base_model: Any, patched_gguf: str | os.PathLike[str]) -> Any:
    """A copy of `base_model` (imported from the unpatched GGUF) whose `up_proj` weights, in every layer where the
    patched GGUF's `ffn_up` differs from the base's, are the patched GGUF's de-quantized rows: the model llama.cpp
    runs from the patched file, as far as the edit is concerned (the edited layers are in `_patchkit_gguf_layers`)."""
    import copy

    import gguf
    import numpy as np
    import torch

    model = open_gguf_model(patched_gguf)
    prov = provenance_of(model.parts[0]) or {}
    layers = sorted({int(e["layer"]) for e in prov.get("edits", []) if e.get("kind") == "neuron"})
    clone = copy.deepcopy(base_model)
    from patchkit.edit.runtime import _layers

    decoder = _layers(clone)
    for layer in layers:
        part, t = model.tensors[f"blk.{layer}.ffn_up.weight"]
        with open(model.parts[part].real_path, "rb", buffering=0) as fh:
            raw = os.pread(fh.fileno(), t.end - t.start, t.start)
        values = gguf.quants.dequantize(np.frombuffer(raw, np.uint8), gguf.GGMLQuantizationType(t.ggml_type))
        proj = decoder[layer].mlp.up_proj
        with torch.no_grad():
            proj.weight.copy_(torch.from_numpy(np.asarray(values, np.float32).reshape(proj.weight.shape)))
    clone._patchkit_gguf_layers = layers
    return clone


def logits_agreement(reference: Any, candidate: Any, tokenizer: Any, texts: list[str]) -> GGUFAgreement:
    """Largest |logit difference| and top-1 agreement between two models on the tokens of `texts`."""
    import torch

    worst = top = 0.0
    agree = positions = 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            a = reference(ids).logits[0].float()
            b = candidate(ids).logits[0].float()
            worst = max(worst, float((a - b).abs().max()))
            top = max(top, float(a.abs().max()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += a.shape[0]
    return GGUFAgreement(getattr(candidate, "_patchkit_gguf_layers", []), positions, worst, top, agree)
