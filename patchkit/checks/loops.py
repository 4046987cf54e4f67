"""The loop check: run a probe suite on the base (and patched) model, classify every generation, aggregate.

Every number is reported with its n, and rates with a Wilson 95% interval. A loop rate alone can be gamed
(an edit that makes the model stop listing "fixes" every loop), so each run also reports completeness
(share of the true items listed), the good-list rate (not looping AND >= 5 distinct true items) and control
accuracy (a control passes when its answer is right and it does not loop).

Two levels of API:
* `run_loops(base_ref, patched_ref=..., recipe=...)` loads models itself (what `patchkit loops` calls);
* `run_suite(suite, model=..., tokenizer=...)` / `score_generations(...)` work on an already-loaded model or
  on generations produced elsewhere (locate reuses them to score candidate edits).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from patchkit.checks.answers import score_answer
from patchkit.checks.detect import LOOP_LABELS, Verdict, detect, loop_stop_test
from patchkit.checks.probes import Probe, Suite, load_suite
from patchkit.checks.stats import wilson_interval
from patchkit.errors import CheckError
from patchkit.recipe.gates import LoopGates
from patchkit.generate.types import Generation, GenerationRequest, SamplingParams

__all__ = ["GOOD_LIST_MIN_ITEMS", "LoopSettings", "ProbeResult", "RunResult", "Metrics", "LoopReport",
           "run_loops", "run_suite", "score_generations", "build_requests", "LoopProgress"]

#: A "good list" is a non-looping answer with at least this many distinct true items.
GOOD_LIST_MIN_ITEMS = 5

#: progress(stage, advance, total): the same callback shape `patchkit bench` uses. If the callable also has
#: an `add_tokens(n)` attribute it receives generated-token counts (for a tokens/s readout).
LoopProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LoopSettings:
    """How the suite is run; identical for base and patched so their numbers are comparable."""

    suite: str = "enumeration"
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 400
    seed: int = 0
    split: str | None = None
    limit: int | None = None
    enable_thinking: bool | None = None
    thinking_budget: int | None = None

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.enable_thinking, self.thinking_budget)

    def effective_samples(self) -> int:
        """Greedy decoding is deterministic: more than one sample would repeat the same text."""
        return 1 if self.temperature <= 0 else self.samples

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "samples": self.effective_samples(), "temperature": self.temperature,
                "top_p": self.top_p, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "split": self.split or "all", "limit": self.limit, "enable_thinking": self.enable_thinking,
                "thinking_budget": self.thinking_budget}


@dataclass
class ProbeResult:
    """One generation for one probe, classified."""

    probe: Probe
    sample: int
    seed: int
    generation: Generation
    verdict: Verdict
    correct: bool | None = None   # controls: right answer and no loop

    @property
    def is_loop(self) -> bool:
        return self.verdict.is_loop

    @property
    def distinct_true(self) -> int:
        c = self.verdict.completeness
        return c.distinct_true if c else 0

    @property
    def good_list(self) -> bool | None:
        if self.probe.kind != "enumeration":
            return None
        return (not self.is_loop) and self.distinct_true >= GOOD_LIST_MIN_ITEMS

    def to_json(self) -> dict[str, Any]:
        g = self.generation
        return {"probe": self.probe.id, "item": self.probe.item_id, "kind": self.probe.kind, "split": self.probe.split,
                "category": self.probe.category, "sample": self.sample, "seed": self.seed, "prompt": self.probe.prompt,
                "label": self.verdict.label, "is_loop": self.is_loop, "correct": self.correct,
                "good_list": self.good_list, "tokens": g.tokens, "stop_reason": g.stop_reason,
                "seconds": round(g.seconds, 3), "verdict": self.verdict.to_json(), "text": g.text,
                "thinking": g.thinking, "error": g.error}


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n) if n else (0.0, 1.0)
    return {"value": (k / n) if n else None, "k": k, "n": n, "ci": [round(lo, 4), round(hi, 4)]}


def _mean(values: Sequence[float]) -> dict[str, Any]:
    return {"value": (sum(values) / len(values)) if values else None, "n": len(values)}


@dataclass
class Metrics:
    """Aggregates over a set of results (one model, optionally one probe)."""

    enumeration: list[ProbeResult]
    controls: list[ProbeResult]

    @property
    def n(self) -> int:
        return len(self.enumeration)

    @property
    def loops(self) -> int:
        return sum(r.is_loop for r in self.enumeration)

    @property
    def loop_rate(self) -> float | None:
        return self.loops / self.n if self.n else None

    def label_count(self, label: str) -> int:
        return sum(r.verdict.label == label for r in self.enumeration)

    @property
    def completeness(self) -> float | None:
        shares = [r.verdict.completeness.share for r in self.enumeration if r.verdict.completeness]
        return sum(shares) / len(shares) if shares else None

    @property
    def good_lists(self) -> int:
        return sum(bool(r.good_list) for r in self.enumeration)

    @property
    def control_failures(self) -> list[str]:
        return [f"{r.probe.id}@{r.sample}" for r in self.controls if not r.correct]

    @property
    def control_loops(self) -> int:
        return sum(r.is_loop for r in self.controls)

    def to_json(self) -> dict[str, Any]:
        all_results = self.enumeration + self.controls
        return {
            "loop_rate": _rate(self.loops, self.n),
            **{f"{label}_rate": _rate(self.label_count(label), self.n) for label in LOOP_LABELS},
            "truncated_rate": _rate(self.label_count("truncated"), self.n),
            "completeness": _mean([r.verdict.completeness.share for r in self.enumeration if r.verdict.completeness]),
            "good_list_rate": _rate(self.good_lists, self.n),
            "mean_distinct_true": _mean([float(r.distinct_true) for r in self.enumeration]),
            "control_accuracy": _rate(len(self.controls) - len(self.control_failures), len(self.controls)),
            "control_loop_rate": _rate(self.control_loops, len(self.controls)),
            "mean_tokens": _mean([float(r.generation.tokens) for r in all_results]),
            "enumeration_mean_tokens": _mean([float(r.generation.tokens) for r in self.enumeration]),
            "control_failures": self.control_failures,
        }


@dataclass
class RunResult:
    """All results of one model on one suite."""

    model: str
    results: list[ProbeResult]
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(r.generation.tokens for r in self.results)

    def metrics(self, *, split: str | None = None, probe: str | None = None) -> Metrics:
        chosen = [r for r in self.results if (split in (None, "all") or r.probe.split == split)
                  and (probe is None or r.probe.id == probe)]
        return Metrics([r for r in chosen if r.probe.kind == "enumeration"],
                       [r for r in chosen if r.probe.kind == "control"])

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "seconds": round(self.seconds, 2), "tokens": self.tokens,
                "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
                "overall": self.metrics().to_json(),
                "by_split": {s: self.metrics(split=s).to_json() for s in ("train", "heldout")},
                "results": [r.to_json() for r in self.results]}


@dataclass
class LoopReport:
    """Base (and patched) results on the same probes and seeds, with the metrics the gates judge."""

    settings: LoopSettings
    suite: Suite
    base: RunResult
    patched: RunResult | None = None
    backend: str = "transformers"
    gates: LoopGates | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def runs(self) -> list[tuple[str, RunResult]]:
        return [("base", self.base)] + ([("patched", self.patched)] if self.patched else [])

    @property
    def judged(self) -> RunResult:
        """The model the gates judge: the patched one when there is one."""
        return self.patched or self.base

    def probe_ids(self) -> list[str]:
        return list(dict.fromkeys(r.probe.id for r in self.base.results))

    def per_probe(self) -> list[dict[str, Any]]:
        rows = []
        for pid in self.probe_ids():
            first = next(r for r in self.base.results if r.probe.id == pid)
            row: dict[str, Any] = {"probe": pid, "kind": first.probe.kind, "split": first.probe.split,
                                   "prompt": first.probe.prompt}
            for name, run in self.runs():
                mine = [r for r in run.results if r.probe.id == pid]
                n = len(mine)
                entry: dict[str, Any] = {"n": n, "labels": [r.verdict.label for r in mine],
                                         "mean_tokens": sum(r.generation.tokens for r in mine) / n if n else None}
                if first.probe.kind == "enumeration":
                    entry["loops"] = _rate(sum(r.is_loop for r in mine), n)
                    shares = [r.verdict.completeness.share for r in mine if r.verdict.completeness]
                    entry["completeness"] = sum(shares) / len(shares) if shares else None
                    entry["good_lists"] = sum(bool(r.good_list) for r in mine)
                else:
                    entry["correct"] = sum(bool(r.correct) for r in mine)
                    entry["loops"] = _rate(sum(r.is_loop for r in mine), n)
                row[name] = entry
            rows.append(row)
        return rows

    def overall(self) -> dict[str, Any]:
        return {name: run.metrics().to_json() for name, run in self.runs()}

    def gate(self, gates: LoopGates | None = None) -> list[str]:
        """Failed thresholds, each naming the gate, the measured value and the limit (empty list = pass)."""
        gates = gates if gates is not None else self.gates
        if gates is None:
            return []
        judged = self.judged.metrics()
        who = "patched" if self.patched else "model"
        fails: list[str] = []
        if gates.max_loop_rate is not None and judged.loop_rate is not None and judged.loop_rate > gates.max_loop_rate:
            fails.append(f"max_loop_rate: {who} loop rate {judged.loop_rate:.3f} ({judged.loops}/{judged.n}) "
                         f"> {gates.max_loop_rate}")
        if gates.min_reduction is not None and self.patched is not None:
            base = self.base.metrics()
            if not base.loop_rate:
                fails.append(f"min_reduction: the base model does not loop on this suite (0/{base.n}), "
                             "so no reduction can be measured")
            else:
                reduction = (base.loop_rate - (judged.loop_rate or 0.0)) / base.loop_rate
                if reduction < gates.min_reduction:
                    fails.append(f"min_reduction: loop rate {base.loop_rate:.3f} -> {judged.loop_rate:.3f} is a "
                                 f"{reduction:.1%} reduction < {gates.min_reduction:.0%}")
        if gates.max_control_failures is not None and len(judged.control_failures) > gates.max_control_failures:
            fails.append(f"max_control_failures: {who} failed {len(judged.control_failures)} control(s) "
                         f"({', '.join(judged.control_failures[:5])}) > {gates.max_control_failures}")
        if gates.min_completeness is not None and judged.completeness is not None \
                and judged.completeness < gates.min_completeness:
            fails.append(f"min_completeness: {who} mean completeness {judged.completeness:.3f} < {gates.min_completeness}")
        return fails

    @property
    def failures(self) -> list[str]:
        return self.gate()

    def summary(self) -> str:
        def one(run: RunResult) -> str:
            m = run.metrics()
            rate = f"{m.loops}/{m.n}" if m.n else "n/a"
            comp = f"{m.completeness:.2f}" if m.completeness is not None else "n/a"
            return f"loops {rate}, completeness {comp}, controls {len(m.controls) - len(m.control_failures)}/{len(m.controls)}"
        text = f"base: {one(self.base)}"
        return text + (f"; patched: {one(self.patched)}" if self.patched else "")

    def to_json(self, *, transcripts: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "patchkit.loops", "version": 1, "suite": self.suite.name, "suite_files": self.suite.sources,
            "backend": self.backend, "settings": self.settings.to_json(), "good_list_min_items": GOOD_LIST_MIN_ITEMS,
            "n_probes": len(self.probe_ids()),
            "models": {name: run.model for name, run in self.runs()},
            "overall": self.overall(),
            "by_split": {name: {s: run.metrics(split=s).to_json() for s in ("train", "heldout")}
                         for name, run in self.runs()},
            "per_probe": self.per_probe(),
            "gates": self.gates.model_dump(exclude_none=True) if self.gates else None,
            "failures": self.gate(),
            **self.extra,
        }
        for name, run in self.runs():
            data[name] = {"model": run.model, "seconds": round(run.seconds, 2), "tokens": run.tokens,
                          "tokens_per_second": round(run.tokens / run.seconds, 1) if run.seconds else None}
            if transcripts:
                data[name]["results"] = [r.to_json() for r in run.results]
        return data


# --------------------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------------------
def build_requests(suite: Suite, settings: LoopSettings) -> list[tuple[Probe, int, GenerationRequest]]:
    """(probe, sample, request) for every probe x sample; seeds are `settings.seed + sample` for every model."""
    out = []
    for probe in suite.probes:
        for sample in range(settings.effective_samples()):
            budget = probe.max_new_tokens or settings.max_new_tokens
            out.append((probe, sample, GenerationRequest(id=f"{probe.id}@{sample}", prompt=probe.prompt,
                                                         max_new_tokens=budget, seed=settings.seed + sample)))
    return out


def score_generations(pairs: Sequence[tuple[Probe, int, Generation]], *, seed: int = 0) -> list[ProbeResult]:
    """Classify generations of suite probes (from any backend): verdict, completeness, control correctness."""
    results = []
    for probe, sample, gen in pairs:
        verdict = detect(gen.text, truth=list(probe.truth) if probe.truth else None, aliases=probe.aliases,
                         finished=gen.finished, thinking=gen.thinking)
        if gen.stop_reason == "loop" and not verdict.is_loop:   # cannot happen by construction; keep it visible
            verdict.label = gen.loop_label or "verbatim"
        correct = None
        if probe.kind == "control" and probe.answer:
            correct = (not verdict.is_loop) and gen.error is None and score_answer(probe.answer, gen.text, prompt=probe.prompt)
        results.append(ProbeResult(probe, sample, seed + sample, gen, verdict, correct))
    return results


def run_suite(suite: Suite | str, *, model: Any = None, tokenizer: Any = None, backend: Any = None,
              settings: LoopSettings | None = None, batch_size: int = 32, early_stop: bool = True,
              progress: LoopProgress | None = None, stage: str = "model", label: str = "model") -> RunResult:
    """Run `suite` on an already-loaded (model, tokenizer) or on any backend; returns classified results."""
    settings = settings or LoopSettings()
    if isinstance(suite, str):
        suite = load_suite(suite).select(split=settings.split, limit=settings.limit)
    if backend is None:
        if model is None or tokenizer is None:
            raise CheckError("run_suite needs a backend, or a model and its tokenizer")
        from patchkit.generate.transformers_backend import TransformersBackend

        backend = TransformersBackend(model, tokenizer, batch_size=batch_size,
                                      early_stop=loop_stop_test if early_stop else None)
    planned = build_requests(suite, settings)
    requests = [req for _, _, req in planned]
    callback = _progress_adapter(progress, stage, len(requests))
    start = time.perf_counter()
    generations = backend.generate(requests, settings.sampling(), progress=callback)
    seconds = time.perf_counter() - start
    by_id = {g.id: g for g in generations}
    missing = [r.id for r in requests if r.id not in by_id]
    if missing:
        raise CheckError(f"backend returned no generation for {len(missing)} request(s), e.g. {missing[0]}")
    results = score_generations([(p, s, by_id[req.id]) for p, s, req in planned], seed=settings.seed)
    return RunResult(label, results, seconds)


def _progress_adapter(progress: LoopProgress | None, stage: str, total: int) -> Any:
    """Backend progress (done, total, tokens) -> the caller's (stage, advance, total) [+ add_tokens]."""
    if progress is None:
        return None
    state = {"done": 0, "tokens": 0}
    add_tokens = getattr(progress, "add_tokens", None)
    progress(stage, 0, total)

    def callback(done: int, _total: int, tokens: int) -> None:
        if done > state["done"]:
            progress(stage, done - state["done"], total)
            state["done"] = done
        if add_tokens is not None and tokens > state["tokens"]:
            add_tokens(tokens - state["tokens"])
        state["tokens"] = tokens

    return callback


