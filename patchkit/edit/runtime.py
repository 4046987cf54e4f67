"""Apply recipe edits at run time with forward hooks, leaving the weights untouched.

Used to prove that a patched checkpoint equals "base model + intervention" and by tools that try many candidate
edits without rewriting weights.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from patchkit.errors import PatchkitError


def _layers(model: Any) -> Any:
    """The decoder layer list of a causal LM (llama: model.model.layers; Gemma 4: .language_model.layers)."""
    for path in ("model.language_model.layers", "model.layers", "language_model.layers", "layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise PatchkitError(f"cannot find the decoder layers of {type(model).__name__}")


@contextlib.contextmanager
def runtime_edits(model: Any, edits: list[Any]) -> Iterator[None]:
    """Within the block, neuron edits scale down_proj inputs / up_proj outputs and suppressed experts add nothing."""
    import torch

    layers = _layers(model)
    down: dict[int, dict[int, float]] = defaultdict(dict)
    up: dict[int, dict[int, float]] = defaultdict(dict)
    experts: dict[int, set[int]] = defaultdict(set)
    for edit in edits:
        if edit.kind == "expert":
            experts[edit.layer].add(edit.index)
        elif edit.tensor == "up_proj":
            up[edit.layer][edit.index] = edit.factor
        else:
            down[edit.layer][edit.index] = edit.factor

    def scale_vector(width: int, factors: dict[int, float], like: torch.Tensor) -> torch.Tensor:
        vec = torch.ones(width, dtype=torch.float32)
        for index, factor in factors.items():
            vec[index] = factor
        return vec.to(like.device)

    handles = []
    try:
        for layer, factors in down.items():
            proj = layers[layer].mlp.down_proj

            def pre_hook(module, args, factors=factors):
                x = args[0]
                return (x * scale_vector(x.shape[-1], factors, x).to(x.dtype),) + tuple(args[1:])

            handles.append(proj.register_forward_pre_hook(pre_hook))
        for layer, factors in up.items():
            proj = layers[layer].mlp.up_proj

            def fwd_hook(module, args, output, factors=factors):
                return output * scale_vector(output.shape[-1], factors, output).to(output.dtype)

            handles.append(proj.register_forward_hook(fwd_hook))
        for layer, suppressed in experts.items():
            router = getattr(layers[layer], "router", None)
            if router is None:
                raise PatchkitError(f"layer {layer} has no router: it is not an MoE layer")

            def router_hook(module, args, output, suppressed=suppressed):
                probs, weights, index = output
                mask = torch.ones_like(weights)
                for e in suppressed:
                    mask = mask.masked_fill(index == e, 0.0)
                return probs, weights * mask, index

            handles.append(router.register_forward_hook(router_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
