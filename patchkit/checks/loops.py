"""The loop check: run a probe suite on the base (and patched) model, classify every generation, aggregate.

Every number is reported with its n, and rates with a Wilson 95% interval (a `Figure`). A loop rate alone can be
gamed (an edit that makes the model stop listing "fixes" every loop), so each run also reports completeness
(share of the true items listed), the good-list rate (not looping AND >= 5 distinct true items) and control
accuracy (a control passes when its answer is right and it does not loop).

Two levels of API:
* `run_loops(base_ref, patched_ref=..., recipe=..., settings=LoopSettings(...))` loads models itself (what
  `patchkit loops` calls);
* `run_suite(suite, model=..., tokenizer=...)` / `score_generations(...)` work on an already-loaded model or
  on generations produced elsewhere (locate reuses them to score candidate edits).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from patchkit._io.progress import Progress
from patchkit.checks.answers import score_answer
from patchkit.checks.detect import LOOP_LABELS, Verdict, detect, loop_stop_test
from patchkit.checks.figure import Figure
from patchkit.checks.probes import Probe, Suite, load_suite
from patchkit.errors import CheckError, Fix
from patchkit.generate.types import REQUESTS_STAGE, TOKENS_STAGE, Generation, GenerationRequest, SamplingParams
from patchkit.recipe import Recipe, load_recipe
from patchkit.recipe.gates import LoopGates

__all__ = [
    "GOOD_LIST_MIN_ITEMS",
    "LoopSettings",
    "ProbeResult",
    "RunResult",
    "Metrics",
    "LoopReport",
    "run_loops",
    "run_suite",
    "score_generations",
    "build_requests",
    "each_model",
    "prepare_run",
]

#: A "good list" is a non-looping answer with at least this many distinct true items.
GOOD_LIST_MIN_ITEMS = 5

#: The settings a recipe's `checks.loops` section supplies when the caller did not set them.
_GATE_DEFAULTS = ("suite", "samples", "temperature", "max_new_tokens")


class LoopSettings(BaseModel):
    """Every option of a loop-check run, in one frozen object (the `patchkit loops` flags are derived from it).

    Why one object: the same settings run the base and the patched model, so their numbers are comparable;
    the report records them; and the CLI cannot grow a flag the API lacks (or the reverse).
    `suite`, `samples`, `temperature` and `max_new_tokens` that the caller did not set are taken from the
    recipe's `checks.loops` (see `with_gate_defaults`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: str = Field(
        "enumeration",
        description="Packaged suite (enumeration, controls, smoke) or a suite YAML "
        "file. [default: the recipe's checks.loops.suite, else enumeration]",
    )
    samples: int = Field(
        1,
        ge=1,
        description="Samples per probe (with --temperature > 0). [default: the recipe's checks.loops.samples, else 1]",
    )
    temperature: float = Field(
        0.0, ge=0, description="0 = greedy. [default: the recipe's checks.loops.temperature, else 0]"
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this much probability."
    )
    seed: int = Field(0, description="Sample s of every probe uses seed+s.")
    max_new_tokens: int = Field(
        400,
        ge=1,
        description="Token budget per generation: it caps every probe, controls included (a control's own, "
        "smaller budget still applies). [default: the recipe's checks.loops.max_new_tokens, else 400]",
    )
    limit: int | None = Field(None, ge=1, description="At most N probes of each kind.")
    split: Literal["train", "heldout", "all"] = Field(
        "all", description="Probes of one split: locate chooses edits on train; judge on heldout."
    )
    controls: bool | None = Field(
        None,
        description="Add the packaged control prompts to a suite that has none "
        "(--no-controls: do not). [default: add them when the suite has no controls]",
    )
    enable_thinking: bool | None = Field(
        None,
        description="Chat template enable_thinking (Gemma 4). [default: the template's default]",
        json_schema_extra={"flag": "--thinking/--no-thinking"},
    )
    thinking_budget: tuple[int, ...] | None = Field(
        None,
        description="Stop a generation after this many thinking tokens (no answer yet: doom loop or truncated); "
        "turns thinking on. A comma list (1024,4096,16384) runs the suite at each budget: the thinking-budget study.",
        json_schema_extra={"metavar": "N[,N...]"},
    )
    backend: Literal["transformers", "openai"] = Field(
        "transformers", description="Generation engine: in-process transformers, or an OpenAI-compatible server."
    )
    base_url: str | None = Field(
        None,
        description="openai backend: the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (refused with "
        "the transformers backend, which would ignore it).",
    )
    concurrency: int = Field(8, ge=1, description="openai backend: parallel requests.")
    timeout: float = Field(300.0, ge=1, description="openai backend: seconds per request.")
    dtype: str = Field(
        "auto",
        description="auto (the checkpoint's own dtype from config.json; float16 becomes float32 on CPU), "
        "f32, bf16 or f16 (transformers backend). [default: auto]",
    )
    device: str = Field(
        "auto",
        description="auto (CUDA, else MPS, else CPU; several GPUs share the model layer by layer), cpu, cuda, "
        "cuda:1 or mps (transformers backend). [default: auto]",
    )
    chat: bool = Field(
        True,
        description="Send each probe through the tokenizer's chat template (--no-chat: as raw text, for a base "
        "model without one). [default: chat]",
    )
    batch_size: int = Field(32, ge=1, description="Prompts generated together (transformers backend).")
    early_stop: bool = Field(
        True, description="Stop a generation once its loop is certain (--no-early-stop: generate the full budget)."
    )

    @field_validator("thinking_budget", mode="before")
    @classmethod
    def _budget_list(cls, value: Any) -> Any:
        """One budget (int) or several (a comma list from the CLI, or a sequence): a sorted tuple of ints >= 1."""
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("a thinking budget is a token count, not a switch (use --thinking)")
        parts: list[Any] = (
            value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
        )
        budgets = []
        for part in parts:
            try:
                budget = int(str(part).strip())
            except ValueError:
                raise ValueError(f"{part!r} is not a token count; give N or N,N,... (e.g. 1024,4096,16384)") from None
            if budget < 1:
                raise ValueError(f"a thinking budget must be >= 1 token, got {budget}")
            budgets.append(budget)
        if not budgets:
            raise ValueError("give at least one budget: N or N,N,...")
        if len(set(budgets)) != len(budgets):
            raise ValueError(f"budget {_first_duplicate(budgets)} is given twice")
        return tuple(sorted(budgets))

    @model_validator(mode="after")
    def _budget_needs_thinking(self) -> LoopSettings:
        """A budget counts thinking tokens, so it needs thinking on, through the chat template (one line, exit 2)."""
        if self.thinking_budget is None:
            return self
        if self.enable_thinking is False:
            raise CheckError(
                "a thinking budget needs thinking on, but thinking is off (--no-thinking)",
                fix=Fix("enable_thinking", True, "or drop the budget"),
            )
        if not self.chat:
            raise CheckError(
                "a thinking budget needs chat prompts: thinking is turned on through the chat template",
                fix=Fix("chat", True, "or drop the budget"),
            )
        return self

    @model_validator(mode="after")
    def _server_only_with_openai(self) -> LoopSettings:
        """A server URL with the in-process backend would be ignored silently: refuse it (one line, exit 2)."""
        if self.base_url is not None and self.backend != "openai":
            raise CheckError(
                f"base_url {self.base_url} is only used by the openai backend, but the backend is {self.backend!r}",
                fix=Fix("backend", "openai", "to generate on that server"),
                hint="or drop the server URL to generate in-process",
            )
        return self

    def with_gate_defaults(self, gates: LoopGates | None) -> LoopSettings:
        """These settings, with suite/samples/temperature/max_new_tokens the caller did not set taken from `gates`.

        Why: a recipe's `checks.loops` says how its gates must be measured; an explicit setting still wins.

        Args:
            gates: the recipe's `checks.loops` (None: nothing to fill in).

        Returns:
            A new LoopSettings (or this one when there is nothing to fill in).
        """
        if gates is None:
            return self
        update = {name: getattr(gates, name) for name in _GATE_DEFAULTS if name not in self.model_fields_set}
        return self.model_validate({**self.model_dump(exclude_unset=True), **update}) if update else self

    @property
    def budgets(self) -> tuple[int, ...]:
        """The thinking budgets asked for, ascending (empty: none)."""
        return self.thinking_budget or ()

    @property
    def is_sweep(self) -> bool:
        """More than one thinking budget: `patchkit loops` runs the thinking-budget study."""
        return len(self.budgets) > 1

    @property
    def thinking(self) -> bool | None:
        """The chat template's enable_thinking: on whenever a budget is set (a budget without thinking is void)."""
        return True if self.thinking_budget is not None else self.enable_thinking

    def at_budget(self, budget: int) -> LoopSettings:
        """These settings with the single thinking budget `budget` (one point of a sweep)."""
        return self.model_copy(update={"thinking_budget": (int(budget),)})

    def sampling(self) -> SamplingParams:
        """The decoding parameters every backend takes.

        Raises:
            CheckError: several budgets (a sweep runs each through `at_budget`).
        """
        if self.is_sweep:
            raise CheckError(
                f"{len(self.budgets)} thinking budgets: a generation takes one "
                "(run_thinking_sweep runs each; LoopSettings.at_budget picks one)"
            )
        budget = self.budgets[0] if self.budgets else None
        return SamplingParams(self.temperature, self.top_p, self.thinking, budget)

    def effective_samples(self) -> int:
        """Greedy decoding is deterministic: more than one sample would repeat the same text."""
        return 1 if self.temperature <= 0 else self.samples

    def to_json(self) -> dict[str, Any]:
        """What the report records under "settings" (the options that change the numbers, not where they ran)."""
        return {
            "suite": self.suite,
            "samples": self.effective_samples(),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "split": self.split,
            "limit": self.limit,
            "enable_thinking": self.thinking,
            "thinking_budget": (
                None if not self.budgets else self.budgets[0] if not self.is_sweep else list(self.budgets)
            ),
            "chat": self.chat,
        }


