"""Transcripts (prompt + generated tokens) and the positions that count as "continuing a loop".

A generated token is a *loop position* when the n-gram ending at it already occurred earlier in the same answer
and it lies at or after the loop start; a *novel position* is one whose n-gram is new. The loop starts at the
first position from which `min_run` consecutive tokens all repeat earlier content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Transcript", "repeat_positions", "loop_start", "loop_onset", "load_prose"]

NGRAM = 4
MIN_RUN = 8


@dataclass
class Transcript:
    """One probe's base generation, as token ids. `loop_start` indexes `generated` (None: no loop)."""

    probe_id: str
    kind: str  # "enumeration" | "control"
    prompt_ids: list[int]
    generated: list[int]
    stop: str  # base stop reason ("eos" | "length" | "loop")
    is_loop: bool
    label: str = "ok"
    loop_start: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.generated

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe_id,
            "kind": self.kind,
            "prompt_ids": self.prompt_ids,
            "generated": self.generated,
            "stop": self.stop,
            "is_loop": self.is_loop,
            "label": self.label,
            "loop_start": self.loop_start,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Transcript:
        return cls(
            d["probe"],
            d["kind"],
            list(d["prompt_ids"]),
            list(d["generated"]),
            d["stop"],
            bool(d["is_loop"]),
            d.get("label", "ok"),
            d.get("loop_start"),
            d.get("extra") or {},
        )


def repeat_positions(tokens: Sequence[int], n: int = NGRAM) -> list[bool]:
    """rep[i]: the n-gram ending at token i occurred earlier (ending at some j < i)."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for i in range(len(tokens)):
        if i + 1 < n:
            out.append(False)
            continue
        gram = tuple(tokens[i + 1 - n : i + 1])
        out.append(gram in seen)
        seen.add(gram)
    return out


def loop_start(tokens: Sequence[int], *, n: int = NGRAM, min_run: int = MIN_RUN) -> int | None:
    """First index from which `min_run` consecutive tokens repeat earlier n-grams (None: no such run)."""
    rep = repeat_positions(tokens, n)
    run = 0
    for i, r in enumerate(rep):
        run = run + 1 if r else 0
        if run >= min_run:
            return i - min_run + 1
    return None


def loop_onset(tokens: Sequence[int], start: int, *, n: int = NGRAM) -> int:
    """Where the loop's first copy begins: `start` minus the loop's period (the distance back to the earlier
    occurrence of the n-gram ending at `start`). The first copy is new text by n-gram, but it is what the
    loop repeats, so an edit that breaks the loop may change it."""
    if start + 1 < n:
        return 0
    gram = tuple(tokens[start + 1 - n : start + 1])
    for j in range(start - 1, n - 2, -1):
        if tuple(tokens[j + 1 - n : j + 1]) == gram:
            return max(0, start - (start - j) - (n - 1))
    return start


def load_prose(tokenizer: Any, *, max_tokens: int = 96, limit: int = 6) -> list[list[int]]:
    """Ordinary text (patchkit's packaged prose) as token ids, for KL of an edit away from loops."""
    from importlib import resources

    text = resources.files("patchkit.checks").joinpath("data/prose.txt").read_text(encoding="utf-8")
    paras = [p.strip() for p in "\n".join(line for line in text.splitlines() if not line.startswith("#")).split("\n\n")]
    out = []
    for p in paras:
        if p:
            ids = tokenizer(p, add_special_tokens=True)["input_ids"][:max_tokens]
            if len(ids) > 8:
                out.append(ids)
        if len(out) >= limit:
            break
    return out
