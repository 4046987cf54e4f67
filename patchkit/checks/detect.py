"""Loop detectors for generated text from any engine: verbatim, decay and doom loops, or truncated-while-progressing.

Definitions (each verdict carries its evidence: the repeated span, where it starts, the period):

* **verbatim** - the tail of the text is one block repeated back to back: character-periodic with
  >= 3 copies over >= 100 characters (or >= 2 copies of a block of >= 80 characters when the generation
  was cut off, i.e. it was still repeating when the budget ran out).
* **decay** - the list's items collapse onto one or a few items while the list goes on. Items are compared
  after removing list numbering ("40. New Mexico" == "41. New Mexico"), which is what defeats token-level
  periodicity. Fires when the item sequence is trailing-periodic (>= 3 copies, >= 6 items), or when one item
  is >= half of the last items (>= 5 times), or the last >= 12 items have <= 3 distinct values.
* **doom** - a thinking trace that ran out of budget without a final answer while the model keeps
  re-correcting itself: "wait", "actually", "let me re-check" ... >= 3 times, and at least half of the sentences
  of its last third carry one. The share matters: long traces that make genuine progress say "wait" now and
  then too (tests/test_doom_traces.py has both kinds, built by code).
* **truncated** - cut off by the token budget but still producing new content: not a loop.
* **ok** - ended by itself, no loop.

Legitimate repetition is not a loop: refrains and short repeated phrases stay under the span threshold,
fenced code blocks are not list items, and a repeated block must sit at the *tail* (legitimate repetition
is followed by something else). `certain_loop` is the stricter test used to stop a generation early; every
text it fires on is also classified as a loop by `detect`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from patchkit.checks.completeness import Completeness, score_completeness
from patchkit.checks.items import Item, split_items
from patchkit.generate.thinking import split_thinking

__all__ = [
    "Evidence",
    "Verdict",
    "Thresholds",
    "STANDARD",
    "CERTAIN",
    "detect",
    "certain_loop",
    "split_thinking",
    "LOOP_LABELS",
    "LABELS",
]

LABELS = ("ok", "verbatim", "decay", "doom", "truncated")
LOOP_LABELS = ("verbatim", "decay", "doom")


@dataclass(frozen=True)
class Thresholds:
    """How much repetition makes a loop. STANDARD judges finished texts; CERTAIN stops generation early."""

    min_copies: float = 3.0  # verbatim: copies of the block at the tail
    min_span_chars: int = 100  # verbatim: characters covered by the repetition
    long_block_chars: int = 80  # verbatim, cut-off generations: a block this long repeated...
    long_block_copies: float = 2.0  # ...this many times is enough
    item_copies: float = 3.0  # decay: copies of a trailing item cycle
    item_span: int = 6  # decay: items covered by the cycle
    max_item_period: int = 20
    top_share: float = 0.5  # decay: one item's share of the last items
    top_min: int = 5
    few_window: int = 12  # decay: the last `few_window` items with <= few_distinct values
    few_distinct: int = 3
    diverse_window: int = 20  # decay: the last `diverse_window` items with <= diverse_max values
    diverse_max: int = 7
    shape_copies: float = 4.0  # decay, cut-off generations only: a cycle of items that differ only in
    shape_span: int = 8  # their numbers ("Atomic number 18 (Ga)", "Episode 19: The Pilot")
    corrections: int = 3  # doom: self-corrections in a budget-exhausted thinking trace
    correction_share: float = 0.5  # doom: share of the last third's sentences that re-correct


STANDARD = Thresholds()
#: Early stop: a loop this clear never recovers (4+ copies over 200+ chars, or 12+ items in a cycle). Items that
#: differ only in their numbers are never a reason to stop early: a counting list ("1. 1", "2. 2", ...) may end.
CERTAIN = Thresholds(
    min_copies=4.0,
    min_span_chars=200,
    long_block_chars=10**9,
    item_copies=4.0,
    item_span=12,
    top_share=10 / 12,
    top_min=10,
    few_window=16,
    few_distinct=2,
    diverse_window=30,
    diverse_max=6,
    shape_copies=float("inf"),
    shape_span=10**9,
)  # a counting list may still end


@dataclass
class Evidence:
    """Why a verdict was given: the repeated span, where the loop starts (char offset), its period."""

    kind: str  # "verbatim-chars" | "item-cycle" | "item-frequency" | "few-items" | "corrections" | "progress"
    span: str  # one copy of the repeated block, or the repeated item
    start: int  # character offset in the analysed text where the repetition starts
    period: int  # block length in characters, or cycle length in items
    unit: str  # "chars" | "items" | "corrections"
    copies: float = 0.0
    where: str = "answer"  # "answer" | "thinking"
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["copies"] = round(self.copies, 2)
        if len(data["span"]) > 400:
            data["span"] = data["span"][:400] + "…"
        return data


@dataclass
class Verdict:
    """The classification of one generation."""

    label: str
    evidence: Evidence | None = None
    completeness: Completeness | None = None
    finished: bool = True

    @property
    def is_loop(self) -> bool:
        return self.label in LOOP_LABELS

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "is_loop": self.is_loop,
            "finished": self.finished,
            "evidence": self.evidence.to_json() if self.evidence else None,
            "completeness": self.completeness.to_json() if self.completeness else None,
        }


# ----------------------------------------------------------------------------------------------------------
# thinking traces
# ----------------------------------------------------------------------------------------------------------
#: (open, close) markers of thinking blocks: Gemma 4 channels, <think> (Qwen, DeepSeek, SmolLM3 ...).
_CORRECTION = re.compile(
    r"\b(?:wait|actually|hmm+|hold on|no,|let me (?:re-?check|double[- ]check|reconsider|recount|re-?think|verify again)"
    r"|on second thought|i made a mistake|correction|that'?s (?:not right|wrong|incorrect)|scratch that|i was wrong)",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------------------------------------
# the detectors
# ----------------------------------------------------------------------------------------------------------
def _char_loop(
    text: str, th: Thresholds, *, finished: bool, max_period: int = 600, window: int = 6000
) -> Evidence | None:
    """Smallest period p such that the tail of `text` is p-periodic over enough copies (numpy, O(p * window))."""
    text = text.rstrip()
    offset = max(0, len(text) - window)
    tail = text[offset:]
    n = len(tail)
    if n < 2:
        return None
    codes = np.frombuffer(tail.encode("utf-32-le"), dtype=np.uint32)
    limit = min(max_period, n // 2)
    if limit < 1:
        return None
    # only periods whose last character matches can be periodic at the tail
    candidates = np.flatnonzero(codes[n - 1 - np.arange(1, limit + 1)] == codes[-1]) + 1
    for p in candidates.tolist():
        eq = codes[p:] == codes[:-p]
        mismatches = np.flatnonzero(~eq)
        run = (n - p) if mismatches.size == 0 else (n - p - 1 - int(mismatches[-1]))
        span = run + p
        copies = span / p
        strong = copies >= th.min_copies and span >= th.min_span_chars
        long_block = (not finished) and p >= th.long_block_chars and copies >= th.long_block_copies
        if strong or long_block:
            start = offset + n - span
            return Evidence("verbatim-chars", text[start : start + p], start, p, "chars", copies)
    return None


def _item_cycle(
    items: list[Item],
    th: Thresholds,
    *,
    keys: list[str] | None = None,
    min_copies: float | None = None,
    min_span: int | None = None,
    kind: str = "item-cycle",
) -> Evidence | None:
    keys = keys if keys is not None else [i.key for i in items]
    min_copies = th.item_copies if min_copies is None else min_copies
    min_span = th.item_span if min_span is None else min_span
    n = len(keys)
    for p in range(1, min(th.max_item_period, n // 2) + 1):
        run = 0
        for i in range(n - 1, p - 1, -1):
            if keys[i] != keys[i - p]:
                break
            run += 1
        span = run + p
        copies = span / p
        if copies >= min_copies and span >= min_span:
            first = items[n - span]
            block = " | ".join(i.text for i in items[n - span : n - span + p])
            return Evidence(kind, block, first.start, p, "items", copies, detail={"items": span})
    return None


_DIGITS = re.compile(r"\d+")
_ROMAN = re.compile(r"\b[ivx]{2,}\b")


def _shape(key: str) -> str:
    """An item key with its numbers (digits, roman numerals) blanked: the template of a counting list."""
    return _ROMAN.sub("#", _DIGITS.sub("#", key))


def _item_frequency(items: list[Item], th: Thresholds) -> Evidence | None:
    n = len(items)
    if n < th.top_min:
        return None
    for w in sorted({max(6, math.ceil(0.4 * n)), 12}):
        if w > n:
            continue
        window = items[n - w :]
        counts = Counter(i.key for i in window)
        key, count = counts.most_common(1)[0]
        if count >= th.top_min and count >= th.top_share * w:
            first = next(i for i in window if i.key == key)
            return Evidence(
                "item-frequency",
                first.text,
                first.start,
                1,
                "items",
                float(count),
                detail={"window": w, "count": count, "top": _top(counts)},
            )
    for w, most in ((th.few_window, th.few_distinct), (th.diverse_window, th.diverse_max)):
        if n < w:
            continue
        window = items[n - w :]
        counts = Counter(i.key for i in window)
        if len(counts) <= most:
            return Evidence(
                "few-items",
                " | ".join(dict.fromkeys(i.text for i in window)),
                window[0].start,
                len(counts),
                "items",
                w / len(counts),
                detail={"window": w, "top": _top(counts)},
            )
    return None


def _top(counts: Counter) -> list[list[Any]]:
    return [[k, c] for k, c in counts.most_common(3)]


def _loop_in(text: str, th: Thresholds, *, finished: bool) -> tuple[str, Evidence] | None:
    """("verbatim" | "decay", evidence) when `text` loops under thresholds `th`."""
    chars = _char_loop(text, th, finished=finished)
    if chars is not None:
        return "verbatim", chars
    items = split_items(text)
    # a cut-off generation usually ends inside an item: judge the complete items too
    candidates = [items, items[:-1]] if not finished and len(items) > 1 else [items]
    for its in candidates:
        ev = _item_cycle(its, th) or _item_frequency(its, th)
        if ev is None and not finished:
            ev = _item_cycle(
                its,
                th,
                keys=[_shape(i.key) for i in its],
                min_copies=th.shape_copies,
                min_span=th.shape_span,
                kind="item-template",
            )
        if ev is not None:
            return "decay", ev
    return None


def certain_loop(text: str) -> tuple[str, Evidence] | None:
    """The strict test for stopping a generation early (a subset of what `detect` calls a loop)."""
    return _loop_in(text, CERTAIN, finished=False)


_SENTENCE = re.compile(r"[^.!?\n]+[.!?\n]*")


def _tail_correction_share(thinking: str) -> tuple[float, int]:
    """(share of the sentences in the last third of `thinking` that contain a self-correction, their number).

    Why a share and not a count: a long trace that converges says "wait" or "actually" now and then while it
    makes progress; a trace going in circles re-corrects in most of its recent sentences.
    """
    cut = len(thinking) * 2 / 3
    tail = [m.group() for m in _SENTENCE.finditer(thinking) if m.end() > cut and m.group().strip()]
    if not tail:
        return 0.0, 0
    return sum(bool(_CORRECTION.search(s)) for s in tail) / len(tail), len(tail)


def _doom(thinking: str, th: Thresholds) -> Evidence | None:
    hits = list(_CORRECTION.finditer(thinking))
    if len(hits) < th.corrections or hits[-1].start() < len(thinking) * 2 / 3:
        return None
    share, tail_sentences = _tail_correction_share(thinking)
    if share < th.correction_share:
        return None
    last = hits[-1]
    sentence_start = max(thinking.rfind(".", 0, last.start()), thinking.rfind("\n", 0, last.start())) + 1
    sentence_end = min(
        x for x in (thinking.find(".", last.end()), thinking.find("\n", last.end()), len(thinking)) if x >= 0
    )
    return Evidence(
        "corrections",
        thinking[sentence_start : sentence_end + 1].strip(),
        hits[0].start(),
        0,
        "corrections",
        float(len(hits)),
        where="thinking",
        detail={
            "corrections": len(hits),
            "markers": [h.group(0) for h in hits[:12]],
            "tail_share": round(share, 3),
            "tail_sentences": tail_sentences,
        },
    )


def detect(
    text: str,
    *,
    truth: Sequence[str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    finished: bool = True,
    thinking: str | None = None,
    thresholds: Thresholds = STANDARD,
) -> Verdict:
    """Classify one generation. `finished`: it ended by itself (EOS) rather than hitting the token budget.

    `thinking`: the model's thinking trace when it is separate from `text` (the final answer); an empty
    answer after a thinking trace means the budget ran out before the model committed to an answer.
    """
    completeness = score_completeness(text, truth, aliases) if truth else None
    if thinking is not None and not text.strip():
        looped = _loop_in(thinking, thresholds, finished=False) or certain_loop(thinking)
        if looped is not None:
            label, ev = looped
            ev.where = "thinking"
            return Verdict(label, ev, completeness, finished)
        doom = _doom(thinking, thresholds)
        if doom is not None:
            return Verdict("doom", doom, completeness, finished)
        return Verdict("truncated", _progress(thinking, "thinking"), completeness, finished)
    looped = _loop_in(text, thresholds, finished=finished) or (None if finished else certain_loop(text))
    if looped is not None:
        label, ev = looped
        return Verdict(label, ev, completeness, finished)
    if not finished:
        return Verdict("truncated", _progress(text, "answer"), completeness, finished)
    return Verdict("ok", None, completeness, finished)


def _progress(text: str, where: str) -> Evidence:
    """Evidence for "truncated": how much of the recent output was new."""
    items = split_items(text)
    recent = items[-12:]
    distinct = len({i.key for i in recent})
    tail = text.rstrip()[-120:]
    return Evidence(
        "progress",
        tail,
        max(0, len(text.rstrip()) - len(tail)),
        0,
        "items",
        0.0,
        where=where,
        detail={"recent_items": len(recent), "recent_distinct": distinct},
    )


def loop_stop_test(text: str) -> str | None:
    """The early-stop test generation backends take (`early_stop=`): the loop label once a loop is certain."""
    found = certain_loop(text)
    return found[0] if found else None
