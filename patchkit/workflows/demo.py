"""`patchkit demo`: the whole pipeline on the embedded SmolLM2-135M-Instruct, offline, on a CPU.

import (cached) -> loop check on the base model -> apply a recipe -> diff -> loop check + bench on the patched
model -> dry-run push (prints the model card) -> a report directory and a summary table.

The stages are the library's own APIs (gguf, checks.loops, apply, diff, checks.bench, hub); this module only
orders them, keeps both models loaded once, and writes the report. The report directory is built under a
temporary name and renamed into place at the end, so a failed run never leaves a half-written report.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from patchkit._io.atomic import atomic_write_json, atomic_write_text, save_figure, umask_modes
from patchkit.errors import Fix, PatchkitError

#: The recipe the locate work writes for the embedded model, looked up next to the package (source checkout).
DEFAULT_RECIPE = "smollm2-135m.yaml"
DEFAULT_SUITE = "smoke"
FULL_SUITE = "enumeration"
DEFAULT_MAX_NEW_TOKENS = 400
#: Items per bench source (None = the whole bench: ~2 min on 2 idle cores for SmolLM2).
DEFAULT_BENCH_LIMIT: int | None = None
DEFAULT_BENCH_TASKS = "kl,ppl,qa"
DEFAULT_REPO = "your-hf-name/SmolLM2-135M-Instruct-patchkit-demo"
REPORT_FILES = ("report.json", "loops.json", "transcripts/base.md", "before-after.png")


class DemoError(PatchkitError):
    """The demo cannot run as asked (bad --out, a recipe that does not fit the embedded model, ...)."""


class DemoEvents:
    """What the demo tells its caller while it runs; the CLI renders these with rich. Defaults do nothing."""

    def step(self, key: str, title: str) -> None:
        """A stage starts."""

    def done(self, key: str, summary: str, seconds: float) -> None:
        """A stage finished; `summary` is one line for humans."""

    def note(self, text: str) -> None:
        """A plain-language message the user must see (missing recipe, pipeline stopped, ...)."""

    def info(self, text: str) -> None:
        """A detail of the running stage (e.g. the GGUF import's sub-steps)."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """Per-item progress inside a stage: `patchkit._io.progress.Progress` (`done` absolute)."""

    def card(self, text: str) -> None:
        """The model card a real push would upload."""


@dataclass
class SummaryRow:
    metric: str
    base: str
    patched: str | None = None
    change: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "base": self.base, "patched": self.patched, "change": self.change}


@dataclass
class DemoResult:
    """Where the report is, what ran, and the headline numbers (also written as report.json)."""

    report_dir: Path
    model_dir: Path
    suite: str
    recipe: str | None = None
    recipe_origin: str | None = None  # "default" | "argument" | "unconfirmed-candidate" | None
    stopped: str | None = None  # why the pipeline ended before the patched model (None = full run)
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    summary: list[SummaryRow] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)  # base/patched metrics, diff, bench headline numbers

    @property
    def complete(self) -> bool:
        return self.stopped is None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "patchkit.workflows.demo",
            "version": 1,
            "report_dir": str(self.report_dir),
            "model_dir": str(self.model_dir),
            "suite": self.suite,
            "recipe": self.recipe,
            "recipe_origin": self.recipe_origin,
            "complete": self.complete,
            "stopped": self.stopped,
            "messages": self.messages,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "summary": [r.to_json() for r in self.summary],
            "numbers": self.numbers,
            "files": self.files,
        }


# ------------------------------------------------------------------------------------------------ inputs


def default_recipe_path() -> Path | None:
    """The shipped recipes/smollm2-135m.yaml: package data of an installed wheel, or a source checkout's file
    (`patchkit.recipe.packaged`); None when neither is there."""
    from patchkit.recipe.packaged import shipped_recipe

    return shipped_recipe(DEFAULT_RECIPE.removesuffix(".yaml"))


def _default_out() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("patchkit-demo") / f"run-{stamp}"


