"""Recipe bytes to text: strict UTF-8, no invisible or control characters, bounded echoes in messages.

A recipe is reviewed as text, so anything that makes it *display* differently from what YAML reads is refused:
control characters, bidirectional overrides ("Trojan Source"), Unicode line separators and lone carriage
returns (YAML treats them as line breaks, most viewers do not), and byte order marks anywhere but the start.
A UTF-8 byte order mark at the very start is accepted (editors on Windows write one); it stays in
`Recipe.source_text`, so the text patchkit records hashes to the same sha256 as the file.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from patchkit.errors import RecipeError

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# in the file: C0 controls but tab/LF/CR, DEL and C1 (incl. NEL), line/paragraph separators, bidi controls, BOMs
# after the start, surrogates, non-characters; and a CR not followed by LF
_RAW_BAD = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029" + _BIDI + "\ufeff\ud800-\udfff\ufffe\uffff]|\r(?!\n)"
)
# in a value (after YAML escapes such as "\e" or "\u202e"): the same, and any CR; tab and LF are text
_VALUE_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029" + _BIDI + "\ufeff\ud800-\udfff\ufffe\uffff]")

_UTF8_BOM = "\ufeff"


def describe_char(ch: str) -> str:
    """`control character U+001B`, `bidirectional control U+202E (RIGHT-TO-LEFT OVERRIDE)`, ..."""
    code = f"U+{ord(ch):04X}"
    name = unicodedata.name(ch, "")
    named = f"{code} ({name})" if name else code
    if ch == "\r":
        return "a carriage return (U+000D) not followed by a line feed"
    if ch in _BIDI:
        return f"bidirectional control {named}"
    if ch in "\u2028\u2029\x85":
        return f"Unicode line break {named}"
    if ch == "\ufeff":
        return f"byte order mark {named} (allowed only as the first character)"
    if "\ud800" <= ch <= "\udfff":
        return f"lone surrogate {code}"
    if ch in "\ufffe\uffff":
        return f"non-character {code}"
    return f"control character {named}"


def char_hint(ch: str) -> str:
    if ch in _BIDI:
        return (
            "recipes are reviewed as text and a bidirectional control makes them display differently from "
            "what they say; remove it"
        )
    return "recipes are reviewed as text; remove it (write visible characters, or a YAML block scalar for text)"


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of `offset`, counted like the YAML reader (a leading BOM is not
    a column)."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    col = offset - start + 1
    if line == 1 and text.startswith(_UTF8_BOM) and offset > 0:
        col -= 1
    return line, col


def decode(data: bytes, filename: str) -> str:
    """The text of a recipe file: strict UTF-8 (a leading UTF-8 BOM is kept). RecipeError at the first bad byte."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError(
            f"{filename}:1:1: the recipe is UTF-16 text, not UTF-8",
            hint="save it as UTF-8 (without a byte order mark, or with the UTF-8 one)",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start
        line = data.count(b"\n", 0, bad) + 1
        line_start = data.rfind(b"\n", 0, bad) + 1
        col = len(data[line_start:bad].decode("utf-8", errors="replace")) + 1
        raise RecipeError(
            f"{filename}:{line}:{col}: the recipe is not UTF-8 text (byte 0x{data[bad]:02x})",
            hint="save the recipe as UTF-8",
            data={"offset": bad},
        ) from None


def check_text(text: str, filename: str) -> None:
    """Refuse characters that make the text display differently from what YAML reads (see the module doc)."""
    match = _RAW_BAD.search(text, 1 if text.startswith(_UTF8_BOM) else 0)
    if match is None:
        return
    ch = match.group()[0]
    line, col = line_col(text, match.start())
    raise RecipeError(
        f"{filename}:{line}:{col}: {describe_char(ch)} is not allowed in a recipe",
        hint=char_hint(ch),
        data={"offset": match.start(), "codepoint": ord(ch)},
    )


def bad_char_in_value(value: str) -> str | None:
    """The first character a recipe value must not contain (tab and newline are fine), or None."""
    match = _VALUE_BAD.search(value)
    return match.group() if match else None


def show(value: Any, limit: int = 60) -> str:
    """A value for an error message: YAML spelling for booleans/null, repr otherwise, cut to `limit` characters
    (a hostile value can be a megabyte long or contain control characters: repr escapes them)."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (set, frozenset)):
        return "a set"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - an object whose repr fails must not turn an error message into a crash
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind_of(value: Any) -> str:
    """What YAML made of a value, in words: `true (a boolean)`, `'2' (text)`, `2.0 (a decimal number)`."""
    import datetime as _dt

    if value is True or value is False:
        return f"{show(value)} (a boolean)"
    if value is None:
        return "null (nothing)"
    if isinstance(value, str):
        return f"{show(value)} (text)"
    if isinstance(value, int):
        return f"{show(value)} (an integer)"
    if isinstance(value, float):
        return f"{show(value)} (a decimal number)"
    if isinstance(value, (_dt.date, _dt.datetime)):
        return f"{value} (a date)"
    return show(value)
