"""Per-layer ablation: how much does removing a layer's MLP (or its MoE experts) lower loop continuation?

Every layer is first estimated with attribution patching (one forward + two backward passes give the
first-order effect of zero- and mean-ablating every layer at once); the most promising layers are then
ablated exactly (a forward pass each). A layer ranks high when the loop score drops much more than the
control score (loop-selective), not when it simply breaks the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from patchkit._io.progress import Progress
from patchkit.locate.hooks import ModelView
from patchkit.locate.teacher import GRAD_ROWS, GROUPS, ScoreBatch, group_grads, mean_scores, score

__all__ = ["LayerScore", "rank_layers"]


#: nats added to the purity denominator so that layers whose ablation does nearly nothing rank near 0
PURITY_EPS = 0.05


@dataclass
class LayerScore:
    layer: int
    unit: str  # "mlp" | "experts"
    est: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # op -> first-order {loop, novel, control} log-odds deltas
    exact: dict[str, dict[str, float]] = field(default_factory=dict)  # op -> measured log-prob deltas

    def delta(self, op: str) -> dict[str, float]:
        return self.exact.get(op) or self.est.get(op) or {"loop": 0.0, "novel": 0.0, "control": 0.0}

    def selectivity(self, op: str) -> float:
        """How much more the ablation lowers loop log-prob than control log-prob (nats; > 0 = loop-selective)."""
        d = self.delta(op)
        return d["control"] - d["loop"]

    def purity(self, op: str) -> float:
        """Share of the ablation's effect that is loop-selective (0..1): near 0 for a layer that breaks everything."""
        d = self.delta(op)
        return abs(d["control"] - d["loop"]) / (abs(d["control"]) + abs(d["loop"]) + PURITY_EPS)

    @property
    def score(self) -> float:
        """Loop-selective drop weighted by its purity: zeroing layer 0 lowers loop log-prob by 10 nats and control
        log-prob by 9.8 (measured on SmolLM2) - a large difference, but a layer that breaks everything."""
        return max(self.selectivity(op) * self.purity(op) for op in ("zero", "mean"))

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "unit": self.unit, "score": self.score, "estimate": self.est, "exact": self.exact}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerScore:
        return cls(int(d["layer"]), d["unit"], d.get("estimate") or {}, d.get("exact") or {})


def _units(view: ModelView, layers: list[int]) -> list[tuple[int, str, Any]]:
    out = []
    for layer in layers:
        out.append((layer, "mlp", view.mlp(layer)))
        if view.is_moe(layer):
            out.append((layer, "experts", view.experts(layer)))
    return out


@contextlib.contextmanager
def _capture(units: list[tuple[int, str, Any]], store: dict) -> Iterator[None]:
    handles = []

    def make(key: tuple[int, str]) -> Callable:
        def hook(module: Any, args: Any, output: Any) -> Any:
            out = output[0] if isinstance(output, tuple) else output
            if not out.requires_grad:  # frozen weights: the first captured output becomes the graph's leaf
                out = out.detach().requires_grad_(True)
            out.retain_grad()
            store[key] = out
            return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

        return hook

    try:
        for layer, unit, module in units:
            handles.append(module.register_forward_hook(make((layer, unit))))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _replace(module: Any, value: Any) -> Iterator[None]:
    """Replace the module's output by `value` (0 or a [H] mean vector) broadcast over every position."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        out = output[0] if isinstance(output, tuple) else output
        new = out * 0 if value is None else value.to(out.dtype).expand_as(out)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def rank_layers(
    view: ModelView,
    batch: ScoreBatch,
    *,
    layers: list[int] | None = None,
    exact_top: int = 4,
    progress: Progress | None = None,
) -> list[LayerScore]:
    """Score every layer (attribution patching), re-measure the top `exact_top` exactly; best first.

    First-order effect of replacing a unit's output `o` by `o'` on a score: sum(grad * (o' - o)). For zeroing
    that is -sum(grad * o); for mean ablation mu . sum(grad) - sum(grad * o). Both are sums over positions, so
    the batch goes through in pieces (`GRAD_ROWS` sequences per backward pass) and only the sums are kept."""
    import torch

    model = view.model
    layers = list(range(view.num_layers)) if layers is None else layers
    units = _units(view, layers)
    counts = batch.counts()
    grad_out: dict[tuple[int, str], dict[str, float]] = {}  # sum(grad * o) per unit and score
    grad_sum: dict[tuple[int, str], dict[str, Any]] = {}  # sum(grad) per unit and score ([H])
    out_sum: dict[tuple[int, str], Any] = {}  # sum of o over real positions ([H])
    n_pos = 0
    for piece in batch.chunks(GRAD_ROWS):
        store: dict[tuple[int, str], Any] = {}
        with torch.enable_grad(), _capture(units, store):
            odds = score(model, piece, denom=counts)["odds"]
            for name, grads in group_grads(odds, store):
                for key, g in grads.items():
                    o = store[key].detach()
                    grad_out.setdefault(key, dict.fromkeys(GROUPS, 0.0))[name] += float((g * o).sum())
                    gs = g.reshape(-1, g.shape[-1]).sum(0)
                    per = grad_sum.setdefault(key, {})
                    per[name] = per[name] + gs if name in per else gs
        pos = piece.attn.bool()
        for key, v in store.items():
            o = v.detach()
            s = o[pos.to(o.device)].sum(dim=0)
            out_sum[key] = out_sum[key] + s if key in out_sum else s
        n_pos += int(pos.sum())
        del store
    clean = mean_scores(model, batch)
    scores: dict[tuple[int, str], LayerScore] = {}
    mean_vec: dict[tuple[int, str], Any] = {}
    for key in out_sum:
        mu = out_sum[key] / max(1, n_pos)
        mean_vec[key] = mu
        s = LayerScore(key[0], key[1])
        s.est["zero"] = {name: -grad_out[key][name] for name in GROUPS}
        s.est["mean"] = {name: float((mu * grad_sum[key][name]).sum()) - grad_out[key][name] for name in GROUPS}
        scores[key] = s
    ranked = sorted(scores.values(), key=lambda s: -s.score)
    top = ranked[: max(0, exact_top)]
    total = 2 * len(top)
    done = 0
    module_of = {(layer, unit): module for layer, unit, module in units}
    for s in top:
        key = (s.layer, s.unit)
        for op, value in (("zero", None), ("mean", mean_vec[key])):
            with _replace(module_of[key], value):
                m = mean_scores(model, batch)
            s.exact[op] = {k: v - clean[k] for k, v in m.items()}
            done += 1
            if progress:
                progress("layers", done, total)
    return sorted(scores.values(), key=lambda s: -s.score)
