"""Teacher-forced scoring: log-prob of the tokens actually generated, at loop and at control positions.

`ScoreBatch` packs transcripts (right-padded) and lists the scored *target* positions in three groups: loop
(continuing the loop), novel (new content inside looping answers) and control (generated tokens of control
answers, plus ordinary prose). Only scored positions go through the LM head, so a 50k-token vocabulary does
not cost a [batch, length, vocab] tensor. The loop score is the mean log-prob at loop positions; a
loop-selective edit lowers it while the control score stays put.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from patchkit.locate.transcripts import Transcript, loop_onset, repeat_positions

__all__ = [
    "ScoreBatch",
    "build_batch",
    "GROUPS",
    "hidden_states",
    "head",
    "score",
    "mean_scores",
    "group_grads",
    "GRAD_ROWS",
    "pack_batch",
]

#: Sequences per backward pass in attribution and layer ranking: the activations of every layer are kept for
#: the gradient, so peak memory grows with this (exact sums over pieces, any value gives the same numbers).
GRAD_ROWS = 4

GROUPS = ("loop", "novel", "control")


@dataclass
class ScoreBatch:
    ids: Any  # [B, T] long (right-padded)
    attn: Any  # [B, T]
    rows: Any  # [N] row of each scored position
    pos: Any  # [N] position whose logits predict the target
    target: Any  # [N] the token actually generated next
    group: Any  # [N] 0 loop, 1 novel, 2 control
    names: list[str]

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    def counts(self) -> dict[str, int]:
        return {g: int((self.group == i).sum()) for i, g in enumerate(GROUPS)}

    def chunks(self, max_rows: int) -> list[ScoreBatch]:
        """The batch cut into pieces of at most `max_rows` sequences (scored positions follow their rows), so a
        backward pass keeps only one piece's activations: sums over pieces equal sums over the batch."""
        if self.size <= max_rows:
            return [self]
        out = []
        lengths = self.attn.sum(-1)
        for r0 in range(0, self.size, max_rows):
            r1 = min(r0 + max_rows, self.size)
            keep = (self.rows >= r0) & (self.rows < r1)
            width = int(lengths[r0:r1].max())
            out.append(
                ScoreBatch(
                    self.ids[r0:r1, :width],
                    self.attn[r0:r1, :width],
                    self.rows[keep] - r0,
                    self.pos[keep],
                    self.target[keep],
                    self.group[keep],
                    self.names[r0:r1],
                )
            )
        return out

    def tiled(self, k: int) -> tuple[Any, Any, Any, Any]:
        """(ids, attn, rows, pos) of the batch repeated k times; scored positions of copy c come c-th."""
        import torch

        ids = self.ids.repeat(k, 1)
        attn = self.attn.repeat(k, 1)
        offs = torch.arange(k, device=self.rows.device).repeat_interleave(self.n) * self.size
        return ids, attn, self.rows.repeat(k) + offs, self.pos.repeat(k)


def build_batch(
    loops: Sequence[Transcript],
    controls: Sequence[Transcript],
    prose: Sequence[list[int]],
    *,
    pad_id: int,
    max_tokens: int = 320,
    max_positions: int = 256,
    device: Any = "cpu",
    novel_before_loop: bool = False,
) -> ScoreBatch:
    """Loop transcripts give loop + novel positions; control transcripts and prose give control positions.

    Each group keeps at most `max_positions` positions (evenly spaced) to bound memory and time. With
    `novel_before_loop`, novel positions are only those before the loop's first copy (`loop_onset`: the first
    copy is new by n-gram, but it is what the loop repeats, and an edit that fixes the loop may change it)."""

    seqs: list[list[int]] = []
    names: list[str] = []
    picked: list[list[tuple[int, int, int]]] = [[], [], []]  # per group: (row, pos, target)
    for t in loops:
        ids = t.ids[:max_tokens]
        r = len(seqs)
        p = len(t.prompt_ids)
        rep = repeat_positions(t.generated)
        start = t.loop_start if t.loop_start is not None else len(t.generated)
        onset = loop_onset(t.generated, start) if (novel_before_loop and t.loop_start is not None) else start
        for g in range(len(t.generated)):
            at = p + g
            if at >= len(ids) or at == 0:
                continue
            if rep[g] and g >= start:
                picked[0].append((r, at - 1, ids[at]))
            elif not rep[g] and (g < onset or not novel_before_loop):
                picked[1].append((r, at - 1, ids[at]))
        seqs.append(ids)
        names.append(t.probe_id)
    for t in controls:
        ids = t.ids[:max_tokens]
        r = len(seqs)
        p = len(t.prompt_ids)
        picked[2].extend((r, at - 1, ids[at]) for at in range(max(1, p), len(ids)))
        seqs.append(ids)
        names.append(t.probe_id)
    for i, ids in enumerate(prose):
        ids = ids[:max_tokens]
        r = len(seqs)
        picked[2].extend((r, at - 1, ids[at]) for at in range(1, len(ids)))
        seqs.append(ids)
        names.append(f"prose#{i}")
    flat: list[tuple[int, int, int, int]] = []
    for gi, items in enumerate(picked):
        if len(items) > max_positions:
            step = len(items) / max_positions
            items = [items[int(i * step)] for i in range(max_positions)]
        flat.extend((r, p, t, gi) for r, p, t in items)
    return pack_batch(seqs, flat, names, pad_id=pad_id, device=device)


