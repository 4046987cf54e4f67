"""Split generated text into list items and normalise them, so "40. New Mexico" and "41. New Mexico" compare equal.

Both the loop detector (decay loops are repeated *items* whose numbering advances, which defeats token-level
periodicity) and the completeness scorer (which matches items against a ground-truth list) work on these items.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Item", "split_items", "item_key", "match_key", "strip_marker"]

# Leading list markers: bullets, "12.", "12)", "(12)", "#12", "No. 12", markdown emphasis around them.
_MARKER = re.compile(
    r"""^\s*(?:
        [-*+•·–—>]+\s*                      # bullets / quote markers
      | \(?\#?\d{1,4}\s*[.):\]]\s*          # 12.  12)  (12)  #12:  12]
      | \#\d{1,4}\b\s*                      # #12
      | [a-zA-Z][.)]\s+(?=\S)               # a.  b)
      | (?:no\.|number)\s*\d{1,4}[.:)]?\s*  # No. 12
      | \*\*|__                             # bold markers
    )""",
    re.VERBOSE | re.IGNORECASE,
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Item:
    """One list item: its text as written, its normalised key, and where it starts in the source text."""

    text: str
    key: str
    start: int
    marked: bool  # it had a list marker or came from a comma-separated run (i.e. it looks like a list entry)


def strip_marker(text: str) -> tuple[str, bool]:
    """Remove leading bullets / list numbering (repeatedly: "- 12. **Foo**" -> "Foo")."""
    marked = False
    while True:
        m = _MARKER.match(text)
        if not m or m.end() == 0:
            break
        text = text[m.end() :]
        marked = True
    return text.strip().strip("*_`").strip(), marked


def fold(text: str) -> str:
    """Case-fold and strip accents (NFKD) - "Curaçao" and "curacao" fold to the same string."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def item_key(text: str) -> str:
    """Normalised identity of an item: numbering, punctuation, accents, case and spacing removed."""
    body, _ = strip_marker(text)
    return _SPACES.sub(" ", _PUNCT.sub(" ", fold(body))).strip()


def match_key(text: str) -> str:
    """Like item_key, plus a leading "the " dropped (for matching against a ground-truth list)."""
    key = item_key(text)
    return key[4:] if key.startswith("the ") else key


def split_items(text: str, *, skip_code: bool = True) -> list[Item]:
    """Items = lines; a line with >= 2 commas (or semicolons) is a run of items. Empty items are dropped.

    Fenced code blocks are skipped by default: repeated code lines are legitimate and are not list items.
    """
    items: list[Item] = []
    pos = 0
    in_code = False
    for line in text.splitlines(keepends=True):
        start = pos
        pos += len(line)
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if in_code and skip_code:
            continue
        stripped = line.strip()
        if not stripped:
            continue
        body, marked = strip_marker(stripped)
        body_at = max(0, line.find(body))
        sep = ";" if body.count(";") >= 2 else ","
        parts = body.split(sep)
        short_pair = (
            len(parts) == 2
            and not body.rstrip().endswith((".", ":", "!", "?"))
            and all(0 < len(x.split()) <= 3 for x in parts)
        )
        if (body.count(sep) >= 2 or short_pair) and "|" not in body:
            search = body_at
            for part in body.split(sep):
                piece = re.sub(r"^\s*(?:and|or)\s+", "", part.strip(), flags=re.IGNORECASE).rstrip(".")
                at = line.find(piece, search) if piece else -1
                if at >= 0:
                    search = at + len(piece)
                key = item_key(piece)
                if key:
                    items.append(Item(piece, key, start + (at if at >= 0 else body_at), True))
            continue
        key = item_key(body)
        if key:
            items.append(Item(body, key, start + body_at, marked))
    return items
