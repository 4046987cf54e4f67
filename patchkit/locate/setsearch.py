"""Set search: learn one factor per unit over every layer, snap to recipe ops, prune to nested sets of size k.

1. learn   - f = 1 + delta per MLP neuron (and MoE expert) in scope, by proximal Adam on the train-split
             objective of `patchkit.locate.set_objective`: loop term + continuation term, subject to
             KL(base || edited) <= budget on control/prose/pre-loop positions. The constraint is enforced by
             dual ascent on a Lagrange multiplier mu (mu += step x clip(KL / budget - 1, -1, 3), never below
             0), so nobody picks a KL weight. Sparsity: an L1 penalty lambda x |f - 1| applied as a proximal
             step (soft threshold) under Adam's diagonal metric, which returns a unit to *exactly* 1 whenever
             its averaged gradient is below lambda; lambda starts at the gradient magnitude of the
             (pool x K)-th strongest unit at f = 1 and is then controlled so that about that many units move.
2. snap    - each moved factor to the nearest op a recipe can write (free: invert, zero, or a short factor
             from `GRID`, 1 = drop; constrained: only the allowed factors on the same side of 1).
3. prune   - greedy backward elimination by first-order importance, in halvings: at each level the
             gradient at the current snapped set gives each unit's cost of reverting it to 1,
             g x (1 - f), and the least important half goes. This yields nested sets S_K > ... > S_2 > S_1.

Generation on the train probes judges each S_k (`patchkit.locate.run`); the held-out split judges the chosen
k once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from patchkit._io.progress import Progress
from patchkit.errors import PatchkitError
from patchkit.locate.candidates import Candidate, Edit
from patchkit.locate.factors import FactorField, Unit, units_from_json, units_to_json
from patchkit.locate.hooks import ModelView
from patchkit.locate.set_objective import SET_ROWS, ObjectiveData, cont_term, main_terms, terms_on

__all__ = [
    "GRID",
    "SetScope",
    "SetSearchSettings",
    "Learned",
    "learn",
    "snap",
    "nested_sets",
    "set_sizes",
    "terms_with",
]

#: The factors a free (unconstrained) search may write: invert, zero, and short scale factors, amplification
#: (x1.5, x2, x3) included. 1 means "no edit".
GRID = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class SetScope:
    """Where and how the set search may edit: its constraint mode (see `from_recipe.scope_for`).

    `factors`: the allowed factors (None: GRID); `per_layer`: layer -> the factors of its partial edits (one
    edit per listed factor); `exact`: the number of edits the recipe states; `max_edits`: an upper bound."""

    kinds: tuple[str, ...] = ("neuron", "expert")
    layers: tuple[int, ...] | None = None
    factors: tuple[float, ...] | None = None
    per_layer: dict[int, tuple[float, ...]] = field(default_factory=dict)
    exact: int | None = None
    max_edits: int | None = None

    @property
    def constrained(self) -> bool:
        return bool(self.factors is not None or self.per_layer or self.exact)

    def allowed(self, layer: int, kind: str) -> tuple[float, ...]:
        if kind == "expert":
            return (0.0,)
        if layer in self.per_layer:
            return self.per_layer[layer]
        return self.factors if self.factors is not None else GRID

    def describe(self) -> str:
        """One line: what this mode searches and what it may write."""
        where = f"layers {list(self.layers)}" if self.layers is not None else "every layer"
        if self.kinds == ("expert",):
            what = "experts (suppress)"
        elif self.per_layer:
            what = "one neuron per partial edit: " + ", ".join(
                f"L{layer} x{f:g}" for layer, fs in sorted(self.per_layer.items()) for f in fs
            )
        else:
            fs = self.factors if self.factors is not None else GRID
            what = f"{'/'.join(self.kinds)}s with factors {[float(f) for f in fs]}"
        count = (
            f"exactly {self.exact} edits"
            if self.exact
            else (f"at most {self.max_edits} edits" if self.max_edits else "any number of edits")
        )
        return f"{what} in {where}, {count}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "layers": list(self.layers) if self.layers is not None else None,
            "factors": list(self.factors) if self.factors is not None else None,
            "per_layer": {str(k): list(v) for k, v in self.per_layer.items()},
            "exact": self.exact,
            "max_edits": self.max_edits,
        }


@dataclass(frozen=True)
class SetSearchSettings:
    """Knobs of the set search (all go into the stage-cache key)."""

    max_set: int = 256  # K: the largest set judged by generation (k = 1, 2, 4, ..., K)
    steps: int = 48
    lr: float = 0.05
    kl_budget: float = 0.01  # nats/token on keep positions (half the recipes' 0.02 gate: room for held-out)
    continuation_weight: float = 0.25
    dual_step: float = 0.5
    pool: float = 2.0  # lambda lets about pool x K units move


@dataclass
class Learned:
    """What the learning stage found: every moved unit with its factor, and how the optimisation went."""

    moved: list[tuple[Unit, float]]
    l1: float
    mu: float
    history: list[dict[str, float]]
    seconds_per_step: float
    units_in_scope: int
    final: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "moved": units_to_json(self.moved, digits=6),
            "l1": self.l1,
            "mu": self.mu,
            "history": self.history,
            "seconds_per_step": round(self.seconds_per_step, 3),
            "units_in_scope": self.units_in_scope,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Learned:
        return cls(
            units_from_json(d["moved"]),
            float(d["l1"]),
            float(d["mu"]),
            list(d["history"]),
            float(d["seconds_per_step"]),
            int(d["units_in_scope"]),
            dict(d["final"]),
        )


def groups_for(view: ModelView, scope: SetScope) -> dict[tuple[int, str], tuple[float, float]]:
    """(layer, kind) -> factor box for every unit group in scope."""
    layers = scope.layers if scope.layers is not None else tuple(range(view.num_layers))
    out: dict[tuple[int, str], tuple[float, float]] = {}
    for layer in layers:
        if not 0 <= layer < view.num_layers:
            raise PatchkitError(
                f"layers: layer {layer} is out of range (the model has {view.num_layers} layers, 0..{view.num_layers - 1})"
            )
        for kind in scope.kinds:
            if kind == "expert" and not view.is_moe(layer):
                continue
            allowed = scope.allowed(layer, kind)
            out[(layer, kind)] = (min((1.0, *allowed)), max((1.0, *allowed)))
    if not out:
        raise PatchkitError(
            f"the set search has nothing to edit: no {'/'.join(scope.kinds)} units in layers "
            f"{list(layers)}; an expert-only search needs MoE layers"
        )
    return out


def _weights(settings: SetSearchSettings, mu: float) -> dict[str, float]:
    return {"loop": 1.0, "cont": settings.continuation_weight, "kl": mu / settings.kl_budget}


def _gradients(fld: FactorField) -> list[tuple[tuple[int, str], Any]]:
    import torch

    return [(k, d.grad.detach().clone() if d.grad is not None else torch.zeros_like(d)) for k, d in fld.delta.items()]


def _zero_grad(fld: FactorField) -> None:
    for d in fld.parameters():
        d.grad = None


def learn(
    view: ModelView,
    data: ObjectiveData,
    fld: FactorField,
    settings: SetSearchSettings,
    *,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> Learned:
    """Proximal Adam on the factors with a dual-ascent KL budget (see the module docstring).

    Two controllers, neither a hand-set weight: the KL multiplier mu rises while the KL runs over its budget
    (the violation is clipped to [-1, 3] budgets per step, so one bad piece cannot fling it to 1000), and the L1
    strength lambda rises while more than pool x K units are moving (and relaxes when fewer than half are). The
    factors kept are those of the best epoch (one pass over the pieces) whose mean KL met the budget."""
    import torch

    if data.n_loop == 0:
        raise PatchkitError("the set search needs loop positions: no train transcript has a token-level loop")
    tick = progress or (lambda *_a: None)
    with fld.installed():
        # lambda from the gradient at f = 1 (where the KL term's gradient is exactly 0)
        _zero_grad(fld)
        terms_on(view.model, data, _weights(settings, 0.0))
        g0 = torch.cat([g.abs().flatten().cpu() for _, g in _gradients(fld)])
        pool = max(1, min(g0.numel() - 1, int(settings.pool * settings.max_set)))
        l1 = float(torch.topk(g0, pool + 1).values[-1]) if g0.numel() > pool else 0.0
        l1_start = l1
        params = fld.parameters()
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        b1, b2, eps = 0.9, 0.999, 1e-12
        mu, kl_avg = 0.0, 0.0
        history: list[dict[str, float]] = []
        t0 = time.monotonic()
        steps_done = 0
        epoch_len = len(data.main)
        epoch = {"loop": 0.0, "cont": 0.0, "kl": 0.0, "n": 0}
        best: tuple[float, int, list[Any]] | None = None
        for step in range(1, settings.steps + 1):
            if deadline is not None and time.monotonic() > deadline and steps_done:
                break
            _zero_grad(fld)
            i = (step - 1) % epoch_len
            piece, base = data.main[i], data.base_logprobs[i]
            loop_sum, kl_sum = main_terms(view.model, piece, base)
            n_loop = int((piece.group == 0).sum())  # a piece of controls and prose only has none
            n_keep = max(1, int((piece.group != 0).sum()))
            loop_m, kl_m = loop_sum / max(1, n_loop), kl_sum / n_keep
            w = _weights(settings, mu)
            total = w["loop"] * loop_m + w["kl"] * kl_m
            cont_m = None
            if data.cont:
                cp = data.cont[(step - 1) % len(data.cont)]
                cont_m = cont_term(view.model, cp) / max(1, cp.n)
                total = total + w["cont"] * cont_m
            if total.requires_grad:
                total.backward()
            with torch.no_grad():
                for p, mp, vp in zip(params, m, v, strict=True):
                    g = p.grad if p.grad is not None else torch.zeros_like(p)
                    mp.mul_(b1).add_(g, alpha=1 - b1)
                    vp.mul_(b2).addcmul_(g, g, value=1 - b2)
                    mh = mp / (1 - b1**step)
                    denom = (vp / (1 - b2**step)).sqrt_().add_(eps)
                    z = p - settings.lr * mh / denom
                    thresh = settings.lr * l1 / denom
                    p.copy_(z.sign() * (z.abs() - thresh).clamp_(min=0.0))
            fld.project()
            kl_now = float(kl_m.detach())
            kl_avg = kl_now if step == 1 else 0.7 * kl_avg + 0.3 * kl_now
            violation = min(3.0, max(-1.0, kl_avg / settings.kl_budget - 1.0))
            mu = max(0.0, mu + settings.dual_step * violation)
            moved = int(sum(int((p != 0).sum()) for p in params))
            if moved > pool:
                l1 *= 1.25
            elif moved < pool // 2:
                l1 = max(l1_start * 0.1, l1 * 0.9)
            loop_now = float(loop_m.detach())
            cont_now = float(cont_m.detach()) if cont_m is not None else 0.0
            if n_loop:
                epoch["loop"] += loop_now * n_loop
                epoch["n"] += n_loop
            epoch["kl"] += kl_now / epoch_len
            epoch["cont"] += cont_now / epoch_len
            if step % epoch_len == 0:
                value = epoch["loop"] / max(1, epoch["n"]) + settings.continuation_weight * epoch["cont"]
                if epoch["kl"] <= settings.kl_budget and (best is None or value < best[0]):
                    best = (value, step, [p.detach().clone() for p in params])
                epoch = {"loop": 0.0, "cont": 0.0, "kl": 0.0, "n": 0}
            steps_done = step
            history.append(
                {
                    "step": step,
                    "loop": round(loop_now, 5),
                    "cont": round(cont_now, 5),
                    "kl": round(kl_now, 6),
                    "mu": round(mu, 4),
                    "l1": l1,
                    "moved": moved,
                }
            )
            tick("sets", step, settings.steps)
        seconds = (time.monotonic() - t0) / max(1, steps_done)
        if best is not None:
            with torch.no_grad():
                for p, kept in zip(params, best[2], strict=True):
                    p.copy_(kept)
        final = terms_on(view.model, data)
    final = {k: round(v, 6) for k, v in final.items()}
    final["kept_step"] = float(best[1]) if best is not None else float(steps_done)
    return Learned(fld.moved(), l1, mu, history, seconds, fld.size, final)


def _nearest(f: float, choices: Sequence[float]) -> float:
    return min(choices, key=lambda c: (abs(c - f), abs(c - 1.0)))


def snap(moved: Sequence[tuple[Unit, float]], scope: SetScope) -> list[tuple[Unit, float]]:
    """Each moved factor as a recipe op. Free scope: nearest of GRID and 1 (1 = dropped). Constrained scope:
    nearest allowed factor on the same side of 1 (a unit that moved the other way is dropped)."""
    out: list[tuple[Unit, float]] = []
    for unit, f in moved:
        allowed = scope.allowed(unit.layer, unit.kind)
        if unit.kind == "expert" or scope.constrained:
            side = [a for a in allowed if (a - 1.0) * (f - 1.0) > 0]
            if side:
                out.append((unit, _nearest(f, side)))
            continue
        phi = _nearest(f, (*allowed, 1.0))
        if phi != 1.0:
            out.append((unit, phi))
    return out


def set_sizes(available: int, scope: SetScope, max_set: int) -> list[int]:
    """k = 1, 2, 4, ... up to min(K, available), plus the exact number a recipe states (and the largest
    allowed by max_edits), largest first."""
    top = min(max_set, available)
    if scope.max_edits is not None:
        top = min(top, scope.max_edits)
    ks = {2**i for i in range(int(math.log2(top)) + 1)} if top >= 1 else set()
    if scope.exact is not None and scope.exact <= available:
        ks.add(scope.exact)
    if top >= 1:
        ks.add(top)
    return sorted(ks, reverse=True)


def importance(
    view: ModelView, data: ObjectiveData, fld: FactorField, current: Sequence[tuple[Unit, float]], weights: dict
) -> list[float]:
    """First-order cost of reverting each unit of `current` to 1 (higher = more important), on the Lagrangian
    with the loop term as raw log-odds (see `main_terms`: a redundant loop driver still counts after the loop
    is broken, a passenger does not)."""
    fld.set_factors(current)
    _zero_grad(fld)
    with fld.installed():
        terms_on(view.model, data, weights, saturate=False)
    grads = dict(_gradients(fld))
    return [float(grads[(u.layer, u.kind)][u.index]) * (1.0 - f) for u, f in current]


def nested_sets(
    view: ModelView,
    data: ObjectiveData,
    fld: FactorField,
    snapped: Sequence[tuple[Unit, float]],
    sizes: Sequence[int],
    weights: dict[str, float],
    *,
    min_per_layer: dict[int, int] | None = None,
    progress: Progress | None = None,
) -> dict[int, list[tuple[Unit, float]]]:
    """Greedy backward elimination in halvings: {k: S_k} for every k in `sizes`, S_k nested in S_2k."""
    current = list(snapped)
    out: dict[int, list[tuple[Unit, float]]] = {}
    need = dict(min_per_layer or {})
    tick = progress or (lambda *_a: None)
    rounds = 0
    for size in sorted(set(sizes), reverse=True):
        while len(current) > size:
            imp = importance(view, data, fld, current, weights)
            order = sorted(range(len(current)), key=lambda i: -imp[i])
            n_next = max(size, len(current) // 2)
            keep: list[int] = []
            if sum(need.values()) <= n_next:  # partial edits: the best unit(s) of each named layer first
                for layer, q in need.items():
                    keep.extend([i for i in order if current[i][0].layer == layer][:q])
            keep.extend(i for i in order if i not in keep)
            current = [current[i] for i in sorted(keep[:n_next], key=lambda i: -imp[i])]
            rounds += 1
            tick("prune", rounds, rounds + int(math.log2(max(2, len(current)))))
        out[size] = list(current)
    fld.set_factors([])
    return out


def as_candidate(units: Sequence[tuple[Unit, float]]) -> Candidate:
    """A set of (unit, factor) as a sweep candidate (experts: suppress)."""
    edits = [Edit(u.layer, u.kind, u.index, 0.0 if u.kind == "expert" else float(f)) for u, f in units]
    return Candidate(tuple(sorted(edits)))


def terms_with(
    view: ModelView, data: ObjectiveData, fld: FactorField, units: Sequence[tuple[Unit, float]]
) -> dict[str, float]:
    """The three terms (means over all train data) with exactly these factors and every other unit at 1."""
    fld.set_factors(units)
    try:
        with fld.installed():
            return terms_on(view.model, data)
    finally:
        fld.set_factors([])


def run_set_search(
    view: ModelView,
    data: ObjectiveData,
    scope: SetScope,
    settings: SetSearchSettings,
    *,
    deadline: float | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    learned: Learned | None = None,
) -> tuple[Learned, dict[int, list[tuple[Unit, float]]], dict[int, dict[str, float]]]:
    """learn (or reuse `learned`) -> snap -> nested sets; returns (learned, {k: S_k}, {k: train terms})."""
    say = log or (lambda _m: None)
    fld = FactorField(view, groups_for(view, scope))
    if learned is None:
        learned = learn(view, data, fld, settings, deadline=deadline, progress=progress)
    say(
        f"sets: {len(learned.moved)} of {learned.units_in_scope} units moved in {len(learned.history)} steps "
        f"({learned.seconds_per_step:.1f} s/step, {SET_ROWS} sequences per piece); final KL "
        f"{learned.final.get('kl', 0):.4f}, multiplier {learned.mu:.2f}"
    )
    snapped = snap(learned.moved, scope)
    sizes = set_sizes(len(snapped), scope, settings.max_set)
    min_per_layer = {layer: len(fs) for layer, fs in scope.per_layer.items()}
    sets = (
        nested_sets(
            view,
            data,
            fld,
            snapped,
            sizes,
            _weights(settings, learned.mu),
            min_per_layer=min_per_layer,
            progress=progress,
        )
        if sizes
        else {}
    )
    terms = {k: terms_with(view, data, fld, s) for k, s in sets.items()}
    return learned, sets, terms
