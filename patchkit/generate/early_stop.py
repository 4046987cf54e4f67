"""Stop a sequence as soon as its loop is certain: a looping base model would otherwise burn its whole budget.

Generation does not know what a loop is (that is `patchkit.checks`): the caller passes a `StopTest`, a function
from the decoded text so far to a loop label or None. `LoopWatch` runs it every few tokens: the transformers
backend (and locate's per-row-edit decoding on top of it) counts tokens, the openai backend counts streamed
chunks (one token each on the common servers) and closes the stream at a certain loop. patchkit's own test
(`patchkit.checks.detect.loop_stop_test`) is stricter than the final classification, so every early-stopped
generation is also judged a loop (stopping early never changes a verdict, it only saves the tokens after the
loop is obvious).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoopWatch", "StopTest"]

#: decoded text so far -> the loop label once a loop is certain, else None
StopTest = Callable[[str], "str | None"]


@dataclass
class LoopWatch:
    """Per-sequence watcher: call `check(n_tokens, decode)` after each token; returns the loop label when certain."""

    test: StopTest
    every: int = 8  # check every this many tokens (decode + detect costs ~1 ms)
    min_tokens: int = 24  # nothing is certain before this
    _last: int = 0

    def check(self, n_tokens: int, decode: Callable[[], str]) -> str | None:
        if n_tokens < self.min_tokens or n_tokens - self._last < self.every:
            return None
        self._last = n_tokens
        return self.test(decode())
