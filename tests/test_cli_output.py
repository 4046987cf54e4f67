"""CLI output off a terminal (CI, `| tee`): nothing wrapped, tables whole, progress as timed log lines on stderr;
rich bars with an ETA on a terminal; transformers' own tqdm bars silenced during `import-gguf`."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.table import Table

from patchkit._io.progress import ProgressLog
from patchkit.cli import _progress, main
from patchkit.cli._common import ui_console
from patchkit.cli._progress import progress_bars

#: rich's switches that would make CliRunner's captured streams count as a terminal
_TTY_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS")


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch, tmp_path):
    for name in _TTY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "pk-cache"))


@pytest.fixture
def long_dir(tmp_path) -> Path:
    """A directory whose path alone is far wider than 80 columns."""
    d = tmp_path / ("a-directory-name-long-enough-to-wrap-" * 4) / "and-deeper"
    d.mkdir(parents=True)
    return d


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------------------- text and tables


def test_verify_prints_its_long_path_on_one_line(long_dir):
    from fixtures.tiny_models import raw_llama_checkpoint
    from test_apply import write_recipe

    from patchkit.edit.apply import apply_recipe

    base = raw_llama_checkpoint(long_dir / "base", "F32", shards=1)
    recipe = write_recipe(long_dir / "r.yaml")
    apply_recipe(recipe, model=str(base), out=long_dir / "out")
    result = CliRunner().invoke(main, ["verify", str(recipe), "--model", str(base), "--patched", str(long_dir / "out")])
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("ok:")]
    assert line.startswith(f"ok: {long_dir / 'out'} matches the recipe applied to {base} byte for byte")
    assert len(result.stdout.strip().splitlines()) == 1  # nothing continued on a second line


def _loop_report(base_name: str, patched_name: str):
    from patchkit.checks import loops
    from patchkit.checks.probes import load_suite
    from patchkit.generate.types import Generation

    suite = load_suite("smoke")
    probes = suite.probes[:4]

    def run(name: str, text: str):
        pairs = [
            (
                p,
                0,
                Generation(id=p.id, text=text if p.kind == "enumeration" else "Paris.", tokens=40, stop_reason="eos"),
            )
            for p in probes
        ]
        return loops.RunResult(model=name, results=loops.score_generations(pairs))

    return loops.LoopReport(
        settings=loops.LoopSettings(suite="smoke"),
        suite=suite,
        base=run(base_name, "1. red\n2. blue\n" + "3. green\n" * 30),
        patched=run(patched_name, "1. red\n2. blue\n3. green\n"),
    )


def test_loops_tables_keep_the_patched_models_columns(monkeypatch, long_dir):
    """At rich's 80 columns off a terminal the per-probe table lost the patched model's `tok` column and folded
    probe ids; every column must be there, every probe id whole."""
    import patchkit.checks.loops as loops_mod

    report = _loop_report(str(long_dir / "base"), str(long_dir / "patched"))
    monkeypatch.setattr(loops_mod, "run_loops", lambda *a, **k: report)
    result = CliRunner().invoke(main, ["loops", str(long_dir / "base"), "--patched", str(long_dir / "patched")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    (header,) = [ln for ln in lines if "probe" in ln and "split" in ln]
    cells = [c.strip() for c in header.strip("┃│ ").split("┃")]
    assert cells == ["probe", "split", "base", "compl./ok", "tok", "patched", "compl./ok", "tok"]
    for probe_id in report.probe_ids():
        (row,) = [ln for ln in lines if f" {probe_id} " in ln]  # whole, on one row
        assert len([c for c in row.strip("│").split("│")]) == 8
    widths = {len(ln) for ln in lines if ln.startswith(("┏", "┃", "│", "└"))}
    assert len(widths) == 2 and max(widths) > 80  # the two tables, each at its own natural width


def test_a_many_column_table_and_long_text_are_not_folded(long_dir):
    cells = [f"tensor-{i}.mlp.down_proj.weight" for i in range(14)]

    @click.command()
    def show() -> None:
        con = ui_console(False)
        con.print(f"wrote {long_dir}/model.safetensors and https://huggingface.co/org/{'x' * 90}/blob/main/README.md")
        table = Table(title="many columns")
        for i in range(14):
            table.add_column(f"column {i}", overflow="fold")
        table.add_row(*cells)
        con.print(table)
        con.rule("card")

    result = CliRunner().invoke(show)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0] == f"wrote {long_dir}/model.safetensors and https://huggingface.co/org/{'x' * 90}/blob/main/README.md"
    )
    (header,) = [ln for ln in lines if "column 0" in ln]
    assert all(f"column {i} " in header for i in range(14))
    (row,) = [ln for ln in lines if "tensor-0." in ln]
    assert all(f" {c} " in row for c in cells)
    rule = lines[-1]
    assert "card" in rule and len(rule) == 80  # a rule has no natural width: it stays at 80 columns


def test_a_terminal_still_wraps_to_its_width(monkeypatch):
    """On a terminal rich keeps fitting output to the window (only the off-terminal console changed)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("COLUMNS", "40")
    con = ui_console(False)
    assert con.is_interactive and con.width == 40


