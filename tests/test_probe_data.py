"""The packaged probe suites (patchkit/checks/probes/*.yaml) are correct data in the documented format.

Users quote completeness numbers computed from these truth lists, so the lists are checked here for their exact
sizes, for items that would collapse onto each other after normalisation, for spot facts (Pikachu is #25, Gold is
element 79, the 47th presidency is Donald Trump's) and for a balanced, fixed train/held-out split. This test reads
the YAML itself and does not import the suite loader (patchkit.checks.probes), so it checks the data, not the code.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from ruamel.yaml import YAML

PROBES_DIR = Path(__file__).resolve().parents[1] / "patchkit" / "checks" / "probes"
SUITES = ("enumeration", "controls", "smoke")

TOP_KEYS = {"suite", "version", "description", "probes"}
ITEM_KEYS = {"id", "kind", "split", "category", "source", "truth", "aliases", "prompts", "answer", "max_new_tokens"}
KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

# Exact sizes of every packaged enumeration list (the convention of each is in its `source` and docs/probes.md).
EXPECTED_SIZES = {
    "iau-constellations": 88,
    "chemical-elements": 118,
    "amino-acids": 20,
    "hand-bones": 27,
    "breaking-bad-episodes": 62,
    "friends-season-1": 24,
    "simpsons-season-1": 13,
    "pokemon-gen1": 151,
    "disney-animated-canon": 62,
    "us-states": 50,
    "africa-countries": 54,
    "south-america-countries": 12,
    "japan-prefectures": 47,
    "eu-member-states": 27,
    "eu-capitals": 27,
    "canada-provinces-territories": 13,
    "mexico-states": 32,
    "india-states": 28,
    "germany-states": 16,
    "nato-members": 32,
    "us-state-capitals": 50,
    "roman-emperors-principate": 27,
    "us-presidents": 45,
    "english-monarchs": 42,
    "nba-teams": 30,
    "nfl-teams": 32,
    "bible-books": 66,
    "shakespeare-plays": 38,
    "greek-alphabet": 24,
    "lanthanides": 15,
    "cranial-nerves": 12,
    "james-bond-films": 25,
    "pixar-films": 28,
    "western-zodiac": 12,
    "chinese-zodiac": 12,
    "italy-regions": 20,
    "brazil-states": 27,
    "oceania-countries": 14,
    "spain-autonomous-communities": 17,
    "uk-prime-ministers": 18,
    "summer-olympics-hosts": 23,
}

# Wordings whose greedy SmolLM2-135M outputs were measured to loop before the suite was written; kept verbatim.
RESEARCH_PROMPTS = {
    "iau-constellations": "List all 88 IAU constellations.",
    "pokemon-gen1": "List the 151 original Pokemon.",
    "us-states": "List all 50 US states.",
    "bible-books": "List all 66 books of the Bible.",
    "japan-prefectures": "List all 47 prefectures of Japan.",
    "shakespeare-plays": "List all of Shakespeare's plays.",
}

# A correct and a wrong reply for every control, scored with the documented answer semantics (below).
CONTROL_REPLIES = {
    "capital-france": ("The capital of France is Paris.", "The capital of France is Lyon."),
    "capital-japan": ("Tokyo is the capital of Japan.", "The capital of Japan is Kyoto."),
    "capital-italy": ("The capital of Italy is Rome.", "The capital of Italy is Milan."),
    "capital-united-kingdom": ("London.", "The capital is Manchester."),
    "add-12-7": ("12 + 7 = 19", "12 + 7 = 9"),
    "multiply-6-7": ("6 times 7 is 42.", "6 times 7 is 36."),
    "divide-100-4": ("100 divided by 4 is 25.", "100 divided by 4 is 40."),
    "apples-left": ("You have 2 apples left.", "You have 3 apples."),
    "hours-in-day": ("24", "A day has 12 hours of light; 24 of them make 2 days."),
    "centimetres-in-metre": ("There are 100 centimeters in a meter.", "There are 10 centimeters in a meter."),
    "grams-in-kilogram": ("A kilogram is 1,000 grams.", "A kilogram is 100 grams."),
    "days-in-week": ("A week has seven days.", "A week has five days."),
    "months-in-year": ("There are 12 months in a year.", "A year is 365 days. So 1 year is 365 * 12 = 312 months."),
    "gold-symbol": ("The chemical symbol for gold is Au.", "The chemical symbol for gold is Ag."),
    "water-boiling-point": ("Water boils at 100.0°C at sea level.", "Water boils at 90 degrees Celsius, 100 times."),
    "sky-colour": ("The sky is blue.", "The sky is green."),
    "our-planet": ("We live on Earth.", "We live on Mars."),
    "opposite-of-hot": ("The opposite of hot is cold.", "The opposite of hot is warm."),
    "plural-of-mouse": ("The plural of mouse is mice.", "The plural of mouse is mouses."),
    "hello-in-spanish": ("Hello in Spanish is hola.", "Hello in Spanish is bonjour."),
    "yes-in-capitals": ("YES", "yes"),
    "count-to-five": ("1, 2, 3, 4, 5", "1 2 3 4 5"),
    "repeat-banana": ("banana banana banana", "banana banana"),
    "cow-one-word": ("Cow", "Sheep"),
    "primary-colours": ("Red is a primary colour.", "Green."),
    "finish-sentence": ("The cat sat on the mat.", "The cat sat on the chair."),
    "romeo-juliet-author": ("William Shakespeare wrote Romeo and Juliet.", "Christopher Marlowe wrote it."),
    "add-2-2": ("2 + 2 = 4", "2 + 2 = 5"),
    "add-10-10": ("10 + 10 = 20.", "10 + 10 = 100."),
    "seconds-in-minute": ("One minute has 60 seconds.", "One minute has 100 seconds."),
    "first-month": ("January is the first month.", "March."),
    "days-in-year": ("A normal year has 365 days.", "A year has 366 days."),
    "alphabet-letters": ("The English alphabet has twenty-six letters.", "It has 24 letters."),
    "mona-lisa-painter": ("Leonardo da Vinci painted it.", "Michelangelo painted it."),
    "currency-japan": ("The Japanese yen.", "The won."),
    "language-brazil": ("Brazilians speak Portuguese.", "Brazilians speak Spanish."),
}


def _load(name: str) -> dict:
    return YAML(typ="safe").load((PROBES_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def suites() -> dict[str, dict]:
    return {name: _load(name) for name in SUITES}


def _items(suite: dict, kind: str | None = None) -> list[dict]:
    return [it for it in suite["probes"] if kind is None or it["kind"] == kind]


def norm(text: str) -> str:
    """Accents, case, punctuation and a leading "the" removed: how a grader would compare two list entries."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
    key = " ".join(re.sub(r"[^\w\s]", " ", folded).split())
    return key[4:] if key.startswith("the ") else key


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("name", SUITES)
def test_file_follows_the_documented_format(suites, name):
    suite = suites[name]
    assert set(suite) == TOP_KEYS, f"{name}: top-level keys {sorted(suite)}"
    assert suite["suite"] == name and suite["version"] == 1 and suite["description"].strip()
    ids = [it["id"] for it in suite["probes"]]
    assert len(ids) == len(set(ids)), f"{name}: duplicate ids {[i for i, c in Counter(ids).items() if c > 1]}"
    for it in suite["probes"]:
        where = f"{name}:{it.get('id')}"
        assert set(it) <= ITEM_KEYS, f"{where}: unknown keys {set(it) - ITEM_KEYS}"
        assert KEBAB.match(it["id"]), where
        assert it["kind"] in ("enumeration", "control"), where
        assert it["split"] in ("train", "heldout"), where
        assert isinstance(it["category"], str) and it["category"], where
        prompts = it["prompts"]
        assert isinstance(prompts, list) and prompts, where
        assert all(isinstance(p, str) and p.strip() == p and p for p in prompts), where
        assert len({norm(p) for p in prompts}) == len(prompts), f"{where}: two wordings are the same"
        if "max_new_tokens" in it:
            assert isinstance(it["max_new_tokens"], int) and 1 <= it["max_new_tokens"] <= 32768, where
        if it["kind"] == "enumeration":
            assert "answer" not in it, where
            assert isinstance(it["source"], str) and len(it["source"]) > 20, f"{where}: source must name the convention"
            assert isinstance(it["truth"], list) and len(it["truth"]) >= 12, (
                f"{where}: lists under 12 items are too short"
            )
            assert all(isinstance(t, str) and t.strip() == t and t for t in it["truth"]), where
            aliases = it.get("aliases") or {}
            assert set(aliases) <= set(it["truth"]), (
                f"{where}: aliases for unknown items {set(aliases) - set(it['truth'])}"
            )
            assert all(
                isinstance(v, list) and v and all(isinstance(a, str) and a for a in v) for v in aliases.values()
            ), where
        else:
            assert "truth" not in it and "aliases" not in it, where
            answer = it["answer"]
            assert isinstance(answer, dict) and len(answer) == 1, (
                f"{where}: answer needs exactly one of any/number/regex"
            )
            ((mode, value),) = answer.items()
            assert mode in ("any", "number", "regex"), where
            if mode == "any":
                assert isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value), where
            elif mode == "number":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
            else:
                re.compile(value)