@contextlib.contextmanager
def _model_backend(ref: str, *, backend: str, base_url: str | None, dtype: str, device: str, batch_size: int,
                   early_stop: bool, concurrency: int, timeout: float) -> Iterator[Any]:
    if backend == "openai":
        from patchkit.generate.openai_backend import OpenAIBackend

        if not base_url:
            raise CheckError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        client = OpenAIBackend(base_url, model=ref, concurrency=concurrency, timeout=timeout)
        try:
            yield client
        finally:
            client.close()
        return
    if backend != "transformers":
        raise CheckError(f"unknown backend {backend!r}", hint="use transformers or openai")
    from patchkit.generate.transformers_backend import TransformersBackend

    be = TransformersBackend.load(ref, dtype=dtype, device=device, batch_size=batch_size,
                                 early_stop=loop_stop_test if early_stop else None)
    try:
        yield be
    finally:
        del be.model
        import gc

        gc.collect()


def run_loops(base_ref: str | Path | None = None, *, patched_ref: str | Path | None = None, recipe: Any = None,
              suite: str | Path | None = None, limit: int | None = None, split: str | None = None,
              samples: int | None = None, temperature: float | None = None, top_p: float = 1.0,
              max_new_tokens: int | None = None, seed: int = 0, backend: str = "transformers",
              base_url: str | None = None, dtype: str = "float32", device: str = "cpu", batch_size: int = 32,
              early_stop: bool = True, enable_thinking: bool | None = None, thinking_budget: int | None = None,
              concurrency: int = 8, timeout: float = 300.0, gates: LoopGates | None = None, controls: bool | None = None,
              progress: LoopProgress | None = None, model: str | Path | None = None, base: str | Path | None = None,
              patched: str | Path | None = None) -> LoopReport:
    """Run the loop suite on `base_ref` and (when given) the patched model, on the same probes and seeds.

    The patched model is `patched_ref` (a checkpoint dir / Hub ref, or a model name on the server for
    `backend="openai"`), or `recipe` (a Recipe or recipe path) applied to the base into a temporary dir.
    Suite, samples, temperature and max_new_tokens default to the recipe's `checks.loops` (or `gates`), then
    to enumeration / 1 / 0.0 / 400. `model`/`base`/`patched` are accepted as aliases (used by `patchkit check`).
    """
    base_ref = base_ref or base or model
    patched_ref = patched_ref or patched
    if base_ref is None:
        raise CheckError("run_loops needs the base model (a checkpoint dir, org/name[@rev], or a .gguf file)")
    if patched_ref is not None and recipe is not None:
        raise CheckError("give either a patched model or a recipe, not both")
    if recipe is not None and backend != "transformers":
        raise CheckError("--recipe needs the transformers backend",
                         hint="apply the recipe, serve the output, and pass its model name with --patched")
    recipe_obj = _load_recipe(recipe) if recipe is not None else None
    if gates is None and recipe_obj is not None:
        checks = getattr(recipe_obj, "checks", None)
        gates = getattr(checks, "loops", None) if checks is not None else None
    defaults = gates or LoopGates()
    settings = LoopSettings(
        suite=str(suite or defaults.suite), samples=samples or defaults.samples,
        temperature=defaults.temperature if temperature is None else temperature, top_p=top_p,
        max_new_tokens=max_new_tokens or defaults.max_new_tokens, seed=seed, split=split, limit=limit,
        enable_thinking=enable_thinking, thinking_budget=thinking_budget)
    loaded = load_suite(settings.suite, controls=controls).select(split=split, limit=limit)
    if not loaded.probes:
        raise CheckError(f"suite {settings.suite!r} has no probes for split={split or 'all'}")
    kw = dict(backend=backend, base_url=base_url, dtype=dtype, device=device, batch_size=batch_size,
              early_stop=early_stop, concurrency=concurrency, timeout=timeout)
    with _model_backend(str(base_ref), **kw) as be:
        base_run = run_suite(loaded, backend=be, settings=settings, progress=progress, stage="base",
                             label=str(base_ref))
    patched_run = None
    extra: dict[str, Any] = {}
    if recipe_obj is not None:
        from patchkit.generate.loading import patched_checkpoint

        with patched_checkpoint(recipe_obj, base_ref) as patched_dir:
            with _model_backend(str(patched_dir), **kw) as be:
                patched_run = run_suite(loaded, backend=be, settings=settings, progress=progress, stage="patched",
                                        label=f"{base_ref} + {getattr(recipe_obj, 'name', 'recipe')}")
        extra["recipe"] = str(recipe) if isinstance(recipe, (str, Path)) else getattr(recipe_obj, "name", None)
    elif patched_ref is not None:
        with _model_backend(str(patched_ref), **kw) as be:
            patched_run = run_suite(loaded, backend=be, settings=settings, progress=progress, stage="patched",
                                    label=str(patched_ref))
    return LoopReport(settings, loaded, base_run, patched_run, backend=backend, gates=gates, extra=extra)


def _load_recipe(recipe: Any) -> Any:
    if not isinstance(recipe, (str, Path)):
        return recipe
    try:
        from patchkit.recipe import load_recipe
    except ImportError as exc:  # pragma: no cover - core module missing in a partial install
        raise CheckError(f"cannot read {recipe}: patchkit.recipe is unavailable ({exc})") from None
    return load_recipe(recipe)


def fmt_rate(k: int, n: int) -> str:
    """"0.42 [0.30, 0.55] (20/48)" - the form tables and docs use."""
    if not n:
        return "n/a"
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}] ({k}/{n})"

