"""Teacher-forced comparison of two models on the same token sequences: how far did the edit move the model?

Both models read identical inputs; at every scored position we compare the next-token distributions:
KL(base || patched), whether the top-1 tokens agree, and each model's negative log-likelihood of the
actual next token (for the perplexity ratio). Sequences are packed into batches under a token budget so
that the logits tensors stay small (vocab x tokens x 4 bytes) on a CPU box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from patchkit._io.progress import Progress

__all__ = ["ScoredSequence", "SequenceStats", "TeacherForcedResult", "compare_teacher_forced", "pack_batches"]


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids of one text; tokens at index >= `score_from` are scored (predicted from their prefix).

    `score_from=1` scores every token but the first; for a prompt + answer, `score_from=len(prompt)` scores
    the answer only, and its first scored position is the first generated token.
    """

    source: str
    ids: tuple[int, ...]
    score_from: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.score_from < len(self.ids) + 1:
            raise ValueError(f"{self.source}: score_from={self.score_from} out of range for {len(self.ids)} tokens")

    @property
    def n_scored(self) -> int:
        return len(self.ids) - self.score_from


@dataclass
class SequenceStats:
    """Per-sequence sums (sums, not means, so that token-weighted totals and cluster bootstraps are exact)."""

    source: str
    n: int
    kl_sum: float
    kl_max: float
    kl_first: float
    agree: int
    nll_base: float
    nll_patched: float


@dataclass
class TeacherForcedResult:
    sequences: list[SequenceStats] = field(default_factory=list)
    token_kl: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every scored position, concatenated

    @property
    def n_tokens(self) -> int:
        return int(sum(s.n for s in self.sequences))

    def arrays(self) -> dict[str, np.ndarray]:
        """Column arrays over sequences, for bootstraps that resample whole sequences."""
        return {
            "n": np.array([s.n for s in self.sequences], dtype=np.float64),
            "kl_sum": np.array([s.kl_sum for s in self.sequences]),
            "kl_max": np.array([s.kl_max for s in self.sequences]),
            "kl_first": np.array([s.kl_first for s in self.sequences]),
            "agree": np.array([s.agree for s in self.sequences], dtype=np.float64),
            "nll_base": np.array([s.nll_base for s in self.sequences]),
            "nll_patched": np.array([s.nll_patched for s in self.sequences]),
        }


def pack_batches(lengths: Sequence[int], token_budget: int, max_batch: int = 64) -> list[list[int]]:
    """Group sequence indices (sorted by length, so padding is small) into batches of <= token_budget tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and (new_longest * (len(current) + 1) > token_budget or len(current) >= max_batch):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def _forward_logits(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    import torch

    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits.float()


def compare_teacher_forced(
    base: Any,
    patched: Any,
    sequences: Sequence[ScoredSequence],
    *,
    pad_id: int = 0,
    token_budget: int = 2048,
    progress: Progress | None = None,
) -> TeacherForcedResult:
    """Run both models on every sequence (right-padded batches) and collect per-position comparisons.

    `progress("teacher-forced", done, total)` is called after each batch with the sequences finished so far.
    """
    import torch

    result = TeacherForcedResult()
    if not sequences:
        return result
    device = next(base.parameters()).device
    batches = pack_batches([len(s.ids) for s in sequences], token_budget)
    stats_by_index: dict[int, SequenceStats] = {}
    kl_by_index: dict[int, np.ndarray] = {}
    if progress is not None:
        progress("teacher-forced", 0, len(sequences))
    for batch in batches:
        width = max(len(sequences[i].ids) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            tokens = sequences[i].ids
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits_b = _forward_logits(base, ids, mask)
        logits_p = _forward_logits(patched, ids, mask)
        for row, i in enumerate(batch):
            seq = sequences[i]
            # position t predicts token t+1: scored tokens [score_from, len) come from positions [score_from-1, len-1)
            lo, hi = seq.score_from - 1, len(seq.ids) - 1
            lb = torch.log_softmax(logits_b[row, lo:hi], dim=-1)
            lp = torch.log_softmax(logits_p[row, lo:hi], dim=-1)
            kl = (lb.exp() * (lb - lp)).sum(-1).clamp_min(0.0)
            target = ids[row, lo + 1 : hi + 1]
            agree = (lb.argmax(-1) == lp.argmax(-1)).sum().item()
            nll_b = -lb.gather(-1, target[:, None]).sum().item()
            nll_p = -lp.gather(-1, target[:, None]).sum().item()
            kl_np = kl.double().cpu().numpy()
            kl_by_index[i] = kl_np
            stats_by_index[i] = SequenceStats(
                source=seq.source,
                n=int(kl_np.size),
                kl_sum=float(kl_np.sum()),
                kl_max=float(kl_np.max()) if kl_np.size else 0.0,
                kl_first=float(kl_np[0]) if kl_np.size else 0.0,
                agree=int(agree),
                nll_base=float(nll_b),
                nll_patched=float(nll_p),
            )
        del logits_b, logits_p
        if progress is not None:
            progress("teacher-forced", len(stats_by_index), len(sequences))
    order = range(len(sequences))
    result.sequences = [stats_by_index[i] for i in order]
    result.token_kl = np.concatenate([kl_by_index[i] for i in order]) if order else np.zeros(0)
    return result
