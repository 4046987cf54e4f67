"""Load a causal LM + tokenizer from a checkpoint directory, a Hub ref or a GGUF file (never pickles).

Where and in which dtype a model runs is a `Placement`, chosen by `resolve_placement` and printed by the CLI
(`describe()`), because the right answer depends on the machine and the checkpoint:

* device "auto": CUDA when torch sees a GPU (several GPUs share the model layer by layer), else Apple MPS,
  else the CPU.
* dtype "auto": the checkpoint's own dtype from config.json (`dtype`, or `torch_dtype` in transformers 4
  configs; `text_config`'s for multimodal releases). Gemma 4 ships bf16: f32 would double its memory (26B:
  about 100 GB instead of 50), and every number the model was released with was computed in bf16. On the CPU
  bf16 stays bf16 (half the memory; slower per token than f32 on CPUs without AVX512-BF16/AMX, but a large
  model in f32 does not fit at all), while f16 becomes f32 (torch's CPU f16 kernels are slow and partial, and
  f16 -> f32 is exact; f16 -> bf16 would round every weight). No dtype in the config, or a GGUF file
  (transformers dequantizes it): f32.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit.errors import ModelError
from patchkit.model.dtypes import canonical_dtype

__all__ = [
    "LoadedModel",
    "Placement",
    "checkpoint_dtype",
    "load_checkpoint",
    "load_model",
    "patched_checkpoint",
    "resolve_device",
    "resolve_placement",
]

AUTO = "auto"


@dataclass(frozen=True)
class Placement:
    """Where a model is loaded and in which dtype, with the reason for each choice (for logs and reports)."""

    device: str
    dtype: str
    spread: bool = False  # several GPUs share the layers (device_map="auto"); inputs go to the first
    device_reason: str = "as given"
    dtype_reason: str = "as given"

    def describe(self) -> str:
        """One line for people: `device: cpu (no CUDA or MPS), dtype: bfloat16 (config.json torch_dtype)`."""
        return f"device: {self.device} ({self.device_reason}), dtype: {self.dtype} ({self.dtype_reason})"

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "spread": self.spread,
            "device_reason": self.device_reason,
            "dtype_reason": self.dtype_reason,
        }


@dataclass
class LoadedModel:
    """A loaded (model, tokenizer) and the placement it was loaded with."""

    model: Any
    tokenizer: Any
    placement: Placement


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, canonical_dtype(name))


def resolve_device(device: str) -> tuple[str, bool]:
    """(device, spread): "auto" is cuda when there is a GPU, else mps, else cpu; `spread` when several GPUs share
    the model."""
    name, spread, _why = _choose_device(device)
    return name, spread


def _choose_device(device: str) -> tuple[str, bool, str]:
    """(device, spread, why): an explicit device is checked; "auto" takes the best accelerator torch can see."""
    if device != AUTO:
        _check_device(device)
        return device, False, "as given"
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 1:
        return "cuda", True, f"{n} CUDA GPUs: layers spread over all"
    if n == 1:
        return "cuda", False, "CUDA GPU"
    if _mps_available():
        return "mps", False, "Apple MPS; no CUDA"
    return "cpu", False, "no CUDA or MPS"


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _check_device(device: str) -> None:
    """A device this torch can use, else one line saying why (a CPU-only torch has no CUDA; a typo is not a device)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelError(
            f"device {device!r} is not a torch device", hint="use cpu, cuda, cuda:N, mps or auto"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} needs CUDA, but this torch has none (a CPU-only build, or no GPU visible)",
                hint="use --device cpu or auto, or install a CUDA build of torch",
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif parsed.type == "mps":
        if not _mps_available():
            raise ModelError(
                f"device {device!r} needs Apple MPS, which this torch cannot use here",
                hint="use --device cpu or auto",
            )
    elif parsed.type not in ("cpu", "xpu", "meta"):
        raise ModelError(f"device {device!r} is not supported here", hint="use cpu, cuda, cuda:N, mps or auto")


def checkpoint_dtype(config: Mapping[str, Any]) -> tuple[str | None, str]:
    """(torch dtype name or None, where it was read) from a config.json dict.

    transformers 5 writes `dtype`, earlier versions `torch_dtype`; a multimodal release (Gemma 4) may carry it
    only in `text_config`. An unknown value counts as none.
    """
    sections: list[tuple[str, Any]] = [("", config), ("text_config.", config.get("text_config"))]
    for prefix, section in sections:
        if not isinstance(section, Mapping):
            continue
        for key in ("dtype", "torch_dtype"):
            value = section.get(key)
            if isinstance(value, str):
                try:
                    return canonical_dtype(value), f"config.json {prefix}{key}"
                except ModelError:
                    continue
    return None, "config.json names no dtype"


def _choose_dtype(dtype: str, device: str, config: Mapping[str, Any] | None) -> tuple[str, str]:
    """(dtype, why) for `dtype` ("auto" or a name) on `device`, given the checkpoint's config (None: a GGUF)."""
    if dtype != AUTO:
        return canonical_dtype(dtype), "as given"
    if config is None:
        return "float32", "GGUF weights are dequantized"
    native, source = checkpoint_dtype(config)
    on_cpu = device.split(":")[0] == "cpu"
    if native is None:
        return "float32", source
    if on_cpu and native == "float16":
        return "float32", f"{source} is float16, slow on CPU; float32 is exact"
    if on_cpu and native == "bfloat16":
        return "bfloat16", f"{source}; on CPU: half the memory of float32, slower per token"
    return native, source


