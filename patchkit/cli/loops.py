"""`patchkit detect` (classify any text files) and `patchkit loops` (run the loop suite on base vs patched)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.errors import CheckError, GateFailed


def _read_text(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8", errors="replace")
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
@click.option("--unfinished", is_flag=True,
              help="The texts were cut off by a token budget (not ended by the model): allows 'truncated'.")
@click.option("--truth", "truth_file", default=None, metavar="FILE",
              help="Ground-truth list (one item per line) to score completeness against.")
@click.option("--probe", "probe_ref", default=None, metavar="[SUITE:]ITEM",
              help="Take the ground truth from a suite item, e.g. iau-constellations or enumeration:us-states.")
@json_option
@handle_errors
def detect_cmd(files: tuple[str, ...], unfinished: bool, truth_file: str | None, probe_ref: str | None,
               as_json: bool) -> None:
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
        verdict = detect(answer, truth=truth, aliases=aliases, finished=not unfinished and closed,
                         thinking=thinking if (thinking is not None and not closed) or not answer.strip() else None)
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
    """(stage, advance, total) callback + add_tokens: a rich bar over probes x samples with tokens/s."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.tasks: dict[str, Any] = {}
        self.stage: str | None = None
        self.tokens = 0
        self.started = time.perf_counter()

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(f"{stage} model", total=total, rate="")
            self.tokens, self.started = 0, time.perf_counter()
        self.stage = stage
        self.bar.update(self.tasks[stage], advance=advance)

    def add_tokens(self, n: int) -> None:
        self.tokens += n
        if self.stage is not None:
            rate = self.tokens / max(1e-6, time.perf_counter() - self.started)
            self.bar.update(self.tasks[self.stage], rate=f"{rate:,.0f} tok/s")


@contextlib.contextmanager
def _progress(console: Any) -> Iterator[_RichLoopProgress]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        yield _RichLoopProgress(bar)


@click.command("loops")
@click.argument("model")
@click.option("--patched", "patched", default=None, metavar="DIR",
              help="Patched checkpoint (dir or org/name[@rev]; with --backend openai: its model name on the server).")
@click.option("--recipe", "recipe", default=None, metavar="RECIPE",
              help="Apply this recipe to MODEL in a temp dir and check the result; its checks.loops are the gates.")
@click.option("--suite", default=None, help="Packaged suite (enumeration, controls, smoke) or a suite YAML file. "
                                            "[default: the recipe's checks.loops.suite, else enumeration]")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Samples per probe (with --temperature > 0).")
@click.option("--temperature", type=click.FloatRange(min=0), default=None, help="0 = greedy. [default: 0]")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sample s of every probe uses seed+s.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Token budget per probe. [default: 400]")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N probes of each kind.")
@click.option("--split", type=click.Choice(["train", "heldout", "all"]), default="all", show_default=True)
@click.option("--no-controls", is_flag=True, help="Do not add the packaged control prompts to a suite without controls.")
@click.option("--thinking/--no-thinking", "enable_thinking", default=None,
              help="Chat template enable_thinking (Gemma 4). [default: the template's default]")
@click.option("--thinking-budget", type=click.IntRange(min=1), default=None,
              help="Stop a generation after this many thinking tokens (no answer yet: doom loop or truncated).")
@click.option("--backend", type=click.Choice(["transformers", "openai"]), default="transformers", show_default=True)
@click.option("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="openai backend: parallel requests.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True, help="openai backend: seconds per request.")
@click.option("--dtype", default="float32", show_default=True, help="f32 | bf16 | f16 (transformers backend).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, or auto (the GPU; several GPUs share the model layer by layer) (transformers backend).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--no-early-stop", is_flag=True, help="Generate the full budget even after a loop is certain.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write loops.json, every transcript and loops.png into this directory.")
@json_option
@handle_errors
def loops_cmd(model: str, patched: str | None, recipe: str | None, suite: str | None, samples: int | None,
              temperature: float | None, top_p: float, seed: int, max_new_tokens: int | None, limit: int | None,
              split: str, no_controls: bool, enable_thinking: bool | None, thinking_budget: int | None, backend: str,
              base_url: str | None, concurrency: int, timeout: float, dtype: str, device: str, batch_size: int,
              no_early_stop: bool, report_dir: Path | None, as_json: bool) -> None:
    """Run the loop suite on MODEL (and the patched model) on the same probes and seeds; compare.

    Exits 1 when the recipe's checks.loops gates fail (each failed threshold is named), 2 on bad input.
    """
    from patchkit.checks.loop_report import render_tables, write_report
    from patchkit.checks.loops import run_loops

    if patched and recipe:
        raise CheckError("give either --patched or --recipe, not both")
    console = ui_console(as_json)
    with _progress(console) as progress:
        report = run_loops(model, patched_ref=patched, recipe=recipe, suite=suite, limit=limit,
                           split=None if split == "all" else split, samples=samples, temperature=temperature,
                           top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, backend=backend, base_url=base_url,
                           dtype=dtype, device=device, batch_size=batch_size, early_stop=not no_early_stop,
                           enable_thinking=enable_thinking, thinking_budget=thinking_budget, concurrency=concurrency,
                           timeout=timeout, controls=False if no_controls else None, progress=progress)
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
        raise GateFailed(f"{len(failures)} loop gate(s) failed: " + "; ".join(f.split(':')[0] for f in failures))
    if report.gates is not None and not as_json:
        console.print("[green]loop gates met[/]")
