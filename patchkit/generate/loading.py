"""Load a causal LM + tokenizer from a checkpoint directory, a Hub ref or a GGUF file (never pickles)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

from patchkit.errors import ModelError

_DTYPES = {"float32": "float32", "f32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "f16": "float16", "fp16": "float16"}


def _torch_dtype(name: str) -> Any:
    import torch

    try:
        return getattr(torch, _DTYPES[name])
    except KeyError:
        raise ModelError(f"unknown dtype {name!r}", hint="use one of f32, bf16, f16") from None


def resolve_device(device: str) -> tuple[str, bool]:
    """(device, spread): "auto" is cuda when there is a GPU, else cpu; `spread` when several GPUs share the model."""
    if device != "auto":
        return device, False
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ("cuda" if n else "cpu"), n > 1


def load_model(ref: str | Path, *, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Return (model, tokenizer) in eval mode. `ref` is a directory, `org/name[@rev]`, or a `.gguf` file.
    `device="auto"`: the GPU when there is one; with several, layers are spread over all (`device_map="auto"`),
    which is how a 31B model fits, and inputs go to the first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    path = Path(str(ref))
    device, spread = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if spread:
        kwargs["device_map"] = "auto"
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file not found")
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise ModelError("loading a .gguf file needs the `gguf` package", hint="pip install 'patchkit[gguf]'") from None
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    else:
        if path.is_dir():
            local = path
        else:
            from patchkit.model.refs import ensure_local

            local = ensure_local(str(ref))
        if not (local / "config.json").is_file():
            raise ModelError(f"{local}: no config.json", hint="pass a checkpoint directory, org/name[@rev] or a .gguf file")
        tok = AutoTokenizer.from_pretrained(str(local))
        model = AutoModelForCausalLM.from_pretrained(str(local), use_safetensors=True, **kwargs)
    if not spread:
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


@contextlib.contextmanager
def patched_checkpoint(recipe: Any, base_ref: str | Path) -> Iterator[Path]:
    """Apply `recipe` to `base_ref` into a temporary directory and yield it (removed afterwards)."""
    from patchkit.edit.apply import apply_recipe

    with tempfile.TemporaryDirectory(prefix="patchkit-") as tmp:
        out = Path(tmp) / "patched"
        apply_recipe(recipe, model=str(base_ref), out=out)
        yield out