def pack_batch(
    seqs: Sequence[list[int]],
    scored: Sequence[tuple[int, int, int, int]],
    names: list[str],
    *,
    pad_id: int,
    device: Any = "cpu",
) -> ScoreBatch:
    """Right-pad `seqs` into a ScoreBatch whose scored positions are `scored` = (row, pos, target, group)."""
    import torch

    width = max(len(s) for s in seqs)
    ids_t = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, ids in enumerate(seqs):
        ids_t[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attn[r, : len(ids)] = 1
    cols = list(zip(*scored, strict=True)) if scored else [(), (), (), ()]
    as_t = lambda xs: torch.tensor(list(xs), dtype=torch.long, device=device)  # noqa: E731
    return ScoreBatch(
        ids_t.to(device), attn.to(device), as_t(cols[0]), as_t(cols[1]), as_t(cols[2]), as_t(cols[3]), names
    )


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def hidden_states(model: Any, ids: Any, attn: Any) -> Any:
    """Final hidden states of the decoder body (before the LM head)."""
    out = model.model(input_ids=ids, attention_mask=attn, use_cache=False)
    return out.last_hidden_state


def head(model: Any, hidden: Any) -> Any:
    """Logits (float32) for hidden vectors [N, H], with the model's final soft-capping if it has one."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(_text_config(model), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def score(
    model: Any, batch: ScoreBatch, *, k: int = 1, want: Sequence[str] = ("mean",), denom: dict[str, int] | None = None
) -> dict[str, Any]:
    """Forward the batch (tiled k times, e.g. one copy per candidate) and score the selected positions.

    Returns "mean" / "odds": {group: [k] mean target log-prob / log-odds}, and on request "logp" ([k, N] target
    log-probs), "argmax" ([k, N]) and "logprobs" ([k, N, V] full log-softmax, only for small N). With `denom`
    (a whole batch's `counts()`) the means divide by those counts: a chunk's share of the whole batch's mean."""

    ids, attn, rows, pos = batch.tiled(k) if k > 1 else (batch.ids, batch.attn, batch.rows, batch.pos)
    hid = hidden_states(model, ids, attn)
    logits = head(model, hid[rows.to(hid.device), pos.to(hid.device)])  # the last layers may be on another GPU
    lsm = logits.log_softmax(-1)
    target = batch.target.repeat(k).to(logits.device)
    lp = lsm.gather(-1, target.unsqueeze(-1)).squeeze(-1).view(k, -1)
    # log-odds log(p / (1 - p)) does not saturate when the model is already sure (p ~ 1 inside a loop), so its
    # gradient still sees the units that make the loop certain; attribution uses it, reports use log-probs.
    tgt = target.unsqueeze(-1)
    others = logits.scatter(-1, tgt, float("-inf")).logsumexp(-1)
    odds = (logits.gather(-1, tgt).squeeze(-1) - others).view(k, -1)
    out: dict[str, Any] = {"mean": {}, "odds": {}}
    for gi, g in enumerate(GROUPS):
        m = (batch.group == gi).to(lp.device, lp.dtype)
        n = max(1, denom[g]) if denom is not None else m.sum().clamp(min=1)
        out["mean"][g] = (lp * m).sum(-1) / n
        out["odds"][g] = (odds * m).sum(-1) / n
    if "logp" in want:
        out["logp"] = lp
    if "argmax" in want:
        out["argmax"] = logits.argmax(-1).view(k, -1)
    if "logprobs" in want:
        out["logprobs"] = lsm.view(k, batch.n, -1)
    return out


def mean_scores(model: Any, batch: ScoreBatch, max_rows: int = GRAD_ROWS) -> dict[str, float]:
    """{group: mean target log-prob} over the whole batch, forwarded piece by piece (no gradient)."""
    import torch

    counts = batch.counts()
    total = {g: 0.0 for g in GROUPS}
    with torch.inference_mode():
        for piece in batch.chunks(max_rows):
            for g, v in score(model, piece, denom=counts)["mean"].items():
                total[g] += float(v)
    return total


def group_grads(scores: dict[str, Any], tensors: dict[Any, Any]) -> Iterator[tuple[str, dict[Any, Any]]]:
    """For each score group in turn: (group, {key: d score / d tensor}) - zeros where the score does not reach
    the tensor. One backward pass per group over a shared graph (freed after the last)."""
    import torch

    for name in GROUPS:
        for t in tensors.values():
            t.grad = None
        scores[name].sum().backward(retain_graph=name != GROUPS[-1])
        yield name, {k: (t.grad.detach() if t.grad is not None else torch.zeros_like(t)) for k, t in tensors.items()}