def test_suite_sizes(suites):
    enum = _items(suites["enumeration"])
    assert all(it["kind"] == "enumeration" for it in enum)
    assert len(enum) >= 24
    assert sum(len(it["prompts"]) for it in enum) >= 55
    assert all(2 <= len(it["prompts"]) <= 3 for it in enum), "2-3 wordings per enumeration item"
    controls = _items(suites["controls"])
    assert all(it["kind"] == "control" for it in controls)
    assert len(controls) >= 32
    assert all(len(it["prompts"]) >= 2 for it in controls)
    smoke = suites["smoke"]
    assert len(_items(smoke, "enumeration")) == 6 and len(_items(smoke, "control")) == 4
    assert all(len(it["prompts"]) == 1 for it in smoke["probes"])


# ---------------------------------------------------------------- ground truth


def test_every_truth_list_has_its_exact_size(suites):
    enum = {it["id"]: it for it in _items(suites["enumeration"])}
    assert set(enum) == set(EXPECTED_SIZES), "a new item needs its size in EXPECTED_SIZES (and docs/probes.md)"
    wrong = {k: len(enum[k]["truth"]) for k, n in EXPECTED_SIZES.items() if len(enum[k]["truth"]) != n}
    assert not wrong, f"truth sizes differ from the documented counts: {wrong}"


