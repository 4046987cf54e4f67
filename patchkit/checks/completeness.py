"""Completeness of a generated list against its ground truth: which true items were listed, which twice, which are not true.

Matching is tolerant the way a human grader is: list numbering, punctuation, accents and case are ignored,
a leading "the", a parenthetical ("Alpha Centauri (AZC)") or a trailing description ("Andromeda - the Chained
Maiden") do not prevent a match, known aliases count ("Great Bear" for Ursa Major), and small spelling
variants ("Andromedia") match by difflib similarity. A true item mentioned in running prose counts as listed too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from patchkit.checks.items import Item, match_key, split_items

__all__ = ["Completeness", "score_completeness", "FUZZY_RATIO"]

#: difflib ratio at or above which two normalised names count as the same (one typo in an 8-letter name ~ 0.88).
FUZZY_RATIO = 0.86
#: Keys shorter than this must match exactly (fuzzy matching "Ohio" ~ "Iowa" would be wrong).
MIN_FUZZY_LEN = 5
_SPLIT_HEAD = re.compile(r"\s+(?:-|–|—|:)\s+|:\s|\s\(|,\s")
_PARENS = re.compile(r"\([^)]*\)|\[[^\]]*\]")


@dataclass
class Completeness:
    """Result of matching a generation's items against the ground-truth list."""

    n_truth: int
    found: list[str] = field(default_factory=list)  # true items listed (canonical names, first-listed order)
    missing: list[str] = field(default_factory=list)  # true items never listed
    duplicates: dict[str, int] = field(default_factory=dict)  # true item -> times listed (only when > 1)
    extras: list[str] = field(default_factory=list)  # list entries matching no true item (beyond the true list)
    n_items: int = 0  # list items seen in the text

    @property
    def share(self) -> float:
        """Share of the true items that were listed (0..1)."""
        return len(self.found) / self.n_truth if self.n_truth else 0.0

    @property
    def distinct_true(self) -> int:
        return len(self.found)

    def to_json(self) -> dict[str, Any]:
        return {
            "share": round(self.share, 4),
            "found": len(self.found),
            "n_truth": self.n_truth,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "extras": self.extras,
            "n_items": self.n_items,
        }


class _TruthIndex:
    """Normalised keys of the true items and their aliases -> canonical name."""

    def __init__(self, truth: Sequence[str], aliases: Mapping[str, Sequence[str]] | None):
        self.truth = list(truth)
        self.by_key: dict[str, str] = {}
        for name in self.truth:
            self.by_key.setdefault(match_key(name), name)
        for name, names in (aliases or {}).items():
            for alias in names:
                self.by_key.setdefault(match_key(alias), name)
        self.keys = list(self.by_key)

    def lookup(self, text: str) -> str | None:
        for candidate in _candidates(text):
            if candidate in self.by_key:
                return self.by_key[candidate]
        for candidate in _candidates(text):
            if len(candidate) < MIN_FUZZY_LEN:
                continue
            best = difflib.get_close_matches(candidate, self.keys, n=1, cutoff=FUZZY_RATIO)
            if best and len(best[0]) >= MIN_FUZZY_LEN:
                return self.by_key[best[0]]
        return None


def _candidates(text: str) -> list[str]:
    """The item as written, without parentheticals, and its head before a dash/colon/comma description."""
    out: list[str] = []
    for variant in (text, _PARENS.sub(" ", text), _SPLIT_HEAD.split(text, maxsplit=1)[0]):
        key = match_key(variant)
        if key and key not in out:
            out.append(key)
    return out


def _looks_listed(item: Item) -> bool:
    """Only short entries count as (wrong) list items; preamble sentences are not "extras"."""
    words = item.key.split()
    return 0 < len(words) <= 6 and not item.text.rstrip().endswith(":")


def score_completeness(
    text: str,
    truth: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
    *,
    items: list[Item] | None = None,
) -> Completeness:
    """Match the list in `text` against `truth` (see the module docstring for what counts as a match)."""
    index = _TruthIndex(truth, aliases)
    items = split_items(text) if items is None else items
    counts: dict[str, int] = {}
    order: list[str] = []
    extras: list[str] = []
    seen_extra: set[str] = set()
    for item in items:
        name = index.lookup(item.text)
        if name is None:
            if _looks_listed(item) and item.key not in seen_extra:
                seen_extra.add(item.key)
                extras.append(item.text)
            continue
        if name not in counts:
            order.append(name)
        counts[name] = counts.get(name, 0) + 1
    # true items mentioned inside prose ("The largest are Texas and Alaska.") count as listed once
    flat = " " + " ".join(match_key(line) for line in text.splitlines()) + " "
    for name in index.truth:
        if name in counts:
            continue
        if _mentioned(flat, name, index):
            order.append(name)
            counts[name] = 1
    found = order
    return Completeness(
        n_truth=len(index.truth),
        found=found,
        missing=[t for t in index.truth if t not in counts],
        duplicates={name: c for name, c in counts.items() if c > 1},
        extras=extras,
        n_items=len(items),
    )


def _mentioned(flat: str, name: str, index: _TruthIndex) -> bool:
    """`name` (or an alias) occurs as a phrase, not only inside a longer true item ("Virginia" in "West Virginia")."""
    keys = [k for k, v in index.by_key.items() if v == name]
    for key in keys:
        if len(key) < 3:
            continue
        hits = flat.count(f" {key} ")
        if not hits:
            continue
        longer = sum(flat.count(f" {other} ") for other in index.keys if other != key and f" {key} " in f" {other} ")
        if hits > longer:
            return True
    return False
