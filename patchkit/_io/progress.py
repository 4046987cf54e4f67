"""The one progress callback shape every long-running patchkit function accepts.

`progress(stage, done, total)`: `stage` names the work ("apply model-00001.safetensors", "generate base"),
`done` is the absolute amount finished so far and `total` the amount expected, in the stage's own unit (bytes,
sequences, probes). Library code only calls it; the CLI turns the calls into rich progress bars (one task per
stage), and scripts may pass any callable or nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called as work completes: `progress(stage, done, total)`; `done` is absolute, never a delta."""

    def __call__(self, stage: str, done: int, total: int, /) -> None: ...


def no_progress(stage: str, done: int, total: int, /) -> None:
    """A Progress that ignores every call (the default where one is required)."""
