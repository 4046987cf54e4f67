"""`run_check`: the one command to run before publishing: validate -> apply -> loops -> bench -> one verdict.

Each step records pass / fail / error / skipped (skipped only when asked to, or when apply did not produce a
model to check); any failed gate or step error makes the verdict FAIL. Bad input is not a verdict: a recipe
that does not load or fit the model, a model that cannot be read, a device or dtype this machine cannot use,
chat prompts for a tokenizer without a chat template all raise their error at once (exit 2 in the CLI), so a
FAIL (exit 1) always means the patched model was measured and missed a gate.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from patchkit._io.progress import Progress
from patchkit.checks.bench import BenchReport, BenchSettings, run_bench
from patchkit.checks.loops import LoopReport, LoopSettings, run_loops
from patchkit.edit.apply import apply_recipe
from patchkit.errors import EXIT_BAD_INPUT, PatchkitError
from patchkit.recipe import load_recipe

__all__ = ["StepResult", "CheckReport", "run_check"]


@dataclass
class StepResult:
    """One step of `run_check` (validate, apply, loops, bench): its status, one-line summary and failures."""

    step: str
    status: str  # "pass" | "fail" | "skipped" | "error"
    summary: str
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "summary": self.summary,
            "seconds": round(self.seconds, 2),
            "failures": self.failures,
        }


@dataclass
class CheckReport:
    """Everything `run_check` found: the steps, the loop and bench reports, and one verdict (PASS / FAIL)."""

    recipe: str
    model: str
    output: str | None
    steps: list[StepResult] = field(default_factory=list)
    loops: LoopReport | None = None
    bench: BenchReport | None = None

    @property
    def failures(self) -> list[str]:
        out: list[str] = []
        for s in self.steps:
            if s.status in ("fail", "error"):
                out += [f"{s.step}: {f}" for f in s.failures] or [f"{s.step}: {s.summary}"]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAIL"
        skipped = [s.step for s in self.steps if s.status == "skipped"]
        return "PASS" if not skipped else f"PASS (skipped: {', '.join(skipped)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "model": self.model,
            "output": self.output,
            "verdict": self.verdict,
            "passed": self.passed,
            "failures": self.failures,
            "steps": [s.to_json() for s in self.steps],
            "loops": self.loops.to_json() if self.loops is not None else None,
            "bench": self.bench.to_json() if self.bench is not None else None,
        }


@contextlib.contextmanager
def _output_dir(out: str | Path | None) -> Iterator[Path]:
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="patchkit-check-") as tmp:
        yield Path(tmp) / "patched"


class CheckSettings(BaseModel):
    """Every option of `patchkit check`, in one frozen object (the loop and bench settings derive from it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: str | tuple[str, ...] | None = Field(
        None, description="bench tasks (default: the recipe's checks.bench.tasks, else kl, ppl, qa)"
    )
    limit: int | None = Field(None, ge=1, description="probes per kind (loops) and items per source (bench)")
    skip_loops: bool = Field(False, description="do not run the loop check")
    skip_bench: bool = Field(False, description="do not run the bench")
    dtype: str = Field(
        "auto", description="load dtype for both checks: auto (the checkpoint's own, see resolve_placement) or a name"
    )
    device: str = Field("auto", description="torch device for both checks: auto (CUDA, else MPS, else CPU) or a name")
    chat: bool = Field(True, description="send prompts through the chat template (False: raw text)")


def run_check(
    recipe_path: str | Path,
    model: str,
    *,
    out: str | Path | None = None,
    settings: CheckSettings | None = None,
    progress: Progress | None = None,
    step_callback: Callable[[StepResult], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> CheckReport:
    """Validate the recipe, apply it to `model` (into `out` or a temp dir), run loops and bench on the result.

    Why: one verdict before publishing, judged by the recipe's own `checks` thresholds.

    Args:
        recipe_path: the recipe file.
        model: the base checkpoint (directory, org/name[@rev]).
        out: keep the patched checkpoint here (default: a temporary directory, removed afterwards).
        settings: CheckSettings (tasks, limit, skip_loops, skip_bench, dtype, device, chat).
        progress: `progress(stage, done, total)`, passed to both checks.
        step_callback: called with each step's result as soon as it is known.
        log: receives one line per model loaded: the device and dtype chosen and why.

    Returns:
        The CheckReport: steps, the loop and bench reports, the verdict (FAIL: a gate was missed).

    Raises:
        RecipeError: the recipe does not validate (one line with file:line:col), or does not fit the model.
        PatchkitError: any other bad input (exit code 2): a missing or unreadable model, a device or dtype
            that cannot be used, a tokenizer without a chat template while `settings.chat` is set.
    """
    settings = settings or CheckSettings()
    report = CheckReport(recipe=str(recipe_path), model=str(model), output=str(out) if out else None)

    def record(step: StepResult) -> None:
        report.steps.append(step)
        if step_callback is not None:
            step_callback(step)

    # 1. validate
    t = time.perf_counter()
    recipe = load_recipe(recipe_path)
    record(
        StepResult(
            "validate", "pass", f"{recipe.name}: {len(recipe.expanded_edits())} edit(s)", time.perf_counter() - t
        )
    )
    loop_gates = recipe.checks.loops if recipe.checks else None
    bench_gates = recipe.checks.bench if recipe.checks else None
    common: dict[str, Any] = {"dtype": settings.dtype, "device": settings.device, "chat": settings.chat}
    if settings.limit is not None:
        common["limit"] = settings.limit
    # both settings objects are built (and so validated: bench task names, ...) before apply does any work
    loop_settings = LoopSettings(**common)
    bench_settings = BenchSettings(**common, **({"tasks": settings.tasks} if settings.tasks is not None else {}))

    with _output_dir(out) as out_dir:
        # 2. apply
        t = time.perf_counter()
        try:
            result = apply_recipe(recipe_path, model=model, out=out_dir)
        except PatchkitError as exc:
            if _bad_input(exc):
                raise
            record(StepResult("apply", "error", str(exc), time.perf_counter() - t, [str(exc)]))
            for step in ("loops", "bench"):
                record(StepResult(step, "skipped", "nothing to check: apply failed"))
            return report
        patched_dir = Path(result.out_dir or out_dir)
        record(
            StepResult(
                "apply",
                "pass",
                f"wrote {patched_dir}" if out else "applied to a temporary directory",
                time.perf_counter() - t,
            )
        )

        # 3. loops
        t = time.perf_counter()
        if settings.skip_loops:
            record(StepResult("loops", "skipped", "--skip-loops"))
        else:
            try:
                loops = run_loops(
                    str(model),
                    patched_ref=str(patched_dir),
                    settings=loop_settings,
                    gates=loop_gates,
                    progress=progress,
                    log=log,
                )
            except PatchkitError as exc:
                if _bad_input(exc):
                    raise
                record(StepResult("loops", "error", str(exc), time.perf_counter() - t, [str(exc)]))
            else:
                report.loops = loops
                fails = loops.gate()
                record(
                    StepResult(
                        "loops",
                        "fail" if fails else "pass",
                        "; ".join(fails) if fails else loops.summary(),
                        time.perf_counter() - t,
                        fails,
                    )
                )

        # 4. bench
        t = time.perf_counter()
        if settings.skip_bench:
            record(StepResult("bench", "skipped", "--skip-bench"))
        else:
            try:
                bench = run_bench(
                    str(model), patched_dir, settings=bench_settings, gates=bench_gates, progress=progress, log=log
                )
            except PatchkitError as exc:
                if _bad_input(exc):
                    raise
                record(StepResult("bench", "error", str(exc), time.perf_counter() - t, [str(exc)]))
            else:
                report.bench = bench
                record(
                    StepResult(
                        "bench",
                        "fail" if bench.failures else "pass",
                        _bench_summary(bench, bench_gates),
                        time.perf_counter() - t,
                        list(bench.failures),
                    )
                )
    return report


def _bad_input(exc: PatchkitError) -> bool:
    """An error that says the input cannot be checked (exit 2), not that the model failed a check (exit 1)."""
    return exc.exit_code == EXIT_BAD_INPUT


def _bench_summary(bench: BenchReport, gates: Any) -> str:
    """One line: the failures, else KL / perplexity ratio / QA accuracy."""
    if bench.failures:
        summary = "; ".join(bench.failures)
    else:
        bits = []
        kl, ppl, acc = bench.comparison("kl.mean"), bench.comparison("ppl.ratio"), bench.comparison("qa.acc")
        if kl is not None and kl.delta.value is not None:
            bits.append(f"KL {kl.delta.value:.3g}")
        if ppl is not None and ppl.delta.value is not None:
            bits.append(f"ppl ×{ppl.delta.value:.4g}")
        if acc is not None and acc.base is not None and acc.patched is not None:
            bits.append(f"QA acc {acc.base.value:.3f}→{acc.patched.value:.3f}")
        summary = ", ".join(bits)
    if gates is None:
        summary += " (no checks.bench thresholds in the recipe)"
    return summary
