"""Stage 2: per-layer ablation. Which layers' MLPs (and MoE experts) carry the loop continuation?

Zero- and mean-ablate each layer's MLP output and measure the mean log-prob of the actual token at positions
inside loops, before loops (novel list items) and in control answers. A loop-selective layer lowers the loop
log-prob more than it lowers the others.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from patchkit.locate.scoring import ForcedBatch, delta, logprobs, summarize
from patchkit.runtime import _layers


def _mlp_modules(layer: Any) -> dict[str, Any]:
    mods = {"mlp": layer.mlp}
    if getattr(layer, "experts", None) is not None:
        mods["experts"] = layer.experts
    return mods


@contextlib.contextmanager
def _replace_output(module: Any, value: Any) -> Iterator[None]:
    """Replace a module's output by `value` (a tensor broadcast to its shape), e.g. zeros or the mean output."""
    def hook(mod, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = value.to(out.dtype).expand_as(out) if value.dim() else out * 0
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _mean_outputs(model: Any, fb: ForcedBatch) -> dict[tuple[int, str], Any]:
    """Mean output vector of every MLP/experts module over the real (unpadded) positions of the batch."""
    import torch

    means: dict[tuple[int, str], Any] = {}
    handles = []
    weights = fb.mask.unsqueeze(-1).float()
    for i, layer in enumerate(_layers(model)):
        for name, mod in _mlp_modules(layer).items():
            def hook(m, a, out, key=(i, name)):
                o = out[0] if isinstance(out, tuple) else out
                if o.dim() == 2:  # MoE experts work on flattened tokens
                    o = o.view(*fb.mask.shape, -1)
                means[key] = ((o.float() * weights).sum((0, 1)) / weights.sum()).detach()
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(input_ids=fb.ids, attention_mask=fb.mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return means


def layer_ablation(model: Any, fb: ForcedBatch, *, layers: list[int] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One row per (layer, module, mode) with the change in mean log-prob per position kind, ranked."""
    import torch

    clean = summarize(logprobs(model, fb), fb)
    means = _mean_outputs(model, fb)
    rows = []
    all_layers = _layers(model)
    for i in layers if layers is not None else range(len(all_layers)):
        for name, mod in _mlp_modules(all_layers[i]).items():
            for mode in ("zero", "mean"):
                value = torch.zeros(()) if mode == "zero" else means[(i, name)]
                with _replace_output(mod, value):
                    after = summarize(logprobs(model, fb), fb)
                row = {"layer": i, "module": name, "mode": mode, **delta(after, clean)}
                row["selectivity"] = selectivity(row)
                rows.append(row)
        if progress:
            progress(1)
    rows.sort(key=lambda r: -r["selectivity"])
    return rows


def selectivity(row: dict[str, float]) -> float:
    """How much more the ablation lowers loop tokens than the worse of novel-item and control tokens."""
    loop_drop = -row.get("d_logp_loop", 0.0)
    other_drop = max(-row.get("d_logp_novel", 0.0), -row.get("d_logp_control", 0.0), 0.0)
    return loop_drop - other_drop


def rank_layers(rows: list[dict[str, Any]], top: int) -> list[int]:
    """The `top` layers with the most loop-selective ablation (either mode)."""
    best: dict[int, float] = {}
    for r in rows:
        best[r["layer"]] = max(best.get(r["layer"], float("-inf")), r["selectivity"])
    return [layer for layer, _ in sorted(best.items(), key=lambda kv: -kv[1])[:top]]
