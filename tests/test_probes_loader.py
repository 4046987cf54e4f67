"""Suite files: schema validation with file:line errors, packaged suites, controls pulled in, selection."""

from __future__ import annotations

import pytest

from patchkit.checks.probes import load_suite, packaged_suites, parse_suite
from patchkit.errors import CheckError

GOOD = """\
suite: mini
version: 1
description: a test suite
probes:
  - id: iau-constellations
    kind: enumeration
    split: train
    category: astronomy
    source: IAU
    truth: [Andromeda, Antlia, Ursa Major]
    aliases: {"Ursa Major": ["Great Bear"]}
    prompts: ["List all 88 IAU constellations.", "Name every constellation."]
  - id: capital-france
    kind: control
    split: heldout
    category: geography
    prompts: ["What is the capital of France?"]
    answer: {any: ["Paris"]}
    max_new_tokens: 64
"""


def test_parse_good_suite_expands_prompts_into_probes():
    suite = parse_suite(GOOD, "mini.yaml")
    assert [p.id for p in suite.probes] == ["iau-constellations#0", "iau-constellations#1", "capital-france#0"]
    first, second, control = suite.probes
    assert first.truth == ("Andromeda", "Antlia", "Ursa Major") and second.split == first.split == "train"
    assert first.aliases == {"Ursa Major": ["Great Bear"]}
    assert control.answer == {"any": ["Paris"]} and control.max_new_tokens == 64 and control.truth is None


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("kind: enumeration", "kind: listing", "probes[0].kind"),
        ("split: train", "split: test", "probes[0].split"),
        ("id: iau-constellations", "id: IAU_Constellations", "kebab-case"),
        ("    truth: [Andromeda, Antlia, Ursa Major]\n", "", "needs `truth:`"),
        ('{"Ursa Major": ["Great Bear"]}', '{"Ursa Minor": ["Little Bear"]}', "not in truth"),
        ('answer: {any: ["Paris"]}', 'answer: {any: ["Paris"], number: 3}', "exactly one of any / number / regex"),
        ('answer: {any: ["Paris"]}', 'answer: {regex: "(unclosed"}', "regex does not compile"),
        ("max_new_tokens: 64", "max_new_tokens: 0", "probes[1].max_new_tokens"),
        ("version: 1", "version: 2", "version"),
        ("description: a test suite", "description: a test suite\nextra_key: 1", "extra_key"),
        ("id: capital-france", "id: iau-constellations", "used twice"),
    ],
)
def test_bad_suites_name_file_line_and_field(old, new, message):
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(CheckError) as exc:
        parse_suite(text, "bad.yaml")
    msg = str(exc.value)
    assert msg.startswith("bad.yaml"), msg
    assert message in msg, msg
    assert "\n" not in msg


def test_error_line_points_at_the_offending_field():
    text = GOOD.replace("split: heldout", "split: later")
    with pytest.raises(CheckError) as exc:
        parse_suite(text, "s.yaml")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "split: later" in row)
    assert str(exc.value).startswith(f"s.yaml:{line}: probes[1].split"), str(exc.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(CheckError, match=r"x.yaml:\d+: not valid YAML"):
        parse_suite("suite: [unclosed\n", "x.yaml")
    with pytest.raises(CheckError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(CheckError, match="unknown suite 'nonesuch'"):
        load_suite("nonesuch")


def test_user_suite_file_and_selection(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(GOOD)
    suite = load_suite(path, controls=False)
    assert suite.name == "mini" and len(suite.probes) == 3
    assert [p.id for p in suite.select(split="train").probes] == ["iau-constellations#0", "iau-constellations#1"]
    limited = suite.select(limit=1)
    assert [p.id for p in limited.probes] == ["iau-constellations#0", "capital-france#0"]  # N per kind
    with pytest.raises(CheckError, match="unknown split"):
        suite.select(split="dev")


PACKAGED = packaged_suites()


def test_packaged_enumeration_suite_pulls_in_controls():
    suite = load_suite("enumeration")
    kinds = {p.kind for p in suite.probes}
    assert kinds == {"enumeration", "control"}
    enum_items = {p.item_id for p in suite.probes if p.kind == "enumeration"}
    control_items = {p.item_id for p in suite.probes if p.kind == "control"}
    assert len(enum_items) >= 40 and len(control_items) >= 30
    assert {p.split for p in suite.probes} == {"train", "heldout"}
    for item in enum_items:  # rewordings of one item share its split
        assert len({p.split for p in suite.probes if p.item_id == item}) == 1
    assert len(load_suite("enumeration", controls=False).probes) == len(suite.by_kind("enumeration"))


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_suite_validates(name):
    suite = load_suite(name, controls=False)
    assert suite.probes
    ids = [p.id for p in suite.probes]
    assert len(ids) == len(set(ids))
