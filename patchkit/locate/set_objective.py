"""The set search's objective, from train-split transcripts only: three teacher-forced terms.

(a) loop: at positions inside loops, the loop-continuation token's -log(1 - p) = softplus(log-odds). It only
    pushes while the loop token is likely and is flat once it is not (p -> 0), so it never rewards breaking
    text that is already fine, and unlike log-prob it does not vanish when p ~ 1 inside a loop.
(b) continue: on ground-truth continuations of the enumeration answers written in the model's own list format
    (`patchkit.locate.continuations`), the mean cross-entropy of the next true items. It keeps the model
    listing, so an edit cannot "fix" loops by making the model stop.
(c) keep: KL(base || edited) per token at control-answer, prose and pre-loop (novel) positions. This is a
    *constraint* (KL <= budget) handled by the optimiser with a Lagrange multiplier, never a hand-set weight.

The base distributions for (c) are computed once, without hooks; every piece of every batch is at most
`GRAD_ROWS` sequences, so a backward pass holds only one piece's activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from patchkit.locate.teacher import ScoreBatch, build_batch, head, hidden_states, pack_batch
from patchkit.locate.transcripts import Transcript

__all__ = ["ObjectiveData", "Terms", "build_objective", "terms_on"]

LOOP, NOVEL, CONTROL = 0, 1, 2
#: Sequences per forward/backward piece: the backward pass keeps every layer's activations of one piece, so
#: peak memory grows with this (SmolLM2-135M, 2 rows of ~300 tokens: about 1.2 GB of activations).
SET_ROWS = 2
#: Continuation tokens scored per answer (a few items; more adds cost, not signal).
CONTINUATION_TOKENS = 48


@dataclass
class Terms:
    """Per-piece sums (divide by the totals in ObjectiveData for means)."""

    loop: Any  # sum of softplus(log-odds) at loop positions
    cont: Any  # sum of -log p at continuation targets
    kl: Any  # sum of KL(base || edited) at keep positions


@dataclass
class ObjectiveData:
    main: list[ScoreBatch]  # pieces of (loop transcripts + controls + prose)
    cont: list[ScoreBatch]  # pieces of continuation sequences (every scored position is a target)
    base_logprobs: list[Any]  # per main piece: [n_keep, V] base log-probs at that piece's keep positions
    n_loop: int
    n_cont: int
    n_keep: int
    continuations: list[dict[str, Any]]

    def counts(self) -> dict[str, int]:
        return {"loop_positions": self.n_loop, "continuation_tokens": self.n_cont, "keep_positions": self.n_keep}


def _continuation_batch(
    tokenizer: Any,
    transcripts: Sequence[Transcript],
    probes: dict[str, Any],
    *,
    pad_id: int,
    max_tokens: int,
    max_items: int,
    device: Any,
) -> tuple[ScoreBatch | None, list[dict[str, Any]]]:
    from patchkit.locate.continuations import list_continuation

    seqs: list[tuple[list[int], int]] = []
    notes: list[dict[str, Any]] = []
    for t in transcripts:
        probe = probes.get(t.probe_id)
        if probe is None or not getattr(probe, "truth", None):
            continue
        upto = t.generated[: t.loop_start] if t.loop_start is not None else t.generated
        answer = tokenizer.decode(upto, skip_special_tokens=True)
        cont = list_continuation(answer, probe.truth, probe.aliases, max_items=max_items)
        if cont is None:
            continue
        pre = tokenizer(cont.prefix, add_special_tokens=False)["input_ids"] if cont.prefix else []
        full = tokenizer(cont.prefix + cont.text, add_special_tokens=False)["input_ids"]
        # the boundary can merge across prefix/continuation in rare tokenizers; score from the first difference
        first = next((i for i, (a, b) in enumerate(zip(pre, full, strict=False)) if a != b), min(len(pre), len(full)))
        start = len(t.prompt_ids) + first
        if start - len(t.prompt_ids) > max_tokens:  # a long pre-loop answer: skip it (its loop is far away)
            continue
        ids = (list(t.prompt_ids) + list(full))[: start + CONTINUATION_TOKENS]
        if start >= len(ids) or start < 1:
            continue
        seqs.append((ids, start))
        notes.append({"probe": t.probe_id, "style": cont.style, "items": list(cont.items)})
    if not seqs:
        return None, notes
    scored = [(r, at - 1, ids[at], LOOP) for r, (ids, start) in enumerate(seqs) for at in range(start, len(ids))]
    batch = pack_batch([ids for ids, _ in seqs], scored, [n["probe"] for n in notes], pad_id=pad_id, device=device)
    return batch, notes


def build_objective(
    model: Any,
    tokenizer: Any,
    *,
    looping: Sequence[Transcript],
    listing: Sequence[Transcript],
    controls: Sequence[Transcript],
    prose: Sequence[list[int]],
    probes: dict[str, Any],
    pad_id: int,
    device: Any,
    max_tokens: int = 256,
    max_positions: int = 256,
    max_items: int = 6,
    rows: int = SET_ROWS,
) -> ObjectiveData:
    """Teacher-forced data for the three terms, and the base distributions at the keep positions."""
    import torch

    # every piece mixes loop transcripts with keep text (control answers, prose), so each optimisation step sees
    # both the loop term and the KL constraint; positions are capped per piece, so the totals stay bounded
    n_pieces = max(1, math.ceil((len(looping) + len(controls) + len(prose)) / rows))
    pieces = [
        build_batch(
            looping[i::n_pieces],
            controls[i::n_pieces],
            prose[i::n_pieces],
            pad_id=pad_id,
            max_tokens=max_tokens,
            max_positions=max(1, max_positions // n_pieces),
            device=device,
            novel_before_loop=True,
        )
        for i in range(n_pieces)
        if looping[i::n_pieces] or controls[i::n_pieces] or prose[i::n_pieces]
    ]
    pieces = [c for p in pieces for c in p.chunks(rows)]
    cont, notes = _continuation_batch(
        tokenizer, listing, probes, pad_id=pad_id, max_tokens=max_tokens, max_items=max_items, device=device
    )
    base_lp = []
    with torch.inference_mode():
        for piece in pieces:
            keep = piece.group != LOOP
            hid = hidden_states(model, piece.ids, piece.attn)
            at_rows, at_pos = piece.rows[keep], piece.pos[keep]
            base_lp.append(head(model, hid[at_rows.to(hid.device), at_pos.to(hid.device)]).log_softmax(-1).cpu())
    counts = {g: sum(p.counts()[g] for p in pieces) for g in ("loop", "novel", "control")}
    return ObjectiveData(
        main=pieces,
        cont=cont.chunks(rows) if cont is not None else [],
        base_logprobs=base_lp,
        n_loop=counts["loop"],
        n_cont=cont.n if cont is not None else 0,
        n_keep=counts["novel"] + counts["control"],
        continuations=notes,
    )


def main_terms(model: Any, piece: ScoreBatch, base_lp: Any, *, saturate: bool = True) -> tuple[Any, Any]:
    """(sum of softplus(log-odds) at loop positions, sum of KL at keep positions) for one main piece.

    `saturate=False` sums the raw log-odds instead: it keeps measuring how far below even odds a unit pushes
    the loop token after the loop is broken, which is what pruning needs to tell loop drivers (large effect)
    from passengers (none) once the softplus is flat."""
    import torch

    hid = hidden_states(model, piece.ids, piece.attn)
    logits = head(model, hid[piece.rows.to(hid.device), piece.pos.to(hid.device)])
    is_loop = (piece.group == LOOP).to(logits.device)
    loop_sum = logits.new_zeros(())
    if bool(is_loop.any()):
        lg = logits[is_loop]
        tgt = piece.target.to(lg.device)[is_loop].unsqueeze(-1)
        odds = lg.gather(-1, tgt).squeeze(-1) - lg.scatter(-1, tgt, float("-inf")).logsumexp(-1)
        loop_sum = torch.nn.functional.softplus(odds).sum() if saturate else odds.sum()
    kl_sum = logits.new_zeros(())
    if bool((~is_loop).any()):
        lp = logits[~is_loop].log_softmax(-1)
        base = base_lp.to(lp.device)
        kl_sum = (base.exp() * (base - lp)).sum()
    return loop_sum, kl_sum


def cont_term(model: Any, piece: ScoreBatch) -> Any:
    """Sum of -log p of the continuation targets in one piece."""
    hid = hidden_states(model, piece.ids, piece.attn)
    logits = head(model, hid[piece.rows.to(hid.device), piece.pos.to(hid.device)])
    return -logits.log_softmax(-1).gather(-1, piece.target.to(logits.device).unsqueeze(-1)).sum()


def terms_on(
    model: Any, data: ObjectiveData, weights: dict[str, float] | None = None, *, saturate: bool = True
) -> dict[str, float]:
    """Means of the three terms over all pieces. With `weights` ({"loop", "cont", "kl"}: the Lagrangian's
    coefficients) the gradient of sum(weight x mean) accumulates into the factors, piece by piece, each
    piece's graph freed after its backward pass (exact: the means are sums over pieces)."""
    import torch

    out = {"loop": 0.0, "cont": 0.0, "kl": 0.0}
    with torch.enable_grad() if weights is not None else torch.inference_mode():
        for piece, base in zip(data.main, data.base_logprobs, strict=True):
            loop_sum, kl_sum = main_terms(model, piece, base, saturate=saturate)
            loop_mean = loop_sum / max(1, data.n_loop)
            kl_mean = kl_sum / max(1, data.n_keep)
            out["loop"] += float(loop_mean.detach())
            out["kl"] += float(kl_mean.detach())
            if weights is not None:
                _backward(weights["loop"] * loop_mean + weights["kl"] * kl_mean)
        for piece in data.cont:
            c = cont_term(model, piece) / max(1, data.n_cont)
            out["cont"] += float(c.detach())
            if weights is not None:
                _backward(weights["cont"] * c)
    return out


def _backward(total: Any) -> None:
    if getattr(total, "requires_grad", False):
        total.backward()
