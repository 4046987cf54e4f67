"""`patchkit locate`: find the MLP neurons / MoE experts that drive repetition loops and write a recipe.

Stages (each cached on disk for --resume): collect -> layer ablation -> attribution + exact screen -> generation
sweep -> held-out confirmation -> recipe + report (see `patchkit.locate.run`). Heavy imports stay inside.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_locate", "LocateSettings", "LocateResult", "Candidate", "Edit", "parse_ops"]


def __getattr__(name: str) -> Any:
    if name in ("run_locate", "LocateSettings", "LocateResult"):
        from patchkit.locate import run

        return getattr(run, name)
    if name in ("Candidate", "Edit", "parse_ops"):
        from patchkit.locate import candidates

        return getattr(candidates, name)
    raise AttributeError(name)
