"""Per-neuron (and per-expert) attribution in the top layers, then an exact screen of the best candidates.

Attribution: activation x gradient at the input of `down_proj` (the neuron's output coefficient), summed over
positions, of the mean log-odds of the generated token at loop positions and at control positions (log-odds,
not log-prob: inside a loop p ~ 1 and log-prob gradients vanish). Raw act x grad is dominated by
massive-activation neurons (a few neurons with ~100x the layer's typical activation move *every* token, loop or
not), so units are ranked by loop-selectivity; massive-activation neurons are flagged and at most two of them
are kept among the screened candidates. MoE experts are attributed through their routing weights
(weight x gradient).

Both directions count: scaling a unit by f changes the loop score by (f-1) x loop in first order, so a unit with
positive loop attribution (a loop driver) is reduced (invert, zero, x0.5) and one with negative loop attribution
(a brake: removing it would raise the loop) is amplified (x2, x3). A unit's ranking score is its best
first-order loop-selective effect over the ops given, loop reduction minus |control change|
(`selective_effect`), and its `direction` says which side achieves it; the screen spends its budget there.

Screen: the exact effect of each candidate edit on the teacher-forced batch, many candidates per forward
pass (one candidate per group of rows): loop/control log-prob change, the share of positions whose greedy
argmax flips (a greedy loop can only break where the argmax changes), and KL on control positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from patchkit._io.progress import Progress
from patchkit.errors import PatchkitError
from patchkit.locate.candidates import DEFAULT_OPS, Candidate, Edit
from patchkit.locate.hooks import ModelView, row_edits
from patchkit.locate.teacher import GRAD_ROWS, ScoreBatch, group_grads, score

__all__ = [
    "UnitAttribution",
    "attribute",
    "rank_units",
    "selective_effect",
    "unit_factors",
    "pick_candidates",
    "single_edits",
    "screen",
    "ScreenResult",
    "MASSIVE_FACTOR",
]

#: A neuron whose mean |activation| exceeds this multiple of its layer's median is a massive-activation outlier.
MASSIVE_FACTOR = 20.0


@dataclass
class UnitAttribution:
    layer: int
    kind: str  # "neuron" | "expert"
    index: int
    loop: float  # sum act x grad of the loop score (first-order effect of scaling by f = (f-1) x loop)
    control: float
    novel: float
    mean_abs_act: float
    massive: bool
    selectivity: float  # ranking score: best first-order loop-selective effect over the ops (`rank_units`)
    direction: str = "reduce"  # "reduce" (factors < 1, expert suppression) | "amplify" (factors > 1)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UnitAttribution:
        return cls(**d)  # a cached dict from before `direction` existed reads as "reduce"


def _side(factor: float) -> str:
    return "amplify" if factor > 1.0 else "reduce"


def selective_effect(loop: float, control: float, factor: float) -> float:
    """First-order loop-selective effect of scaling a unit by `factor`: loop reduction minus |control change|.

    Scaling by f moves a score by (f-1) x its attribution, so this is -(f-1) x loop - |f-1| x |control|: positive
    for reducing a loop driver (loop > |control|, f < 1) or amplifying a brake (-loop > |control|, f > 1)."""
    d = factor - 1.0
    return -d * loop - abs(d * control)


def _unit_ops(kind: str, ops: Sequence[float]) -> list[float]:
    if kind == "expert":
        return [0.0]  # experts are only ever suppressed
    return [f for f in ops if f != 1.0]


def rank_units(units: Sequence[UnitAttribution], ops: Sequence[float] = DEFAULT_OPS) -> list[UnitAttribution]:
    """Set every unit's `selectivity` (best `selective_effect` over `ops`; experts: suppression only) and
    `direction` (the side of the best op), and return them best first."""
    for u in units:
        best, side = float("-inf"), "reduce"
        for f in _unit_ops(u.kind, ops):
            e = selective_effect(u.loop, u.control, f)
            if e > best:
                best, side = e, _side(f)
        if best == float("-inf"):  # no op at all: rank by the zeroing effect, as a reduce unit
            best = selective_effect(u.loop, u.control, 0.0)
        u.selectivity, u.direction = float(best), side
    return sorted(units, key=lambda u: -u.selectivity)


@contextlib.contextmanager
def _grab(view: ModelView, layers: Sequence[int], acts: dict) -> Iterator[None]:
    handles = []
    try:
        for layer in layers:

            def pre(module: Any, args: Any, layer: int = layer) -> Any:
                x = args[0]
                if not x.requires_grad:
                    x = x.detach().requires_grad_(True)
                x.retain_grad()
                acts[("neuron", layer)] = x
                return (x,) + tuple(args[1:])

            handles.append(view.down_proj(layer).register_forward_pre_hook(pre))
            if view.is_moe(layer):

                def route(module: Any, args: Any, output: Any, layer: int = layer) -> Any:
                    probs, weights, index = output
                    weights.retain_grad()
                    acts[("expert", layer)] = (weights, index)
                    return output

                router = view.router(layer)
                if router is None:  # is_moe(layer) says it is there
                    raise PatchkitError(f"layer {layer} has no router")
                handles.append(router.register_forward_hook(route))
        yield
    finally:
        for h in handles:
            h.remove()


def attribute(
    view: ModelView,
    batch: ScoreBatch,
    layers: Sequence[int],
    *,
    massive_factor: float = MASSIVE_FACTOR,
    max_rows: int = GRAD_ROWS,
    ops: Sequence[float] = DEFAULT_OPS,
) -> list[UnitAttribution]:
    """Attribution of every neuron (and expert) of `layers`; best loop-selective first over the neuron factors
    `ops` (see `rank_units`: a brake ranks by what amplifying it achieves, with direction "amplify").

    act x grad summed over positions is a sum, so the batch goes through `max_rows` sequences at a time (one
    backward graph alive at once) with each piece's score divided by the whole batch's position counts."""
    import torch

    counts = batch.counts()
    per: dict[tuple[str, int], dict[str, Any]] = {}  # unit kind, layer -> score -> [units] summed act x grad
    abs_sum: dict[tuple[str, int], Any] = {}  # summed |activation| (neurons) / |routing weight| (experts)
    n_pos = 0
    for piece in batch.chunks(max_rows):
        acts: dict = {}
        with torch.enable_grad(), _grab(view, layers, acts):
            odds = score(view.model, piece, denom=counts)["odds"]
            leaves = {key: v[0] if isinstance(v, tuple) else v for key, v in acts.items()}  # experts: routing weights
            grads = dict(group_grads(odds, leaves))
        pos = piece.attn.bool()
        n_pos += int(pos.sum())
        for key, v in acts.items():
            kind, layer = key
            if kind == "neuron":
                a = v.detach()
                here = pos.to(a.device)
                got = {name: (a * grads[name][key])[here].sum(dim=0).float().cpu() for name in grads}
                size = a[here].abs().sum(dim=0).float().cpu()
            else:
                weights, index = v
                n_units = view.num_experts(layer)
                w = weights.detach()
                real = pos.reshape(-1).to(w.device)
                if w.shape[0] != real.numel():  # routing rows are not one per token: keep them all
                    real = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
                idx = index[real].reshape(-1).cpu()
                got = {
                    name: torch.zeros(n_units).index_add_(
                        0, idx, (w * grads[name][key])[real].float().reshape(-1).cpu()
                    )
                    for name in grads
                }
                size = torch.zeros(n_units).index_add_(0, idx, w[real].abs().float().reshape(-1).cpu())
            acc = per.setdefault(key, {})
            for name, value in got.items():
                acc[name] = acc[name] + value if name in acc else value
            abs_sum[key] = abs_sum[key] + size if key in abs_sum else size
        del acts, grads
    out: list[UnitAttribution] = []
    for key, scores in per.items():
        kind, layer = key
        mean_abs = abs_sum[key] / max(1, n_pos)
        med = float(mean_abs.median()) or 1e-9
        massive = mean_abs > massive_factor * med
        loop, ctrl, novel = scores["loop"], scores["control"], scores["novel"]
        # same units (mean log-odds) for both scores: a unit that moves control text as much as loops (a
        # massive-activation outlier, a generic confidence neuron) scores <= 0 however large it is, either way
        for j in range(len(loop)):
            out.append(
                UnitAttribution(
                    layer,
                    kind,
                    j,
                    float(loop[j]),
                    float(ctrl[j]),
                    float(novel[j]),
                    float(mean_abs[j]),
                    bool(massive[j]),
                    0.0,  # set by rank_units
                )
            )
    return rank_units(out, ops)


def _raw_reduction(u: UnitAttribution) -> float:
    """Loop attribution on the unit's own side: what its ops lower the loop score by per unit of |f-1|."""
    return -u.loop if u.direction == "amplify" else u.loop


