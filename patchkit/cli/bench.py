"""`patchkit bench` and `patchkit check`: thin click shells over patchkit.checks.bench / patchkit.workflows.check."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.errors import GateFailed

_STAGE_LABELS = {"controls": "base greedy answers to controls", "teacher-forced": "teacher-forced KL / ppl",
                 "qa": "question set (log-lik + greedy)"}


@contextlib.contextmanager
def _rich_progress(console: Any) -> Iterator[Any]:
    """A progress callback (stage, advance, total) backed by a rich Progress on `console`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        ids: dict[str, Any] = {}

        def callback(stage: str, advance: int, total: int) -> None:
            if stage not in ids:
                ids[stage] = bar.add_task(_STAGE_LABELS.get(stage, stage), total=total)
            bar.update(ids[stage], advance=advance)

        yield callback


def _bench_options(func: Any) -> Any:
    for opt in reversed([
        click.option("--tasks", "tasks", default=None, metavar="LIST",
                     help="Comma list of kl, ppl, qa, lmeval:<task> (default: the recipe's checks.bench.tasks, "
                          "else kl,ppl,qa). lmeval:patchkit_qa runs offline."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Cap items per source (control prompts, corpus texts, questions per kind, lm-eval docs)."),
        click.option("--dtype", default="float32", show_default=True, help="Load dtype: f32, bf16, f16."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, or auto (the GPU; several GPUs share the model layer by layer)."),
        click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Write bench.json and bench.png into this directory."),
    ]):
        func = opt(func)
    return func


@click.command("bench")
@click.argument("model")
@click.option("--patched", "patched", default=None, metavar="DIR", help="Patched checkpoint to compare with MODEL.")
@click.option("--recipe", "recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Its checks.bench thresholds gate the exit code; without --patched it is first applied to MODEL "
                   "in a temporary directory.")
@_bench_options
@click.option("--task-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Question set YAML instead of the bundled one (format: docs/bench.md).")
@click.option("--lmeval-include", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of extra lm-eval task YAMLs.")
@json_option
@handle_errors
def bench_cmd(model: str, patched: str | None, recipe: Path | None, tasks: str | None, limit: int | None, dtype: str,
              device: str, report_dir: Path | None, task_file: Path | None, lmeval_include: Path | None,
              as_json: bool) -> None:
    """Compare a patched model with its base: KL, perplexity, task accuracy, with n, 95% CIs and paired p-values.

    Exits 1 when a threshold from the recipe's checks.bench section fails. Needs logits: a local
    checkpoint or Hub id, not an OpenAI-compatible server.
    """
    from patchkit.checks.bench import run_bench
    from patchkit.checks.bench_report import bench_table, write_report

    console = ui_console(as_json)
    with _rich_progress(console) as progress:
        report = run_bench(model, patched, recipe=recipe, tasks=tasks, limit=limit, dtype=dtype, device=device,
                           task_file=task_file, lmeval_include=lmeval_include, progress=progress)
    files = write_report(report, report_dir) if report_dir else {}
    if as_json:
        payload = report.to_json()
        if files:
            payload["report_files"] = {k: str(v) for k, v in files.items()}
        emit_json(payload)
    console.print(bench_table(report))
    for kind, path in files.items():
        console.print(f"wrote {path}")
    if report.gates is not None:
        console.print("[red]FAIL[/red]" if report.failures else "[green]PASS[/green]: all checks.bench thresholds met")
    if report.failures:
        raise GateFailed("bench gate failed: " + "; ".join(report.failures))


@click.command("check")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model", required=True, metavar="REF", help="Base checkpoint: directory, org/name[@rev].")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the patched checkpoint here (default: a temporary directory, removed afterwards).")
@_bench_options
@click.option("--skip-loops", is_flag=True, help="Do not run the loop check.")
@json_option
@handle_errors
def check_cmd(recipe: Path, model: str, out: Path | None, tasks: str | None, limit: int | None, dtype: str,
              device: str, report_dir: Path | None, skip_loops: bool, as_json: bool) -> None:
    """Run validate -> apply -> loops -> bench for RECIPE on MODEL and print one verdict table (exit 1 on FAIL)."""
    from rich.table import Table

    from patchkit.checks.bench_report import bench_table, write_report
    from patchkit.workflows.check import run_check

    console = ui_console(as_json)
    with _rich_progress(console) as progress:
        report = run_check(recipe, model, out=out, tasks=tasks, limit=limit, skip_loops=skip_loops, dtype=dtype,
                           device=device, progress=progress,
                           step_callback=lambda s: console.print(f"{s.step}: {s.status} {s.summary}", highlight=False))
    files = write_report(report.bench, report_dir) if (report_dir and report.bench is not None) else {}
    if as_json:
        payload = report.to_json()
        if files:
            payload["report_files"] = {k: str(v) for k, v in files.items()}
        emit_json(payload)
    if report.bench is not None:
        console.print(bench_table(report.bench))
    table = Table(title=f"patchkit check {recipe} on {model}: {report.verdict}", title_justify="left")
    for col in ("step", "status", "summary", "s"):
        table.add_column(col, justify="right" if col == "s" else "left")
    colors = {"pass": "green", "fail": "red", "error": "red", "skipped": "yellow"}
    for s in report.steps:
        table.add_row(s.step, f"[{colors.get(s.status, 'white')}]{s.status}[/]", s.summary, f"{s.seconds:.1f}")
    console.print(table)
    for path in files.values():
        console.print(f"wrote {path}")
    if not report.passed:
        raise GateFailed("check failed: " + "; ".join(report.failures))
