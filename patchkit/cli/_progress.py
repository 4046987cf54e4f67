"""Rich progress bars for the library's one callback shape, `progress(stage, done, total)`.

Every command that runs long work opens `progress_bars(...)` and passes the callable it yields to the library:
one bar per stage, on stderr under `--json` (stdout stays machine-readable), hidden when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

from rich.console import Console

from patchkit._io.progress import Progress


@contextlib.contextmanager
def progress_bars(
    console: Console, *, unit: Literal["bytes", "items"] = "items", prefix: str = ""
) -> Iterator[Progress]:
    """Yield a Progress callable that draws one rich bar per stage (`prefix` is prepended to stage names)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    columns = (
        (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        if unit == "bytes"
        else (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    )
    with RichProgress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int, /) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{prefix}{stage}", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