def test_truth_items_stay_distinct_after_normalisation(suites):
    for it in _items(suites["enumeration"]):
        owner: dict[str, str] = {}
        for name in it["truth"]:
            key = norm(name)
            assert key, f"{it['id']}: {name!r} normalises to nothing"
            assert key not in owner, f"{it['id']}: {name!r} and {owner.get(key)!r} are the same after normalisation"
            owner[key] = name
        for name, aliases in (it.get("aliases") or {}).items():
            for alias in aliases:
                key = norm(alias)
                assert key != norm(name), f"{it['id']}: alias {alias!r} of {name!r} is redundant"
                assert owner.get(key, name) == name, (
                    f"{it['id']}: alias {alias!r} of {name!r} collides with {owner[key]!r}"
                )
                owner[key] = name


def test_truth_items_contain_no_list_separators(suites):
    """The list splitter treats commas and semicolons as item separators, so a true item must not contain one."""
    for it in _items(suites["enumeration"]):
        names = list(it["truth"]) + [a for v in (it.get("aliases") or {}).values() for a in v]
        bad = [n for n in names if "," in n or ";" in n or "\n" in n]
        assert not bad, f"{it['id']}: {bad}"


def _truth(suites, item_id: str) -> list[str]:
    return next(it["truth"] for it in _items(suites["enumeration"]) if it["id"] == item_id)


