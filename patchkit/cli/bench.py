"""`patchkit bench` and `patchkit check`: thin click shells over patchkit.checks.bench / patchkit.workflows.check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from patchkit._io.progress import Progress
from patchkit.checks.bench import BenchSettings
from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._options import placement_printer, settings_from_options, settings_options
from patchkit.cli._progress import progress_bars
from patchkit.errors import GateFailed

_STAGE_LABELS = {
    "controls": "base greedy answers to controls",
    "teacher-forced": "teacher-forced KL / ppl",
    "qa": "question set (log-lik + greedy)",
}


@contextlib.contextmanager
def _rich_progress(console: Any) -> Iterator[Progress]:
    """The shared rich bars (`progress_bars`), with bench's stages under readable names."""
    with progress_bars(console) as bars:

        def labelled(stage: str, done: int, total: int, /) -> None:
            bars(_STAGE_LABELS.get(stage, stage), done, total)

        yield labelled


_report_option = click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write bench.json and bench.png into this directory.",
)
#: the BenchSettings fields `patchkit check` passes on to its bench (and, for limit/dtype/device/chat, loop) step
_CHECK_FIELDS = ("tasks", "limit", "dtype", "device", "chat")


@click.command("bench")
@click.argument("model")
@click.option("--patched", "patched", default=None, metavar="DIR", help="Patched checkpoint to compare with MODEL.")
@click.option(
    "--recipe",
    "recipe",
    type=click.Path(path_type=Path),
    default=None,
    help="Its checks.bench thresholds gate the exit code; without --patched it is first applied to MODEL "
    "in a temporary directory.",
)
@settings_options(BenchSettings)
@_report_option
@json_option
@handle_errors
def bench_cmd(
    model: str, patched: str | None, recipe: Path | None, report_dir: Path | None, as_json: bool, **options: Any
) -> None:
    """Compare a patched model with its base: KL, perplexity, task accuracy, with n, 95% CIs and paired p-values.

    Exits 1 when a threshold from the recipe's checks.bench section fails, 2 on bad input. Needs logits: a
    local checkpoint or Hub id, not an OpenAI-compatible server. Runs on the GPU when there is one, in the
    checkpoint's own dtype (the line "device: ..., dtype: ..." says what was chosen and why).
    """
    from patchkit.checks.bench import run_bench
    from patchkit.checks.bench_report import bench_table, write_report

    settings = settings_from_options(BenchSettings, options)
    console = ui_console(as_json)
    with _rich_progress(console) as progress:
        report = run_bench(
            model, patched, recipe=recipe, settings=settings, progress=progress, log=placement_printer(console)
        )
    files = write_report(report, report_dir) if report_dir else {}
    if as_json:
        payload = report.to_json()
        if files:
            payload["report_files"] = {k: str(v) for k, v in files.items()}
        emit_json(payload)
    console.print(bench_table(report))
    for path in files.values():
        console.print(f"wrote {path}")
    if report.gates is not None:
        console.print("[red]FAIL[/red]" if report.failures else "[green]PASS[/green]: all checks.bench thresholds met")
    if report.failures:
        raise GateFailed("bench gate failed: " + "; ".join(report.failures))


@click.command("check")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--model", "model", required=True, metavar="REF", help="Base checkpoint: directory, org/name[@rev].")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the patched checkpoint here (default: a temporary directory, removed afterwards).",
)
@settings_options(BenchSettings, only=_CHECK_FIELDS)
@_report_option
@click.option("--skip-loops", is_flag=True, help="Do not run the loop check.")
@json_option
@handle_errors
def check_cmd(
    recipe: Path, model: str, out: Path | None, report_dir: Path | None, skip_loops: bool, as_json: bool, **options: Any
) -> None:
    """Run validate -> apply -> loops -> bench for RECIPE on MODEL and print one verdict table.

    Exits 1 when a gate fails (FAIL), 2 on bad input (a recipe that does not load or fit MODEL, a model that
    cannot be read, a device this torch cannot use, a tokenizer without a chat template and no --no-chat).
    """
    from rich.table import Table

    from patchkit.checks.bench_report import bench_table, write_report
    from patchkit.workflows.check import CheckSettings, run_check

    bench = settings_from_options(BenchSettings, options)
    console = ui_console(as_json)
    with _rich_progress(console) as progress:
        settings = CheckSettings(
            tasks=bench.tasks,
            limit=bench.limit,
            skip_loops=skip_loops,
            dtype=bench.dtype,
            device=bench.device,
            chat=bench.chat,
        )
        report = run_check(
            recipe,
            model,
            out=out,
            settings=settings,
            progress=progress,
            step_callback=lambda s: console.print(f"{s.step}: {s.status} {s.summary}", highlight=False),
            log=placement_printer(console),
        )
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
