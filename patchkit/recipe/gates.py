"""Thresholds a recipe's `checks:` section sets; the loop and bench commands turn them into exit codes.

Strict types (no `"0.1"` for 0.1, no `true` for 1), finite numbers only, and the run sizes a recipe may ask for
are bounded (`patchkit.recipe.limits.MAX_SAMPLES`, `MAX_NEW_TOKENS`): a recipe must not be able to make
`patchkit check` run for days.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from patchkit.recipe.limits import MAX_NEW_TOKENS, MAX_SAMPLES

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class LoopGates(BaseModel):
    """`checks.loops`: how the loop check is run and what the patched model must achieve."""

    model_config = _STRICT

    suite: str = Field("enumeration", min_length=1, max_length=4096)
    samples: int = Field(1, ge=1, le=MAX_SAMPLES)
    temperature: float = Field(0.0, ge=0, le=100)
    max_new_tokens: int = Field(400, ge=1, le=MAX_NEW_TOKENS)
    max_loop_rate: float | None = Field(None, ge=0, le=1, description="patched loop rate must be <= this")
    min_reduction: float | None = Field(None, ge=0, le=1, description="(base - patched) / base must be >= this")
    max_control_failures: int | None = Field(None, ge=0, description="control prompts the patched model may fail")
    min_completeness: float | None = Field(None, ge=0, le=1, description="mean share of true items listed")


class BenchGates(BaseModel):
    """`checks.bench`: how far the patched model may drift from the base."""

    model_config = _STRICT

    max_kl: float | None = Field(None, ge=0, description="mean per-token KL(base||patched), nats")
    max_token_kl: float | None = Field(None, ge=0, description="max per-token KL, nats")
    max_ppl_ratio: float | None = Field(None, ge=0, description="perplexity patched / base")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="task accuracy base - patched")
    min_top1_agreement: float | None = Field(None, ge=0, le=1)
    max_first_token_kl: float | None = Field(
        None, ge=0, description="mean KL on the first generated token of control prompts, nats"
    )
    tasks: list[str] | None = None


class Checks(BaseModel):
    model_config = _STRICT

    loops: LoopGates | None = None
    bench: BenchGates | None = None
