"""Teacher-forced scoring: log-prob of the tokens actually generated, at loop and at control positions.

`ScoreBatch` packs transcripts (right-padded) with three masks over *target* positions: loop (continuing the
loop), novel (new content inside looping answers) and control (every generated token of non-looping control
answers, plus ordinary prose). The loop score is the mean log-prob at loop positions; an edit that is
loop-selective lowers it while the control score stays put.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from patchkit.locate.transcripts import Transcript, repeat_positions

__all__ = ["ScoreBatch", "build_batch", "token_logprobs", "masked_means"]


@dataclass
class ScoreBatch:
    ids: Any          # [B, T] long (right-padded)
    attn: Any         # [B, T]
    targets: Any      # [B, T-1] next-token ids
    loop: Any         # [B, T-1] bool masks over target positions
    novel: Any
    control: Any
    names: list[str]

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def counts(self) -> dict[str, int]:
        return {"loop": int(self.loop.sum()), "novel": int(self.novel.sum()), "control": int(self.control.sum())}

    def repeat(self, k: int) -> "ScoreBatch":
        """The batch tiled k times (row r*B + b = candidate r on sequence b)."""
        rep = lambda t: t.repeat(k, 1)  # noqa: E731
        return ScoreBatch(rep(self.ids), rep(self.attn), rep(self.targets), rep(self.loop), rep(self.novel),
                          rep(self.control), self.names * k)


def build_batch(loops: Sequence[Transcript], controls: Sequence[Transcript], prose: Sequence[list[int]], *,
                pad_id: int, max_tokens: int = 384, device: Any = "cpu") -> ScoreBatch:
    """Loop transcripts give loop + novel positions; control transcripts and prose give control positions."""
    import torch

    seqs: list[tuple[list[int], list[int], list[int], list[int], str]] = []  # ids, loop, novel, control (target idx)
    for t in loops:
        ids = t.ids[:max_tokens]
        p = len(t.prompt_ids)
        rep = repeat_positions(t.generated)
        start = t.loop_start if t.loop_start is not None else len(t.generated)
        loop_idx, novel_idx = [], []
        for g in range(len(t.generated)):
            pos = p + g
            if pos >= len(ids) or pos == 0:
                continue
            (loop_idx if (rep[g] and g >= start) else novel_idx if not rep[g] else []).append(pos - 1)
        seqs.append((ids, loop_idx, novel_idx, [], t.probe_id))
    for t in controls:
        ids = t.ids[:max_tokens]
        p = len(t.prompt_ids)
        seqs.append((ids, [], [], [p + g - 1 for g in range(len(t.generated)) if 0 < p + g < len(ids)], t.probe_id))
    for i, ids in enumerate(prose):
        ids = ids[:max_tokens]
        seqs.append((ids, [], [], list(range(len(ids) - 1)), f"prose#{i}"))
    width = max(len(s[0]) for s in seqs)
    b = len(seqs)
    ids_t = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    masks = [torch.zeros((b, width - 1), dtype=torch.bool) for _ in range(3)]
    for r, (ids, loop_idx, novel_idx, ctrl_idx, _name) in enumerate(seqs):
        ids_t[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attn[r, :len(ids)] = 1
        for m, idx in zip(masks, (loop_idx, novel_idx, ctrl_idx)):
            if idx:
                m[r, torch.tensor(idx, dtype=torch.long)] = True
    return ScoreBatch(ids_t.to(device), attn.to(device), ids_t[:, 1:].to(device), masks[0].to(device),
                      masks[1].to(device), masks[2].to(device), [s[4] for s in seqs])


def forward_logits(model: Any, batch: ScoreBatch) -> Any:
    out = model(input_ids=batch.ids, attention_mask=batch.attn, use_cache=False)
    return out.logits[:, :-1, :].float()


def token_logprobs(logits: Any, batch: ScoreBatch) -> Any:
    """log p(actual next token) at every target position: [B, T-1]."""
    return logits.log_softmax(-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)


def masked_means(values: Any, batch: ScoreBatch, groups: int = 1) -> dict[str, Any]:
    """Per-group mean of `values` [groups*B, T-1] over loop / novel / control positions -> tensors [groups]."""
    out = {}
    for name in ("loop", "novel", "control"):
        m = getattr(batch, name).to(values.dtype)
        v = (values * m).view(groups, -1, values.shape[-1]).sum(dim=(1, 2))
        n = m.view(groups, -1, m.shape[-1]).sum(dim=(1, 2)).clamp(min=1)
        out[name] = v / n
    return out
