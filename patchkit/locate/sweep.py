"""Stage 4/5: full-generation sweeps. Teacher-forced scores do not predict what an edit does to generations,
so every candidate is judged on real greedy generations of the train probes (and the winner on held-out ones).

The score never rewards loop rate alone (an edit that stops the model listing also "removes" loops): it adds
the change in good-list rate and completeness and subtracts control failures and KL on control answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from patchkit.checks.loops import LoopSettings, Metrics, RunResult, run_suite
from patchkit.recipe import ResolvedEdit
from patchkit.runtime import runtime_edits

CONTROL_PENALTY = 2.0
KL_PENALTY = 1.0


@dataclass
class Candidate:
    edits: list[ResolvedEdit]
    kl_control: float = 0.0

    @property
    def label(self) -> str:
        return " + ".join(f"L{e.layer} n{e.index} {e.op}" + (f" x{e.factor:g}" if e.op == "scale" else "") for e in self.edits)


def run_with_edits(model: Any, tokenizer: Any, suite: Any, settings: LoopSettings, edits: list[ResolvedEdit],
                   *, label: str, batch_size: int = 16, progress: Callable | None = None) -> RunResult:
    with runtime_edits(model, edits):
        return run_suite(suite, model=model, tokenizer=tokenizer, settings=settings, batch_size=batch_size,
                         progress=progress, stage=label, label=label)


def summary(m: Metrics) -> dict[str, Any]:
    n, nc = m.n, len(m.controls)
    return {"n": n, "loops": m.loops, "loop_rate": m.loop_rate or 0.0, "good_lists": m.good_lists,
            "good_rate": (m.good_lists / n) if n else 0.0, "completeness": m.completeness or 0.0,
            "controls": nc, "control_failures": len(m.control_failures)}


def score(base: dict[str, Any], cand: dict[str, Any], kl_control: float) -> float:
    """Loop reduction + good-list gain + completeness gain - control failures added - KL on controls."""
    added_failures = max(0, cand["control_failures"] - base["control_failures"]) / max(1, cand["controls"])
    return ((base["loop_rate"] - cand["loop_rate"]) + (cand["good_rate"] - base["good_rate"])
            + (cand["completeness"] - base["completeness"]) - CONTROL_PENALTY * added_failures
            - KL_PENALTY * kl_control)
