"""Ground-truth continuations of a model's own list, in its own list format (the set search's "keep listing" term).

Given the model's answer before its loop starts, cut it after the last complete line, find which true items it
already named (`patchkit.checks.completeness`), and write the next true items it has not named the way the
answer writes items: "13. Oregon" after "12. Ohio", "- Oregon" after "- Ohio", ", Oregon" in a comma run.
Raising the log-prob of that text teaches "continue the list with something new", never "stop": the edit must
not fix loops by making the model stop listing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from patchkit.checks.completeness import score_completeness

__all__ = ["Continuation", "list_continuation"]

_NUMBERED = re.compile(r"^(\s*)(\d{1,4})([.)])(\s+)")
_BULLET = re.compile(r"^(\s*)([-*+•])(\s+)")


@dataclass(frozen=True)
class Continuation:
    """`prefix` (the answer up to its last complete line) followed by `text` (the next true items)."""

    prefix: str
    text: str
    items: tuple[str, ...]
    style: str  # "numbered" | "bullet" | "comma" | "lines"


def list_continuation(
    answer: str,
    truth: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
    *,
    max_items: int = 6,
) -> Continuation | None:
    """The continuation of `answer` (text before its loop) with up to `max_items` unnamed true items.

    None when every true item is already named or `truth` is empty."""
    if not truth:
        return None
    cut = answer.rfind("\n")
    if cut < 0:
        return _one_line(answer, truth, aliases, max_items)
    prefix = answer[: cut + 1]
    named = set(score_completeness(prefix, truth, aliases).found) if prefix.strip() else set()
    todo = [t for t in truth if t not in named][:max_items]
    if not todo:
        return None
    lines = [line for line in prefix.splitlines() if line.strip()]
    last_numbered = next((m for m in map(_NUMBERED.match, reversed(lines)) if m), None)
    last_bullet = next((m for m in map(_BULLET.match, reversed(lines)) if m), None)
    last = lines[-1] if lines else ""
    if last_numbered is not None and (_NUMBERED.match(last) or not _BULLET.match(last)):
        indent, num, sep, space = last_numbered.groups()
        start = int(num) + 1
        text = "".join(f"{indent}{start + i}{sep}{space}{item}\n" for i, item in enumerate(todo))
        return Continuation(prefix, text, tuple(todo), "numbered")
    if last_bullet is not None:
        indent, mark, space = last_bullet.groups()
        return Continuation(prefix, "".join(f"{indent}{mark}{space}{item}\n" for item in todo), tuple(todo), "bullet")
    if last.count(",") >= 2:
        # a comma run on one line: continue that line (the prefix then ends before the line's newline)
        head = prefix.rstrip("\n").rstrip().rstrip(",.")
        return Continuation(head, "".join(f", {item}" for item in todo), tuple(todo), "comma")
    short = [line for line in lines[1:] if 0 < len(line.split()) <= 6 and not line.rstrip().endswith(":")]
    if len(short) >= 2 and len(short) == len(lines) - 1:
        return Continuation(prefix, "".join(f"{item}\n" for item in todo), tuple(todo), "lines")
    # no list yet (a preamble, or nothing before the loop): start the list the most common way
    return Continuation(prefix, "".join(f"{i + 1}. {item}\n" for i, item in enumerate(todo)), tuple(todo), "numbered")


def _one_line(
    answer: str, truth: Sequence[str], aliases: Mapping[str, Sequence[str]] | None, max_items: int
) -> Continuation | None:
    """An answer without a line break: a comma run ("A, B, C") or a space run of one-word items ("A B C") is
    continued in kind, after its last complete item; anything else starts a numbered list from scratch."""
    sep = ", " if answer.count(",") >= 2 else " "
    parts = [p.strip() for p in answer.split(sep.strip() or None)]
    complete = [p for p in parts[:-1] if p]  # the last part may be cut mid-item
    named = set(score_completeness("\n".join(complete), truth, aliases).found) if complete else set()
    todo = [t for t in truth if t not in named][:max_items]
    if not todo:
        return None
    if len(named) >= 2 and (sep == ", " or all(" " not in t for t in todo)):
        head = sep.join(complete)
        return Continuation(
            head, "".join(f"{sep}{item}" for item in todo), tuple(todo), "comma" if sep == ", " else "space"
        )
    return Continuation("", "".join(f"{i + 1}. {item}\n" for i, item in enumerate(todo)), tuple(todo), "numbered")
