"""Recipe YAML to plain Python, with the line and column of every key and item, and every size bounded.

ruamel's round-trip loader keeps positions; two small subclasses make it safe on hostile text:
- the composer counts nodes as it goes, aliases at their expanded size (an alias "billion laughs" stops at the
  alias that crosses `MAX_NODES`), bounds the nesting depth (aliases included: a chain of 10,000 aliases is as
  deep as 10,000 nested lists) and refuses an anchor defined twice (an alias would silently mean the second);
- the constructor refuses numbers longer than `MAX_NUMBER_CHARS` before converting them (Python raises a
  ValueError, not a YAML error, on a 5,000-digit integer) and turns scalars that do not convert (`!!int 1.5`,
  `2026-02-30` read as a date) into a marker that is reported at its position.
The result is converted to plain dicts / lists / scalars; tags (anything that would build an object), sets,
binary data and non-text keys are refused, and so are control characters in any key or value.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from patchkit.errors import RecipeError
from patchkit.recipe._text import bad_char_in_value, char_hint, describe_char, show
from patchkit.recipe.limits import MAX_DEPTH, MAX_NODES, MAX_NUMBER_CHARS
from patchkit.recipe.schema import dotted, where_in

__all__ = ["load_plain"]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_STANDARD_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq"))


class _Bad:
    """A scalar YAML could not turn into a value; reported (with its field) when the data is converted."""

    __slots__ = ("hint", "mark", "problem")

    def __init__(self, mark: Any, problem: str, hint: str) -> None:
        self.mark, self.problem, self.hint = mark, problem, hint


def _at(filename: str, mark: Any) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{filename}:1:1"


def _classes() -> tuple[Any, Any]:
    """The composer and constructor subclasses (built on first use: ruamel is imported lazily)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    from ruamel.yaml.composer import Composer
    from ruamel.yaml.constructor import RoundTripConstructor
    from ruamel.yaml.events import AliasEvent
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    class SafeComposer(Composer):
        """Counts expanded nodes, bounds depth, refuses redefined anchors (see the module doc)."""

        def compose_document(self) -> Any:
            self.pk_sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
            self.pk_total = 0
            return super().compose_document()

        def _refuse(self, mark: Any, message: str, hint: str) -> None:
            raise RecipeError(f"{_at(self.loader.pk_filename, mark)}: {message}", hint=hint)

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.parser.peek_event()
            if isinstance(event, AliasEvent):
                node = super().compose_node(parent, index)
                size, depth = self.pk_sizes.get(id(node), (1, 1))
                self._count(size, event.start_mark)
                return node
            self._count(1, event.start_mark)
            if self.depth + 1 > MAX_DEPTH:
                self._refuse(
                    event.start_mark,
                    f"the recipe nests deeper than {MAX_DEPTH} levels",
                    "recipes are shallow data; flatten it",
                )
            if event.anchor is not None and event.anchor in self.anchors:
                first = self.anchors[event.anchor].start_mark
                self._refuse(
                    event.start_mark,
                    f"anchor &{show(event.anchor, 40)[1:-1]} is defined twice (first at line {first.line + 1})",
                    "give each anchor its own name: an alias would silently refer to the second one",
                )
            node = super().compose_node(parent, index)
            if isinstance(node, MappingNode):
                self._no_duplicate_keys(node)
            if isinstance(node, (MappingNode, SequenceNode)):
                children = (
                    [c for pair in node.value for c in pair] if isinstance(node, MappingNode) else list(node.value)
                )
                size, depth = 1, 1
                for child in children:
                    c_size, c_depth = self.pk_sizes.get(id(child), (1, 1))
                    size += c_size
                    depth = max(depth, c_depth + 1)
                if depth > MAX_DEPTH:
                    self._refuse(
                        node.start_mark,
                        f"the recipe nests deeper than {MAX_DEPTH} levels (through YAML aliases)",
                        "recipes are shallow data; remove the aliases (*name)",
                    )
                if size > MAX_NODES:
                    self._refuse(
                        node.start_mark,
                        f"the recipe expands to more than {MAX_NODES} values",
                        "recipes are small; remove the YAML aliases (*name) that multiply the data",
                    )
                self.pk_sizes[id(node)] = (size, depth)
            return node

        def _no_duplicate_keys(self, node: Any) -> None:
            """A key given twice (YAML would keep the last one silently), with the line of the first."""
            first: dict[tuple[str, str], Any] = {}
            for key, _value in node.value:
                if not isinstance(key, ScalarNode) or str(key.tag) == "tag:yaml.org,2002:merge":
                    continue
                ident = (str(key.tag), key.value)
                if ident in first:
                    shown = key.value if _PLAIN_KEY.fullmatch(key.value) else show(key.value, 40)
                    prev = first[ident]
                    at = (
                        f"line {prev.line + 1}"
                        if prev.line != key.start_mark.line
                        else f"line {prev.line + 1}, column {prev.column + 1}"
                    )
                    self._refuse(
                        key.start_mark,
                        f"{shown}: duplicate key (first at {at})",
                        "keep one of them: YAML would silently use the last",
                    )
                first[ident] = key.start_mark

        def _count(self, size: int, mark: Any) -> None:
            self.pk_total += size
            if self.pk_total > MAX_NODES:
                self._refuse(
                    mark,
                    f"the recipe expands to more than {MAX_NODES} values",
                    "recipes are small; remove the YAML aliases (*name) that multiply the data, or split the recipe",
                )

    def _too_long(node: Any, what: str) -> _Bad | None:
        if len(node.value) <= MAX_NUMBER_CHARS:
            return None
        return _Bad(
            node.start_mark,
            f"a {what} written with {len(node.value)} characters is too long (limit {MAX_NUMBER_CHARS})",
            "no recipe value needs a number this long",
        )

    class SafeConstructor(RoundTripConstructor):
        """Numbers bounded before conversion; unconvertible scalars become markers, not exceptions."""

        def pk_int(self, node: Any) -> Any:
            bad = _too_long(node, "number")
            if bad is not None:
                return bad
            try:
                return RoundTripConstructor.construct_yaml_int(self, node)
            except (ValueError, IndexError, TypeError):
                return _Bad(
                    node.start_mark, f"{show(node.value)} is not a valid integer", "write a whole number like 3"
                )

        def pk_float(self, node: Any) -> Any:
            bad = _too_long(node, "number")
            if bad is not None:
                return bad
            try:
                return RoundTripConstructor.construct_yaml_float(self, node)
            except (ValueError, IndexError, TypeError):
                return _Bad(node.start_mark, f"{show(node.value)} is not a valid number", "write a number like 0.5")

        def pk_bool(self, node: Any) -> Any:
            try:
                return RoundTripConstructor.construct_yaml_sbool(self, node)
            except (KeyError, ValueError, TypeError):
                return _Bad(node.start_mark, f"{show(node.value)} is not a valid boolean", "write true or false")

        def pk_timestamp(self, node: Any, values: Any = None) -> Any:
            if len(node.value) > MAX_NUMBER_CHARS:
                return _Bad(node.start_mark, "a date this long is not valid", "put the value in quotes")
            try:
                return RoundTripConstructor.construct_yaml_timestamp(self, node, values)
            except (ValueError, OverflowError, TypeError):
                return _Bad(
                    node.start_mark,
                    f"YAML reads {show(node.value)} as a date, but it is not a valid date",
                    "put the value in quotes so YAML keeps it as written",
                )

    base = "tag:yaml.org,2002:"
    SafeConstructor.add_constructor(base + "int", SafeConstructor.pk_int)
    SafeConstructor.add_constructor(base + "float", SafeConstructor.pk_float)
    SafeConstructor.add_constructor(base + "bool", SafeConstructor.pk_bool)
    SafeConstructor.add_constructor(base + "timestamp", SafeConstructor.pk_timestamp)
    _CLASSES = (SafeComposer, SafeConstructor)
    return _CLASSES


