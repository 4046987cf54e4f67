"""The one progress callback shape every long-running patchkit function accepts, and a plain-text renderer of it.

`progress(stage, done, total)`: `stage` names the work ("apply model-00001.safetensors", "generate base"),
`done` is the absolute amount finished so far and `total` the amount expected, in the stage's own unit (bytes,
sequences, probes); `total` 0 means "not known". Library code only calls it; scripts may pass any callable or
nothing. The CLI draws rich bars on a terminal and, everywhere else (CI, `| tee`, a log file), writes
`ProgressLog` lines: rich draws nothing there, and a `loops` run would otherwise be silent for minutes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

#: the unit of a stage's `done` and `total`: bytes (shown as kB/MB/GB) or counted items
Unit = Literal["bytes", "items"]


class Progress(Protocol):
    """Called as work completes: `progress(stage, done, total)`; `done` is absolute, never a delta."""

    def __call__(self, stage: str, done: int, total: int, /) -> None: ...


def no_progress(stage: str, done: int, total: int, /) -> None:
    """A Progress that ignores every call (the default where one is required)."""


def human_bytes(n: float) -> str:
    """`1234567` -> `1.23 MB` (decimal units, as `ls -h --si` and rich's transfer columns count)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover - the loop always returns


def clock_text(seconds: float) -> str:
    """`75` -> `1:15`, `3725` -> `1:02:05`: a duration as a log reader scans it."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _per_second(rate: float) -> str:
    """`0.4` -> `0.40/s`, `12.5` -> `12.5/s`, `54100` -> `54,100/s`: a count rate without exponent notation."""
    return f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.1f}/s" if rate >= 10 else f"{rate:.2f}/s"


def _stderr_line(line: str) -> None:
    # sys.stderr is looked up per line (not bound at construction), so a redirected or captured stderr gets it
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass
class _Stage:
    started: float
    done0: int
    done: int = 0
    total: int = 0
    tokens: int | None = None
    reported: bool = False
    finished: bool = False


class ProgressLog:
    """A Progress that writes one plain line per report: stage, done/total, percent, rate, elapsed and ETA.

    Why: off a terminal (CI, `| tee`, `2> log`) a bar cannot be redrawn, so long commands printed nothing for
    minutes. The lines are time-based, never per call, so a log stays short:
    - nothing for work that ends within `interval` seconds (quick commands and tests print no progress);
    - at most one line every `interval` seconds across all stages (thirty short shards do not make sixty lines),
      naming the stage being worked on when the line falls due;
    - a final line for every stage that was reported on, when it completes (`done >= total`).
    Rate and ETA are measured from the stage's first call. A stage whose `done` drops below its `total` after it
    finished starts over. Lines are only written from inside a call: there is no timer thread.

    Args:
        write: receives each line (default: stderr, looked up per line).
        interval: seconds between lines.
        unit: "bytes" (amounts and rates as kB/MB/GB) or "items", or a function of the stage name.
        clock: monotonic seconds (tests inject a fake one).
        label: how a stage is named in the lines (default: as given).

    >>> log = ProgressLog(print, interval=0.0)  # doctest: +SKIP
    >>> log("generate base", 3, 10)  # doctest: +SKIP
    generate base: 3/10 (30%), 1.5/s, elapsed 0:02, ETA 0:05
    """

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        *,
        interval: float = 10.0,
        unit: Unit | Callable[[str], Unit] = "items",
        clock: Callable[[], float] = time.monotonic,
        label: Callable[[str], str] | None = None,
    ) -> None:
        self._write = write or _stderr_line
        self._interval = interval
        self._unit = unit
        self._clock = clock
        self._label = label or (lambda stage: stage)
        self._stages: dict[str, _Stage] = {}
        self._last_line = clock()

    def __call__(self, stage: str, done: int, total: int, /) -> None:
        now = self._clock()
        st = self._stages.get(stage)
        if st is None or (st.finished and total > 0 and done < total):
            st = self._stages[stage] = _Stage(started=now, done0=done)
        st.done, st.total = done, total
        if st.finished:
            return
        if total > 0 and done >= total:
            st.finished = True
            if st.reported or self._due(now):
                self._emit(stage, st, now)
        elif self._due(now):
            self._emit(stage, st, now)

    def tokens_done(self, stage: str, n: int) -> None:
        """Tokens generated so far in `stage` (the generation backends' hook): adds tokens/s to the lines."""
        st = self._stages.get(stage)
        if st is None or st.finished:
            return
        st.tokens = n
        now = self._clock()
        if self._due(now):
            self._emit(stage, st, now)

    def _due(self, now: float) -> bool:
        return now - self._last_line >= self._interval

    def _emit(self, stage: str, st: _Stage, now: float) -> None:
        st.reported = True
        self._last_line = now
        self._write(self._line(stage, st, now))

    def _line(self, stage: str, st: _Stage, now: float) -> str:
        unit = self._unit(stage) if callable(self._unit) else self._unit
        amount: Callable[[float], str] = human_bytes if unit == "bytes" else (lambda n: f"{n:,.0f}")
        elapsed = max(0.0, now - st.started)
        parts = [
            f"{amount(st.done)}/{amount(st.total)} ({min(100, 100 * st.done // st.total)}%)"
            if st.total > 0
            else amount(st.done)
        ]
        rate = (st.done - st.done0) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{human_bytes(rate)}/s" if unit == "bytes" else _per_second(rate))
        if st.tokens is not None and elapsed > 0:
            parts.append(f"{st.tokens / elapsed:,.0f} tok/s")
        if st.finished:
            parts.append(f"done in {clock_text(elapsed)}")
        else:
            parts.append(f"elapsed {clock_text(elapsed)}")
            if st.total > 0 and rate > 0:
                parts.append(f"ETA {clock_text((st.total - st.done) / rate)}")
        return f"{self._label(stage)}: " + ", ".join(parts)
