"""`patchkit detect` (classify any text files) and `patchkit loops` (run the loop suite on base vs patched)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from patchkit._io.fs import read_capped
from patchkit.checks.loops import LoopSettings
from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._options import placement_printer, settings_from_options, settings_options
from patchkit.cli._progress import progress_bars
from patchkit.errors import EXIT_GATE_FAILED, CheckError, GateFailed


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
@click.option(
    "--exit-code",
    "exit_code",
    is_flag=True,
    help="Exit 1 when any text loops, 0 when none does (like git diff --exit-code); without it, 0 either way.",
)
@json_option
@handle_errors
def detect_cmd(
    files: tuple[str, ...],
    unfinished: bool,
    truth_file: str | None,
    probe_ref: str | None,
    exit_code: bool,
    as_json: bool,
) -> None:
    """Classify generated texts: ok, verbatim / decay / doom loop, or truncated while still progressing.

    Works on text from any engine. Thinking blocks (<think>...</think>, Gemma 4 channels) are split off; an
    unclosed one with no answer is judged as a thinking trace (doom loop or truncated). Exits 0 (with
    --exit-code: 1 when any text loops), 2 on bad input.
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
    loops = sum(r["is_loop"] for r in out)
    if as_json:
        emit_json({"results": out, "loops": loops, "n": len(out)})
    else:
        _detect_table(out)
    if exit_code and loops:
        # a result, not an error: the table / JSON already says which texts loop (git diff --exit-code is quiet too)
        raise SystemExit(EXIT_GATE_FAILED)


def _detect_table(out: list[dict[str, Any]]) -> None:
    """The human `detect` output: one row per file with its verdict, the loop evidence and completeness."""
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
    help="Write loops.json, every transcript and loops.png into this directory (a thinking-budget sweep: "
    "also thinking-budget.png, and each budget's report in budget-N/).",
)
@json_option
@handle_errors
def loops_cmd(
    model: str, patched: str | None, recipe: str | None, report_dir: Path | None, as_json: bool, **options: Any
) -> None:
    """Run the loop suite on MODEL (and the patched model) on the same probes and seeds; compare.

    Runs where the model fits by default: the GPU when there is one, in the checkpoint's own dtype (the line
    "device: ..., dtype: ..." says what was chosen and why). --thinking-budget 1024,4096,16384 runs the
    thinking-budget study: the suite at each budget, thinking on, with doom-loop and committed-answer rates per
    budget. Exits 1 when the recipe's checks.loops gates fail (each failed threshold is named), 2 on bad input.
    """
    from patchkit.checks.loop_report import render_tables, write_report
    from patchkit.checks.loops import run_loops

    if patched and recipe:
        raise CheckError("give either --patched or --recipe, not both")
    settings = settings_from_options(LoopSettings, options)
    console = ui_console(as_json)
    if settings.is_sweep:
        _sweep(model, patched, recipe, settings, report_dir, as_json, console)
        return
    with progress_bars(console, label=lambda stage: f"{stage} model") as progress:
        report = run_loops(
            model,
            patched_ref=patched,
            recipe=recipe,
            settings=settings,
            progress=progress,
            log=placement_printer(console),
        )
    written = write_report(report, report_dir) if report_dir else None
    failures = report.gate()
    _finish(
        report.to_json(transcripts=False) if as_json else None,
        lambda: render_tables(report, console),
        written,
        f"report written to {report_dir}/ (loops.json, loops.png, transcripts/)",
        console,
    )
    _gates(
        failures,
        f"{len(failures)} loop gate(s) failed: " + "; ".join(f.split(":")[0] for f in failures),
        "loop gates met" if report.gates is not None and not as_json else None,
        console,
    )


def _finish(data: dict | None, render: Any, written: dict | None, written_note: str, console: Any) -> None:
    """One JSON document (with the written report files) under --json, else the tables and where the report went."""
    if data is not None:
        if written:
            data["report"] = {k: str(v) for k, v in written.items()}
        emit_json(data)
        return
    render()
    if written:
        console.print(written_note)


def _gates(failures: list[str], summary: str, met: str | None, console: Any) -> None:
    """Each failed gate on stderr and exit 1 (GateFailed); else say the gates were met (when there were any)."""
    if failures:
        for failure in failures:
            click.echo(f"gate failed: {failure}", err=True)
        raise GateFailed(summary)
    if met:
        console.print(f"[green]{met}[/]")


def _sweep(
    model: str,
    patched: str | None,
    recipe: str | None,
    settings: LoopSettings,
    report_dir: Path | None,
    as_json: bool,
    console: Any,
) -> None:
    """`patchkit loops --thinking-budget A,B,...`: the thinking-budget study (library: run_thinking_sweep)."""
    from patchkit.checks.loop_report import render_sweep_tables, write_sweep_report
    from patchkit.checks.thinking_sweep import run_thinking_sweep

    with progress_bars(console, label=lambda stage: f"{stage} tokens") as progress:
        sweep = run_thinking_sweep(
            model,
            patched_ref=patched,
            recipe=recipe,
            settings=settings,
            progress=progress,
            log=placement_printer(console),
        )
    written = write_sweep_report(sweep, report_dir) if report_dir else None
    failures = sweep.gate()
    _finish(
        sweep.to_json() if as_json else None,
        lambda: render_sweep_tables(sweep, console),
        written,
        f"report written to {report_dir}/ (loops.json, thinking-budget.png, budget-N/)",
        console,
    )
    _gates(
        failures,
        f"{len(failures)} loop gate(s) failed across the thinking budgets",
        "loop gates met at every budget" if sweep.gates is not None and not as_json else None,
        console,
    )
