"""Thinking blocks: where a model's reasoning ends and its answer begins, for the chat templates patchkit knows.

Backends split every raw generation with this, so `Generation.thinking` and `Generation.text` mean the same thing
whichever backend produced them; the loop checks then judge thinking and answer separately.
"""

from __future__ import annotations

__all__ = ["THINKING_MARKERS", "split_thinking"]

THINKING_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|channel>thought\n", "<channel|>"),
    ("<|channel>thought", "<channel|>"),
    ("<|channel>", "<channel|>"),
    ("<think>", "</think>"),
)


def split_thinking(text: str) -> tuple[str | None, str, bool]:
    """Split a raw generation into (thinking or None, answer, thinking_closed).

    An unclosed thinking block means the whole text is thinking and there is no answer yet.
    """
    for open_, close in THINKING_MARKERS:
        at = text.find(open_)
        if at < 0:
            continue
        body = text[at + len(open_) :]
        end = body.find(close)
        if end < 0:
            return body, "", False
        return body[:end], text[:at] + body[end + len(close) :], True
    return None, text, True
