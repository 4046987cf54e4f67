"""Learnable per-unit factors over every MLP neuron (and MoE expert) of a model, as forward hooks.

Unit (layer, neuron n) gets factor f = 1 + delta: the input of `down_proj` at column n is multiplied by f,
exactly what a recipe's `scale` (invert = -1, zero = 0) does to the checkpoint (`patchkit.edit.runtime`). Unit
(layer, expert e) multiplies e's routing weight (suppress = 0). delta starts at 0, so the hooked model is the
base model until the optimiser moves something; the weights themselves never receive gradients.

Each layer's factors live in a box [lo, hi] (the ops a recipe may write: e.g. [-1, 3] by default, [0, 1] for
"zero only", [0, 1] for experts), enforced by projection after every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from patchkit.errors import PatchkitError
from patchkit.locate.hooks import ModelView

__all__ = ["Unit", "FactorField", "units_to_json", "units_from_json"]


@dataclass(frozen=True, order=True)
class Unit:
    """One editable unit: neuron `index` of `layer`'s MLP, or expert `index` of its MoE block."""

    layer: int
    kind: str  # "neuron" | "expert"
    index: int

    @property
    def label(self) -> str:
        return f"L{self.layer} {'e' if self.kind == 'expert' else 'n'}{self.index}"


def units_to_json(units: Sequence[tuple[Unit, float]], digits: int | None = None) -> list[list[Any]]:
    """[(unit, factor)] as JSON rows [layer, kind, index, factor] (for caches and reports)."""
    return [[u.layer, u.kind, u.index, f if digits is None else round(f, digits)] for u, f in units]


def units_from_json(rows: Sequence[Sequence[Any]]) -> list[tuple[Unit, float]]:
    """The inverse of `units_to_json`."""
    return [(Unit(int(a), str(b), int(c)), float(f)) for a, b, c, f in rows]


class FactorField:
    """One trainable delta vector per (layer, kind) in scope; `installed()` hooks them into the model.

    `bounds[(layer, kind)] = (lo, hi)` is the factor box of that group."""

    def __init__(self, view: ModelView, groups: dict[tuple[int, str], tuple[float, float]]):
        import torch

        self.view = view
        self.bounds = dict(sorted(groups.items()))
        self.delta: dict[tuple[int, str], Any] = {}
        for (layer, kind), (lo, hi) in self.bounds.items():
            if not lo <= 1.0 <= hi:
                raise PatchkitError(f"factor box [{lo}, {hi}] of layer {layer} must contain 1 (the unedited unit)")
            if kind == "neuron":
                width = view.intermediate_size(layer)
            elif kind == "expert":
                if not view.is_moe(layer):
                    raise PatchkitError(f"layer {layer} has no router/experts: expert factors need an MoE layer")
                width = view.num_experts(layer)
            else:
                raise PatchkitError(f"unknown unit kind {kind!r}")
            self.delta[(layer, kind)] = torch.zeros(width, device=view.device, requires_grad=True)
        if not self.delta:
            raise PatchkitError("the set search has no units in scope (no layer or kind left)")

    @property
    def size(self) -> int:
        return sum(int(d.numel()) for d in self.delta.values())

    def parameters(self) -> list[Any]:
        return list(self.delta.values())

    def factors(self, key: tuple[int, str]) -> Any:
        return 1.0 + self.delta[key]

    def project(self) -> None:
        """Clamp every factor back into its box (the projection step of projected/proximal descent)."""
        import torch

        with torch.no_grad():
            for key, d in self.delta.items():
                lo, hi = self.bounds[key]
                d.clamp_(lo - 1.0, hi - 1.0)

    def moved(self) -> list[tuple[Unit, float]]:
        """Units whose factor is not exactly 1, with the factor (largest |f - 1| first)."""
        out: list[tuple[Unit, float]] = []
        for (layer, kind), d in self.delta.items():
            nz = d.detach().nonzero().flatten().tolist()
            vals = d.detach()[nz].tolist() if nz else []
            out.extend((Unit(layer, kind, int(i)), 1.0 + float(v)) for i, v in zip(nz, vals, strict=True))
        out.sort(key=lambda uf: -abs(uf[1] - 1.0))
        return out

    def set_factors(self, assignment: Sequence[tuple[Unit, float]]) -> None:
        """Reset every factor to 1, then set the given ones (no gradient bookkeeping)."""
        import torch

        with torch.no_grad():
            for d in self.delta.values():
                d.zero_()
            for unit, f in assignment:
                key = (unit.layer, unit.kind)
                if key not in self.delta:
                    raise PatchkitError(f"{unit.label} is outside the set search's scope")
                self.delta[key][unit.index] = f - 1.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[FactorField]:
        """Hook the factors into the model for the duration of the block."""
        handles = []
        try:
            for (layer, kind), d in self.delta.items():
                if kind == "neuron":

                    def pre(module: Any, args: Any, d: Any = d) -> Any:
                        x = args[0]
                        return (x * (1.0 + d).to(x.device, x.dtype),) + tuple(args[1:])

                    handles.append(self.view.down_proj(layer).register_forward_pre_hook(pre))
                else:

                    def route(module: Any, args: Any, output: Any, d: Any = d) -> Any:
                        probs, weights, index = output
                        f = (1.0 + d).to(weights.device, weights.dtype)
                        return probs, weights * f[index], index

                    router = self.view.router(layer)
                    if router is None:  # checked in __init__
                        raise PatchkitError(f"layer {layer} has no router")
                    handles.append(router.register_forward_hook(route))
            yield self
        finally:
            for h in handles:
                h.remove()
