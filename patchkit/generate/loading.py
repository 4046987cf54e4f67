"""Load a causal LM + tokenizer from a checkpoint directory, a Hub ref or a GGUF file (never pickles)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from patchkit.errors import ModelError
from patchkit.model.dtypes import canonical_dtype


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, canonical_dtype(name))


def resolve_device(device: str) -> tuple[str, bool]:
    """(device, spread): "auto" is cuda when there is a GPU, else cpu; `spread` when several GPUs share the model."""
    if device != "auto":
        _check_device(device)
        return device, False
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ("cuda" if n else "cpu"), n > 1


def _check_device(device: str) -> None:
    """A device this torch can use, else one line saying why (a CPU-only torch has no CUDA; a typo is not a device)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelError(f"device {device!r} is not a torch device", hint="use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} needs CUDA, but this torch has none (a CPU-only build, or no GPU visible)",
                hint="use --device cpu or auto, or install a CUDA build of torch",
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif parsed.type not in ("cpu", "mps", "xpu", "meta"):
        raise ModelError(f"device {device!r} is not supported here", hint="use cpu, cuda, cuda:N or auto")


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
        # validated first (type, size, bounded header walk, blocks, guarded gguf reader): one-line ModelError
        from patchkit._io.fs import shown
        from patchkit.model.gguf_header import check_loaded, validate_gguf

        real = validate_gguf(path).real_path
        try:
            tok = AutoTokenizer.from_pretrained(str(real.parent), gguf_file=real.name)
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                str(real.parent), gguf_file=real.name, output_loading_info=True, **kwargs
            )
            model, loading = loaded
        except Exception as exc:  # noqa: BLE001 - transformers on a foreign GGUF raises anything
            msg = shown(" ".join(str(exc).split()), 300)
            raise ModelError(
                f"{path}: transformers could not load this GGUF ({type(exc).__name__}: {msg})",
                hint="check that transformers supports its architecture and quantization",
                data={"path": str(path)},
            ) from None
        check_loaded(path, loading)
    else:
        if path.is_dir():
            local = path
        else:
            from patchkit.model.refs import ensure_local

            local = ensure_local(str(ref))
        if not (local / "config.json").is_file():
            raise ModelError(
                f"{local}: no config.json", hint="pass a checkpoint directory, org/name[@rev] or a .gguf file"
            )
        from patchkit._io.fs import shown
        from patchkit.model.refs import resolve_model

        resolve_model(local).weight_files()  # hostile files, links out, no weights: one line before transformers
        tok = _load_tokenizer(local)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(local), use_safetensors=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelError(
                f"{local}: transformers could not load the model ({type(exc).__name__}: "
                f"{shown(' '.join(str(exc).split()), 300)})",
                hint="check config.json against the weights (architecture, sizes)",
                data={"path": str(local)},
            ) from None
    if not spread:
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _load_tokenizer(local: Path) -> Any:
    """The checkpoint's tokenizer, or one line saying it has none (apply outputs carry the base's tokenizer files)."""
    from transformers import AutoTokenizer

    from patchkit._io.fs import shown

    if not any((local / name).exists() for name in _TOKENIZER_FILES):
        raise ModelError(
            f"{local}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...)",
            hint="copy the base model's tokenizer files into the directory",
            data={"path": str(local)},
        )
    try:
        return AutoTokenizer.from_pretrained(str(local))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"{local}: the tokenizer could not be loaded ({type(exc).__name__}: "
            f"{shown(' '.join(str(exc).split()), 300)})",
            hint="check the tokenizer files, or copy the base model's",
            data={"path": str(local)},
        ) from None


@contextlib.contextmanager
def patched_checkpoint(recipe: Any, base_ref: str | Path) -> Iterator[Path]:
    """Apply `recipe` to `base_ref` into a temporary directory and yield it (removed afterwards)."""
    from patchkit.edit.apply import apply_recipe

    with tempfile.TemporaryDirectory(prefix="patchkit-") as tmp:
        out = Path(tmp) / "patched"
        apply_recipe(recipe, model=str(base_ref), out=out)
        yield out