# ----------------------------------------------------------------------------------------- progress


def test_progress_log_lines_are_timed_with_rate_and_eta():
    clock, lines = FakeClock(), []
    log = ProgressLog(lines.append, interval=10, clock=clock)
    log("generate base", 0, 40)
    clock.now += 4
    log("generate base", 2, 40)
    assert lines == []  # nothing within the first interval
    clock.now += 6
    log("generate base", 4, 40)
    assert lines == ["generate base: 4/40 (10%), 0.40/s, elapsed 0:10, ETA 1:30"]
    clock.now += 5
    log("generate base", 6, 40)
    assert len(lines) == 1  # throttled
    clock.now += 85
    log("generate base", 40, 40)
    assert lines[-1] == "generate base: 40/40 (100%), 0.40/s, done in 1:40"
    clock.now += 30
    log("generate base", 40, 40)
    assert len(lines) == 2  # a finished stage is not reported again


def test_progress_log_is_silent_for_short_work_and_throttled_across_stages():
    clock, lines = FakeClock(), []
    log = ProgressLog(lines.append, interval=10, unit="bytes", clock=clock)
    for i in range(30):  # thirty 3-second shards: 90 s of work
        stage = f"apply model-{i:05d}.safetensors"
        log(stage, 0, 3_000_000_000)
        clock.now += 1.5
        log(stage, 1_500_000_000, 3_000_000_000)
        clock.now += 1.5
        log(stage, 3_000_000_000, 3_000_000_000)
    assert 8 <= len(lines) <= 20, lines  # one line per ~10 s plus the ends of the stages that were reported
    assert "apply model-00003.safetensors: 3.00 GB/3.00 GB (100%), 1.00 GB/s, done in 0:03" in lines
    assert all(" ETA " in ln or "done in" in ln for ln in lines)

    quiet: list[str] = []
    short = ProgressLog(quiet.append, interval=10, clock=clock)
    short("hash", 0, 5)
    clock.now += 2
    short("hash", 5, 5)
    assert quiet == []


def test_progress_log_shows_tokens_per_second_and_unknown_totals():
    clock, lines = FakeClock(), []
    log = ProgressLog(lines.append, interval=10, clock=clock, label=lambda s: f"{s} model")
    log("patched", 0, 12)
    clock.now += 10
    log.tokens_done("patched", 2500)
    assert lines == ["patched model: 0/12 (0%), 250 tok/s, elapsed 0:10"]
    clock.now += 10
    log("tokens", 700, 0)  # total 0: not known, no percent or ETA
    assert lines[-1] == "tokens model: 700, elapsed 0:00"


def test_progress_off_a_terminal_is_log_lines_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 10.0)
    clock = FakeClock()
    with progress_bars(ui_console(False), unit="bytes", prefix="verify ", clock=clock) as progress:
        assert isinstance(progress, ProgressLog)
        progress("model.safetensors", 0, 8_000_000_000)
        clock.now += 20
        progress("model.safetensors", 2_000_000_000, 8_000_000_000)
        clock.now += 60
        progress("model.safetensors", 8_000_000_000, 8_000_000_000)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "verify model.safetensors: 2.00 GB/8.00 GB (25%), 100.00 MB/s, elapsed 0:20, ETA 1:00",
        "verify model.safetensors: 8.00 GB/8.00 GB (100%), 100.00 MB/s, done in 1:20",
    ]


@pytest.fixture
def terminal() -> Console:
    """A console rich treats as an interactive terminal, writing into a buffer."""
    return Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=120, color_system=None)


