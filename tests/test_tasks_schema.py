"""Task files are validated by strict pydantic models; every refusal is one line naming file:line:column and field.

The accepted files are the ones accepted before the schema: the bundled set, the documented format (docs/bench.md)
and the files the other tests write. What changed is that sloppy values are refused instead of silently converted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import patchkit.checks.tasks as tasks_module
from patchkit.checks.tasks import TaskFile, TaskSpec, load_tasks, parse_tasks
from patchkit.errors import CheckError

ROOT = Path(__file__).resolve().parents[1]
ITEM = "{id: a, kind: fact, question: q, options: [x, y], answer: x}"


def _docs_example() -> str:
    text = (ROOT / "docs" / "bench.md").read_text(encoding="utf-8")
    block = text.split("## The bundled question set", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    return block


def test_the_bundled_set_and_the_documented_format_load():
    bundled = load_tasks()
    assert len(bundled.items) == 210 and bundled.source == "patchkit/checks/data/tasks.yaml"
    reading = next(it for it in bundled.items if it.kind == "reading")
    assert reading.passage and reading.passage.startswith("Mia opened her bakery")
    brazil = next(it for it in bundled.items if it.id == "fact-011")
    assert brazil.accept == ("Brasília",) and brazil.gold == 3
    docs = parse_tasks(_docs_example(), "bench.md")
    assert [it.id for it in docs.items] == ["f1", "a1", "r1"]
    assert (
        docs.items[1].accept == ("five",) and docs.items[2].passage == "Ada runs a shop on Hill Road. It opens at nine."
    )


@pytest.mark.parametrize(
    "text",
    [
        f"items:\n  - {ITEM}\n",  # no version, no passages
        f"version: 1\npassages:\nitems:\n  - {ITEM}\n",  # an empty passages key
        "version: 1\npassages: {}\nitems:\n  - {id: a, kind: fact, question: q, options: [x, y], answer: x, accept: null}\n",
        "items:\n  - id: a\n    kind: fact\n    question: q\n    options:\n      - x\n      - y\n    answer: x\n",  # block style
        "items:\n  - &one {id: a, kind: fact, question: q, options: [x, y], answer: x}\n",  # an anchor is harmless
    ],
)
def test_other_accepted_shapes(text):
    tasks = parse_tasks(text, "t.yaml")
    assert [it.id for it in tasks.items] == ["a"] and tasks.items[0].options == ("x", "y")


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CheckError) as err:
        load_tasks(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:"), message
    return message.removeprefix(f"{path}:")


@pytest.mark.parametrize(
    "text, where, message",
    [
        # unknown key: points at the key itself and lists the allowed ones
        (
            "items:\n  - {id: a, kind: fact, question: q, options: [x, y], answer: x, colour: red}\n",
            "2:66",
            "items[0]: unknown key 'colour' (allowed keys: id, kind, question, options, answer, accept, passage)",
        ),
        ("version: 1\nsource: me\nitems:\n  - " + ITEM + "\n", "2:1", "task file: unknown key 'source'"),
        # numbers, booleans and dates where text is expected are refused, not converted
        (
            "items:\n  - id: a\n    kind: fact\n    question: q\n    options: [5, 6]\n    answer: '5'\n",
            "5:15",
            "items[0].options[0]: must be text, got 5 (a number) (and 1 more problem(s)) (put it in quotes",
        ),
        (
            "items:\n  - {id: a, kind: fact, question: q, options: [x, y], answer: true}\n",
            "2:55",
            "items[0].answer: must be text, got true (a boolean)",
        ),
        (
            "items:\n  - {id: a, kind: fact, question: 2024-01-01, options: [x, y], answer: x}\n",
            "2:25",
            "items[0].question: must be text, got 2024-01-01 (a date)",
        ),
        (
            "items:\n  - {id: 7, kind: fact, question: q, options: [x, y], answer: x}\n",
            "2:6",
            "items[0].id: must be text",
        ),
        ("items:\n  - {id: a, kind: fact, options: [x, y], answer: x}\n", "2:5", "items[0].question: is required"),
        ("items:\n  - {id: a, kind: fact, question: '', options: [x, y], answer: x}\n", "2:25", "must not be empty"),
        (
            "items:\n  - {id: a, kind: fact, question: q, options: [x, y], answer: x, accept: Paris}\n",
            "2:66",
            "items[0].accept: must be a list, got 'Paris' (text)",
        ),
        ("items:\n  - {id: a, kind: fact, question: q, options: [x, x], answer: x}\n", "2:38", "two distinct options"),
        ("items:\n  - just text\n", "2:5", "items[0]: must be a mapping, got 'just text' (text)"),
        ("items: 5\n", "1:1", "items: must be a list, got 5 (a number)"),
        ("passages: [a]\nitems:\n  - " + ITEM + "\n", "1:1", "passages: must be a mapping, got a list"),
        ("passages: {p: 3}\nitems:\n  - " + ITEM + "\n", "1:12", "passages.p: must be text, got 3 (a number)"),
        (
            "version: 2\nitems:\n  - " + ITEM + "\n",
            "1:1",
            "version: 2 is not supported (this patchkit reads version 1)",
        ),
        ("version: true\nitems:\n  - " + ITEM + "\n", "1:1", "version: must be a whole number, got true"),
        # cross-item rules, at the offending item
        (
            "items:\n  - " + ITEM + "\n  - " + ITEM + "\n",
            "3:6",
            "items[1].id: duplicate id 'a' (first in items[0])",
        ),
        (
            "passages: {shop: text}\nitems:\n  - {id: a, kind: reading, passage: mill, question: q, options: [x, y], answer: x}\n",
            "3:28",
            "items[0].passage: unknown passage 'mill' (known: shop)",
        ),
        # YAML-level refusals
        ("items:\n  - {id: a, id: b, kind: fact, question: q, options: [x, y], answer: x}\n", "2:13", "duplicate key"),
        (
            "items:\n  - {id: !!python/object/apply:os.system [echo hi], kind: fact, question: q, options: [x], answer: x}\n",
            "2:6",
            "items[0].id: YAML tag 'tag:yaml.org,2002:python/object/apply",
        ),
        (
            "items:\n  - {id: !custom a, kind: fact, question: q, options: [x, y], answer: x}\n",
            "2:6",
            "YAML tag '!custom'",
        ),
        ("items:\n  - {id: a\n", "3:1", "not valid YAML"),
    ],
)
def test_bad_files_name_the_line_column_and_field(tmp_path, text, where, message):
    got = _error(tmp_path, text)
    assert got.startswith(f"{where}: "), got
    assert message in got, got


def test_the_line_is_the_offending_item_in_a_long_file(tmp_path):
    good = [f"  - {{id: q{i}, kind: fact, question: q, options: [x, y], answer: x}}" for i in range(40)]
    good[27] = "  - {id: q27, kind: fact, question: q, options: [x, y], answer: z}"
    got = _error(tmp_path, "version: 1\nitems:\n" + "\n".join(good) + "\n")
    assert re.match(r"30:\d+: items\[27\]\.answer: 'z' is not one of the options", got), got


def test_an_alias_bomb_stops_at_the_node_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks_module, "MAX_TASK_NODES", 5_000)
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcde", "bcdef", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    got = _error(tmp_path, "\n".join(levels) + "\nitems: *f\n")
    assert "the task file expands to more than 5,000 values" in got


def test_the_models_are_strict_and_closed():
    assert TaskSpec.model_config.get("strict") is True and TaskSpec.model_config.get("extra") == "forbid"
    assert TaskFile.model_config.get("strict") is True and TaskFile.model_config.get("extra") == "forbid"
    assert set(TaskSpec.model_fields) == {"id", "kind", "question", "options", "answer", "accept", "passage"}
