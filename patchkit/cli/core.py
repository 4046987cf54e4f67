"""`patchkit apply`, `patchkit diff`, `patchkit verify`: thin shells over patchkit.edit.apply / diff / verify."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from patchkit._io.progress import Progress
from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._progress import progress_bars


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
    "--model", "model", help="Base model: local dir, org/name or org/name@revision (default: the recipe's model)."
)
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory (default: ./<recipe name>).")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, bytes to write) and write nothing.")
@click.option(
    "--in-place",
    is_flag=True,
    help="Patch a plain local model directory itself (invert-only recipes; writes an undo recipe; locked, and restartable after a crash).",
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
    as_json: bool,
) -> None:
    """Apply RECIPE to a model: a new checkpoint where only the edited slices differ, plus patchkit.json."""
    from patchkit.workflows.resolve import resolve_then_apply

    with _progress(as_json, "apply") as progress:
        result = resolve_then_apply(
            recipe, model=model, out=out, dry_run=dry_run, in_place=in_place, force=force, link=link, progress=progress
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
@click.option("--repo", help="With --as-recipe: model.repo to record (default: A's path).")
@click.option("--revision", help="With --as-recipe: model.revision to pin.")
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
    as_json: bool,
) -> None:
    """Compare checkpoints A and B tensor by tensor; explain changed MLP neurons/experts."""
    from patchkit.edit.diff import recipe_text
    from patchkit.workflows.resolve import diff_refs

    with _progress(as_json, "diff") as progress:
        report = diff_refs(a, b, progress=progress)
    text = recipe_text(report, name=name, repo=repo, revision=revision) if as_recipe else None
    if text is not None and out is not None:
        from patchkit._io.atomic import atomic_write_text

        atomic_write_text(Path(out).absolute(), text)
    if as_json:
        payload = report.to_json()
        if text is not None:
            payload["recipe"] = text
            payload["recipe_path"] = str(out) if out else None
        emit_json(payload)
        return
    if text is not None and out is None:
        click.echo(text, nl=False)
        return
    _print_report(report)
    if out is not None:
        ui_console(False).print(f"wrote recipe {out}")


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
@click.option("--model", "model", help="Base model (default: the recipe's model).")
@click.option(
    "--patched",
    type=click.Path(path_type=Path),
    help="The patched checkpoint directory to check. Without it, a recipe resolved by diff is re-checked "
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

    with _progress(as_json, "verify") as progress:
        result = verify_patched(recipe, model=model, patched=patched, progress=progress)
    if as_json:
        emit_json(result.to_json())
        if not result.ok:
            raise SystemExit(VerifyError.exit_code)
        return
    if not result.ok:
        raise VerifyError(result.message)
    ui_console(False).print(f"ok: {result.message}")