def test_terminal_bars_show_rate_and_eta(terminal):
    clock = FakeClock()
    with progress_bars(terminal, unit="bytes", prefix="apply ", clock=clock) as progress:
        assert not isinstance(progress, ProgressLog)
        for step in range(3):
            progress("model.safetensors", step * 250_000_000, 1_000_000_000)
            clock.now += 10
        progress._bar.refresh()  # type: ignore[attr-defined]
    drawn = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "apply model.safetensors" in drawn and "500.00 MB/1.00 GB" in drawn
    assert "25.00 MB/s" in drawn and "ETA 0:00:20" in drawn


def test_terminal_bars_count_items_and_tokens(terminal):
    clock = FakeClock()
    with progress_bars(terminal, label=lambda s: f"{s} model", clock=clock) as progress:
        progress("base", 0, 40)
        clock.now += 10
        progress("base", 10, 40)
        progress.tokens_done("base", 1234)  # type: ignore[attr-defined]
        clock.now += 10
        progress("base", 20, 40)
        progress._bar.refresh()  # type: ignore[attr-defined]
    drawn = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "base model" in drawn and "20/40" in drawn and "123 tok/s" in drawn and "ETA 0:00:20" in drawn


def test_bars_go_to_stderr_when_only_stderr_is_a_terminal(monkeypatch, capsys):
    """`patchkit loops ... | tee out.txt`: stdout is a pipe, stderr the screen: bars there, not log lines."""

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = FakeTTY()
    monkeypatch.setattr(sys, "stderr", screen)
    with progress_bars(ui_console(False)) as progress:
        assert not isinstance(progress, ProgressLog)
        progress("generate base", 3, 10)
    assert "generate base" in screen.getvalue() and capsys.readouterr().out == ""


# ----------------------------------------------------------------------------------------- import-gguf


def _tiny_gguf(directory: Path) -> Path:
    from hostile.test_gguf import tiny_llama_gguf

    return tiny_llama_gguf(directory / "tiny.gguf")


def test_import_gguf_shows_its_own_progress_not_transformers_bars(long_dir, monkeypatch):
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0, raising=False)  # every report becomes a line
    path = _tiny_gguf(long_dir)
    result = CliRunner().invoke(main, ["import-gguf", str(path), "-o", str(long_dir / "out")])
    assert result.exit_code == 0, result.output
    assert "Converting and de-quantizing" not in result.stderr and "Loading weights" not in result.stderr
    assert "it/s" not in result.stderr and "\r" not in result.stderr  # no tqdm bar of any kind
    err = result.stderr.splitlines()
    assert "de-quantize tiny.gguf: 20/20 (100%)" in "\n".join(err)
    for stage in ("hash tiny.gguf", "write safetensors", "hash outputs"):
        assert any(ln.startswith(f"{stage}: ") and "done in" in ln for ln in err), (stage, err)
    assert result.stdout.splitlines()[0] == f"imported {path}"  # a long path is not wrapped either
    assert result.stdout.splitlines()[-1] == f"wrote {long_dir / 'out'}"


def test_import_gguf_library_silences_transformers_only_for_the_call(tmp_path, capfd):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from patchkit.workflows.gguf_import import import_gguf, progress_unit

    tqdm_before = gguf_utils.tqdm
    calls: list[tuple[str, int, int]] = []
    import_gguf(_tiny_gguf(tmp_path), out=tmp_path / "out", progress=lambda s, d, t: calls.append((s, d, t)))
    err = capfd.readouterr().err
    assert "Converting and de-quantizing" not in err and "Loading weights" not in err
    stages = list(dict.fromkeys(s for s, _, _ in calls))
    assert stages == ["hash tiny.gguf", "de-quantize tiny.gguf", "load weights", "write safetensors", "hash outputs"]
    for stage in stages:
        done, total = [(d, t) for s, d, t in calls if s == stage][-1]
        assert done == total > 0, stage
    assert [progress_unit(s) for s in stages] == ["bytes", "items", "items", "bytes", "bytes"]
    # restored: transformers' own switches are as they were
    assert gguf_utils.tqdm is tqdm_before
    assert hf_logging.set_tqdm_hook(None) is None


def test_loading_a_checkpoint_draws_no_transformers_bar_off_a_terminal(tiny_gemma4, capfd):
    """`loops`/`bench` load models through `generate.loading`: off a terminal transformers' "Loading weights" tqdm
    bar must not land in the log (patchkit's own progress lines do that job), and its setting is restored."""
    from transformers.utils import logging as hf_logging

    from patchkit.generate.loading import load_model

    assert hf_logging.is_progress_bar_enabled()
    load_model(tiny_gemma4)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert hf_logging.is_progress_bar_enabled()
