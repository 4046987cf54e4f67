"""Floating-point dtype names as users write them (`bf16`, `f32`, `float16`, ...) mapped to torch's names."""

from __future__ import annotations

from patchkit.errors import ModelError

__all__ = ["canonical_dtype"]

_NAMES = {
    "float32": "float32",
    "f32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "f16": "float16",
    "fp16": "float16",
}


def canonical_dtype(dtype: str) -> str:
    """torch's name for `dtype` (`bf16` -> `bfloat16`); ModelError naming the value on anything else."""
    try:
        return _NAMES[str(dtype).lower()]
    except KeyError:
        raise ModelError(f"dtype {dtype!r} is not supported", hint="use f32, bf16 or f16") from None
