"""Teacher-forced scores shared by the ablation and attribution stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from patchkit.locate.transcripts import Transcript, batch, position_index

KINDS = ("loop", "novel", "control")


@dataclass
class ForcedBatch:
    """One batch of transcripts on the model's device, with the scored positions of each kind."""

    ids: Any
    mask: Any
    index: dict[str, tuple[Any, Any]]   # kind -> (rows, cols) of predicted tokens (cols = position t)

    @classmethod
    def build(cls, transcripts: Sequence[Transcript], pad_id: int, device: Any) -> "ForcedBatch":
        import torch

        ids, mask = batch(transcripts, pad_id)
        index = {}
        for kind in KINDS:
            rows, cols = position_index(transcripts, kind)
            index[kind] = (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device))
        return cls(ids.to(device), mask.to(device), index)

    def n(self, kind: str) -> int:
        return int(self.index[kind][0].numel())


def logprobs(model: Any, fb: ForcedBatch, *, grad: bool = False) -> Any:
    """Log-softmax over the vocabulary for every position (float32)."""
    import torch

    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        logits = model(input_ids=fb.ids, attention_mask=fb.mask, use_cache=False).logits.float()
        return torch.log_softmax(logits, dim=-1)


def token_logprob(lp: Any, fb: ForcedBatch, kind: str) -> Any:
    """Log-prob of the actual token at each scored position of `kind` (predicted from position t-1)."""
    rows, cols = fb.index[kind]
    return lp[rows, cols - 1, fb.ids[rows, cols]]


def summarize(lp: Any, fb: ForcedBatch, reference: Any | None = None) -> dict[str, float]:
    """Mean log-prob per kind, plus KL(reference || lp) and argmax flips on control/loop positions."""
    import torch

    out: dict[str, float] = {}
    for kind in KINDS:
        if fb.n(kind):
            out[f"logp_{kind}"] = float(token_logprob(lp, fb, kind).mean())
    if reference is not None:
        for kind in ("control", "loop"):
            if not fb.n(kind):
                continue
            rows, cols = fb.index[kind]
            ref, cur = reference[rows, cols - 1], lp[rows, cols - 1]
            kl = (ref.exp() * (ref - cur)).sum(-1)
            out[f"kl_{kind}"] = float(kl.mean())
            out[f"flips_{kind}"] = float((ref.argmax(-1) != cur.argmax(-1)).float().mean())
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {f"d_{k}": after[k] - before[k] for k in after if k.startswith("logp_") and k in before}
