"""Recipes on GGUF files: validate a recipe against a .gguf (or split set) by planning it, without writing.

`patchkit validate RECIPE --model X.gguf` runs the whole GGUF plan: the units' tensors and ranges from the GGUF
shapes, the quant type of every touched tensor, and the new scale bytes of every edited row (a scale field that
would overflow is found here, not half way through an apply). It reads the header and the edited rows only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from patchkit.edit.gguf_plan import GGUFPlan, plan_gguf, provenance_of
from patchkit.model.gguf_model import open_gguf_model
from patchkit.recipe import load_recipe
from patchkit.recipe.validate import ValidationReport

__all__ = ["validate_gguf_recipe"]


def validate_gguf_recipe(recipe: Any, *, model: str | os.PathLike[str]) -> tuple[ValidationReport, GGUFPlan | None]:
    """Check a recipe against a GGUF file: every edit's tensor, range, quant type and exact representability.

    Returns the report (against="gguf") and the plan (None for an unresolved recipe, whose search space is
    reported instead). Raises RecipeError / ModelError as apply would, before anything is written.
    """
    rec = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    gguf_model = open_gguf_model(model)
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