def _load_recipe(path: Path) -> Any:
    from patchkit.recipe import load_recipe

    return load_recipe(path)


def _is_unresolved(recipe: Any) -> bool:
    resolution = getattr(recipe, "resolution", None)
    status = getattr(resolution, "status", None) if resolution is not None else None
    return status == "unresolved" or not getattr(recipe, "edits", None)


def _choose_recipe(
    recipe: str | Path | None, events: DemoEvents, messages: list[str], workdir: Path
) -> tuple[Any, Path | None, str | None]:
    """(Recipe, path, origin) or (None, None, None) with a plain message saying why the demo stops early."""

    def say(text: str) -> None:
        messages.append(text)
        events.note(text)

    if recipe is not None:
        from patchkit.recipe.packaged import resolve_recipe_path

        path = resolve_recipe_path(recipe)  # a file, or the short name of a shipped recipe
        if not path.is_file():
            raise DemoError(f"{path}: recipe file not found", hint="pass a YAML recipe (see docs/recipes.md)")
        loaded = _load_recipe(path)
        if _is_unresolved(loaded):
            raise DemoError(
                f"{path}: recipe has no resolved edits to apply",
                hint="pass a recipe with `edits:` (resolution.status: resolved)",
            )
        return loaded, path, "argument"
    default_path = default_recipe_path()
    if default_path is None:
        say(
            f"recipes/{DEFAULT_RECIPE} does not exist (yet): patchkit has no vetted edit for SmolLM2-135M. "
            "Pass your own with --recipe R to run the rest of the pipeline; stopping after the base loop check."
        )
        return None, None, None
    path = default_path
    loaded = _load_recipe(path)
    if _is_unresolved(loaded):
        candidate = _candidate_recipe(loaded, workdir)
        if candidate is not None:
            cand_path, label, held = candidate
            say(
                f"{path.name} is unresolved: patchkit locate found no SmolLM2-135M edit that holds up"
                f"{f' ({label}: {held})' if held else ''}. To show every step, the demo runs its best train-split "
                f"candidate ({label}): an UNCONFIRMED candidate, not a fix. Pass --recipe R to run your own."
            )
            return _load_recipe(cand_path), cand_path, "unconfirmed-candidate"
        reason = " ".join(str(getattr(getattr(loaded, "resolution", None), "reference", "") or "").split())
        say(
            f"{path} is marked unresolved: no useful edit is known for SmolLM2-135M{f' ({reason})' if reason else ''}. "
            "Pass your own with --recipe R to run the rest of the pipeline; stopping after the base loop check."
        )
        return None, None, None
    return loaded, path, "default"


def _candidate_recipe(recipe: Any, workdir: Path) -> tuple[Path, str, str] | None:
    """An unresolved locate recipe's best train candidate as a recipe file (path, label, held-out summary), or None.

    Locate records the candidate it could not confirm (`resolution.constraints.last_locate`); the demo runs it
    so that a newcomer sees apply / diff / checks / card on a real edit, labelled for what it is."""
    attempt = recipe.resolution.constraints.get("last_locate", {}) if recipe.resolution is not None else {}
    edits = attempt.get("candidate_edits")
    if not edits:
        return None
    label = str(attempt.get("best_candidate"))
    held = ""
    scores = getattr(recipe.source, "scores", None) or {}
    for split, name in (("heldout", "held-out"), ("train", "train")):  # the judging split when it was measured
        side = scores.get(split) if isinstance(scores, dict) else None
        if side and "edited" in side:
            b, e = side["base"]["loop_rate"], side["edited"]["loop_rate"]
            held = f"{name} loops {b['k']}/{b['n']} -> {e['k']}/{e['n']}"
            break
    data = recipe.model_dump(mode="json", exclude_none=True)
    data.pop("resolution", None)
    data["name"] = f"{recipe.name}-unconfirmed-candidate"
    data["description"] = (
        f"UNCONFIRMED candidate {label}: the best edit `patchkit locate` found on the train split"
        f"{f' ({held})' if held else ''}, which did not pass its confirmation. Not a fix: "
        "`patchkit demo` runs it to show what the checks report."
    )
    data["edits"] = edits
    from patchkit.recipe import Recipe, recipe_to_yaml

    path = workdir / "candidate-recipe.yaml"
    path.write_text(recipe_to_yaml(Recipe.model_validate(data)))
    return path, label, held