_CLASSES: tuple[Any, Any] | None = None


def _yaml(filename: str) -> Any:
    from ruamel.yaml import YAML

    composer, constructor = _classes()
    yaml = YAML(typ="rt")  # round-trip: keeps line/column; constructs only plain containers and scalars
    yaml.allow_duplicate_keys = False
    yaml.Composer = composer
    yaml.Constructor = constructor
    yaml.pk_filename = filename  # type: ignore[attr-defined]  # read by SafeComposer's messages
    return yaml


def _yaml_error(exc: Exception, filename: str, text: str) -> RecipeError:
    """A ruamel error as one line at its position; values it would quote are cut short."""
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError
    from ruamel.yaml.reader import ReaderError

    from patchkit.recipe._text import line_col

    if isinstance(exc, DuplicateKeyError):
        first, dup = exc.context_mark, exc.problem_mark
        key = _duplicate_key_name(exc)
        where = _at(filename, dup)
        line = f" (first at line {first.line + 1})" if first is not None and first.line != dup.line else ""
        return RecipeError(
            f"{where}: {key}duplicate key{line}", hint="keep one of them: YAML would silently use the last"
        )
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if len(problem) > 160:
            problem = problem[:159] + "…"
        return RecipeError(f"{_at(filename, mark)}: YAML syntax error: {problem}", hint="fix the YAML syntax")
    if isinstance(exc, ReaderError):
        at_line, at_col = line_col(text, max(0, int(getattr(exc, "position", 0) or 0)))
        ch = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)[:1] or "?"
        return RecipeError(
            f"{filename}:{at_line}:{at_col}: {describe_char(ch)} is not allowed in a recipe", hint=char_hint(ch)
        )
    message = " ".join(str(exc).split())
    return RecipeError(f"{filename}:1:1: YAML error: {message[:160]}", hint="fix the YAML syntax")