def test_spot_facts_in_ordered_lists(suites):
    pokemon = _truth(suites, "pokemon-gen1")
    assert (pokemon[0], pokemon[24], pokemon[129], pokemon[149], pokemon[150]) == (
        "Bulbasaur",
        "Pikachu",
        "Gyarados",
        "Mewtwo",
        "Mew",
    )
    elements = _truth(suites, "chemical-elements")
    assert (elements[0], elements[25], elements[78], elements[91], elements[117]) == (
        "Hydrogen",
        "Iron",
        "Gold",
        "Uranium",
        "Oganesson",
    )
    bible = _truth(suites, "bible-books")
    assert bible.index("Malachi") == 38 and bible.index("Matthew") == 39 and bible[-1] == "Revelation"
    bb = _truth(suites, "breaking-bad-episodes")  # seasons of 7, 13, 13, 13, 16 episodes
    assert [bb[i] for i in (0, 7, 20, 33, 46, 61)] == [
        "Pilot",
        "Seven Thirty-Seven",
        "No Más",
        "Box Cutter",
        "Live Free or Die",
        "Felina",
    ]
    friends = _truth(suites, "friends-season-1")
    assert all(t.startswith("The One ") for t in friends) and friends[-1] == "The One Where Rachel Finds Out"
    emperors = _truth(suites, "roman-emperors-principate")
    assert emperors[0] == "Augustus" and emperors[-1] == "Severus Alexander" and emperors.index("Nero") == 4
    monarchs = _truth(suites, "english-monarchs")
    assert monarchs[0] == "William I" and monarchs[-1] == "Charles III" and "Lady Jane Grey" not in monarchs
    disney = _truth(suites, "disney-animated-canon")
    assert disney[0] == "Snow White and the Seven Dwarfs" and disney[52] == "Frozen" and disney[-1] == "Wish"
    capitals = dict(zip(_truth(suites, "us-states"), _truth(suites, "us-state-capitals"), strict=True))
    assert {k: capitals[k] for k in ("California", "Kentucky", "New York", "Texas", "Washington", "Wyoming")} == {
        "California": "Sacramento",
        "Kentucky": "Frankfort",
        "New York": "Albany",
        "Texas": "Austin",
        "Washington": "Olympia",
        "Wyoming": "Cheyenne",
    }
    eu = dict(zip(_truth(suites, "eu-member-states"), _truth(suites, "eu-capitals"), strict=True))
    assert (eu["Austria"], eu["Czechia"], eu["Malta"], eu["Netherlands"], eu["Sweden"]) == (
        "Vienna",
        "Prague",
        "Valletta",
        "Amsterdam",
        "Stockholm",
    )
    assert _truth(suites, "lanthanides") == elements[56:71]  # La (57) .. Lu (71)
    bond = _truth(suites, "james-bond-films")
    assert (bond[0], bond[16], bond[20], bond[-1]) == ("Dr. No", "GoldenEye", "Casino Royale", "No Time to Die")
    pixar = _truth(suites, "pixar-films")
    assert (pixar[0], pixar[9], pixar[-1]) == ("Toy Story", "Up", "Inside Out 2")
    prefectures = _truth(suites, "japan-prefectures")
    assert prefectures[0] == "Hokkaido" and prefectures[12] == "Tokyo" and prefectures[-1] == "Okinawa"


def test_presidents_convention_gives_47_presidencies(suites):
    people = _truth(suites, "us-presidents")
    presidencies = list(people)
    presidencies.insert(23, "Grover Cleveland")  # 24th president, non-consecutive second term
    presidencies.append("Donald Trump")  # 47th president (2025)
    assert len(presidencies) == 47
    assert presidencies[0] == "George Washington" and presidencies[15] == "Abraham Lincoln"
    assert presidencies[21] == presidencies[23] == "Grover Cleveland" and presidencies[22] == "Benjamin Harrison"
    assert presidencies[44] == presidencies[46] == "Donald Trump" and presidencies[45] == "Joe Biden"


