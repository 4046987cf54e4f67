"""`patchkit detect` (classify any text files) and `patchkit loops` (run the loop suite on base vs patched)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from patchkit._io.fs import read_capped
from patchkit.checks.loops import LoopSettings
from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._options import settings_from_options, settings_options
from patchkit.errors import CheckError, GateFailed


def _read_text(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return read_capped(name, 64 << 20, what="text file", error=CheckError).decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise CheckError(f"{name}: file not found") from None
    except OSError as exc:
        raise CheckError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _truth_from(truth_file: str | None, probe_ref: str | None) -> tuple[list[str] | None, dict | None]:
    if truth_file and probe_ref:
        raise CheckError("give --truth or --probe, not both")
    if truth_file:
        lines = [line.strip() for line in _read_text(truth_file).splitlines()]
        return [line for line in lines if line and not line.startswith("#")], None
    if probe_ref:
        from patchkit.checks.probes import load_suite

        suite_name, _, item = probe_ref.rpartition(":")
        suite = load_suite(suite_name or "enumeration", controls=False)
        item = item.split("#")[0]
        for probe in suite.probes:
            if probe.item_id == item and probe.truth:
                return list(probe.truth), probe.aliases
        raise CheckError(f"--probe {probe_ref}: no enumeration item {item!r} in suite {suite.name!r}")
    return None, None


@click.command("detect")
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--unfinished",
    is_flag=True,
    help="The texts were cut off by a token budget (not ended by the model): allows 'truncated'.",
)
@click.option(
    "--truth",
    "truth_file",
    default=None,
    metavar="FILE",
    help="Ground-truth list (one item per line) to score completeness against.",
)
@click.option(
    "--probe",
    "probe_ref",
    default=None,
    metavar="[SUITE:]ITEM",
    help="Take the ground truth from a suite item, e.g. iau-constellations or enumeration:us-states.",
)
@json_option
@handle_errors
def detect_cmd(
    files: tuple[str, ...], unfinished: bool, truth_file: str | None, probe_ref: str | None, as_json: bool
) -> None:
    """Classify generated texts: ok, verbatim / decay / doom loop, or truncated while still progressing.

    Works on text from any engine. Thinking blocks (<think>...</think>, Gemma 4 channels) are split off; an
    unclosed one with no answer is judged as a thinking trace (doom loop or truncated).
    """
    from patchkit.checks.detect import detect, split_thinking

    truth, aliases = _truth_from(truth_file, probe_ref)
    out: list[dict[str, Any]] = []
    for name in files:
        raw = _read_text(name)
        thinking, answer, closed = split_thinking(raw)
        verdict = detect(
            answer,
            truth=truth,
            aliases=aliases,
            finished=not unfinished and closed,
            thinking=thinking if (thinking is not None and not closed) or not answer.strip() else None,
        )
        out.append({"file": name, **verdict.to_json()})
    if as_json:
        emit_json({"results": out, "loops": sum(r["is_loop"] for r in out), "n": len(out)})
        return
    console = ui_console(False)
    from rich.table import Table

    table = Table()
    for col in ("file", "verdict", "evidence", "completeness"):
        table.add_column(col)
    for r in out:
        ev = r["evidence"]
        evidence = ""
        if ev and r["is_loop"]:
            span = ev["span"].replace("\n", "⏎")
            evidence = f"{ev['kind']}: {span[:50]!r} x{ev['copies']} from char {ev['start']} (period {ev['period']} {ev['unit']})"
        elif ev:
            evidence = f"{ev['kind']}: {ev['detail']}"
        comp = r["completeness"]
        comp_text = f"{comp['found']}/{comp['n_truth']} ({comp['share']:.0%})" if comp else ""
        label = f"[red]{r['label']}[/]" if r["is_loop"] else r["label"]
        table.add_row(r["file"], label, evidence, comp_text)
    console.print(table)


class _RichLoopProgress:
    """A Progress (stage, done, total) with a `tokens_done(stage, n)` hook: a rich bar per stage, tokens/s."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(f"{stage} model", total=total, rate="")
            self.started[stage] = time.perf_counter()
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def tokens_done(self, stage: str, n: int) -> None:
        if stage in self.tasks:
            rate = n / max(1e-6, time.perf_counter() - self.started[stage])
            self.bar.update(self.tasks[stage], rate=f"{rate:,.0f} tok/s")


@contextlib.contextmanager
def _progress(console: Any) -> Iterator[_RichLoopProgress]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        yield _RichLoopProgress(bar)


@click.command("loops")
@click.argument("model")
@click.option(
    "--patched",
    "patched",
    default=None,
    metavar="DIR",
    help="Patched checkpoint (dir or org/name[@rev]; with --backend openai: its model name on the server).",
)
@click.option(
    "--recipe",
    "recipe",
    default=None,
    metavar="RECIPE",
    help="Apply this recipe to MODEL in a temp dir and check the result; its checks.loops are the gates.",
)
@settings_options(LoopSettings)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write loops.json, every transcript and loops.png into this directory.",
)
@json_option
@handle_errors
def loops_cmd(
    model: str, patched: str | None, recipe: str | None, report_dir: Path | None, as_json: bool, **options: Any
) -> None:
    """Run the loop suite on MODEL (and the patched model) on the same probes and seeds; compare.

    Exits 1 when the recipe's checks.loops gates fail (each failed threshold is named), 2 on bad input.
    """
    from patchkit.checks.loop_report import render_tables, write_report
    from patchkit.checks.loops import run_loops

    if patched and recipe:
        raise CheckError("give either --patched or --recipe, not both")
    settings = settings_from_options(LoopSettings, options)
    console = ui_console(as_json)
    with _progress(console) as progress:
        report = run_loops(model, patched_ref=patched, recipe=recipe, settings=settings, progress=progress)
    written = write_report(report, report_dir) if report_dir else None
    failures = report.gate()
    if as_json:
        data = report.to_json(transcripts=False)
        if written:
            data["report"] = {k: str(v) for k, v in written.items()}
        emit_json(data)
    else:
        render_tables(report, console)
        if written:
            console.print(f"report written to {report_dir}/ (loops.json, loops.png, transcripts/)")
    if failures:
        for failure in failures:
            click.echo(f"gate failed: {failure}", err=True)
        raise GateFailed(f"{len(failures)} loop gate(s) failed: " + "; ".join(f.split(":")[0] for f in failures))
    if report.gates is not None and not as_json:
        console.print("[green]loop gates met[/]")
