"""`run_locate`: the five stages end to end, each cached for --resume, within a time budget.

collect (train probes only) -> layer ablation -> neuron/expert attribution + exact screen -> generation sweep
(train probes) -> held-out confirmation (held-out probes only) -> recipe + report. Candidates are chosen on
train probes only; held-out probes are generated exactly twice (base and the winner) and never feed a choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from patchkit._io.progress import Progress
from patchkit.errors import PatchkitError
from patchkit.locate.cache import StageCache, fingerprint
from patchkit.locate.candidates import DEFAULT_OPS, Candidate, Edit
from patchkit.locate.sweep import SweepResult, Weights

__all__ = ["LocateSettings", "LocateResult", "run_locate", "Progress"]


STAGES = ("collect", "layers", "attribution", "sets", "sweep", "heldout", "frontier")
METHODS = ("sets", "screen")


@dataclass(frozen=True)
class LocateSettings:
    """Everything that changes what locate finds (all of it goes into the stage-cache keys)."""

    suite: str = "enumeration"
    method: str = "sets"  # "sets": learned sparse factors over every layer; "screen": ranked layers, singles, pairs
    budget_minutes: float = 15.0
    layers: list[int] | None = None  # restrict attribution to these layers (default: top-ranked)
    max_edits: int = 2  # largest combination tried in the sweep
    ops: tuple[float, ...] = DEFAULT_OPS
    max_new_tokens: int = 400
    train_limit: int | None = None  # per kind (enumeration / control)
    heldout_limit: int | None = None
    top_layers: int = 3  # layers searched neuron by neuron
    exact_layers: int = 2  # layers ablated exactly (the rest: attribution-patching estimate)
    attribution_top: int = 200  # units screened exactly (budget permitting)
    sweep_singles: int = 8  # single edits generated in the sweep
    sweep_limit: int | None = None  # train probes per kind used by the sweep (default: all)
    sweep_chunk: int = 4  # candidates generated together
    tf_sequences: int = 6  # looping transcripts teacher-forced
    tf_tokens: int = 256
    batch_size: int = 32
    min_score: float = 0.05  # a winner must beat the base by this much on train
    weights: Weights = field(default_factory=Weights)
    kinds: tuple[str, ...] = ("neuron", "expert")  # candidate units (--from-recipe narrows this)
    max_set: int = 256  # sets: the largest set judged by generation (k = 1, 2, 4, ..., max_set)
    set_steps: int = 48  # sets: optimisation steps
    set_probes: int | None = 8  # sets: train probes per kind generated for every k (None: all)
    kl_budget: float = 0.01  # sets: KL(base || edited) budget on keep positions, nats/token
    heldout_frontier: bool = False  # sets: also generate every k on held-out after the choice (report only)
    scope: Any = None  # sets: a SetScope (constraint mode) from --from-recipe; None = every layer, free ops
    backend: str = "transformers"
    # float32: attribution and the learned set factors take gradients, which bf16 makes noisy ("auto": the
    # checkpoint's own dtype, see patchkit.generate.loading)
    dtype: str = "float32"
    device: str = "auto"  # CUDA, else MPS, else CPU
    chat: bool = True  # probes through the chat template; False: raw text (a base model without a template)

    def __post_init__(self) -> None:
        """Refuse settings that cannot run, naming the setting (not the suite it would otherwise seem to break)."""
        for name in ("train_limit", "heldout_limit", "sweep_limit", "set_probes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PatchkitError(f"{name} {value}: must be at least 1 probe per kind, or None for all")
        for name in ("max_new_tokens", "max_edits", "max_set", "set_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise PatchkitError(f"{name} {getattr(self, name)}: must be at least 1")
        if not self.budget_minutes > 0:
            raise PatchkitError(f"budget_minutes {self.budget_minutes}: must be more than 0")

    def key(self, *names: str) -> dict[str, Any]:
        d = asdict(self)
        return {n: d[n] for n in names}


@dataclass
class LocateResult:
    recipe_path: Path | None
    report_dir: Path | None
    found: bool
    winner: dict[str, Any] | None  # the best train-split candidate (a confirmed fix only when `found`)
    base_train: dict[str, Any]
    heldout: dict[str, Any] | None
    seconds: float
    stage_seconds: dict[str, float]
    cached_stages: list[str]
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": str(self.recipe_path) if self.recipe_path else None,
            "report_dir": str(self.report_dir) if self.report_dir else None,
            "found": self.found,
            "winner": self.winner,
            "base_train": self.base_train,
            "heldout": self.heldout,
            "seconds": round(self.seconds, 1),
            "stage_seconds": self.stage_seconds,
            "cached_stages": self.cached_stages,
        }


def _load(model_ref: Any, settings: LocateSettings, log: Callable[[str], None]) -> tuple[Any, Any, str]:
    """(model, tokenizer, label) from a loaded pair or a reference; `log` gets the device/dtype chosen and why.

    The tokenizer comes back ready for `settings.chat`: one without a chat template is refused in one line
    when chat is on, and with chat off it renders raw prompts (`_raw_prompts`).
    """
    if isinstance(model_ref, tuple):
        model, tok = model_ref
        label = getattr(model.config, "_name_or_path", "") or "model"
    else:
        if settings.backend != "transformers":
            raise PatchkitError(
                f"backend {settings.backend!r}: locate needs gradients and hooks; only 'transformers' works"
            )
        from patchkit.generate.loading import load_checkpoint

        loaded = load_checkpoint(model_ref, dtype=settings.dtype, device=settings.device, log=log)
        model, tok, label = loaded.model, loaded.tokenizer, str(model_ref)
    if settings.chat:
        from patchkit.generate.transformers_backend import require_chat_template

        require_chat_template(tok)
        return model, tok, label
    return model, _raw_prompts(tok), label


#: `_raw_prompts`' template: the special tokens the tokenizer adds to raw text (a BOS), then the user's prompt.
_RAW_TEMPLATE = "{%% raw %%}%s{%% endraw %%}{{ messages[-1]['content'] }}"


def _raw_prompts(tok: Any) -> Any:
    """A copy of `tok` whose chat template renders a probe as raw text, tokenized exactly as the transformers
    backend tokenizes a raw prompt (`tok(prompt)`: with the BOS the tokenizer adds), for `chat=False`.

    Why a template: every locate stage builds prompt ids through `patchkit.locate.generation.prompt_ids`, which
    always renders the chat template and then tokenizes without special tokens; a template that emits the
    tokenizer's own leading specials and the prompt gives the raw ids through that one path. (The copy shares
    the tokenizer's vocabulary and state; only its `chat_template` differs, so the caller's tokenizer is left
    as it was.)
    """
    import copy

    with_specials = list(tok("x")["input_ids"])
    plain = list(tok("x", add_special_tokens=False)["input_ids"])
    n_prefix = len(with_specials) - len(plain)
    prefix_ids = with_specials[:n_prefix] if n_prefix > 0 and with_specials[n_prefix:] == plain else []
    prefix = "".join(tok.convert_ids_to_tokens(prefix_ids))
    raw = copy.copy(tok)
    raw.chat_template = _RAW_TEMPLATE % prefix
    return raw


def _model_spec(model: Any, ref: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    try:
        from patchkit.model.adapters import get_adapter

        spec["architecture"] = get_adapter(model.config.to_dict()).architecture
    except Exception:  # noqa: BLE001 - an unknown architecture still gets a recipe, without this field
        pass
    p = Path(ref)
    if not p.exists() and ref.count("/") == 1:
        repo, _, rev = ref.partition("@")
        spec["repo"] = repo
        if rev:
            spec["revision"] = rev
    return spec


def _model_fingerprint(model: Any) -> str:
    import torch

    cfg = model.config.to_dict()
    cfg.pop("_name_or_path", None)
    with torch.no_grad():
        probe = [
            float(p.detach().float().flatten()[:64].sum())
            for p in list(model.parameters())[:: max(1, len(list(model.parameters())) // 8)]
        ]
    return fingerprint({"config": cfg, "weights": probe})


def run_locate(
    model_ref: Any,
    *,
    out: Path | str | None,
    settings: LocateSettings | None = None,
    report_dir: Path | str | None = None,
    resume: Path | str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    from_recipe: Any = None,
) -> LocateResult:
    """Find the MLP neurons / MoE experts that drive repetition loops, and write a recipe for the best edit.

    Candidates are chosen on the suite's train split only (layer ranking, attribution, teacher-forced screen,
    batched generation sweep); the chosen edit is judged once on the held-out split.

    Args:
        model_ref: a checkpoint dir, `org/name`, a .gguf file, or a loaded `(model, tokenizer)` tuple.
        out: where to write the recipe (unresolved with the best unconfirmed attempt if nothing is confirmed).
        settings: LocateSettings (suite, layers, ops, budget, device, dtype, chat, ...).
        report_dir: where to write locate-report.json and plots. resume: a stage-cache directory to reuse.
        progress: `progress(stage, done, total)`. log: one-line notes as stages finish (the first: the device
            and dtype the model was loaded with, and why).
        from_recipe: an unresolved Recipe whose constraints bound the search; the result is written back into it.

    Returns:
        LocateResult: `.found`, the recipe path, the held-out confirmation and the full report.

    Raises:
        PatchkitError: bad settings, a model locate cannot hook, or constraints outside the model.

    Example:
        >>> run_locate("./smollm2", out="fix.yaml", settings=LocateSettings(budget_minutes=15)).found  # doctest: +SKIP
    """
    from patchkit.checks.probes import load_suite

    settings = settings or LocateSettings()
    if settings.method not in METHODS:
        raise PatchkitError(f"method {settings.method!r} is not one of {', '.join(METHODS)}")
    say: Callable[[str], None] = log or (lambda _m: None)
    tick = progress or (lambda *_a: None)
    t0 = time.monotonic()
    budget = settings.budget_minutes * 60.0
    stage_seconds: dict[str, float] = {}
    cache = StageCache(resume)

    suite = load_suite(settings.suite)
    train = suite.select(split="train", limit=settings.train_limit).probes
    held = suite.select(split="heldout", limit=settings.heldout_limit).probes
    if not [p for p in train if p.kind == "enumeration"]:
        raise PatchkitError(f"suite {settings.suite!r} has no train-split enumeration probes; locate needs them")
    model, tok, ref = _load(model_ref, settings, say)
    if from_recipe is not None:
        from patchkit.locate.from_recipe import settings_for
        from patchkit.recipe.resolution import search_space

        space = search_space(from_recipe, config=model.config.to_dict())
        settings = settings_for(settings, space)
        if settings.method == "sets":
            say(f"constraint mode from {from_recipe.name}: {settings.scope.describe()}")
        else:
            say(
                f"search space from {from_recipe.name}: {space.kind}s in layers {settings.layers or 'all'}, "
                f"factors {list(settings.ops)}, up to {settings.max_edits} edit(s)"
            )
    # gradients are only ever taken with respect to activations and edit factors: frozen weights keep backward
    # passes from computing (and holding) a gradient for every weight of the model
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    try:
        return _located(
            model,
            tok,
            ref,
            train,
            held,
            settings,
            out,
            report_dir,
            cache,
            tick,
            say,
            t0,
            budget,
            stage_seconds,
            from_recipe,
        )
    finally:
        for p in trainable:  # a caller's (model, tokenizer) comes back as it was given
            p.requires_grad_(True)


def _located(
    model: Any,
    tok: Any,
    ref: str,
    train: list[Any],
    held: list[Any],
    settings: LocateSettings,
    out: Any,
    report_dir: Any,
    cache: StageCache,
    tick: Progress,
    say: Callable[[str], None],
    t0: float,
    budget: float,
    stage_seconds: dict[str, float],
    from_recipe: Any,
) -> LocateResult:
    """The stages after loading (see run_locate)."""
    import torch

    from patchkit.locate import attribution as attr
    from patchkit.locate.ablation import LayerScore, rank_layers
    from patchkit.locate.generation import Runner
    from patchkit.locate.greedy import Row
    from patchkit.locate.heldout import cached_judgement
    from patchkit.locate.hooks import ModelView
    from patchkit.locate.sweep import summarize, sweep
    from patchkit.locate.teacher import build_batch
    from patchkit.locate.transcripts import Transcript, load_prose

    deadline = lambda frac: t0 + frac * budget  # noqa: E731
    view = ModelView(model)
    runner = Runner(view, tok, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    model_fp = _model_fingerprint(model)
    if not settings.chat:  # raw prompts are other token ids: every stage key differs (chat keys stay as they were)
        model_fp = fingerprint([model_fp, "raw prompts"])
    torch.manual_seed(0)

    # ---- 1. collect ----------------------------------------------------------------------------------------
    s0 = time.monotonic()
    k_collect = fingerprint([model_fp, settings.key("suite", "max_new_tokens", "train_limit"), [p.id for p in train]])
    cached = cache.get("collect", k_collect)
    if cached is not None:
        transcripts = [Transcript.from_json(d) for d in cached]
        rows = [Row(0, t.prompt_ids, list(t.generated), 0, t.stop, t.extra.get("loop_label")) for t in transcripts]
        base_train = runner.results(train, rows)
    else:
        done = [0]

        def on_done(_row: Any) -> None:
            done[0] += 1
            tick("collect", done[0], len(train))

        rows, base_train = runner.run_base(train, on_done=on_done)
        transcripts = runner.transcripts(train, rows, base_train)
        for t, r in zip(transcripts, rows, strict=True):
            if r.loop_label:
                t.extra["loop_label"] = r.loop_label
        cache.put("collect", k_collect, [t.to_json() for t in transcripts])
    base_summary = summarize(base_train)
    stage_seconds["collect"] = round(time.monotonic() - s0, 1)
    looping = [t for t in transcripts if t.kind == "enumeration" and t.is_loop and t.loop_start is not None]
    say(
        f"collect: {base_summary['loops']}/{base_summary['n']} train probes loop "
        f"({len(looping)} with a token-level loop start) [{stage_seconds['collect']} s]"
    )

    report: dict[str, Any] = {
        "model": ref,
        "method": settings.method,
        "settings": _settings_json(settings),
        "base_train": _plain(base_summary),
        "stage_seconds": stage_seconds,
        "layers": [],
        "units": [],
        "screen": [],
        "sweep": [],
    }

    def finish(best: Any, heldout: dict[str, Any] | None, reason: str | None = None) -> LocateResult:
        """Write the recipe, report and plots of this run (see `_finish`)."""
        return _finish(
            best,
            report,
            out,
            report_dir,
            settings,
            ref,
            model,
            t0,
            cache,
            stage_seconds,
            base_summary,
            heldout,
            from_recipe,
            reason=reason,
        )

    if not looping:
        return finish(None, None, reason="the base model does not loop on the train probes: nothing to locate")

    if settings.method == "sets":
        from patchkit.locate.set_stage import run_sets
        from patchkit.locate.setsearch import SetScope

        scope = settings.scope or SetScope(
            kinds=tuple(settings.kinds), layers=tuple(settings.layers) if settings.layers else None
        )
        best_set, judged, section, why = run_sets(
            view=view,
            runner=runner,
            tok=tok,
            settings=settings,
            scope=scope,
            train=train,
            held=held,
            transcripts=transcripts,
            base_train=base_train,
            k_collect=k_collect,
            cache=cache,
            stage_seconds=stage_seconds,
            deadline=deadline,
            tick=tick,
            say=say,
        )
        report["sets"] = section
        report["sweep"] = [{**d, "candidate": {"label": f"k={d['k']}"}} for d in section.get("frontier_train") or []]
        report["sweep_base"] = section.get("sweep_base")
        if judged is not None:
            report["heldout"] = judged
            g = judged.get("gates", {})
            say(
                f"held-out: loops {judged['base']['loops']}/{judged['base']['n']} -> "
                f"{judged['edited']['loops']}/{judged['edited']['n']}, score {judged['score']:+.3f}, gates "
                f"{'pass' if g.get('pass') else 'fail'} [{stage_seconds.get('heldout', 0)} s]"
            )
        return finish(best_set, judged, reason=why)

    controls = [t for t in transcripts if t.kind == "control" and not t.is_loop][:8]
    prose = load_prose(tok, limit=4)
    batch = build_batch(
        looping[: settings.tf_sequences],
        controls,
        prose,
        pad_id=runner.pad_id,
        max_tokens=settings.tf_tokens,
        device=view.device,
    )
    report["tf_positions"] = batch.counts()

    # ---- 2. layer ablation -------------------------------------------------------------------------------------
    s0 = time.monotonic()
    k_layers = fingerprint([k_collect, settings.key("tf_sequences", "tf_tokens", "exact_layers")])
    cached = cache.get("layers", k_layers)
    if cached is not None:
        layer_scores = sorted((LayerScore.from_json(d) for d in cached), key=lambda s: -s.score)
    else:
        layer_scores = rank_layers(view, batch, exact_top=settings.exact_layers, progress=tick)
        cache.put("layers", k_layers, [s.to_json() for s in layer_scores])
    stage_seconds["layers"] = round(time.monotonic() - s0, 1)
    report["layers"] = [s.to_json() for s in layer_scores]
    if settings.layers:
        bad = [layer for layer in settings.layers if not 0 <= layer < view.num_layers]
        if bad:
            raise PatchkitError(
                f"layers: layer {bad[0]} is out of range (the model has {view.num_layers} layers, 0..{view.num_layers - 1})"
            )
        chosen_layers = list(settings.layers)
    else:
        chosen_layers = []
        for s in layer_scores:
            if s.layer not in chosen_layers:
                chosen_layers.append(s.layer)
            if len(chosen_layers) >= settings.top_layers:
                break
    say(
        f"layers: searching {chosen_layers} (best: "
        + ", ".join(f"L{s.layer} {s.unit} {s.score:+.3f}" for s in layer_scores[:4])
        + f") [{stage_seconds['layers']} s]"
    )

    # ---- 3. attribution + exact screen ---------------------------------------------------------------------------
    s0 = time.monotonic()
    k_attr = fingerprint([k_layers, chosen_layers, settings.key("attribution_top", "ops", "budget_minutes", "kinds")])
    cached = cache.get("attribution", k_attr)
    if cached is not None:
        units = [attr.UnitAttribution.from_json(d) for d in cached["units"]]
        screened = [attr.ScreenResult.from_json(d) for d in cached["screen"]]
    else:
        all_units = [
            u for u in attr.attribute(view, batch, chosen_layers, ops=settings.ops) if u.kind in settings.kinds
        ]
        units = attr.pick_candidates(all_units, top=settings.attribution_top)
        singles = attr.single_edits(units, settings.ops)
        screened = attr.screen(view, batch, singles, deadline=deadline(0.35), progress=tick)
        cache.put(
            "attribution", k_attr, {"units": [u.to_json() for u in units], "screen": [r.to_json() for r in screened]}
        )
    screened.sort(key=lambda r: -r.score)
    stage_seconds["attribution"] = round(time.monotonic() - s0, 1)
    report["units"] = [u.to_json() for u in units[:50]]
    report["screen"] = [r.to_json() for r in screened[:100]]
    say(
        f"attribution: {len(units)} units, {len(screened)} edits screened; best "
        + ", ".join(f"{r.candidate.label} ({r.score:+.3f})" for r in screened[:3])
        + f" [{stage_seconds['attribution']} s]"
    )

    # ---- 4. generation sweep on train probes ---------------------------------------------------------------------------
    s0 = time.monotonic()
    candidates = _sweep_candidates(screened, settings)
    kls = {r.candidate.label: r.kl_control for r in screened}
    missing = [c for c in candidates if c.label not in kls]
    if missing:
        kls.update({r.candidate.label: r.kl_control for r in attr.screen(view, batch, missing)})
    keep = _per_kind(train, settings.sweep_limit)
    sw_probes = [train[i] for i in keep]
    sw_transcripts = [transcripts[i] for i in keep]
    sw_base = [base_train[i] for i in keep]
    k_sweep = fingerprint([k_attr, [c.label for c in candidates], asdict(settings.weights), [p.id for p in sw_probes]])
    cached = cache.get("sweep", k_sweep)
    if cached is not None:
        swept = [SweepResult.from_json(d) for d in cached]
    else:
        swept = sweep(
            runner,
            candidates,
            sw_probes,
            sw_transcripts,
            sw_base,
            kls,
            weights=settings.weights,
            chunk=settings.sweep_chunk,
            deadline=deadline(0.7),
            progress=tick,
        )
        cache.put("sweep", k_sweep, [r.to_json() for r in swept])
    stage_seconds["sweep"] = round(time.monotonic() - s0, 1)
    report["sweep"] = [r.to_json() for r in swept]
    report["sweep_base"] = {k: v for k, v in summarize(sw_base).items() if k != "metrics"}
    best = swept[0] if swept else None
    say(
        f"sweep: {len(swept)} configs; best {best.candidate.label if best else '-'} "
        f"score {best.score:+.3f} [{stage_seconds['sweep']} s]"
        if best
        else "sweep: nothing evaluated"
    )
    if best is None or best.score < settings.min_score:
        return finish(
            best,
            None,
            reason=f"no candidate beat the base by {settings.min_score} on the train probes "
            f"(best: {best.candidate.label if best else '-'} {best.score if best else 0:+.3f})",
        )

    # ---- 5. held-out confirmation (held-out probes only) -------------------------------------------------------
    s0 = time.monotonic()
    cached = cached_judgement(cache, model_fp, runner, view, tok, best.candidate, held, settings, tick)
    stage_seconds["heldout"] = round(time.monotonic() - s0, 1)
    report["heldout"] = cached
    say(
        f"held-out: loops {cached['base']['loops']}/{cached['base']['n']} -> "
        f"{cached['edited']['loops']}/{cached['edited']['n']}, score {cached['score']:+.3f} [{stage_seconds['heldout']} s]"
    )
    return finish(best, cached)


def _per_kind(probes: list[Any], limit: int | None) -> list[int]:
    """Indices of the first `limit` probes of each kind (all when limit is None)."""
    seen: dict[str, int] = {}
    out = []
    for i, p in enumerate(probes):
        seen[p.kind] = seen.get(p.kind, 0) + 1
        if limit is None or seen[p.kind] <= limit:
            out.append(i)
    return out


def _sweep_candidates(screened: list[Any], settings: LocateSettings) -> list[Candidate]:
    """Top singles by screen score, the best single of every op, and small combinations of the best units."""
    out: list[Candidate] = []
    for r in screened[: settings.sweep_singles]:
        out.append(r.candidate)
    ops_seen: set[tuple[str, float]] = set()
    for r in screened:
        e = r.candidate.edits[0]
        key = (e.kind, e.factor)
        if key not in ops_seen:
            ops_seen.add(key)
            if r.candidate not in out:
                out.append(r.candidate)
    best_per_unit: list[Edit] = []
    for r in screened:
        e = r.candidate.edits[0]
        if r.score > 0 and all((b.layer, b.kind, b.index) != (e.layer, e.kind, e.index) for b in best_per_unit):
            best_per_unit.append(e)
    for size in range(2, max(1, settings.max_edits) + 1):
        for i in range(min(2, max(0, len(best_per_unit) - size + 1))):
            combo = Candidate(tuple(best_per_unit[i : i + size]))
            if len(combo.edits) == size and combo not in out:
                out.append(combo)
    return out


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    return dict(summary)


def _settings_json(settings: LocateSettings) -> dict[str, Any]:
    d = asdict(replace(settings, scope=None))
    d["ops"] = list(settings.ops)
    d["scope"] = settings.scope.to_json() if settings.scope is not None else None
    return d


def _finish(
    best: SweepResult | None,
    report: dict[str, Any],
    out: Any,
    report_dir: Any,
    settings: LocateSettings,
    ref: str,
    model: Any,
    t0: float,
    cache: StageCache,
    stage_seconds: dict[str, float],
    base_summary: dict[str, Any],
    heldout: dict[str, Any] | None,
    from_recipe: Any = None,
    reason: str | None = None,
) -> LocateResult:
    from patchkit.locate.report import write_outputs

    seconds = time.monotonic() - t0
    report["seconds"] = round(seconds, 1)
    report["reason"] = reason
    confirmed = heldout is not None and heldout["score"] > 0 and bool(heldout.get("gates", {}).get("pass", True))
    report["confirmed"] = confirmed
    recipe_path, rdir = write_outputs(
        report,
        best,
        heldout,
        settings,
        ref=ref,
        spec=_model_spec(model, ref),
        out=Path(out) if out else None,
        report_dir=Path(report_dir) if report_dir else None,
        base_recipe=from_recipe,
    )
    winner = best.to_json() if best else None
    if winner:
        winner.pop("per_probe", None)
    return LocateResult(
        recipe_path,
        rdir,
        best is not None and confirmed,
        winner,
        _plain(base_summary),
        heldout,
        seconds,
        stage_seconds,
        list(cache.hits),
        report,
    )
