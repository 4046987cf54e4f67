"""Forward hooks that give every batch row its own edit, so many candidates share one forward pass.

Row r of the batch gets candidate r's edits: a neuron edit scales the input of `down_proj` (= scaling the
neuron's output column) only in that row; an expert edit removes the expert's routing weight only for the
tokens of that row. `RowEdits.select(rows)` follows the batch when finished rows leave it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from patchkit.errors import PatchkitError
from patchkit.locate.candidates import Candidate

__all__ = ["ModelView", "RowEdits", "row_edits"]


@dataclass
class ModelView:
    """The parts of a loaded causal LM that locate edits: decoder layers, their MLP and (MoE) router/experts."""

    model: Any

    @property
    def layers(self) -> Any:
        from patchkit.edit.runtime import _layers

        return _layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def mlp(self, layer: int) -> Any:
        return self.layers[layer].mlp

    def down_proj(self, layer: int) -> Any:
        return self.layers[layer].mlp.down_proj

    def intermediate_size(self, layer: int) -> int:
        return int(self.down_proj(layer).weight.shape[1])

    def router(self, layer: int) -> Any | None:
        return getattr(self.layers[layer], "router", None)

    def experts(self, layer: int) -> Any | None:
        return getattr(self.layers[layer], "experts", None)

    def is_moe(self, layer: int) -> bool:
        return self.router(layer) is not None and self.experts(layer) is not None

    def num_experts(self, layer: int) -> int:
        experts = self.experts(layer)
        if experts is None:
            raise PatchkitError(f"layer {layer} has no experts: it is not an MoE layer")
        for attr in ("num_experts", "num_local_experts"):
            if hasattr(experts, attr):
                return int(getattr(experts, attr))
        return int(experts.down_proj.shape[0])

    @property
    def device(self) -> Any:
        """Where inputs go: the input embeddings' device (the first GPU when layers span several)."""
        return self.model.get_input_embeddings().weight.device


class RowEdits:
    """Per-row factors for every edited layer; `active` maps current batch rows to candidate rows."""

    def __init__(self, view: ModelView, candidates: Sequence[Candidate]):
        import torch

        self.view = view
        self.n = len(candidates)
        self.active: Any = None
        self.neuron: dict[int, Any] = {}
        self.expert: dict[int, Any] = {}
        by_layer: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
        by_moe: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for row, cand in enumerate(candidates):
            for e in cand.edits:
                if e.kind == "expert":
                    by_moe[e.layer].append((row, e.index))
                else:
                    by_layer[e.layer].append((row, e.index, e.factor))
        device = view.device
        for layer, neuron_items in by_layer.items():
            width = view.intermediate_size(layer)
            f = torch.ones(self.n, width)
            for row, index, factor in neuron_items:
                if not 0 <= index < width:
                    raise PatchkitError(f"neuron {index} is out of range for layer {layer} (intermediate size {width})")
                f[row, index] = factor
            self.neuron[layer] = f.to(device)
        for layer, expert_items in by_moe.items():
            if not view.is_moe(layer):
                raise PatchkitError(f"layer {layer} has no router/experts: expert edits need an MoE layer")
            m = torch.ones(self.n, view.num_experts(layer))
            for row, index in expert_items:
                m[row, index] = 0.0
            self.expert[layer] = m.to(device)

    def select(self, rows: Any) -> None:
        """The batch now holds candidate rows `rows` (a LongTensor), in this order."""
        self.active = rows

    def _rows(self, table: Any) -> Any:
        return table if self.active is None else table[self.active.to(table.device)]

    @contextlib.contextmanager
    def installed(self) -> Iterator[RowEdits]:
        handles = []
        try:
            for layer, table in self.neuron.items():

                def pre(module: Any, args: Any, table: Any = table) -> Any:
                    x = args[0]
                    f = self._rows(table).to(x.device, x.dtype)  # layers may sit on another GPU
                    shape = (f.shape[0],) + (1,) * (x.dim() - 2) + (f.shape[1],)
                    return (x * f.view(shape),) + tuple(args[1:])

                handles.append(self.view.down_proj(layer).register_forward_pre_hook(pre))
            for layer, table in self.expert.items():

                def route(module: Any, args: Any, output: Any, table: Any = table) -> Any:
                    probs, weights, index = output
                    m = self._rows(table).to(index.device)
                    rows = m.shape[0]
                    per_row = weights.shape[0] // rows
                    keep = m.repeat_interleave(per_row, dim=0).gather(1, index).to(weights.dtype)
                    return probs, weights * keep, index

                router = self.view.router(layer)
                if router is None:  # checked in __init__; the model changed under us
                    raise PatchkitError(f"layer {layer} has no router: expert edits need an MoE layer")
                handles.append(router.register_forward_hook(route))
            yield self
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def row_edits(view: ModelView, candidates: Sequence[Candidate]) -> Iterator[RowEdits]:
    """Install per-row edits for `candidates` (one per batch row) for the duration of the block."""
    edits = RowEdits(view, candidates)
    with edits.installed():
        yield edits
