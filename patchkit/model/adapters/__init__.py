"""Architecture adapters: map recipe edits onto tensor slices and read per-layer geometry from config.json."""

from __future__ import annotations

from typing import Any

from patchkit.model.adapters.base import Adapter, LayerInfo, TensorRole, TensorTarget
from patchkit.model.adapters.gemma4 import Gemma4Adapter
from patchkit.model.adapters.llama import LlamaAdapter
from patchkit.errors import ModelError

ADAPTERS: dict[str, type[Adapter]] = {"gemma4": Gemma4Adapter, "llama": LlamaAdapter}

__all__ = ["ADAPTERS", "Adapter", "LayerInfo", "TensorRole", "TensorTarget", "get_adapter", "detect_architecture"]


def detect_architecture(config: dict[str, Any]) -> str:
    """Adapter name for a config.json: by `model_type` when present, else by the exact `architectures` class name.

    Exact matches only, so look-alike MoE variants (qwen2_moe, mixtral, ...) are refused instead of mis-mapped.
    """
    model_type = str(config.get("model_type") or "").lower()
    archs = [str(a) for a in config.get("architectures") or []]
    for name, cls in ADAPTERS.items():
        if model_type in cls.model_types if model_type else any(a in cls.class_names for a in archs):
            return name
    supported = ", ".join(f"{n} ({'/'.join(c.model_types)})" for n, c in ADAPTERS.items())
    shown = model_type or "/".join(archs) or "unknown"
    raise ModelError(f"unsupported architecture {shown!r} in config.json", hint=f"supported: {supported}")


def get_adapter(config: dict[str, Any], architecture: str | None = None) -> Adapter:
    """The adapter for this config; `architecture` (from a recipe) must agree with the detected one."""
    detected = detect_architecture(config)
    if architecture and architecture != detected:
        raise ModelError(f"the recipe is for architecture {architecture!r} but the model is {detected!r}",
                         hint="apply it to the model it was written for")
    try:
        return ADAPTERS[detected](config)
    except KeyError as exc:
        raise ModelError(f"config.json lacks {exc.args[0]!r}; cannot read the model geometry") from None
