"""Exception types. Every user-facing failure is a PatchkitError: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations


class PatchkitError(Exception):
    """Base class: `str(err)` is a complete one-line message (what, where, how to fix)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:  # one line, hint appended
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split("\n"))


class RecipeError(PatchkitError):
    """A recipe file is malformed or does not fit the model (carries file:line:column)."""


class ModelError(PatchkitError):
    """A model reference cannot be resolved, or its config/shards are unusable."""


class SafetensorsError(PatchkitError):
    """A safetensors file is corrupt, hostile or unsupported (names the file and tensor)."""


class ApplyError(PatchkitError):
    """Applying a recipe failed before anything was published (nothing half-written)."""


class VerifyError(PatchkitError):
    """A patched checkpoint does not match what its recipe says."""

    exit_code = 1


class GateFailed(PatchkitError):
    """A check ran fine but the model failed a threshold from the recipe's `checks` section."""

    exit_code = 1


class HubError(PatchkitError):
    """A Hugging Face Hub call failed; the message says what to do."""


class CheckError(PatchkitError):
    """A loop/bench check could not run (bad suite file, mismatched tokenizers, ...)."""
