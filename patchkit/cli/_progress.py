"""Progress for the library's one callback shape, `progress(stage, done, total)`: bars on a terminal, lines elsewhere.

Every command that runs long work opens `progress_bars(...)` and passes the callable it yields to the library.
- On an interactive terminal: one transient rich bar per stage with amount, rate, elapsed time and ETA. The bars
  go on the command's console (stderr under `--json`), or on stderr when only stderr is a terminal
  (`patchkit loops ... | tee out.txt`: the tables go down the pipe, the bars stay on screen).
- Anywhere else (CI, a pipe, a log file): rich draws nothing there, so a 20-minute `loops` used to be silent.
  `ProgressLog` writes plain lines on stderr instead (stage, done/total, rate, ETA): one every `LOG_INTERVAL_S`
  seconds at most and one when a reported stage finishes; nothing for work shorter than that.

"Terminal" is rich's `Console.is_interactive`, so rich's switches apply: `TTY_INTERACTIVE=0` gives lines on a
terminal, `TTY_INTERACTIVE=1` (or `FORCE_COLOR`, `TTY_COMPATIBLE=1`) gives bars off one.
The yielded callable also has `tokens_done(stage, n)`, the generation backends' hook for a tokens/s readout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

from patchkit._io.progress import Progress, ProgressLog, Unit, human_bytes

#: seconds between progress lines off a terminal (read per call: tests lower it)
LOG_INTERVAL_S = 10.0


class _RichBars:
    """The Progress (+ tokens_done) that drives one rich task per stage."""

    def __init__(
        self, bar: Any, name: Callable[[str], str], unit_of: Callable[[str], Unit], clock: Callable[[], float]
    ):
        self._bar = bar
        self._name = name
        self._unit_of = unit_of
        self._clock = clock
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, /) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(
                self._name(stage), total=total or None, unit=self._unit_of(stage), rate=""
            )
            self._started[stage] = self._clock()
        self._bar.update(self._tasks[stage], completed=done, total=total or None)  # total 0: not known (a pulse)

    def tokens_done(self, stage: str, n: int, /) -> None:
        if stage in self._tasks:
            rate = n / max(1e-6, self._clock() - self._started[stage])
            self._bar.update(self._tasks[stage], rate=f"{rate:,.0f} tok/s")


def _columns() -> tuple[Any, ...]:
    """Description, bar, amount (bytes or n/total per stage), rate, elapsed, ETA."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class AmountColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            show: Callable[[float], str] = (
                human_bytes if task.fields.get("unit") == "bytes" else (lambda n: f"{n:,.0f}")
            )
            total = "?" if task.total is None else show(task.total)
            return Text(f"{show(task.completed)}/{total}", style="progress.download")

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.fields.get("rate"):
                return Text(task.fields["rate"], style="progress.data.speed")
            if task.fields.get("unit") == "bytes" and task.speed:
                return Text(f"{human_bytes(task.speed)}/s", style="progress.data.speed")
            return Text("")

    return (
        TextColumn("{task.description}", markup=False),  # stage names carry file names: "[" is not markup
        BarColumn(),
        AmountColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def progress_bars(
    console: Console,
    *,
    unit: Unit | Callable[[str], Unit] = "items",
    prefix: str = "",
    label: Callable[[str], str] | None = None,
    clock: Callable[[], float] | None = None,
) -> Iterator[Progress]:
    """Yield a Progress that shows each stage as a rich bar on a terminal, else as log lines on stderr.

    Args:
        console: the command's console (`ui_console(as_json)`); bars go there when it is a terminal.
        unit: "bytes" or "items" for every stage, or a function of the stage name (mixed work, e.g. import-gguf).
        prefix: prepended to every stage name shown.
        label: maps a stage to the name shown (after which `prefix` is prepended).
        clock: monotonic seconds for rates and ETAs (tests inject a fake one).
    """
    unit_of: Callable[[str], Unit] = unit if callable(unit) else (lambda _stage: unit)
    name = (lambda stage: f"{prefix}{label(stage)}") if label else (lambda stage: f"{prefix}{stage}")
    tick = clock or time.monotonic
    target = console if console.is_interactive else None
    if target is None:
        stderr = Console(stderr=True)
        target = stderr if stderr.is_interactive else None
    if target is None:
        yield ProgressLog(interval=LOG_INTERVAL_S, unit=unit_of, clock=tick, label=name)
        return

    from rich.progress import Progress as RichProgress

    with RichProgress(
        *_columns(),
        console=target,
        transient=True,
        get_time=tick,
        # bars on stderr while stdout is a pipe: stdout's lines must go down the pipe, not into the live display
        redirect_stdout=target is console,
    ) as bar:
        yield _RichBars(bar, name, unit_of, tick)
