"""Scoring control answers: `{any: [...]}`, `{number: N}` or `{regex: ...}` from a suite file.

Numbers are judged on the answer's *final* number that is not merely copied from the prompt, so
"12 + 7 = 9" fails a `{number: 19}` check even though it contains 12 and 7, and "12 + 7 = 19" passes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from patchkit.checks.items import fold

__all__ = ["score_answer", "numbers_in"]

_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_WORDS.update(
    {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100}
)
_NUMBER = re.compile(rf"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])|\b(?:{'|'.join(_WORDS)})\b", re.IGNORECASE)


def numbers_in(text: str) -> list[float]:
    """Numbers in reading order: digits ("1,024", "3.5", "-2") and the number words zero..twenty, tens, hundred."""
    out: list[float] = []
    for m in _NUMBER.finditer(text):
        token = m.group(0)
        word = _WORDS.get(token.lower())
        if word is not None:
            out.append(float(word))
            continue
        try:
            out.append(float(token.replace(",", "")))
        except ValueError:
            continue
    return out


def _phrase_in(phrase: str, text: str) -> bool:
    norm = lambda s: " " + re.sub(r"[^\w]+", " ", fold(s)).strip() + " "  # noqa: E731
    return norm(phrase) in norm(text)


def score_answer(answer: Mapping[str, Any], text: str, *, prompt: str = "") -> bool:
    """True when `text` answers correctly according to the control's `answer` spec."""
    if answer.get("any") is not None:
        return any(_phrase_in(p, text) for p in answer["any"])
    if answer.get("number") is not None:
        target = float(answer["number"])
        given = set(numbers_in(prompt))
        candidates = [x for x in numbers_in(text) if x not in given or x == target]
        return bool(candidates) and abs(candidates[-1] - target) < 1e-9
    if answer.get("regex") is not None:
        return re.search(answer["regex"], text, re.IGNORECASE) is not None
    raise ValueError(f"answer spec needs any, number or regex: {dict(answer)}")
