"""Stage 3: per-neuron attribution in the top layers, then the exact effect of the strongest candidates.

Attribution = activation x gradient of the mean loop-token log-prob at the down_proj input: the first-order
change in that score if the neuron were zeroed is -a*g. It is contrasted with the same on control answers and
novel list items, and normalised per layer by the spread of scores, because a few massive-activation neurons
otherwise dominate raw a*g. Candidates are then measured exactly (runtime hooks, teacher-forced): change in
log-prob per position kind, KL on control answers, and how often the greedy token flips inside loops (a greedy
loop can only break where the argmax flips).
"""

from __future__ import annotations

from typing import Any, Callable

from patchkit.locate.scoring import ForcedBatch, delta, logprobs, summarize, token_logprob
from patchkit.recipe import ResolvedEdit
from patchkit.runtime import _layers, runtime_edits


def neuron_attribution(model: Any, fb: ForcedBatch, layers: list[int]) -> dict[int, dict[str, Any]]:
    """Per layer: act*grad sums for loop, novel and control scores (tensors of width = MLP neurons)."""
    import torch

    acts: dict[int, Any] = {}
    handles = []
    all_layers = _layers(model)
    for i in layers:
        def pre(mod, args, i=i):
            a = args[0]
            a.retain_grad()
            acts[i] = a
        handles.append(all_layers[i].mlp.down_proj.register_forward_pre_hook(pre))
    out: dict[int, dict[str, Any]] = {i: {} for i in layers}
    try:
        for kind in ("loop", "novel", "control"):
            if not fb.n(kind):
                continue
            model.zero_grad(set_to_none=True)
            lp = logprobs(model, fb, grad=True)
            score = token_logprob(lp, fb, kind).mean()
            score.backward()
            for i in layers:
                a = acts[i]
                out[i][kind] = (a * a.grad).detach().float().sum((0, 1))
                out[i].setdefault("act_rms", a.detach().float().pow(2).mean((0, 1)).sqrt())
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return out


def rank_neurons(attr: dict[int, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Candidates whose zeroing would lower loop tokens most relative to novel/control tokens (normalised)."""
    import torch

    cands = []
    for layer, parts in attr.items():
        loop = parts.get("loop")
        if loop is None:
            continue
        other = torch.maximum(parts.get("novel", torch.zeros_like(loop)), parts.get("control", torch.zeros_like(loop)))
        raw = loop - other.clamp(min=0)
        scale = raw.std() + 1e-12
        z = raw / scale
        for n in torch.topk(z, min(top, z.numel())).indices.tolist():
            cands.append({"layer": layer, "neuron": n, "score": float(z[n]), "a_loop": float(loop[n]),
                          "a_other": float(other[n]), "act_rms": float(parts["act_rms"][n])})
    cands.sort(key=lambda c: -c["score"])
    return cands[:top]


def exact_effects(model: Any, fb: ForcedBatch, candidates: list[dict[str, Any]], ops: list[tuple[str, float]],
                  *, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Measure each (candidate, op) with hooks: d log-prob per kind, KL on controls, argmax flips in loops."""
    base_lp = logprobs(model, fb)
    base = summarize(base_lp, fb)
    rows = []
    for c in candidates:
        for op, factor in ops:
            edit = ResolvedEdit(c["layer"], "neuron", c["neuron"], op, factor, "down_proj")
            with runtime_edits(model, [edit]):
                after = summarize(logprobs(model, fb), fb, reference=base_lp)
            row = {**c, "op": op, "factor": factor, **delta(after, base),
                   **{k: v for k, v in after.items() if k.startswith(("kl_", "flips_"))}}
            rows.append(row)
            if progress:
                progress(1)
    rows.sort(key=lambda r: -(r.get("flips_loop", 0.0) - r.get("flips_control", 0.0)))
    return rows