def _prepare_out(out: Path | None) -> tuple[Path, Path]:
    """(final report dir, temporary build dir next to it)."""
    final = Path(out) if out is not None else _default_out()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise DemoError(
            f"{final}: report directory exists and is not empty", fix=Fix("out", "DIR", "(a new or empty directory)")
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    return final, tmp


# ------------------------------------------------------------------------------------------------ the run


class DemoSettings(BaseModel):
    """Every option of `patchkit demo`, in one frozen object (the CLI flags map onto it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    full: bool = Field(False, description="run the whole enumeration suite instead of the small smoke suite")
    recipe: Path | None = Field(None, description="recipe to apply (default: recipes/smollm2-135m.yaml)")
    max_new_tokens: int | None = Field(None, ge=1, description=f"generation budget (default {DEFAULT_MAX_NEW_TOKENS})")
    limit: int | None = Field(None, ge=1, description="probes per kind (and bench items)")
    suite: str | None = Field(None, description="probe suite name or YAML path")
    bench_tasks: str | None = Field(None, description="bench tasks (default kl, ppl, qa)")
    bench_options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra BenchSettings fields for the bench (e.g. control_max_new_tokens, max_text_tokens)",
    )
    keep_model: bool = Field(True, description="keep the patched checkpoint in the report directory")
    repo_id: str | None = Field(None, description="repo named in the dry-run push plan and card")
    model_dir: Path | None = Field(None, description="any llama checkpoint directory (skips the GGUF import)")


def run_demo(
    *,
    settings: DemoSettings | None = None,
    out: Path | None = None,
    events: DemoEvents | None = None,
) -> DemoResult:
    """Run the whole pipeline on the embedded model and write a report directory; returns its summary.

    Args:
        settings: DemoSettings (suite, budget, recipe, model directory, bench options ...).
        out: the report directory (default: patchkit-demo/run-<timestamp>); built under a temporary name and
            renamed into place at the end.
        events: receives stage starts, summaries, notes and progress (the CLI renders them with rich).

    Returns:
        DemoResult: the summary rows, messages, timings and the files written.

    Raises:
        DemoError: the demo cannot run as asked (a busy --out, a recipe that does not fit the model, ...).

    Without a usable recipe the run stops after the base loop check.
    """
    settings = settings or DemoSettings()
    events = events or DemoEvents()
    suite_name = settings.suite or (FULL_SUITE if settings.full else DEFAULT_SUITE)
    tokens = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    final, tmp = _prepare_out(out)
    messages: list[str] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        bench_limit = settings.limit if settings.limit is not None else DEFAULT_BENCH_LIMIT
        bench = {"tasks": settings.bench_tasks, "limit": bench_limit, **settings.bench_options}
        result = _run(
            tmp,
            final,
            suite_name,
            tokens,
            settings.limit,
            bench,
            settings.recipe,
            settings.keep_model,
            settings.repo_id,
            settings.model_dir,
            events,
            messages,
            timings,
        )
        timings["total"] = time.perf_counter() - start
        result.timings = timings
        result.files = sorted(
            p.relative_to(tmp).as_posix()
            for p in tmp.rglob("*")
            if p.is_file() and not p.relative_to(tmp).as_posix().startswith("patched-model/")
        )
        if (tmp / "patched-model").is_dir():
            result.files.append("patched-model/")
        result.files.append("report.json")
        atomic_write_json(tmp / "report.json", result.to_json())
        umask_modes(tmp, files=False)
        os.replace(tmp, final)
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _timed(key: str, title: str, events: DemoEvents, timings: dict[str, float]):
    """Context helper: announce a stage, time it, report its one-line summary."""

    class _Stage:
        summary = ""

        def __enter__(self) -> _Stage:
            events.step(key, title)
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, exc_type, exc, tb) -> None:
            timings[key] = time.perf_counter() - self.t0
            if exc_type is None:
                events.done(key, self.summary, timings[key])

    return _Stage()


def _run(
    tmp: Path,
    final: Path,
    suite_name: str,
    tokens: int,
    limit: int | None,
    bench: dict[str, Any],
    recipe_arg: Any,
    keep_model: bool,
    repo_id: str | None,
    model_dir: Path | None,
    events: DemoEvents,
    messages: list[str],
    timings: dict[str, float],
) -> DemoResult:
    from patchkit.checks.loops import LoopReport, LoopSettings, run_suite
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model

    # 1. import (cached)
    with _timed("import", "importing the embedded model (cached after the first run)", events, timings) as st:
        if model_dir is None:
            from patchkit.workflows.gguf_import import embedded_model_dir

            model_dir = embedded_model_dir(log=events.info)
        model_dir = Path(model_dir)
        st.summary = f"checkpoint {model_dir}"
    result = DemoResult(report_dir=final, model_dir=model_dir, suite=suite_name, messages=messages)

    # recipe first (cheap): a bad --recipe should fail before minutes of generation
    recipe, recipe_path, origin = _choose_recipe(recipe_arg, events, messages, tmp)
    if recipe_path is not None:
        result.recipe, result.recipe_origin = str(recipe_path), origin
        shutil.copyfile(recipe_path, tmp / "recipe.yaml")
        from patchkit.edit.apply import apply_recipe

        # plan only (headers, no weights): a recipe that does not fit this model fails now, not after minutes
        apply_recipe(recipe_path, model=str(model_dir), out=tmp / "patched-model", dry_run=True)

    # 2. loop check on the base model
    from patchkit.checks.probes import packaged_suites

    if suite_name == DEFAULT_SUITE and DEFAULT_SUITE not in packaged_suites():
        suite_name = result.suite = FULL_SUITE
        limit = limit or 8
        note = f"no packaged '{DEFAULT_SUITE}' probe set: using the first {limit} probes per kind of '{FULL_SUITE}'"
        messages.append(note)
        events.note(note)
    settings = LoopSettings(suite=suite_name, max_new_tokens=tokens, limit=limit)
    loaded_suite = load_suite(suite_name).select(limit=limit)
    if not loaded_suite.probes:
        raise DemoError(
            f"suite {suite_name!r} has no probes", hint="pick another suite", fix=Fix("limit", "N", "(larger)")
        )
    n_enum = len(loaded_suite.by_kind("enumeration"))
    n_ctrl = len(loaded_suite.by_kind("control"))
    with _timed(
        "base-loops",
        f"loop check on the base model ({n_enum} enumeration + {n_ctrl} control probes, "
        f"greedy, <= {tokens} new tokens)",
        events,
        timings,
    ) as st:
        base_model, tok = load_model(model_dir)
        base_run = run_suite(
            loaded_suite,
            model=base_model,
            tokenizer=tok,
            settings=settings,
            progress=events.progress,
            stage="base",
            label="base",
        )
        st.summary = _loop_line(base_run.metrics())
    patched_run = None
    diff_report = bench_report = None
    card_text = None
    if recipe is None or recipe_path is None:  # _choose_recipe returns both or neither
        result.stopped = "no recipe"
    else:
        # 3. apply
        patched_dir = tmp / "patched-model"
        with _timed("apply", f"applying {recipe_path.name}", events, timings) as st:
            from patchkit.edit.apply import apply_recipe

            applied = apply_recipe(recipe_path, model=str(model_dir), out=patched_dir)  # path: verbatim provenance
            n_edits = len((applied.provenance or {}).get("edits", []))  # None only on a dry run
            st.summary = f"{n_edits} slice edit(s) written to patched-model/"
        # 3b. the same recipe on the GGUF that llama.cpp / Ollama users run: scale fields only
        gguf_source = _source_gguf(model_dir)
        gguf_out = tmp / "patched-model.gguf"
        if gguf_source is None:
            note = "the model was not imported from a GGUF patchkit can find: no patched .gguf written"
            messages.append(note)
            events.note(note)
        else:
            with _timed("gguf", f"applying {recipe_path.name} to {gguf_source.name}", events, timings) as st:
                from patchkit.edit.gguf_apply import apply_gguf

                gguf_result = apply_gguf(recipe_path, model=gguf_source, out=gguf_out)
                st.summary = (
                    f"patched-model.gguf: {gguf_result.plan.bytes_edited} scale bytes changed in "
                    f"{len(gguf_result.plan.edits)} row(s), no requantization"
                )
        # 4. diff
        with _timed("diff", "diff base vs patched (every tensor)", events, timings) as st:
            from patchkit.edit.diff import diff_checkpoints, recipe_edits

            diff_report = diff_checkpoints(model_dir, patched_dir)
            diff_json = diff_report.to_json()
            try:
                diff_json["as_recipe_edits"] = recipe_edits(diff_report)
            except PatchkitError as exc:  # a diff that is not expressible as edits is still a valid diff
                diff_json["as_recipe_edits"] = None
                diff_json["as_recipe_error"] = str(exc)
            atomic_write_json(tmp / "diff.json", diff_json)
            st.summary = _diff_line(diff_report)
        # 5. loop check + bench on the patched model
        with _timed("patched-loops", "loop check on the patched model (same probes)", events, timings) as st:
            patched_model, patched_tok = load_model(patched_dir)
            patched_run = run_suite(
                loaded_suite,
                model=patched_model,
                tokenizer=patched_tok,
                settings=settings,
                progress=events.progress,
                stage="patched",
                label="patched",
            )
            st.summary = _loop_line(patched_run.metrics())
        if gguf_source is not None:
            with _timed("gguf-agree", "patched .gguf vs patched safetensors (logits)", events, timings) as st:
                from patchkit.workflows.gguf_patch import logits_agreement, model_with_gguf_mlp

                from_gguf = model_with_gguf_mlp(base_model, gguf_out)
                texts = [p.prompt for p in loaded_suite.probes[:3]]
                agreement = logits_agreement(patched_model, from_gguf, patched_tok, texts)
                del from_gguf
                result.numbers["gguf_agreement"] = agreement.to_json()
                atomic_write_json(tmp / "gguf-agreement.json", agreement.to_json())
                st.summary = (
                    f"max |logit difference| {agreement.max_abs_logit_diff:.2g} "
                    f"({agreement.relative:.1e} of the largest logit); same top-1 token at "
                    f"{agreement.top1_agree}/{agreement.positions} positions"
                )
        with _timed("bench", "bench: KL / perplexity / questions, base vs patched", events, timings) as st:
            from patchkit.checks.bench import BenchSettings, run_bench

            opts = {k: v for k, v in bench.items() if v is not None}
            opts["tasks"] = opts.get("tasks") or DEFAULT_BENCH_TASKS  # not the recipe's (it may name lm-eval tasks)
            bench_report = run_bench(
                (base_model, tok),
                (patched_model, patched_tok),
                settings=BenchSettings(**opts),
                gates=getattr(getattr(recipe, "checks", None), "bench", None),
                progress=events.progress,
            )
            bench_report.base, bench_report.patched = str(model_dir), str(final / "patched-model")
            atomic_write_json(tmp / "bench.json", bench_report.to_json())
            st.summary = _bench_line(bench_report)
        del patched_model

    base_run.model = str(model_dir)
    if patched_run is not None:
        patched_run.model = str(final / "patched-model")
    loops = LoopReport(
        settings,
        loaded_suite,
        base_run,
        patched_run,
        backend="transformers",
        gates=getattr(getattr(recipe, "checks", None), "loops", None),
        extra={"recipe": result.recipe} if result.recipe else {},
    )
    loops_json = loops.to_json(transcripts=True)
    gate_failures = list(loops.failures) + (list(bench_report.failures) if bench_report is not None else [])
    if gate_failures:
        note = f"the recipe's own checks fail on the demo's probe set ({len(gate_failures)}): " + "; ".join(
            gate_failures
        )
        messages.append(note)
        events.note(note)
    result.numbers["gate_failures"] = gate_failures
    atomic_write_json(tmp / "loops.json", loops_json)
    _write_transcripts(tmp / "transcripts", base_run, patched_run)

    if recipe is not None:
        # 6. dry-run push: what would be uploaded, and the card
        with _timed("push", "dry-run push (nothing is sent)", events, timings) as st:
            from patchkit.publish import hub

            target = repo_id or _publish_repo(recipe) or DEFAULT_REPO
            plan = hub.plan_push(
                tmp / "patched-model",
                target,
                loops_report=loops_json,
                bench_report=bench_report.to_json() if bench_report else None,
            )
            card_text = plan.card
            atomic_write_text(tmp / "card.md", card_text)
            atomic_write_json(tmp / "push-plan.json", {"dry_run": True, **plan.to_json()})
            st.summary = f"would upload {len(plan.files)} files ({plan.total_bytes / 1e6:.0f} MB) to {target}"
        events.card(card_text)
        if not keep_model:
            shutil.rmtree(tmp / "patched-model", ignore_errors=True)

    with _timed("report", "writing the report (JSON, transcripts, plot)", events, timings) as st:
        _plot(tmp / "before-after.png", base_run, patched_run, bench_report)
        result.summary = summary_rows(base_run, patched_run, diff_report, bench_report)
        result.numbers.update(_numbers(base_run, patched_run, diff_report, bench_report))
        st.summary = f"{final}"
    return result


def _source_gguf(model_dir: Path) -> Path | None:
    """The GGUF file `model_dir` was imported from (its gguf-import.json), when it is still there."""
    from patchkit.workflows.gguf_import import read_provenance

    source = ((read_provenance(model_dir) or {}).get("source") or {}).get("path")
    if not isinstance(source, str) or not source.lower().endswith(".gguf"):
        return None
    path = Path(source)
    return path if path.is_file() else None


def _publish_repo(recipe: Any) -> str | None:
    publish = getattr(recipe, "publish", None)
    return getattr(publish, "repo", None) if publish is not None else None


# ------------------------------------------------------------------------------------------------ numbers


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _frac(k: int, n: int) -> str:
    return f"{k}/{n} ({_pct(k / n)})" if n else "n/a"


def _loop_line(m: Any) -> str:
    comp = "n/a" if m.completeness.value is None else f"{m.completeness.value:.2f}"
    ok = len(m.controls) - len(m.control_failures)
    return (
        f"loops {m.loops}/{m.n}, completeness {comp}, good lists {m.good_lists}/{m.n}, controls {ok}/{len(m.controls)}"
    )


def _diff_line(report: Any) -> str:
    slices = sum(len(getattr(c, "slices", []) or []) for c in report.changed)
    return f"{len(report.changed)} tensor(s) changed, {slices} slice(s), {report.identical_tensors} identical"


def _delta(report: Any, key: str) -> float | None:
    """The delta value of bench comparison `key` (None when the bench did not run or did not measure it)."""
    row = report.comparison(key) if report is not None else None
    return None if row is None else row.delta.value


def _accuracies(report: Any) -> list[Any]:
    return [
        c
        for c in report.comparisons
        if c.is_accuracy
        and c.base is not None
        and c.patched is not None
        and c.base.value is not None
        and c.patched.value is not None
    ]


def _bench_line(report: Any) -> str:
    parts = []
    kl = _delta(report, "kl.mean")
    if kl is not None:
        parts.append(f"KL {kl:.4f} nats/token")
    ppl = _delta(report, "ppl.ratio")
    if ppl is not None:
        parts.append(f"perplexity x{ppl:.3f}")
    for c in _accuracies(report)[:2]:
        parts.append(f"{c.label} {c.base.value:.2f} -> {c.patched.value:.2f}")
    return ", ".join(parts) or "no figures"


def _change(a: float | None, b: float | None, *, pct: bool = False, digits: int = 2) -> str | None:
    if a is None or b is None:
        return None
    d = b - a
    return f"{100 * d:+.0f} pts" if pct else f"{d:+.{digits}f}"


def summary_rows(base: Any, patched: Any, diff_report: Any = None, bench_report: Any = None) -> list[SummaryRow]:
    """The rows of the final table: loop metrics side by side, then weights changed and bench figures."""
    mb = base.metrics()
    mp = patched.metrics() if patched is not None else None
    rows: list[SummaryRow] = []

    def add(
        metric: str,
        fb: Callable[[Any], str],
        num: Callable[[Any], float | None] | None = None,
        pct: bool = False,
        digits: int = 2,
    ) -> None:
        row = SummaryRow(metric, fb(mb))
        if mp is not None:
            row.patched = fb(mp)
            row.change = _change(num(mb), num(mp), pct=pct, digits=digits) if num else None
        rows.append(row)

    add("enumeration loops", lambda m: _frac(m.loops, m.n), lambda m: m.loop_rate.value, pct=True)
    add("  decay / verbatim", lambda m: f"{m.label_count('decay')} / {m.label_count('verbatim')}")
    add(
        "completeness (true items listed)",
        lambda m: "n/a" if m.completeness.value is None else f"{m.completeness.value:.2f}",
        lambda m: m.completeness.value,
    )
    add(
        "good lists (no loop, >= 5 true items)",
        lambda m: _frac(m.good_lists, m.n),
        lambda m: m.good_lists / m.n if m.n else None,
        pct=True,
    )
    add(
        "controls correct",
        lambda m: _frac(len(m.controls) - len(m.control_failures), len(m.controls)),
        lambda m: (len(m.controls) - len(m.control_failures)) / len(m.controls) if m.controls else None,
        pct=True,
    )
    add("mean tokens per list answer", lambda m: _mean_tokens(m), lambda m: _mean_tokens_value(m), digits=0)
    if diff_report is not None:
        slices = sum(len(getattr(c, "slices", []) or []) for c in diff_report.changed)
        rows.append(
            SummaryRow("weights changed (diff)", "-", f"{len(diff_report.changed)} tensor(s), {slices} slice(s)")
        )
    if bench_report is not None:
        kl = _delta(bench_report, "kl.mean")
        if kl is not None:
            rows.append(SummaryRow("KL(base||patched), nats/token", "0", f"{kl:.4f}"))
        ppl = _delta(bench_report, "ppl.ratio")
        if ppl is not None:
            rows.append(SummaryRow("perplexity ratio patched/base", "1", f"{ppl:.3f}"))
        for c in _accuracies(bench_report):
            rows.append(
                SummaryRow(
                    f"{c.label} (n={c.n})",
                    f"{c.base.value:.2f}",
                    f"{c.patched.value:.2f}",
                    _change(c.base.value, c.patched.value),
                )
            )
    return rows


def _mean_tokens_value(m: Any) -> float | None:
    vals = [r.generation.tokens for r in m.enumeration]
    return sum(vals) / len(vals) if vals else None


def _mean_tokens(m: Any) -> str:
    v = _mean_tokens_value(m)
    return "n/a" if v is None else f"{v:.0f}"


def _numbers(base: Any, patched: Any, diff_report: Any, bench_report: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"base": base.metrics().to_json()}
    if patched is not None:
        out["patched"] = patched.metrics().to_json()
    if diff_report is not None:
        out["diff"] = {
            "tensors_changed": len(diff_report.changed),
            "identical_tensors": diff_report.identical_tensors,
            "slices_changed": sum(len(getattr(c, "slices", []) or []) for c in diff_report.changed),
        }
    if bench_report is not None:
        out["bench"] = {
            row["key"]: {k: row[k] for k in ("base", "patched", "delta", "n")}
            for row in bench_report.to_json()["figures"]
        }
    return out


# ------------------------------------------------------------------------------------------------ files


def _write_transcripts(folder: Path, base: Any, patched: Any) -> None:
    """One Markdown file per model: every prompt, its verdict and the generated text (readable diffs)."""
    for name, run in (("base", base), ("patched", patched)):
        if run is None:
            continue
        lines = [f"# {name} model transcripts", "", f"model: `{run.model}`", ""]
        for r in run.results:
            extra = ""
            if r.probe.kind == "enumeration":
                c = r.verdict.completeness
                extra = f", {r.distinct_true} true items" + (
                    f" of {c.total}" if c is not None and hasattr(c, "total") else ""
                )
            elif r.correct is not None:
                extra = ", correct" if r.correct else ", WRONG"
            lines += [
                f"## {r.probe.id} ({r.probe.kind})",
                "",
                f"**prompt:** {r.probe.prompt}",
                "",
                f"**verdict:** {r.verdict.label}{extra}; {r.generation.tokens} tokens, "
                f"stop: {r.generation.stop_reason}",
                "",
                "```text",
                r.generation.text.replace("```", "'''"),
                "```",
                "",
            ]
        atomic_write_text(folder / f"{name}.md", "\n".join(lines))


def _plot(path: Path, base: Any, patched: Any, bench_report: Any) -> None:
    """Bars (base vs patched) for the loop metrics with Wilson intervals, and tokens per enumeration probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from patchkit.checks.stats import wilson_interval

    runs = [("base", base, "#7f7f7f")] + ([("patched", patched, "#1f77b4")] if patched is not None else [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    labels = ["loop rate", "good-list rate", "control accuracy", "completeness"]
    width = 0.8 / len(runs)
    for i, (name, run, color) in enumerate(runs):
        m = run.metrics()
        ks = [(m.loops, m.n), (m.good_lists, m.n), (len(m.controls) - len(m.control_failures), len(m.controls))]
        vals, lo, hi = [], [], []
        for k, n in ks:
            v = k / n if n else 0.0
            a, b = wilson_interval(k, n) if n else (0.0, 0.0)
            vals.append(v)
            lo.append(max(0.0, v - a))
            hi.append(max(0.0, b - v))
        vals.append(m.completeness.value or 0.0)  # a mean share, no interval
        lo.append(0.0)
        hi.append(0.0)
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(labels))]
        ax1.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=name, color=color)
        texts = [f"{k}/{n}" for k, n in ks] + ["n/a" if m.completeness.value is None else f"{m.completeness.value:.2f}"]
        for x, v, up, text in zip(xs, vals, hi, texts, strict=True):
            ax1.text(x, min(v + up, 1.0) + 0.015, text, ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(range(len(labels)), labels)
    ax1.set_ylim(0, 1.1)
    ax1.set_title("loop check (bars: Wilson 95% CI)")
    ax1.legend()
    probes = [r.probe.id for r in base.results if r.probe.kind == "enumeration"]
    for i, (name, run, color) in enumerate(runs):
        toks = {r.probe.id: r.generation.tokens for r in run.results}
        loops = {r.probe.id: r.is_loop for r in run.results}
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(probes))]
        ax2.bar(
            xs,
            [toks.get(p, 0) for p in probes],
            width,
            color=color,
            label=name,
            hatch=None,
            edgecolor=["red" if loops.get(p) else color for p in probes],
            linewidth=1.5,
        )
    ax2.set_xticks(range(len(probes)), [p.split("#")[0][:18] for p in probes], rotation=60, ha="right", fontsize=7)
    ax2.set_ylabel("generated tokens (red edge = loop)")
    title = "per enumeration probe"
    kl = _delta(bench_report, "kl.mean")
    if kl is not None:
        title += f"   (KL {kl:.3f} nats/token)"
    ax2.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
