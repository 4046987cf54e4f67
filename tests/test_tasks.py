"""The bundled question set and its scoring: well-formed, >= 200 items, exact-match rules, corpus determinism."""

from __future__ import annotations

import pytest

from patchkit.checks.corpus import STDLIB_FILES, load_corpus, prose_chunks, stdlib_chunks
from patchkit.checks.tasks import FEW_SHOT, TaskItem, is_exact_match, item_prompt, load_tasks, normalize_answer
from patchkit.errors import CheckError


def test_bundled_task_set_is_large_and_well_formed():
    tasks = load_tasks()
    assert len(tasks.items) >= 200
    kinds = {it.kind for it in tasks.items}
    assert kinds == {"fact", "arithmetic", "reading"}
    for kind in kinds:
        assert sum(it.kind == kind for it in tasks.items) >= 40
    ids = [it.id for it in tasks.items]
    assert len(set(ids)) == len(ids)
    for it in tasks.items:
        assert it.answer in it.options and len(set(it.options)) == len(it.options) >= 2
        assert (it.passage is not None) == (it.kind == "reading")
    # arithmetic answers are right (the file was written by a generator; check it, do not trust it)
    for it in tasks.items:
        if it.kind == "arithmetic" and it.question.startswith("What is "):
            expr = it.question[len("What is ") : -1].replace("times", "*").replace("divided by", "/")
            assert float(eval(expr, {"__builtins__": {}})) == float(it.answer), it.id  # noqa: S307


def test_limited_keeps_every_kind():
    tasks = load_tasks().limited(3)
    assert len(tasks.items) == 9
    assert sorted({it.kind for it in tasks.items}) == ["arithmetic", "fact", "reading"]


def test_prompt_contains_passage_for_reading():
    tasks = load_tasks()
    reading = next(it for it in tasks.items if it.kind == "reading")
    prompt = item_prompt(reading)
    assert prompt.startswith(FEW_SHOT + "Passage: " + reading.passage)
    assert prompt.endswith(f"Question: {reading.question}\nAnswer:")


@pytest.mark.parametrize(
    "generated, ok",
    [
        (" Paris", True),
        (" Paris.\nQuestion: next", True),
        ("paris is the capital", True),
        (" The Paris", True),
        (" Lyon", False),
        (" Parisian food", False),
        ("", False),
        ("\n\n Paris", True),
    ],
)
def test_exact_match_rules(generated, ok):
    item = TaskItem("t", "fact", "Capital of France?", ("Paris", "Lyon"), "Paris")
    assert is_exact_match(generated, item) is ok


def test_exact_match_aliases_and_numbers():
    item = TaskItem("t", "arithmetic", "3+4?", ("7", "8"), "7", accept=("seven",))
    assert is_exact_match(" 7", item) and is_exact_match(" Seven.", item) and not is_exact_match(" 17", item)
    assert normalize_answer("3,000 homes") == "3000 homes"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "task file is empty"),
        ("version: 1\nitems: []\n", "task file has no items"),
        (
            "items:\n  - {id: a, kind: fact, question: q, options: [x, y], answer: z}\n",
            "items[0].answer: 'z' is not one",
        ),
        ("items:\n  - {id: a, kind: trivia, question: q, options: [x, y], answer: x}\n", "items[0].kind"),
        ("items:\n  - {id: a, kind: fact, question: q, options: [x], answer: x}\n", "at least two distinct options"),
        (
            "items:\n  - {id: a, kind: reading, passage: p, question: q, options: [x, y], answer: x}\n",
            "unknown passage 'p'",
        ),
        ("items: [\n", "not valid YAML"),
    ],
)
def test_bad_task_files(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(CheckError) as err:
        load_tasks(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_task_file(tmp_path):
    with pytest.raises(CheckError, match="task file not found"):
        load_tasks(tmp_path / "nope.yaml")


def test_corpus_is_deterministic_real_text():
    a, b = load_corpus(8, 4), load_corpus(8, 4)
    assert [c.sha256 for c in a] == [c.sha256 for c in b]
    assert len(a) == 12
    code = stdlib_chunks(8)
    assert all(c.source.split(":")[1].split("#")[0] in STDLIB_FILES for c in code)
    assert all(len(c.text) >= 300 for c in code)
    prose = prose_chunks(100)
    assert len(prose) >= 12 and all(len(p.text.split()) >= 40 for p in prose)
    assert stdlib_chunks(40)[:8] == code  # asking for more keeps the first ones
