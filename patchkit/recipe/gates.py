"""Thresholds a recipe's `checks:` section sets; the loop and bench commands turn them into exit codes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoopGates(BaseModel):
    """`checks.loops`: how the loop check is run and what the patched model must achieve."""

    model_config = ConfigDict(extra="forbid")

    suite: str = "enumeration"
    samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(400, ge=1)
    max_loop_rate: float | None = Field(None, ge=0, le=1, description="patched loop rate must be <= this")
    min_reduction: float | None = Field(None, ge=0, le=1, description="(base - patched) / base must be >= this")
    max_control_failures: int | None = Field(None, ge=0, description="control prompts the patched model may fail")
    min_completeness: float | None = Field(None, ge=0, le=1, description="mean share of true items listed")


class BenchGates(BaseModel):
    """`checks.bench`: how far the patched model may drift from the base."""

    model_config = ConfigDict(extra="forbid")

    max_kl: float | None = Field(None, ge=0, description="mean per-token KL(base||patched), nats")
    max_token_kl: float | None = Field(None, ge=0, description="max per-token KL, nats")
    max_ppl_ratio: float | None = Field(None, ge=0, description="perplexity patched / base")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="task accuracy base - patched")
    min_top1_agreement: float | None = Field(None, ge=0, le=1)
    max_first_token_kl: float | None = Field(None, ge=0, description="mean KL on the first generated token of control prompts, nats")
    tasks: list[str] | None = None


class Checks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loops: LoopGates | None = None
    bench: BenchGates | None = None