def pick_candidates(units: Sequence[UnitAttribution], *, top: int, max_massive: int = 2) -> list[UnitAttribution]:
    """The `top` most loop-selective units (`units` ranked best first, as `attribute` returns them), with at most
    `max_massive` massive-activation outliers among them, plus the units with the largest raw loop attribution
    on their own side (so an effective outlier, driver or brake, is still tried)."""
    chosen: list[UnitAttribution] = []
    massive = 0
    for u in units:
        if len(chosen) >= top:
            break
        if u.massive:
            if massive >= max_massive:
                continue
            massive += 1
        chosen.append(u)
    by_raw = sorted(units, key=lambda u: -_raw_reduction(u))[: max(1, top // 10)]
    for u in by_raw:
        if u not in chosen:
            chosen.append(u)
    return chosen


@dataclass
class ScreenResult:
    candidate: Candidate
    d_loop: float
    d_novel: float
    d_control: float
    flips_loop: float  # share of loop positions whose argmax changes
    flips_control: float
    kl_control: float  # mean KL(base || edited) over control positions

    @property
    def score(self) -> float:
        """Greedy loops break where the argmax flips: reward loop flips, penalise control flips and KL."""
        return (self.flips_loop - self.flips_control) + 0.1 * (self.d_control - self.d_loop) - self.kl_control

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_json(),
            "d_loop": self.d_loop,
            "d_novel": self.d_novel,
            "d_control": self.d_control,
            "flips_loop": self.flips_loop,
            "flips_control": self.flips_control,
            "kl_control": self.kl_control,
            "score": self.score,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScreenResult:
        return cls(
            Candidate.from_json(d["candidate"]),
            d["d_loop"],
            d["d_novel"],
            d["d_control"],
            d["flips_loop"],
            d["flips_control"],
            d["kl_control"],
        )


def screen(
    view: ModelView,
    batch: ScoreBatch,
    candidates: Sequence[Candidate],
    *,
    group: int | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> list[ScreenResult]:
    """Exact teacher-forced effect of each candidate; `group` candidates share one forward pass."""
    import time

    import torch

    model = view.model
    results: list[ScreenResult] = []
    ctrl = (batch.group == 2).nonzero().squeeze(-1)
    is_loop = batch.group == 0
    n_loop = max(1, int(is_loop.sum()))
    n_ctrl = max(1, int(ctrl.numel()))
    with torch.inference_mode():
        base = score(model, batch, want=("argmax", "logprobs"))
        base_ctrl = base["logprobs"][0, ctrl]  # [C, V]
        vocab = base_ctrl.shape[-1]
        if group is None:
            group = max(1, min(8, int(3e8 // max(1, batch.n * vocab * 4))))
        for start in range(0, len(candidates), group):
            if deadline is not None and time.monotonic() > deadline and results:
                break
            chunk = list(candidates[start : start + group])
            k = len(chunk)
            with row_edits(view, [c for c in chunk for _ in range(batch.size)]):
                got = score(model, batch, k=k, want=("argmax", "logprobs"))
            for g, cand in enumerate(chunk):
                flips = got["argmax"][g] != base["argmax"][0]
                lp_c = got["logprobs"][g, ctrl]
                kl = float((base_ctrl.exp() * (base_ctrl - lp_c)).sum(-1).mean()) if ctrl.numel() else 0.0
                results.append(
                    ScreenResult(
                        cand,
                        float(got["mean"]["loop"][g] - base["mean"]["loop"][0]),
                        float(got["mean"]["novel"][g] - base["mean"]["novel"][0]),
                        float(got["mean"]["control"][g] - base["mean"]["control"][0]),
                        float((flips & is_loop).sum()) / n_loop,
                        float((flips & (batch.group == 2)).sum()) / n_ctrl,
                        kl,
                    )
                )
            del got
            if progress:
                progress("screen", len(results), len(candidates))
    return results


def unit_factors(u: UnitAttribution, factors: Sequence[float]) -> list[float]:
    """The neuron factors screened for `u`: those on its `direction`'s side first (reduce: f < 1, amplify:
    f > 1), then any factor on the other side whose first-order loop-selective effect is positive too (which
    happens only when `direction` disagrees with the attributions, e.g. a cached unit from before directions).
    When `factors` has nothing on the unit's side, the other side's factors are all it can get."""
    usable = [f for f in factors if f != 1.0]
    own = [f for f in usable if _side(f) == u.direction]
    other = [f for f in usable if _side(f) != u.direction]
    if not own:
        return other
    return own + [f for f in other if selective_effect(u.loop, u.control, f) > 0]


def single_edits(units: Sequence[UnitAttribution], factors: Sequence[float]) -> list[Candidate]:
    """Single edits to screen: each neuron with the factors on its side (`unit_factors`), each expert
    suppressed."""
    out = []
    for u in units:
        if u.kind == "expert":
            out.append(Candidate((Edit(u.layer, "expert", u.index, 0.0),)))
        else:
            out.extend(Candidate((Edit(u.layer, "neuron", u.index, f),)) for f in unit_factors(u, factors))
    return out