@dataclass
class ProbeResult:
    """One generation for one probe, classified."""

    probe: Probe
    sample: int
    seed: int
    generation: Generation
    verdict: Verdict
    correct: bool | None = None  # controls: right answer and no loop

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
        return {
            "probe": self.probe.id,
            "item": self.probe.item_id,
            "kind": self.probe.kind,
            "split": self.probe.split,
            "category": self.probe.category,
            "sample": self.sample,
            "seed": self.seed,
            "prompt": self.probe.prompt,
            "label": self.verdict.label,
            "is_loop": self.is_loop,
            "correct": self.correct,
            "good_list": self.good_list,
            "tokens": g.tokens,
            "stop_reason": g.stop_reason,
            "seconds": round(g.seconds, 3),
            "verdict": self.verdict.to_json(),
            "text": g.text,
            "thinking": g.thinking,
            "error": g.error,
        }


@dataclass
class Metrics:
    """Aggregates over a set of results (one model, optionally one probe or split).

    Counts (`n`, `loops`, `good_lists`, `control_failures`, ...) are plain numbers; every measure a report or a
    gate reads (`loop_rate`, `completeness`, `good_list_rate`, `control_accuracy`, ...) is a `Figure`, so its n
    and interval travel with it.
    """

    enumeration: list[ProbeResult]
    controls: list[ProbeResult]

    @property
    def n(self) -> int:
        """Enumeration results (the denominator of every enumeration rate)."""
        return len(self.enumeration)

    @property
    def loops(self) -> int:
        """Enumeration results judged a loop."""
        return sum(r.is_loop for r in self.enumeration)

    def label_count(self, label: str) -> int:
        """Enumeration results with verdict `label` ("verbatim", "decay", "doom", "truncated", "ok")."""
        return sum(r.verdict.label == label for r in self.enumeration)

    @property
    def good_lists(self) -> int:
        """Enumeration results that do not loop and list >= GOOD_LIST_MIN_ITEMS distinct true items."""
        return sum(bool(r.good_list) for r in self.enumeration)

    @property
    def control_failures(self) -> list[str]:
        """ "probe@sample" of every control that was answered wrongly or looped."""
        return [f"{r.probe.id}@{r.sample}" for r in self.controls if not r.correct]

    @property
    def control_loops(self) -> int:
        """Controls judged a loop."""
        return sum(r.is_loop for r in self.controls)

    @property
    def loop_rate(self) -> Figure:
        """Share of enumeration results that loop (Wilson 95% interval)."""
        return Figure.rate(self.loops, self.n, name="loop_rate")

    def label_rate(self, label: str) -> Figure:
        """Share of enumeration results with verdict `label` (Wilson 95% interval)."""
        return Figure.rate(self.label_count(label), self.n, name=f"{label}_rate")

    @property
    def completeness(self) -> Figure:
        """Mean share of the true items listed, over enumeration results that have a ground truth."""
        shares = [r.verdict.completeness.share for r in self.enumeration if r.verdict.completeness]
        return Figure.mean(shares, name="completeness", unit="share")

    @property
    def good_list_rate(self) -> Figure:
        """Share of enumeration results that are good lists (Wilson 95% interval)."""
        return Figure.rate(self.good_lists, self.n, name="good_list_rate")

    @property
    def control_accuracy(self) -> Figure:
        """Share of controls answered right without looping (Wilson 95% interval)."""
        return Figure.rate(len(self.controls) - len(self.control_failures), len(self.controls), name="control_accuracy")

    @property
    def control_loop_rate(self) -> Figure:
        """Share of controls that loop (Wilson 95% interval)."""
        return Figure.rate(self.control_loops, len(self.controls), name="control_loop_rate")

    def figures(self) -> dict[str, Figure]:
        """Every measure by its report key, in report order."""
        all_results = self.enumeration + self.controls
        return {
            "loop_rate": self.loop_rate,
            **{f"{label}_rate": self.label_rate(label) for label in LOOP_LABELS},
            "truncated_rate": self.label_rate("truncated"),
            "completeness": self.completeness,
            "good_list_rate": self.good_list_rate,
            "mean_distinct_true": Figure.mean(
                [float(r.distinct_true) for r in self.enumeration], name="mean_distinct_true", unit="items"
            ),
            "control_accuracy": self.control_accuracy,
            "control_loop_rate": self.control_loop_rate,
            "mean_tokens": Figure.mean(
                [float(r.generation.tokens) for r in all_results], name="mean_tokens", unit="tokens"
            ),
            "enumeration_mean_tokens": Figure.mean(
                [float(r.generation.tokens) for r in self.enumeration], name="enumeration_mean_tokens", unit="tokens"
            ),
        }

    def to_json(self) -> dict[str, Any]:
        """Every figure in its report shape, plus the list of failed controls."""
        return {
            **{key: fig.to_json() for key, fig in self.figures().items()},
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
        chosen = [
            r
            for r in self.results
            if (split in (None, "all") or r.probe.split == split) and (probe is None or r.probe.id == probe)
        ]
        return Metrics(
            [r for r in chosen if r.probe.kind == "enumeration"], [r for r in chosen if r.probe.kind == "control"]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "seconds": round(self.seconds, 2),
            "tokens": self.tokens,
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
            "overall": self.metrics().to_json(),
            "by_split": {s: self.metrics(split=s).to_json() for s in ("train", "heldout")},
            "results": [r.to_json() for r in self.results],
        }


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
        """One row per probe: each model's labels, loops (a rate Figure's JSON), completeness or correct count."""
        rows = []
        for pid in self.probe_ids():
            first = next(r for r in self.base.results if r.probe.id == pid)
            row: dict[str, Any] = {
                "probe": pid,
                "kind": first.probe.kind,
                "split": first.probe.split,
                "prompt": first.probe.prompt,
            }
            for name, run in self.runs():
                m = run.metrics(probe=pid)
                mine = m.enumeration + m.controls
                n = len(mine)
                entry: dict[str, Any] = {
                    "n": n,
                    "labels": [r.verdict.label for r in mine],
                    "mean_tokens": sum(r.generation.tokens for r in mine) / n if n else None,
                }
                entry["loops"] = Figure.rate(sum(r.is_loop for r in mine), n, name="loops").to_json()
                if first.probe.kind == "enumeration":
                    entry["completeness"] = m.completeness.value
                    entry["good_lists"] = m.good_lists
                else:
                    entry["correct"] = sum(bool(r.correct) for r in mine)
                row[name] = entry
            rows.append(row)
        return rows

    def overall(self) -> dict[str, Any]:
        """{model name: every Metrics figure in its JSON shape} over the whole suite."""
        return {name: run.metrics().to_json() for name, run in self.runs()}

    def gate(self, gates: LoopGates | None = None) -> list[str]:
        """Failed thresholds, each naming the gate, the measured value and the limit (empty list = pass)."""
        gates = gates if gates is not None else self.gates
        if gates is None:
            return []
        judged = self.judged.metrics()
        rate = judged.loop_rate.value
        completeness = judged.completeness.value
        who = "patched" if self.patched else "model"
        fails: list[str] = []
        if gates.max_loop_rate is not None and rate is not None and rate > gates.max_loop_rate:
            fails.append(
                f"max_loop_rate: {who} loop rate {rate:.3f} ({judged.loops}/{judged.n}) > {gates.max_loop_rate}"
            )
        if gates.min_reduction is not None and self.patched is not None:
            base = self.base.metrics()
            base_rate = base.loop_rate.value
            if not base_rate:
                fails.append(
                    f"min_reduction: the base model does not loop on this suite (0/{base.n}), "
                    "so no reduction can be measured"
                )
            else:
                reduction = (base_rate - (rate or 0.0)) / base_rate
                if reduction < gates.min_reduction:
                    fails.append(
                        f"min_reduction: loop rate {base_rate:.3f} -> {rate or 0.0:.3f} is a "
                        f"{reduction:.1%} reduction < {gates.min_reduction:.0%}"
                    )
        if gates.max_control_failures is not None and len(judged.control_failures) > gates.max_control_failures:
            fails.append(
                f"max_control_failures: {who} failed {len(judged.control_failures)} control(s) "
                f"({', '.join(judged.control_failures[:5])}) > {gates.max_control_failures}"
            )
        if gates.min_completeness is not None and completeness is not None and completeness < gates.min_completeness:
            fails.append(f"min_completeness: {who} mean completeness {completeness:.3f} < {gates.min_completeness}")
        return fails

    @property
    def failures(self) -> list[str]:
        return self.gate()

    def summary(self) -> str:
        """One line per model for logs and the `patchkit check` table: loops k/n, completeness, controls."""

        def one(run: RunResult) -> str:
            m = run.metrics()
            rate = f"{m.loops}/{m.n}" if m.n else "n/a"
            comp = m.completeness.value
            comp_text = f"{comp:.2f}" if comp is not None else "n/a"
            return (
                f"loops {rate}, completeness {comp_text}, "
                f"controls {len(m.controls) - len(m.control_failures)}/{len(m.controls)}"
            )

        text = f"base: {one(self.base)}"
        return text + (f"; patched: {one(self.patched)}" if self.patched else "")

    def to_json(self, *, transcripts: bool = True) -> dict[str, Any]:
        """The `patchkit loops --json` / loops.json document (`transcripts=False` drops every generated text)."""
        data: dict[str, Any] = {
            "kind": "patchkit.loops",
            "version": 1,
            "suite": self.suite.name,
            "suite_files": self.suite.sources,
            "backend": self.backend,
            "settings": self.settings.to_json(),
            "good_list_min_items": GOOD_LIST_MIN_ITEMS,
            "n_probes": len(self.probe_ids()),
            "models": {name: run.model for name, run in self.runs()},
            "overall": self.overall(),
            "by_split": {
                name: {s: run.metrics(split=s).to_json() for s in ("train", "heldout")} for name, run in self.runs()
            },
            "per_probe": self.per_probe(),
            "gates": self.gates.model_dump(exclude_none=True) if self.gates else None,
            "failures": self.gate(),
            **self.extra,
        }
        for name, run in self.runs():
            data[name] = {
                "model": run.model,
                "seconds": round(run.seconds, 2),
                "tokens": run.tokens,
                "tokens_per_second": round(run.tokens / run.seconds, 1) if run.seconds else None,
            }
            if transcripts:
                data[name]["results"] = [r.to_json() for r in run.results]
        return data


# --------------------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------------------
def build_requests(suite: Suite, settings: LoopSettings) -> list[tuple[Probe, int, GenerationRequest]]:
    """(probe, sample, request) for every probe x sample; seeds are `settings.seed + sample` for every model.

    A probe's own budget (controls have short answers) applies only below `settings.max_new_tokens`: the
    setting caps every generation, so a small budget bounds the run's time and tokens.
    """
    out = []
    for probe in suite.probes:
        budget = min(probe.max_new_tokens or settings.max_new_tokens, settings.max_new_tokens)
        for sample in range(settings.effective_samples()):
            out.append(
                (
                    probe,
                    sample,
                    GenerationRequest(
                        id=f"{probe.id}@{sample}",
                        prompt=probe.prompt,
                        max_new_tokens=budget,
                        seed=settings.seed + sample,
                        chat=settings.chat,
                    ),
                )
            )
    return out


def score_generations(pairs: Sequence[tuple[Probe, int, Generation]], *, seed: int = 0) -> list[ProbeResult]:
    """Classify generations of suite probes (from any backend): verdict, completeness, control correctness."""
    results = []
    for probe, sample, gen in pairs:
        verdict = detect(
            gen.text,
            truth=list(probe.truth) if probe.truth else None,
            aliases=probe.aliases,
            finished=gen.finished,
            thinking=gen.thinking,
        )
        if gen.stop_reason == "loop" and not verdict.is_loop:  # cannot happen by construction; keep it visible
            verdict.label = gen.loop_label or "verbatim"
        correct = None
        if probe.kind == "control" and probe.answer:
            correct = (
                (not verdict.is_loop)
                and gen.error is None
                and score_answer(probe.answer, gen.text, prompt=probe.prompt)
            )
        results.append(ProbeResult(probe, sample, seed + sample, gen, verdict, correct))
    return results


def _select(suite: Suite | str | Path, settings: LoopSettings) -> Suite:
    """The probes `settings` ask for: a suite name/path is loaded (controls per settings), then split/limit."""
    loaded = suite if isinstance(suite, Suite) else load_suite(suite, controls=settings.controls)
    return loaded.select(split=settings.split, limit=settings.limit)


def run_suite(
    suite: Suite | str,
    *,
    model: Any = None,
    tokenizer: Any = None,
    backend: Any = None,
    settings: LoopSettings | None = None,
    progress: Progress | None = None,
    stage: str = "model",
    label: str = "model",
) -> RunResult:
    """Run `suite` on an already-loaded (model, tokenizer) or on any generation backend; classify the results.

    Why: locate, the demo and benchmarks already hold a loaded model; this is the loop check without loading.

    Args:
        suite: a loaded Suite (used as is), or a suite name / YAML path (loaded, then `settings.split`/`limit`).
        model: a loaded causal LM (with `tokenizer`) when no `backend` is given.
        tokenizer: its tokenizer.
        backend: any `patchkit.generate` backend (overrides model/tokenizer).
        settings: sampling, budget and (for a model) batch size and early stop (default: LoopSettings()).
        progress: `progress(stage, done, total)` with done = probes x samples finished; a callable that also
            has `tokens_done(stage, n)` receives the tokens generated so far (for a tokens/s readout).
        stage: the stage name passed to `progress`.
        label: the model name recorded in the result.

    Returns:
        The classified results and the generation time.

    Raises:
        CheckError: neither a backend nor a model and tokenizer, or a backend that dropped a request.
    """
    settings = settings if settings is not None else LoopSettings()
    if not isinstance(suite, Suite):
        suite = _select(suite, settings)
    if backend is None:
        if model is None or tokenizer is None:
            raise CheckError("run_suite needs a backend, or a model and its tokenizer")
        from patchkit.generate.transformers_backend import TransformersBackend

        backend = TransformersBackend(
            model, tokenizer, batch_size=settings.batch_size, early_stop=loop_stop_test if settings.early_stop else None
        )
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


def _progress_adapter(progress: Progress | None, stage: str, total: int) -> Progress | None:
    """A backend's two stages ("requests", "tokens") -> the caller's Progress under `stage` [+ tokens_done]."""
    if progress is None:
        return None
    tokens_done = getattr(progress, "tokens_done", None)
    last = {REQUESTS_STAGE: 0, TOKENS_STAGE: 0}
    progress(stage, 0, total)

    def callback(backend_stage: str, done: int, _total: int, /) -> None:
        if done == last.get(backend_stage):
            return
        last[backend_stage] = done
        if backend_stage == REQUESTS_STAGE:
            progress(stage, done, total)
        elif backend_stage == TOKENS_STAGE and tokens_done is not None:
            tokens_done(stage, done)

    return callback


@contextlib.contextmanager
def _model_backend(ref: str, settings: LoopSettings, log: Callable[[str], None] | None = None) -> Iterator[Any]:
    """The generation backend `settings.backend` names, for model `ref`; released on exit.

    The transformers backend passes `log` the placement it chose (device and dtype, and why) before loading.
    """
    if settings.backend == "openai":
        from patchkit.generate.openai_backend import OpenAIBackend

        if not settings.base_url:
            raise CheckError("the openai backend needs a server URL", fix=Fix("base_url", "http://127.0.0.1:8000/v1"))
        client = OpenAIBackend(
            settings.base_url,
            model=ref,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            early_stop=loop_stop_test if settings.early_stop else None,  # streams, and closes a certain loop early
        )
        try:
            yield client
        finally:
            client.close()
        return
    from patchkit.generate.transformers_backend import TransformersBackend

    be = TransformersBackend.load(
        ref,
        dtype=settings.dtype,
        device=settings.device,
        batch_size=settings.batch_size,
        early_stop=loop_stop_test if settings.early_stop else None,
        log=log,
    )
    if settings.chat:
        from patchkit.generate.transformers_backend import require_chat_template, require_thinking_template

        require_chat_template(be.tokenizer)  # before any generation, not at the first prompt
        if settings.thinking_budget is not None:
            require_thinking_template(be.tokenizer)
    try:
        yield be
    finally:
        del be.model
        gc.collect()


def run_loops(
    base_ref: str | Path,
    *,
    patched_ref: str | Path | None = None,
    recipe: str | Path | Recipe | None = None,
    settings: LoopSettings | None = None,
    gates: LoopGates | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> LoopReport:
    """Run the loop suite on `base_ref` and (when given) the patched model, on the same probes and seeds.

    Why: a fix is judged by comparing the model it was made from with its patched version under identical
    conditions; this loads each in turn (never both at once) and returns one report the gates can judge.

    Args:
        base_ref: the base model: a checkpoint dir, org/name[@rev], a .gguf file, or (with the openai backend)
            its model name on the server.
        patched_ref: the patched model, in the same forms.
        recipe: a Recipe or recipe path, applied to the base into a temporary dir as the patched model
            (transformers backend only). Its `checks.loops` are the default `gates`.
        settings: how the suite is run (default: LoopSettings()); suite/samples/temperature/max_new_tokens not
            set explicitly come from the gates (`LoopSettings.with_gate_defaults`).
        gates: thresholds recorded in the report (and their run settings); default: the recipe's.
        progress: `progress(stage, done, total)` with stage "base" / "patched" (see `run_suite`).
        log: receives one line per model loaded by the transformers backend: the device and dtype chosen
            (`settings.dtype` / `settings.device` "auto" pick them from the machine and the checkpoint) and why.

    Returns:
        The LoopReport; `report.gate()` lists failed thresholds, `report.extra["placement"]` the device and
        dtype each transformers-backend model ran with.

    Raises:
        CheckError: both a patched model and a recipe, a recipe with the openai backend, an unknown suite,
            a suite with no probes for the split, a backend that cannot run, or chat prompts (`settings.chat`)
            for a tokenizer without a chat template.
        ModelError: a model that cannot be loaded, or a device this torch cannot use.
    """
    settings, loaded, recipe_obj, gates = prepare_run(base_ref, patched_ref, recipe, settings, gates)
    if settings.is_sweep:
        raise CheckError(
            f"{len(settings.budgets)} thinking budgets: run_loops runs one",
            hint="patchkit.checks.thinking_sweep.run_thinking_sweep runs the thinking-budget study",
        )
    runs: dict[str, RunResult] = {}
    extra: dict[str, Any] = {}
    placements: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for role, label, be in each_model(base_ref, patched_ref, recipe_obj, settings, log, stack):
            placement = getattr(be, "placement", None)
            if placement is not None:
                placements[role] = placement.to_json()
            runs[role] = run_suite(loaded, backend=be, settings=settings, progress=progress, stage=role, label=label)
    if recipe_obj is not None:
        extra["recipe"] = str(recipe) if isinstance(recipe, (str, Path)) else getattr(recipe_obj, "name", None)
    if placements:
        extra["placement"] = placements
    return LoopReport(
        settings, loaded, runs["base"], runs.get("patched"), backend=settings.backend, gates=gates, extra=extra
    )


def prepare_run(
    base_ref: str | Path,
    patched_ref: str | Path | None,
    recipe: str | Path | Recipe | None,
    settings: LoopSettings | None,
    gates: LoopGates | None,
) -> tuple[LoopSettings, Suite, Recipe | None, LoopGates | None]:
    """Check the arguments of a run and resolve them: (settings with the gates' defaults, probes, recipe, gates).

    Why separate: `run_loops` and the thinking-budget sweep refuse the same bad combinations in the same words.
    """
    settings = settings if settings is not None else LoopSettings()
    if patched_ref is not None and recipe is not None:
        raise CheckError("give either a patched model or a recipe, not both")
    if recipe is not None and settings.backend != "transformers":
        raise CheckError(
            "a recipe is applied locally: it needs the transformers backend",
            hint="apply the recipe, serve the output, and name it as the patched model",
        )
    recipe_obj = _load_recipe(recipe) if recipe is not None else None
    if gates is None and recipe_obj is not None and recipe_obj.checks is not None:
        gates = recipe_obj.checks.loops
    settings = settings.with_gate_defaults(gates)
    loaded = _select(settings.suite, settings)
    if not loaded.probes:
        raise CheckError(f"suite {settings.suite!r} has no probes for split={settings.split}")
    return settings, loaded, recipe_obj, gates


def each_model(
    base_ref: str | Path,
    patched_ref: str | Path | None,
    recipe_obj: Recipe | None,
    settings: LoopSettings,
    log: Callable[[str], None] | None,
    stack: contextlib.ExitStack,
) -> Iterator[tuple[str, str, Any]]:
    """Yield ("base" | "patched", label, backend) for the base and (when asked) the patched model, in turn.

    Why a generator: each model is loaded only while the caller uses it (never both at once: a GPU holds one),
    and a sweep runs every budget on one load. The patched checkpoint a recipe needs lives on `stack`.
    """
    with _model_backend(str(base_ref), settings, log) as be:
        yield "base", str(base_ref), be
    if recipe_obj is not None:
        from patchkit.generate.loading import patched_checkpoint

        patched_dir = stack.enter_context(patched_checkpoint(recipe_obj, base_ref))
        with _model_backend(str(patched_dir), settings, log) as be:
            yield "patched", f"{base_ref} + {getattr(recipe_obj, 'name', 'recipe')}", be
    elif patched_ref is not None:
        with _model_backend(str(patched_ref), settings, log) as be:
            yield "patched", str(patched_ref), be


def _first_duplicate(values: Sequence[int]) -> int:
    seen: set[int] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    raise ValueError("no duplicate")


def _load_recipe(recipe: str | Path | Recipe) -> Recipe:
    """A recipe path is loaded (RecipeError with file:line on a bad one); a Recipe passes through."""
    return load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
