"""`run_check`: the one command to run before publishing: validate -> apply -> loops -> bench -> one verdict.

It composes whatever checks this installation has: a step whose module is missing (or cannot run here)
is reported as `skipped: <why>` rather than failing the whole check, and the verdict says so.
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from patchkit.errors import CheckError, PatchkitError

__all__ = ["StepResult", "CheckReport", "run_check"]


@dataclass
class StepResult:
    step: str
    status: str  # "pass" | "fail" | "skipped" | "error"
    summary: str
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "status": self.status, "summary": self.summary, "seconds": round(self.seconds, 2),
                "failures": self.failures}


@dataclass
class CheckReport:
    recipe: str
    model: str
    output: str | None
    steps: list[StepResult] = field(default_factory=list)
    loops: Any = None
    bench: Any = None

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
            "recipe": self.recipe, "model": self.model, "output": self.output, "verdict": self.verdict,
            "passed": self.passed, "failures": self.failures, "steps": [s.to_json() for s in self.steps],
            "loops": _to_json(self.loops), "bench": _to_json(self.bench),
        }


def _to_json(obj: Any) -> Any:
    if obj is None:
        return None
    return obj.to_json() if hasattr(obj, "to_json") else str(obj)


def _call_with_supported(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call `fn` with the keyword arguments its signature accepts (the loop API is owned elsewhere)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def _loop_failures(report: Any, gates: Any) -> list[str]:
    if hasattr(report, "gate"):
        return list(report.gate(gates) or [])
    return list(getattr(report, "failures", []) or [])


@contextlib.contextmanager
def _output_dir(out: str | Path | None) -> Iterator[Path]:
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="patchkit-check-") as tmp:
        yield Path(tmp) / "patched"


def run_check(recipe_path: str | Path, model: str, *, out: str | Path | None = None, tasks: Any = None,
              limit: int | None = None, skip_loops: bool = False, skip_bench: bool = False, dtype: str = "float32",
              device: str = "cpu", progress: Any = None, step_callback: Callable[[StepResult], None] | None = None
              ) -> CheckReport:
    """Validate the recipe, apply it to `model` (into `out` or a temp dir), run loops and bench on the result."""
    report = CheckReport(recipe=str(recipe_path), model=str(model), output=str(out) if out else None)

    def record(step: StepResult) -> None:
        report.steps.append(step)
        if step_callback is not None:
            step_callback(step)

    # 1. validate
    t = time.perf_counter()
    try:
        from patchkit.recipe import load_recipe
    except ImportError as exc:
        raise CheckError(f"cannot validate {recipe_path}: the recipe module is unavailable ({exc})") from None
    recipe = load_recipe(recipe_path)  # RecipeError: one line with file:line:col, exit 2
    n_edits = len(recipe.expanded_edits()) if hasattr(recipe, "expanded_edits") else len(getattr(recipe, "edits", []))
    record(StepResult("validate", "pass", f"{getattr(recipe, 'name', recipe_path)}: {n_edits} edit(s)",
                      time.perf_counter() - t))
    checks = getattr(recipe, "checks", None)
    loop_gates = getattr(checks, "loops", None) if checks else None
    bench_gates = getattr(checks, "bench", None) if checks else None

    with _output_dir(out) as out_dir:
        # 2. apply
        t = time.perf_counter()
        try:
            from patchkit.edit.apply import apply_recipe
        except ImportError as exc:
            record(StepResult("apply", "skipped", f"patchkit.edit.apply unavailable ({exc})"))
            for step in ("loops", "bench"):
                record(StepResult(step, "skipped", "nothing to check: apply did not run"))
            return report
        try:
            result = apply_recipe(recipe_path, model=model, out=out_dir)
        except PatchkitError as exc:
            record(StepResult("apply", "error", str(exc), time.perf_counter() - t, [str(exc)]))
            for step in ("loops", "bench"):
                record(StepResult(step, "skipped", "nothing to check: apply failed"))
            return report
        patched_dir = Path(getattr(result, "out_dir", out_dir))
        record(StepResult("apply", "pass", f"wrote {patched_dir}" if out else "applied to a temporary directory",
                          time.perf_counter() - t))

        # 3. loops
        t = time.perf_counter()
        if skip_loops:
            record(StepResult("loops", "skipped", "--skip-loops"))
        else:
            try:
                from patchkit.checks.loops import run_loops
            except ImportError as exc:
                record(StepResult("loops", "skipped", f"loop check unavailable ({exc})"))
            else:
                try:
                    loops = _call_with_supported(run_loops, model=str(model), base=str(model), patched=str(patched_dir),
                                                 gates=loop_gates, limit=limit, dtype=dtype, device=device,
                                                 progress=progress)
                    report.loops = loops
                    fails = _loop_failures(loops, loop_gates)
                    summary = getattr(loops, "summary", None)
                    summary = summary() if callable(summary) else summary
                    record(StepResult("loops", "fail" if fails else "pass",
                                      "; ".join(fails) if fails else str(summary or "loop gates met"),
                                      time.perf_counter() - t, fails))
                except PatchkitError as exc:
                    record(StepResult("loops", "error", str(exc), time.perf_counter() - t, [str(exc)]))
                except TypeError as exc:  # the loop API does not take these arguments
                    record(StepResult("loops", "skipped", f"loop check API mismatch ({exc})"))

        # 4. bench
        t = time.perf_counter()
        if skip_bench:
            record(StepResult("bench", "skipped", "--skip-bench"))
        else:
            from patchkit.checks.bench import run_bench

            try:
                bench = run_bench(str(model), patched_dir, tasks=tasks, limit=limit, gates=bench_gates, dtype=dtype,
                                  device=device, progress=progress)
            except PatchkitError as exc:
                record(StepResult("bench", "error", str(exc), time.perf_counter() - t, [str(exc)]))
            else:
                report.bench = bench
                kl = bench.figure("kl.mean")
                ppl = bench.figure("ppl.ratio")
                acc = bench.figure("qa.acc")
                bits = []
                if kl is not None:
                    bits.append(f"KL {kl.delta:.3g}")
                if ppl is not None:
                    bits.append(f"ppl ×{ppl.delta:.4g}")
                if acc is not None:
                    bits.append(f"QA acc {acc.base:.3f}→{acc.patched:.3f}")
                summary = "; ".join(bench.failures) if bench.failures else ", ".join(bits)
                if bench_gates is None:
                    summary += " (no checks.bench thresholds in the recipe)"
                record(StepResult("bench", "fail" if bench.failures else "pass", summary, time.perf_counter() - t,
                                  list(bench.failures)))
    return report
