"""`patchkit apply`, `patchkit diff`, `patchkit verify`: thin shells over patchkit.edit.apply / diff / verify."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from patchkit._io.progress import Progress
from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._progress import progress_bars
from patchkit.errors import EXIT_GATE_FAILED

if TYPE_CHECKING:
    from patchkit.edit.diff import DiffReport


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _progress(as_json: bool, label: str) -> contextlib.AbstractContextManager[Progress]:
    """Byte-level progress bars (stderr under --json), one per stage, named `<label> <stage>`."""
    return progress_bars(ui_console(as_json), unit="bytes", prefix=f"{label} ")


@click.command("apply")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model",
    help="Base model: local dir, org/name, org/name@revision, or a .gguf file / split set (default: the recipe's model).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    help="Output directory (default: ./<recipe name>); for a .gguf, the output file (default: ./<recipe name>.gguf).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, bytes to write) and write nothing.")
@click.option(
    "--in-place",
    is_flag=True,
    help="Patch a plain local model directory itself (invert-only recipes; writes an undo recipe; locked, and "
    "restartable after a crash); for a .gguf, rewrite only the scale bytes of the file (journaled; undo with --undo).",
)
@click.option(
    "--undo",
    is_flag=True,
    help="With --in-place on a .gguf: restore the bytes an in-place apply changed (or roll back an interrupted one).",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing output directory (only an empty one or an earlier apply output)."
)
@click.option(
    "--link",
    is_flag=True,
    help="Hard-link untouched shards to the base instead of copying them where the filesystem has no reflinks; the linked files (and so the base's) become read-only.",
)
@json_option
@handle_errors
def apply_cmd(
    recipe: Path,
    model: str | None,
    out: Path | None,
    dry_run: bool,
    in_place: bool,
    force: bool,
    link: bool,
    undo: bool,
    as_json: bool,
) -> None:
    """Apply RECIPE to a model: a new checkpoint where only the edited slices differ, plus patchkit.json.

    On a .gguf file (llama.cpp, Ollama) only the scale fields of the edited rows change: no requantization, and
    the provenance goes into the file as patchkit.* metadata."""
    from patchkit.edit.apply import apply_recipe, read_recipe
    from patchkit.model.gguf_model import is_gguf_path
    from patchkit.recipe.resolution import unresolved_error

    if undo and not (in_place and is_gguf_path(model)):
        raise click.UsageError("--undo goes with --in-place --model FILE.gguf")
    rec, _, _ = read_recipe(recipe)
    if not rec.is_resolved:  # never resolved behind the user's back: that is `patchkit recipe resolve`
        raise unresolved_error(rec, str(recipe))
    if is_gguf_path(model):
        _apply_gguf(recipe, str(model), out, dry_run, in_place, undo, force, link, as_json)
        return

    with _progress(as_json, "apply") as progress:
        result = apply_recipe(
            rec, model=model, out=out, dry_run=dry_run, in_place=in_place, force=force, link=link, progress=progress
        )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(result.to_json())
        return
    console = ui_console(False)
    plan = result.plan
    from rich.table import Table

    table = Table(title="dry run: planned edits" if dry_run else "edits applied", show_lines=False)
    for col in ("layer", "kind", "index", "op", "tensor", "file", "bytes"):
        table.add_column(col, overflow="fold")
    for e in plan.edits:
        op = e.op if e.op != "scale" else f"scale x{e.factor:g}"
        table.add_row(str(e.layer), e.kind, str(e.index), op, e.tensor, e.file, str(e.nbytes))
    console.print(table)
    rewritten = sorted(plan.files_to_rewrite)
    console.print(
        f"shards rewritten: {len(rewritten)} ({_human_bytes(plan.bytes_to_write)}); "
        f"shards carried over unchanged: {len(plan.untouched_files)}; bytes edited: {plan.bytes_edited}"
    )
    if dry_run:
        console.print(f"dry run: nothing written (output would be {result.out_dir})")
    else:
        console.print(
            f"wrote {result.out_dir}" + (f" (undo recipe: {result.undo_recipe})" if result.undo_recipe else "")
        )


def _apply_gguf(
    recipe: Path,
    model: str,
    out: Path | None,
    dry_run: bool,
    in_place: bool,
    undo: bool,
    force: bool,
    link: bool,
    as_json: bool,
) -> None:
    from patchkit.edit.gguf_apply import apply_gguf, undo_gguf_in_place

    if link:
        raise click.UsageError("--link is for safetensors directories; a GGUF output is always a new file")
    if undo:
        message = undo_gguf_in_place(model)
        if as_json:
            emit_json({"format": "gguf", "undone": True, "message": message})
        else:
            ui_console(False).print(message, highlight=False)
        return
    with _progress(as_json, "apply") as progress:
        result = apply_gguf(
            recipe, model=model, out=out, dry_run=dry_run, in_place=in_place, force=force, progress=progress
        )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(result.to_json())
        return
    from rich.table import Table

    console = ui_console(False)
    table = Table(title="dry run: planned edits" if dry_run else "edits applied", show_lines=False)
    for col in ("layer", "kind", "index", "op", "tensor", "type", "rows", "bytes changed"):
        table.add_column(col, overflow="fold")
    for e in result.plan.edits:
        op = e.op if e.op != "scale" else f"scale x{e.factor:g}"
        t = e.target
        table.add_row(str(e.layer), e.kind, str(e.index), op, t.tensor, t.type_name, str(t.rows), str(e.changed_bytes))
    console.print(table)
    console.print(
        f"bytes changed: {result.plan.bytes_edited} (scale fields only; every quant bit kept) in "
        f"{len(result.plan.edits)} edit(s)"
    )
    if dry_run:
        console.print(f"dry run: nothing written (output would be {result.out})", highlight=False)
    elif in_place:
        console.print(
            f"patched {result.out} in place (undo: patchkit apply RECIPE --model FILE --in-place --undo)",
            highlight=False,
        )
    else:
        console.print(f"wrote {result.out}", highlight=False)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option(
    "--as-recipe",
    is_flag=True,
    help="Write a recipe that reproduces B from A (refused if a change is not classifiable).",
)
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), help="With --as-recipe: write the recipe here instead of stdout."
)
@click.option("--name", help="With --as-recipe: the recipe's name (default: <B>-from-diff).")
@click.option(
    "--repo",
    help="With --as-recipe: model.repo to record (default: the base repo B's or A's patchkit.json records, else none).",
)
@click.option("--revision", help="With --as-recipe: model.revision to pin (default: the one recorded with that repo).")
@click.option(
    "--exit-code",
    "exit_code",
    is_flag=True,
    help="Exit 1 when A and B differ (any tensor, or any other file but patchkit's own patchkit.json records), "
    "0 when they do not; like `git diff --exit-code`. Without it, a found difference still exits 0.",
)
@json_option
@handle_errors
def diff_cmd(
    a: str,
    b: str,
    as_recipe: bool,
    out: Path | None,
    name: str | None,
    repo: str | None,
    revision: str | None,
    exit_code: bool,
    as_json: bool,
) -> None:
    """Compare checkpoints A and B (directories, org/name[@rev], or .gguf files) tensor by tensor; explain changed
    MLP neurons/experts.

    Finding differences is the normal result, so it exits 0; scripts that branch on "did anything change" pass
    --exit-code (exit 1 on a difference, 2 on bad input, as everywhere)."""
    report = _diff(a, b, as_recipe, out, name, repo, revision, as_json)
    if exit_code and report.differs:
        raise SystemExit(EXIT_GATE_FAILED)


def _diff(
    a: str,
    b: str,
    as_recipe: bool,
    out: Path | None,
    name: str | None,
    repo: str | None,
    revision: str | None,
    as_json: bool,
) -> DiffReport:
    """Run the diff and print it (or the recipe); returns the report so the caller can pick the exit code."""
    from patchkit.edit.diff import recipe_text
    from patchkit.model.gguf_model import is_gguf_path
    from patchkit.workflows.resolve import diff_refs

    if out is not None and not as_recipe:
        raise click.UsageError("-o/--out is the file --as-recipe writes; pass --as-recipe too")
    architecture = None
    with _progress(as_json, "diff") as progress:
        if is_gguf_path(a) or is_gguf_path(b):
            if not (is_gguf_path(a) and is_gguf_path(b)):
                raise click.UsageError("compare a .gguf with a .gguf (or a checkpoint directory with a directory)")
            from patchkit.edit.gguf_check import diff_gguf
            from patchkit.model.gguf_model import open_gguf_model

            report = diff_gguf(a, b, progress=progress)
            architecture = open_gguf_model(a).architecture
        else:
            report = diff_refs(a, b, progress=progress)
    text = (
        recipe_text(report, name=name, repo=repo, revision=revision, architecture=architecture) if as_recipe else None
    )
    if text is not None and out is not None:
        from patchkit._io.atomic import atomic_write_text

        atomic_write_text(Path(out).absolute(), text)
    if as_json:
        payload = report.to_json()
        if text is not None:
            payload["recipe"] = text
            payload["recipe_path"] = str(out) if out else None
        emit_json(payload)
    elif text is not None and out is None:
        click.echo(text, nl=False)
    else:
        _print_report(report)
        if out is not None:
            ui_console(False).print(f"wrote recipe {out}")
    return report


def _print_report(report) -> None:
    from rich.table import Table

    console = ui_console(False)
    if report.identical:
        console.print(f"identical weights ({report.identical_tensors} tensors)")
    for change in report.changed:
        head = (
            f"[bold]{change.tensor}[/bold] {change.dtype}{list(change.shape)}: {change.changed_elements} elements changed, "
            f"max abs {change.max_abs:.4g}, max rel {change.max_rel:.4g} -> {change.classification}"
        )
        console.print(head)
        if change.slices:
            unit = "expert" if change.role and ("expert" in change.role) else "neuron"
            table = Table(show_header=True, box=None, pad_edge=False)
            for col in (unit, "change", "elements", "max abs", "max rel"):
                table.add_column(col)
            for s in change.slices:
                kind = f"scaled by {s.factor:g}" if s.classification == "scaled" else s.classification
                table.add_row(str(s.index), kind, str(s.changed_elements), f"{s.max_abs:.4g}", f"{s.max_rel:.4g}")
            console.print(table)
        elif change.slices_truncated:
            console.print("  (too many slices changed to classify individually)")
    for label, items in (("added", report.added), ("removed", report.removed)):
        for name in items:
            console.print(f"{label}: {name}")
    for r in report.reshaped:
        console.print(
            f"reshaped: {r['tensor']} {r['a']['dtype']}{r['a']['shape']} -> {r['b']['dtype']}{r['b']['shape']}"
        )
    for f in report.other_files_changed:
        console.print(f"other file differs: {f}")
    summary = report.to_json()
    console.print(
        f"{report.identical_tensors} identical tensors, {len(report.changed)} changed; "
        f"compared {_human_bytes(report.bytes_compared)} in {report.seconds:.2f}s"
        + (f" ({summary['throughput_mb_s']} MB/s)" if summary["throughput_mb_s"] else "")
    )


@click.command("verify")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--model", "model", help="Base model, or the source .gguf (default: the recipe's model).")
@click.option(
    "--patched",
    type=click.Path(path_type=Path),
    help="The patched checkpoint directory (or patched .gguf) to check. Without it, a recipe resolved by diff is re-checked "
    "against its reference (edits and slice checksums re-extracted).",
)
@json_option
@handle_errors
def verify_cmd(recipe: Path, model: str | None, patched: Path | None, as_json: bool) -> None:
    """Exit 0 iff PATCHED equals RECIPE applied to MODEL byte for byte (or, without --patched, iff a
    diff-resolved RECIPE still matches its reference); else name the first difference."""
    from patchkit.errors import VerifyError

    if patched is None:
        from patchkit.workflows.resolve import verify_against_reference

        with _progress(as_json, "verify") as progress:
            check = verify_against_reference(recipe, model=model, progress=progress)
        if as_json:
            emit_json(check.to_json())
            if not check.ok:
                raise SystemExit(VerifyError.exit_code)
            return
        if not check.ok:
            raise VerifyError(check.message)
        ui_console(False).print(f"ok: {check.message}", highlight=False)
        return

    from patchkit.edit.verify import verify_patched
    from patchkit.model.gguf_model import is_gguf_path

    with _progress(as_json, "verify") as progress:
        if is_gguf_path(model):
            from patchkit.edit.gguf_check import verify_gguf

            result = verify_gguf(recipe, model=str(model), patched=patched, progress=progress)
        else:
            result = verify_patched(recipe, model=model, patched=patched, progress=progress)
    if as_json:
        emit_json(result.to_json())
        if not result.ok:
            raise SystemExit(VerifyError.exit_code)
        return
    if not result.ok:
        raise VerifyError(result.message)
    ui_console(False).print(f"ok: {result.message}")
