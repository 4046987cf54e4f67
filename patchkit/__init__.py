"""patchkit: small, auditable weight edits for released LLM checkpoints.

The documented library API. Every `patchkit` CLI command is a thin shell over one of these functions, and
importing `patchkit` stays cheap: each name is imported from its stage package on first use (torch and
transformers load only when a function that needs them runs).

    >>> import patchkit
    >>> recipe = patchkit.load_recipe("recipes/e2b.yaml")            # doctest: +SKIP
    >>> result = patchkit.apply_recipe(recipe, model="./gemma-4-E2B-it", out="./e2b-fixed")  # doctest: +SKIP
    >>> patchkit.verify_patched(recipe, model="./gemma-4-E2B-it", patched="./e2b-fixed").ok  # doctest: +SKIP
    True

Recipes:     load_recipe, validate_recipe
Edits:       apply_recipe, diff_checkpoints, verify_patched, extract_recipe, resolve_recipe
GGUF:        apply_gguf, undo_gguf_in_place, diff_gguf, verify_gguf, validate_gguf_recipe (llama.cpp / Ollama files)
Checks:      run_loops (LoopSettings), run_thinking_sweep, run_bench (BenchSettings)
Hub:         push, pull
Search:      run_locate (LocateSettings)
Errors:      PatchkitError and its subclasses; `Fix` names the parameter that resolves an error; exit codes
             EXIT_OK / EXIT_GATE_FAILED / EXIT_BAD_INPUT / EXIT_INTERNAL / EXIT_INTERRUPTED.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from patchkit._version import __version__

#: public name -> "module:attribute" (the stage package that owns it)
_API: dict[str, str] = {
    "load_recipe": "patchkit.recipe.loader:load_recipe",
    "validate_recipe": "patchkit.recipe.validate:validate_recipe",
    "apply_recipe": "patchkit.edit.apply:apply_recipe",
    "diff_checkpoints": "patchkit.workflows.resolve:diff_refs",
    "verify_patched": "patchkit.edit.verify:verify_patched",
    "extract_recipe": "patchkit.workflows.resolve:extract_recipe",
    "run_loops": "patchkit.checks.loops:run_loops",
    "run_thinking_sweep": "patchkit.checks.thinking_sweep:run_thinking_sweep",
    "resolve_recipe": "patchkit.workflows.resolve:resolve_recipe",
    "LoopSettings": "patchkit.checks.loops:LoopSettings",
    "run_bench": "patchkit.checks.bench:run_bench",
    "BenchSettings": "patchkit.checks.bench:BenchSettings",
    "push": "patchkit.publish.hub:push",
    "pull": "patchkit.publish.hub:pull",
    "run_locate": "patchkit.locate.run:run_locate",
    "LocateSettings": "patchkit.locate.run:LocateSettings",
    "Recipe": "patchkit.recipe.schema:Recipe",
    "apply_gguf": "patchkit.edit.gguf_apply:apply_gguf",
    "undo_gguf_in_place": "patchkit.edit.gguf_apply:undo_gguf_in_place",
    "diff_gguf": "patchkit.edit.gguf_check:diff_gguf",
    "verify_gguf": "patchkit.edit.gguf_check:verify_gguf",
    "validate_gguf_recipe": "patchkit.workflows.gguf_patch:validate_gguf_recipe",
}
_ERRORS = (
    "PatchkitError",
    "RecipeError",
    "ModelError",
    "SafetensorsError",
    "ApplyError",
    "VerifyError",
    "GateFailed",
    "HubError",
    "CheckError",
    "Fix",
    "EXIT_OK",
    "EXIT_GATE_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
)
_API.update({name: f"patchkit.errors:{name}" for name in _ERRORS})

__all__ = [
    "ApplyError",
    "BenchSettings",
    "CheckError",
    "EXIT_BAD_INPUT",
    "EXIT_GATE_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "Fix",
    "GateFailed",
    "HubError",
    "LocateSettings",
    "LoopSettings",
    "ModelError",
    "PatchkitError",
    "Recipe",
    "RecipeError",
    "SafetensorsError",
    "VerifyError",
    "apply_gguf",
    "apply_recipe",
    "diff_checkpoints",
    "diff_gguf",
    "extract_recipe",
    "load_recipe",
    "pull",
    "push",
    "run_bench",
    "run_locate",
    "run_loops",
    "run_thinking_sweep",
    "resolve_recipe",
    "undo_gguf_in_place",
    "validate_gguf_recipe",
    "validate_recipe",
    "verify_gguf",
    "verify_patched",
    "__version__",
]

if TYPE_CHECKING:  # static type checkers and IDEs see the real objects
    from patchkit.checks.bench import BenchSettings, run_bench
    from patchkit.checks.loops import LoopSettings, run_loops
    from patchkit.checks.thinking_sweep import run_thinking_sweep
    from patchkit.edit.apply import apply_recipe
    from patchkit.edit.gguf_apply import apply_gguf, undo_gguf_in_place
    from patchkit.edit.gguf_check import diff_gguf, verify_gguf
    from patchkit.edit.verify import verify_patched
    from patchkit.errors import (
        EXIT_BAD_INPUT,
        EXIT_GATE_FAILED,
        EXIT_INTERNAL,
        EXIT_INTERRUPTED,
        EXIT_OK,
        ApplyError,
        CheckError,
        Fix,
        GateFailed,
        HubError,
        ModelError,
        PatchkitError,
        RecipeError,
        SafetensorsError,
        VerifyError,
    )
    from patchkit.locate.run import LocateSettings, run_locate
    from patchkit.publish.hub import pull, push
    from patchkit.recipe.loader import load_recipe
    from patchkit.recipe.schema import Recipe
    from patchkit.recipe.validate import validate_recipe
    from patchkit.workflows.gguf_patch import validate_gguf_recipe
    from patchkit.workflows.resolve import diff_refs as diff_checkpoints
    from patchkit.workflows.resolve import extract_recipe, resolve_recipe


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'patchkit' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