def test_structured_lists_add_up(suites):
    hand = _truth(suites, "hand-bones")
    assert sum("metacarpal" in b for b in hand) == 5
    assert sum("phalanx" in b for b in hand) == 14 and sum("thumb" in b for b in hand) == 2
    assert len(hand) - 5 - 14 == 8  # carpals
    plays = _truth(suites, "shakespeare-plays")
    assert sum(p.startswith("Henry VI ") for p in plays) == 3 and "Pericles" in plays and "Edward III" not in plays
    assert len(set(_truth(suites, "eu-member-states")) & set(_truth(suites, "nato-members"))) == 23
    assert set(_truth(suites, "south-america-countries")).isdisjoint(_truth(suites, "africa-countries"))


# ---------------------------------------------------------------- split


def _balanced(items: list[dict]) -> tuple[int, int]:
    counts = Counter(it["split"] for it in items)
    return counts["train"], counts["heldout"]


@pytest.mark.parametrize("name", ["enumeration", "controls", "smoke"])
def test_splits_are_balanced_overall_and_per_category(suites, name):
    for kind in ("enumeration", "control"):
        items = _items(suites[name], kind)
        if not items:
            continue
        train, heldout = _balanced(items)
        assert abs(train - heldout) <= 1, f"{name}/{kind}: {train} train vs {heldout} heldout items"
        prompts = Counter()
        for it in items:
            prompts[it["split"]] += len(it["prompts"])
        assert abs(prompts["train"] - prompts["heldout"]) <= max(2, 0.15 * sum(prompts.values())), (name, kind, prompts)
        if name == "smoke":
            continue
        for category in {it["category"] for it in items}:
            train, heldout = _balanced([it for it in items if it["category"] == category])
            assert abs(train - heldout) <= 1, f"{name}/{category}: {train} train vs {heldout} heldout"


def test_smoke_items_are_copies_of_the_full_suites(suites):
    full = {it["id"]: it for name in ("enumeration", "controls") for it in suites[name]["probes"]}
    for it in suites["smoke"]["probes"]:
        origin = full.get(it["id"])
        assert origin is not None, f"smoke item {it['id']} is not in the full suites"
        for key in ("kind", "split", "category", "truth", "aliases", "answer", "source"):
            assert it.get(key) == origin.get(key), f"smoke:{it['id']}: {key} differs from the full suite"
        assert it["prompts"][0] in origin["prompts"]


def test_research_wordings_are_kept_verbatim(suites):
    enum = {it["id"]: it for it in _items(suites["enumeration"])}
    for item_id, prompt in RESEARCH_PROMPTS.items():
        assert prompt in enum[item_id]["prompts"], item_id


# ---------------------------------------------------------------- control answers


_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?!\w)")


def score(answer: dict, text: str, prompt: str) -> bool:
    """Reference reading of the documented answer semantics (independent of patchkit.checks.answers)."""
    if "any" in answer:
        return any(f" {norm(p)} " in f" {norm(text)} " for p in answer["any"])
    if "number" in answer:
        given = {float(x.replace(",", "")) for x in _NUMBER.findall(prompt)}
        found = [float(x.replace(",", "")) for x in _NUMBER.findall(text)]
        found = [x for x in found if x not in given or x == answer["number"]]
        return bool(found) and found[-1] == answer["number"]
    return re.search(answer["regex"], text, re.IGNORECASE) is not None


def test_every_control_accepts_a_right_reply_and_rejects_a_wrong_one(suites):
    controls = {it["id"]: it for name in ("controls", "smoke") for it in _items(suites[name], "control")}
    assert set(controls) == set(CONTROL_REPLIES), "every control needs a right/wrong reply pair here"
    for item_id, it in controls.items():
        right, wrong = CONTROL_REPLIES[item_id]
        for prompt in it["prompts"]:
            assert score(it["answer"], right, prompt), f"{item_id}: rejects the right reply {right!r}"
            assert not score(it["answer"], wrong, prompt), f"{item_id}: accepts the wrong reply {wrong!r}"
