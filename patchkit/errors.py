"""Every error type, and the exit codes the CLI maps them to.

Library errors carry data, not CLI text: a one-line `message` (what is wrong and where: file:line:column, field,
tensor), an optional `hint` (what to do, in words that fit any caller), an optional `fix` naming the *parameter*
that resolves it (`Fix("force", why="to replace it")`), and a `data` dict for scripts. The library renders a fix
as `set force=True`; the CLI renders the same fix as the command's own flag (`pass --force`), so the flag hints
can never drift from the flags.

Exit codes (documented in the README and `patchkit --help`):
    0  ok
    1  a gate or check failed: loop/bench thresholds, `verify` found a difference, `--exit-code` found changes
    2  bad input or usage: recipe, model, arguments, files, the Hub refusing a request
    3  internal error: a bug in patchkit (the message says how to get the traceback)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Fix:
    """The parameter (library keyword / CLI option of the same name) that resolves an error."""

    option: str
    value: Any = True
    why: str = ""

    def for_library(self) -> str:
        """`set force=True to replace it`: how a Python caller applies the fix."""
        return " ".join(part for part in (f"set {self.option}={self.value!r}", self.why) if part)


@dataclass(eq=False)
class PatchkitError(Exception):
    """Base class: `str(err)` is a complete one-line message (what, where, how to fix)."""

    message: str
    hint: str | None = None
    fix: Fix | None = None
    data: dict[str, Any] = field(default_factory=dict)

    exit_code = EXIT_BAD_INPUT

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def remedy(self, fix_text: str | None = None) -> str:
        """The advice part: the hint and the rendered fix (`fix_text` lets the CLI render it as a flag)."""
        rendered = fix_text if fix_text is not None else (self.fix.for_library() if self.fix else None)
        return "; ".join(part for part in (rendered, self.hint) if part)

    def render(self, fix_text: str | None = None) -> str:
        """One line: message, then the remedy in parentheses."""
        advice = self.remedy(fix_text)
        text = f"{self.message} ({advice})" if advice else self.message
        return " ".join(text.split("\n"))

    def __str__(self) -> str:
        return self.render()

    def to_json(self, fix_text: str | None = None) -> dict[str, Any]:
        """The error as data, for `--json` output."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "fix": fix_text if fix_text is not None else (self.fix.for_library() if self.fix else None),
            "exit_code": self.exit_code,
            "data": self.data,
        }


class RecipeError(PatchkitError):
    """A recipe file is malformed or does not fit the model (carries file:line:column)."""


class ModelError(PatchkitError):
    """A model reference cannot be resolved, or its config/shards are unusable."""


class SafetensorsError(PatchkitError):
    """A safetensors file is corrupt, hostile or unsupported (names the file and tensor)."""


class ApplyError(PatchkitError):
    """Applying a recipe failed before anything was published (nothing half-written)."""


class VerifyError(PatchkitError):
    """A patched checkpoint does not match what its recipe says (a failed check: exit 1)."""

    exit_code = EXIT_GATE_FAILED


class GateFailed(PatchkitError):
    """A check ran fine but the model failed a threshold from the recipe's `checks` section."""

    exit_code = EXIT_GATE_FAILED


class HubError(PatchkitError):
    """A Hugging Face Hub call failed; the message says what to do."""


class CheckError(PatchkitError):
    """A loop/bench check could not run (bad suite file, mismatched tokenizers, ...)."""
