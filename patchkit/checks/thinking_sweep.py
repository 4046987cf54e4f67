"""The thinking-budget study: the loop suite at several thinking budgets, base vs patched, on one load per model.

A thinking model given too few thinking tokens either commits to an answer early or is cut off mid-thought; a
model that circles ("wait, actually 25 ... no, 24 ...") never commits whatever the budget. An edit that fixes
loops must not trade them for doom loops, so the study reports per budget, for each model:

* `doom_rate` - budget exhausted, no final answer, repeated self-corrections (`patchkit.checks.detect`);
* `committed_rate` - the generation closed its thinking and produced a non-empty answer within the token limit
  (not cut by the thinking budget, no error);
* `committed_completeness` - mean share of the true items listed, over the committed enumeration answers only
  (a percentile-bootstrap 95% interval: completeness is a mean, not a rate);
* `budget_stop_rate` - generations stopped by the thinking budget (doom, truncated or looping thoughts);
* every figure the loop check reports today (`loop_rate`, verbatim / decay / doom split, good lists, controls).

Rates are over the suite's enumeration generations (the denominator of every loop rate), each a `Figure` with
its n and a Wilson 95% interval. Thinking is turned on through the model's own chat template
(`enable_thinking=True`); the budget is enforced by the backend (transformers: thinking tokens counted between
the markers; openai: `reasoning_content` chunks of a streamed response).

    from patchkit.checks.loops import LoopSettings
    from patchkit.checks.thinking_sweep import run_thinking_sweep
    sweep = run_thinking_sweep("base", patched_ref="patched",
                               settings=LoopSettings(thinking_budget=(1024, 4096, 16384), max_new_tokens=20000))
    sweep.to_json()["budgets"][0]["patched"]["doom_rate"]    # {"value", "k", "n", "ci"}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit._io.progress import Progress
from patchkit.checks.figure import Figure
from patchkit.checks.loops import (
    LoopReport,
    LoopSettings,
    ProbeResult,
    RunResult,
    each_model,
    prepare_run,
    run_suite,
)
from patchkit.checks.stats import bootstrap_ci
from patchkit.errors import CheckError
from patchkit.recipe import Recipe
from patchkit.recipe.gates import LoopGates

__all__ = ["BudgetPoint", "ThinkingSweep", "budget_figures", "committed", "run_thinking_sweep", "SWEEP_RATES"]

#: The rates the plot draws against the budget (report key, legend label).
SWEEP_RATES: tuple[tuple[str, str], ...] = (("doom_rate", "doom loops"), ("committed_rate", "committed answers"))


def committed(result: ProbeResult) -> bool:
    """The generation closed its thinking and produced a non-empty answer within the token limit.

    Why these conditions: a thinking-budget stop means the answer never started; an empty answer after a
    closed block is no commitment either; a backend error is no answer at all. A committed answer may still be
    cut by `max_new_tokens` or loop (the loop rate says so separately).
    """
    gen = result.generation
    return gen.error is None and gen.stop_reason != "budget" and bool(gen.text.strip())


def budget_figures(run: RunResult) -> dict[str, Figure]:
    """The study's figures for one model at one budget: the four the study adds, then the loop check's own.

    Args:
        run: one model's results at one budget.

    Returns:
        {report key: Figure}, in report order.
    """
    metrics = run.metrics()
    enum = metrics.enumeration
    done = [r for r in enum if committed(r)]
    shares = [r.verdict.completeness.share for r in done if r.verdict.completeness is not None]
    thinking = [float(r.generation.meta["thinking_tokens"]) for r in enum if "thinking_tokens" in r.generation.meta]
    figures = {
        "doom_rate": metrics.label_rate("doom"),
        "committed_rate": Figure.rate(len(done), len(enum), name="committed_rate"),
        "committed_completeness": _mean_with_ci(shares, name="committed_completeness", unit="share"),
        "budget_stop_rate": Figure.rate(
            sum(r.generation.stop_reason == "budget" for r in enum), len(enum), name="budget_stop_rate"
        ),
        "mean_thinking_tokens": _mean_with_ci(thinking, name="mean_thinking_tokens", unit="tokens"),
    }
    for key, fig in metrics.figures().items():
        figures.setdefault(key, fig)
    return figures


def _mean_with_ci(values: Sequence[float], *, name: str, unit: str) -> Figure:
    """A mean with its percentile-bootstrap 95% interval (seeded: the same data give the same interval)."""
    if not values:
        return Figure(value=None, n=0, name=name, unit=unit)
    lo, hi = bootstrap_ci(list(values))
    return Figure(value=sum(values) / len(values), n=len(values), ci=(lo, hi), name=name, unit=unit)


@dataclass
class BudgetPoint:
    """One budget of the sweep: the ordinary loop report, run with that single budget."""

    budget: int
    report: LoopReport

    def figures(self) -> dict[str, dict[str, Figure]]:
        """{"base" | "patched": {key: Figure}}."""
        return {name: budget_figures(run) for name, run in self.report.runs()}

    def to_json(self) -> dict[str, Any]:
        """{"budget", "base": {figures}, "patched"?: {figures}, "failures": [...]}."""
        out: dict[str, Any] = {"budget": self.budget}
        for name, figs in self.figures().items():
            out[name] = {key: fig.to_json() for key, fig in figs.items()}
        out["failures"] = self.report.gate()
        return out


@dataclass
class ThinkingSweep:
    """The loop suite at each thinking budget, base (and patched) on the same probes and seeds."""

    settings: LoopSettings
    points: list[BudgetPoint]
    backend: str = "transformers"
    gates: LoopGates | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def budgets(self) -> list[int]:
        return [p.budget for p in self.points]

    @property
    def models(self) -> dict[str, str]:
        return {name: run.model for name, run in self.points[0].report.runs()} if self.points else {}

    def gate(self) -> list[str]:
        """Every failed loop gate, prefixed with its budget ("budget 1024: max_loop_rate: ...")."""
        return [f"budget {p.budget}: {failure}" for p in self.points for failure in p.report.gate()]

    def to_json(self) -> dict[str, Any]:
        """The `patchkit loops --thinking-budget A,B,... --json` document (no transcripts: see the report dir)."""
        suite = self.points[0].report.suite if self.points else None
        return {
            "kind": "patchkit.loops.thinking-budget",
            "version": 1,
            "suite": suite.name if suite else None,
            "suite_files": suite.sources if suite else [],
            "backend": self.backend,
            "settings": self.settings.to_json(),
            "n_probes": len(self.points[0].report.probe_ids()) if self.points else 0,
            "models": self.models,
            "committed_means": "thinking closed and a non-empty answer within the token limit",
            "budgets": [p.to_json() for p in self.points],
            "gates": self.gates.model_dump(exclude_none=True) if self.gates else None,
            "failures": self.gate(),
            **self.extra,
        }


def run_thinking_sweep(
    base_ref: str | Path,
    *,
    patched_ref: str | Path | None = None,
    recipe: str | Path | Recipe | None = None,
    settings: LoopSettings | None = None,
    budgets: Sequence[int] | None = None,
    gates: LoopGates | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> ThinkingSweep:
    """Run the loop suite at each thinking budget on the base and (when given) the patched model.

    Why one function and not a loop over `run_loops`: each model is loaded once and runs every budget (a
    31B model loads in minutes), and base and patched get the same probes, seeds and budgets.

    Args:
        base_ref: the base model (as for `run_loops`).
        patched_ref: the patched model.
        recipe: a recipe applied to the base as the patched model (transformers backend).
        settings: how the suite is run; `settings.thinking_budget` holds the budgets unless `budgets` is given.
        budgets: the thinking budgets (overrides the settings'); one budget is a sweep of one point.
        gates: loop thresholds judged at every budget (default: the recipe's).
        progress: `progress(stage, done, total)`, stage "base @1024", "patched @4096", ...
        log: receives the placement line of each transformers-backend model.

    Returns:
        The sweep; `.gate()` lists failed thresholds per budget.

    Raises:
        CheckError: no budget, thinking off, raw prompts, a tokenizer whose chat template has no thinking mode,
            and everything `run_loops` refuses.
    """
    settings = settings if settings is not None else LoopSettings()
    if budgets is not None:
        settings = LoopSettings.model_validate(
            {**settings.model_dump(exclude_unset=True), "thinking_budget": list(budgets)}
        )
    if not settings.budgets:
        raise CheckError("a thinking-budget sweep needs budgets, e.g. thinking_budget=(1024, 4096, 16384)")
    settings, loaded, recipe_obj, gates = prepare_run(base_ref, patched_ref, recipe, settings, gates)
    runs: dict[int, dict[str, RunResult]] = {b: {} for b in settings.budgets}
    placements: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for role, label, be in each_model(base_ref, patched_ref, recipe_obj, settings, log, stack):
            placement = getattr(be, "placement", None)
            if placement is not None:
                placements[role] = placement.to_json()
            for budget in settings.budgets:
                runs[budget][role] = run_suite(
                    loaded,
                    backend=be,
                    settings=settings.at_budget(budget),
                    progress=progress,
                    stage=f"{role} @{budget}",
                    label=label,
                )
    extra: dict[str, Any] = {"placement": placements} if placements else {}
    if recipe_obj is not None:
        extra["recipe"] = str(recipe) if isinstance(recipe, (str, Path)) else getattr(recipe_obj, "name", None)
    points = [
        BudgetPoint(
            budget,
            LoopReport(
                settings.at_budget(budget),
                loaded,
                runs[budget]["base"],
                runs[budget].get("patched"),
                backend=settings.backend,
                gates=gates,
            ),
        )
        for budget in settings.budgets
    ]
    return ThinkingSweep(settings, points, backend=settings.backend, gates=gates, extra=extra)