def resolve_placement(ref: str | Path, *, dtype: str = AUTO, device: str = AUTO) -> Placement:
    """The device and dtype `load_model(ref, dtype=..., device=...)` uses, and why, without loading weights.

    Why: the defaults must fit the model (a bf16 checkpoint is not doubled to f32, a GPU is used when there is
    one), and people should see what was chosen before a long run starts.

    Args:
        ref: a checkpoint directory, `org/name[@rev]` (only its config.json is read) or a `.gguf` file.
        dtype: "auto" (the checkpoint's own, see the module docstring) or f32 | bf16 | f16.
        device: "auto" (cuda, else mps, else cpu) or a torch device such as cpu, cuda, cuda:1, mps.

    Returns:
        The Placement (`describe()` is the line the CLI prints).

    Raises:
        ModelError: a device this torch cannot use, an unknown dtype, or a reference without a config.json.
    """
    name, spread, device_why = _choose_device(device)
    config: Mapping[str, Any] | None = None
    if dtype != AUTO:
        canonical_dtype(dtype)  # an unknown dtype is refused before anything is read
    elif Path(str(ref)).suffix != ".gguf":
        from patchkit.model.refs import resolve_model

        config = resolve_model(str(ref)).config
    chosen, dtype_why = _choose_dtype(dtype, name, config)
    return Placement(name, chosen, spread, device_why, dtype_why)


def load_model(ref: str | Path, *, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Return (model, tokenizer) in eval mode. `ref` is a directory, `org/name[@rev]`, or a `.gguf` file.

    `dtype` / `device` "auto" choose as `resolve_placement` does (with several GPUs the layers are spread over
    all with `device_map="auto"`, which is how a 31B model fits, and inputs go to the first). The defaults stay
    float32 on the CPU here, so code that loads a model directly gets the same numbers on every machine; the
    checks (`LoopSettings`, `BenchSettings`, `CheckSettings`) default to "auto".
    """
    loaded = load_checkpoint(ref, dtype=dtype, device=device)
    return loaded.model, loaded.tokenizer


def load_checkpoint(
    ref: str | Path, *, dtype: str = "float32", device: str = "cpu", log: Callable[[str], None] | None = None
) -> LoadedModel:
    """`load_model`, also returning the Placement it chose; `log` receives `placement.describe()` before the
    weights are read (so a long load says where it goes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patchkit._io.fs import shown

    # the device first: `--device cuda` on a CPU-only torch is one line before anything is read or downloaded
    device_name, spread, device_why = _choose_device(device)
    if dtype != AUTO:
        canonical_dtype(dtype)
    path = Path(str(ref))

    def placed(config: Mapping[str, Any] | None) -> Placement:
        chosen, dtype_why = _choose_dtype(dtype, device_name, config)
        placement = Placement(device_name, chosen, spread, device_why, dtype_why)
        if log is not None:
            log(placement.describe())
        return placement

    if path.suffix == ".gguf":
        # validated first (type, size, bounded header walk, blocks, guarded gguf reader): one-line ModelError
        from patchkit.model.gguf_header import check_loaded, validate_gguf

        real = validate_gguf(path).real_path
        placement = placed(None)
        kwargs = _load_kwargs(placement)
        try:
            tok = AutoTokenizer.from_pretrained(str(real.parent), gguf_file=real.name)
            with _no_bars_off_a_terminal():
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
        from patchkit.model.refs import ensure_local, resolve_model

        local = path if path.is_dir() else ensure_local(str(ref))
        if not (local / "config.json").is_file():
            raise ModelError(
                f"{local}: no config.json", hint="pass a checkpoint directory, org/name[@rev] or a .gguf file"
            )
        checkpoint = resolve_model(local)
        checkpoint.weight_files()  # hostile files, links out, no weights: one line before transformers
        tok = _load_tokenizer(local)
        placement = placed(checkpoint.config if dtype == AUTO else None)
        try:
            with _no_bars_off_a_terminal():
                model = AutoModelForCausalLM.from_pretrained(
                    str(local), use_safetensors=True, **_load_kwargs(placement)
                )
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelError(
                f"{local}: transformers could not load the model ({type(exc).__name__}: "
                f"{shown(' '.join(str(exc).split()), 300)})",
                hint="check config.json against the weights (architecture, sizes)",
                data={"path": str(local)},
            ) from None
    if not placement.spread:
        model.to(placement.device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return LoadedModel(model, tok, placement)


def _load_kwargs(placement: Placement) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(placement.dtype)}
    if placement.spread:
        kwargs["device_map"] = "auto"
    return kwargs


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


@contextlib.contextmanager
def _no_bars_off_a_terminal() -> Iterator[None]:
    """Silence transformers' "Loading weights" tqdm bar for the call when stderr is not a terminal.

    Off a terminal (CI, `2> log`) a tqdm bar is a stream of carriage-return lines in the log; patchkit's own
    progress lines say what is happening there. On a terminal the bar stays (it is the only sign of life while a
    large checkpoint loads). The previous setting is restored either way.
    """
    import sys

    from transformers.utils import logging as hf_logging

    quiet = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    were_on = hf_logging.is_progress_bar_enabled()
    if quiet and were_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and were_on:
            hf_logging.enable_progress_bar()