def _duplicate_key_name(exc: Any) -> str:
    """`name: ` from ruamel's 'found duplicate key "name" with value ...' (empty when the key is unusual)."""
    import re

    match = re.search(r'found duplicate key "([^"\n]{1,60})"', str(exc.problem or ""))
    return f"{match.group(1)}: " if match else ""


def load_plain(text: str, filename: str) -> tuple[Any, dict[tuple, tuple[int, int]]]:
    """(plain data, positions) of one YAML document; RecipeError (file:line:column) on anything unsafe."""
    from ruamel.yaml.error import YAMLError

    positions: dict[tuple, tuple[int, int]] = {}
    try:
        doc = _yaml(filename).load(text)
    except RecipeError:
        raise
    except YAMLError as exc:
        raise _yaml_error(exc, filename, text) from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # a corner of the YAML library the guards above do not cover: still one line, never a traceback
        raise RecipeError(
            f"{filename}:1:1: YAML error: {type(exc).__name__}: {show(str(exc), 160)}",
            hint="simplify the YAML (plain mappings, lists and scalars)",
        ) from None
    if doc is None:
        return None, positions
    return _plain(doc, (), positions, filename, [MAX_NODES], 0), positions


def _plain(node: Any, loc: tuple, positions: dict, filename: str, budget: list[int], depth: int) -> Any:
    """Convert ruamel containers to plain Python, recording the line/column of every key and item."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet, TaggedScalar

    def where() -> str:
        return where_in(filename, positions, loc)

    field = dotted(loc) or "document"
    budget[0] -= 1
    if budget[0] < 0:  # the composer already bounds this; kept so no path can walk unbounded data
        raise RecipeError(
            f"{where()}: the recipe expands to more than {MAX_NODES} values",
            hint="recipes are small; remove the YAML aliases (*name) that multiply the data",
        )
    if depth > MAX_DEPTH:
        raise RecipeError(
            f"{where()}: the recipe nests deeper than {MAX_DEPTH} levels", hint="recipes are shallow data"
        )
    if isinstance(node, _Bad):
        raise RecipeError(f"{_at(filename, node.mark)}: {field}: {node.problem}", hint=node.hint)
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, TaggedScalar) or (tag and tag not in _STANDARD_TAGS and tag != "!"):
        if tag == "tag:yaml.org,2002:set" or isinstance(node, CommentedSet):
            raise RecipeError(f"{where()}: {field}: a YAML set (!!set) is not allowed", hint="use a list: [a, b]")
        raise RecipeError(
            f"{where()}: {field}: YAML tag {show(tag or '', 60).strip(chr(39))} is not allowed",
            hint="recipes are plain data; remove the tag",
        )
    if isinstance(node, CommentedSet):
        raise RecipeError(f"{where()}: {field}: a YAML set (!!set) is not allowed", hint="use a list: [a, b]")
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key in node:
            try:
                line, col = node.lc.key(key)
                positions[loc + (key,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            if isinstance(key, _Bad):
                raise RecipeError(f"{_at(filename, key.mark)}: {field}: key: {key.problem}", hint=key.hint)
            if not isinstance(key, str):
                kw = where_in(filename, positions, loc + (key,)) if _hashable(key) else where()
                raise RecipeError(
                    f"{kw}: {field}: key {show(key)} must be a string", hint="keys are names: write them as plain text"
                )
            key = str(key)
            bad = bad_char_in_value(key)
            if bad is not None:
                raise RecipeError(
                    f"{where_in(filename, positions, loc + (key,))}: {field}: a key contains {describe_char(bad)}",
                    hint=char_hint(bad),
                )
            out[key] = _plain(node[key], loc + (key,), positions, filename, budget, depth + 1)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, item in enumerate(node):
            try:
                line, col = node.lc.item(i)
                positions[loc + (i,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            out_list.append(_plain(item, loc + (i,), positions, filename, budget, depth + 1))
        return out_list
    if isinstance(node, str):
        bad = bad_char_in_value(node)
        if bad is not None:
            raise RecipeError(f"{where()}: {field}: contains {describe_char(bad)}", hint=char_hint(bad))
        return str(node)
    if isinstance(node, bool) or node is None:
        return bool(node) if node is not None else None
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, (_dt.date, _dt.datetime)):  # kept so the schema can say "put it in quotes"
        return node
    if isinstance(node, (bytes, bytearray)):
        raise RecipeError(f"{where()}: {field}: binary data (!!binary) is not allowed", hint="recipes are text")
    raise RecipeError(
        f"{where()}: {field}: a YAML {type(node).__name__} is not allowed",
        hint="recipes are plain data: mappings, lists, text, numbers, true/false",
    )


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
