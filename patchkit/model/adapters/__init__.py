"""Architecture adapters: map recipe edits onto tensor slices and read per-layer geometry from config.json."""

from __future__ import annotations

from typing import Any

from patchkit.errors import ModelError
from patchkit.model.adapters.base import Adapter, LayerInfo, TensorRole, TensorTarget, config_value
from patchkit.model.adapters.gemma4 import Gemma4Adapter
from patchkit.model.adapters.llama import LlamaAdapter

ADAPTERS: dict[str, type[Adapter]] = {"gemma4": Gemma4Adapter, "llama": LlamaAdapter}

__all__ = ["ADAPTERS", "Adapter", "LayerInfo", "TensorRole", "TensorTarget", "get_adapter", "detect_architecture"]


def detect_architecture(config: dict[str, Any], *, source: str = "config.json") -> str:
    """Adapter name for a config.json: by `model_type` when present, else by the exact `architectures` class name.

    Exact matches only, so look-alike MoE variants (qwen2_moe, mixtral, ...) are refused instead of mis-mapped.
    """
    if not isinstance(config, dict):
        raise ModelError(
            f"{source}: is a JSON {type(config).__name__}, not an object",
            hint="pass a Hugging Face checkpoint directory",
        )
    raw_type = config.get("model_type")
    if raw_type is not None and not isinstance(raw_type, str):
        raise ModelError(
            f"{source}: model_type must be a string, got {config_value(raw_type)}", data={"key": "model_type"}
        )
    raw_archs = config.get("architectures")
    if raw_archs is not None and (not isinstance(raw_archs, list) or not all(isinstance(a, str) for a in raw_archs)):
        raise ModelError(
            f"{source}: architectures must be a list of class names, got {config_value(raw_archs)}",
            data={"key": "architectures"},
        )
    model_type = (raw_type or "").lower()
    archs = list(raw_archs or [])
    for name, cls in ADAPTERS.items():
        if model_type in cls.model_types if model_type else any(a in cls.class_names for a in archs):
            return name
    supported = ", ".join(f"{n} ({'/'.join(c.model_types)})" for n, c in ADAPTERS.items())
    shown = model_type or "/".join(archs) or "unknown"
    raise ModelError(f"{source}: unsupported architecture {shown[:80]!r}", hint=f"supported: {supported}")


def get_adapter(config: dict[str, Any], architecture: str | None = None, *, source: str = "config.json") -> Adapter:
    """The adapter for this config; `architecture` (from a recipe) must agree with the detected one.

    Every config.json key the geometry reads is validated here (types and bounds): a malformed config is one
    ModelError naming `source` and the key, never a traceback later.
    """
    detected = detect_architecture(config, source=source)
    if architecture and architecture != detected:
        raise ModelError(
            f"the recipe is for architecture {architecture!r} but the model is {detected!r}",
            hint="apply it to the model it was written for",
        )
    return ADAPTERS[detected](config, source=source)
