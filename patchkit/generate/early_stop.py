"""Stop a sequence as soon as its loop is certain: a looping base model would otherwise burn its whole budget.

The watch re-runs `patchkit.checks.detect.certain_loop` on the decoded text every few tokens. That test is
stricter than the final classification, so every early-stopped generation is also judged a loop by `detect`
(stopping early never changes a verdict, it only saves the tokens after the loop is obvious).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from patchkit.checks.detect import certain_loop

__all__ = ["LoopWatch"]


@dataclass
class LoopWatch:
    """Per-sequence watcher: call `check(n_tokens, decode)` after each token; returns the loop label when certain."""

    every: int = 8          # check every this many tokens (decode + detect costs ~1 ms)
    min_tokens: int = 24    # nothing is certain before this
    _last: int = 0

    def check(self, n_tokens: int, decode: Callable[[], str]) -> str | None:
        if n_tokens < self.min_tokens or n_tokens - self._last < self.every:
            return None
        self._last = n_tokens
        found = certain_loop(decode())
        return found[0] if found else None
