"""Locate's set-search path: learn -> snap -> nested sets S_k -> train generation per k -> choose k -> held-out.

k is chosen on the train probes only (the sweep score, and for a recipe that states an exact number of edits,
only that k); the held-out split judges the chosen k once. With `heldout_frontier` every S_k is also generated
on the held-out probes *after* the choice, as a report of the frontier (it never feeds a choice).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from patchkit._io.progress import Progress
from patchkit.locate.cache import StageCache, fingerprint
from patchkit.locate.factors import units_from_json, units_to_json
from patchkit.locate.setsearch import SetScope, SetSearchSettings
from patchkit.locate.sweep import SweepResult

__all__ = ["run_sets", "set_settings"]


def set_settings(settings: Any) -> SetSearchSettings:
    return SetSearchSettings(
        max_set=settings.max_set,
        steps=settings.set_steps,
        kl_budget=settings.kl_budget,
    )


def run_sets(
    *,
    view: Any,
    runner: Any,
    tok: Any,
    settings: Any,
    scope: SetScope,
    train: list[Any],
    held: list[Any],
    transcripts: list[Any],
    base_train: list[Any],
    k_collect: str,
    cache: StageCache,
    stage_seconds: dict[str, float],
    deadline: Callable[[float], float],
    tick: Progress,
    say: Callable[[str], None],
) -> tuple[SweepResult | None, dict[str, Any] | None, dict[str, Any], str | None]:
    """Returns (chosen k's sweep result, held-out judgement, report section, reason when nothing is chosen)."""
    from patchkit.locate.heldout import cached_judgement, frontier
    from patchkit.locate.run import _per_kind
    from patchkit.locate.set_objective import build_objective
    from patchkit.locate.setsearch import Learned, as_candidate, run_set_search
    from patchkit.locate.sweep import summarize, sweep
    from patchkit.locate.transcripts import load_prose

    sset = set_settings(settings)
    s0 = time.monotonic()
    k_sets = fingerprint([k_collect, scope.to_json(), asdict(sset), settings.key("tf_sequences", "tf_tokens")])
    cached = cache.get("sets", k_sets)
    if cached is not None:
        learned = Learned.from_json(cached["learned"])
        sets = {int(k): units_from_json(v) for k, v in cached["sets"].items()}
        terms = {int(k): v for k, v in cached["terms"].items()}
        counts, continuations = cached["objective"], cached["continuations"]
    else:
        # the teacher-forced data (and its base forward passes) is only built when the stage must run
        looping = [t for t in transcripts if t.kind == "enumeration" and t.is_loop and t.loop_start is not None]
        listing = [t for t in transcripts if t.kind == "enumeration"]
        controls = [t for t in transcripts if t.kind == "control" and not t.is_loop][:8]
        data = build_objective(
            view.model,
            tok,
            looping=looping[: settings.tf_sequences],
            listing=listing[: settings.tf_sequences],
            controls=controls,
            prose=load_prose(tok, limit=4),
            probes={p.id: p for p in train},
            pad_id=runner.pad_id,
            device=view.device,
            max_tokens=settings.tf_tokens,
        )
        counts, continuations = data.counts(), data.continuations
        learned, sets, terms = run_set_search(view, data, scope, sset, deadline=deadline(0.45), progress=tick, log=say)
        cache.put(
            "sets",
            k_sets,
            {
                "learned": learned.to_json(),
                "sets": {str(k): units_to_json(v) for k, v in sets.items()},
                "terms": {str(k): v for k, v in terms.items()},
                "objective": counts,
                "continuations": continuations,
            },
        )
    stage_seconds["sets"] = round(time.monotonic() - s0, 1)
    section: dict[str, Any] = {
        "scope": scope.to_json(),
        "settings": asdict(sset),
        "objective": counts,
        "continuations": continuations,
        "learned": {k: v for k, v in learned.to_json().items() if k != "moved"},
        "moved": len(learned.moved),
        "sets": {str(k): units_to_json(v) for k, v in sorted(sets.items())},
        "train_terms": {str(k): v for k, v in sorted(terms.items())},
    }
    say(f"sets: sizes {sorted(sets)} [{stage_seconds['sets']} s]")
    if not sets:
        return None, None, section, "the set search moved no unit past the snapping threshold"

    # ---- generation per k on the train probes ---------------------------------------------------------------
    s0 = time.monotonic()
    cands = {k: as_candidate(v) for k, v in sets.items()}
    # the held-out judgement always runs: leave it its share of the budget, estimated from what generating the
    # train probes cost (it generates base and edit on every held-out probe)
    heldout_estimate = stage_seconds.get("collect", 0.0) * 2 * len(held) / max(1, len(train))
    kls = {cands[k].label: float(terms[k]["kl"]) for k in cands}
    keep = _per_kind(train, settings.set_probes)
    sw_probes = [train[i] for i in keep]
    sw_tr = [transcripts[i] for i in keep]
    sw_base = [base_train[i] for i in keep]
    k_sweep = fingerprint(
        [k_sets, [c.label for c in cands.values()], asdict(settings.weights), [p.id for p in sw_probes]]
    )
    cached = cache.get("sweep", k_sweep)
    if cached is not None:
        swept = [SweepResult.from_json(d) for d in cached]
    else:
        order = sorted(cands)  # small sets first: a deadline cut leaves the cheap end of the frontier
        swept = sweep(
            runner,
            [cands[k] for k in order],
            sw_probes,
            sw_tr,
            sw_base,
            kls,
            weights=settings.weights,
            chunk=settings.sweep_chunk,
            deadline=deadline(1.0) - heldout_estimate,
            progress=tick,
        )
        cache.put("sweep", k_sweep, [r.to_json() for r in swept])
    stage_seconds["sweep"] = round(time.monotonic() - s0, 1)
    by_label = {r.candidate.label: r for r in swept}
    frontier_train = []
    for k in sorted(cands):
        r = by_label.get(cands[k].label)
        if r is not None:
            frontier_train.append(
                {"k": k, **{x: y for x, y in r.to_json().items() if x not in ("per_probe", "candidate")}}
            )
    section["frontier_train"] = frontier_train
    section["sweep_base"] = {k: v for k, v in summarize(sw_base).items() if k != "metrics"}
    eligible = [k for k in cands if cands[k].label in by_label and (scope.exact is None or k == scope.exact)]
    if not eligible:
        return None, None, section, "no set size was judged on the train probes within the budget"
    chosen = max(eligible, key=lambda k: (by_label[cands[k].label].score, -k))
    best = by_label[cands[chosen].label]
    section["chosen_k"] = chosen
    say(
        "sets: train score per k: "
        + ", ".join(f"k={d['k']} {d['score']:+.3f}" for d in frontier_train)
        + f"; chosen k={chosen} [{stage_seconds['sweep']} s]"
    )
    if best.score < settings.min_score:
        return (
            best,
            None,
            section,
            (
                f"no set size beat the base by {settings.min_score} on the train probes "
                f"(best: k={chosen}, score {best.score:+.3f})"
            ),
        )

    # ---- held-out: the chosen k, once -----------------------------------------------------------------------
    s0 = time.monotonic()
    judged = cached_judgement(cache, k_collect, runner, view, tok, best.candidate, held, settings, tick)
    stage_seconds["heldout"] = round(time.monotonic() - s0, 1)
    if settings.heldout_frontier:
        s0 = time.monotonic()
        k_front = fingerprint(
            [k_collect, best.candidate.label, [p.id for p in held], [c.label for c in cands.values()]]
        )
        front = cache.get("frontier", k_front)
        if front is None:
            front = frontier(runner, view, tok, cands, held, settings, tick)
            cache.put("frontier", k_front, front)
        section["frontier_heldout"] = front
        stage_seconds["frontier"] = round(time.monotonic() - s0, 1)
    return best, judged, section, None
