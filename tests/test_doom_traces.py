"""The doom detector on labelled thinking traces built by code: self-correction circles vs converging traces.

Every trace here is a budget-exhausted thinking block with no answer (the only case `detect` judges as doom or
truncated). Circles re-correct the same claim with varied wording and values (so they are not verbatim loops);
converging traces make genuine progress, some saying "wait" now and then, some after circling early (they
converge late), some with corrections that each add an item. The labels are the ground truth; precision is
checked on both sides, and the thresholds' boundary is pinned.
"""

from __future__ import annotations

import random

import pytest

from patchkit.checks.detect import STANDARD, Thresholds, detect

NAMES = (
    "Alabama Alaska Arizona Arkansas California Colorado Connecticut Delaware Florida Georgia Hawaii Idaho "
    "Illinois Indiana Iowa Kansas Kentucky Louisiana Maine Maryland Massachusetts Michigan Minnesota Mississippi "
    "Missouri Montana Nebraska Nevada Ohio Oklahoma Oregon Pennsylvania Texas Utah Vermont Virginia Washington "
    "Wisconsin Wyoming Hydrogen Helium Lithium Beryllium Boron Carbon Nitrogen Oxygen Fluorine Neon Sodium "
    "Magnesium Aluminium Silicon Phosphorus Sulfur Chlorine Argon Potassium Calcium Scandium Titanium Vanadium"
).split()
VERBS = ["borders", "is north of", "shares a river with", "trades with", "is larger than", "was settled after"]
FRAMES = [
    "{a} {v} {b}, so I keep {a} in the list.",
    "Checking {a}: it {v} {b}, which fits.",
    "{a} comes next; it {v} {b}.",
    "Then {a}, since it {v} {b}.",
    "Now {a}: confirmed that it {v} {b}.",
]
OPENERS = [
    "Wait, ",
    "Actually, ",
    "Hmm, ",
    "No, wait, ",
    "Hold on, ",
    "Let me recount. ",
    "Actually no, ",
    "Let me double-check. ",
]
CLAIMS = [
    "so {s} is {v}.",
    "that makes {v} for {s}.",
    "I think {s} comes to {v}.",
    "then {s} should be {v}.",
    "{s} is {v}, I believe.",
]


def _step(rng: random.Random, i: int) -> str:
    """One sentence of genuine progress: a new item with a fact about it."""
    a, b = NAMES[i % len(NAMES)], NAMES[(i * 7 + 3) % len(NAMES)]
    return rng.choice(FRAMES).format(a=a, v=rng.choice(VERBS), b=b)


def circles(subject: str, values: list[int], rounds: int, seed: int, *, progress_first: int = 0) -> str:
    """A doom trace: (optionally some progress, then) a guess re-corrected `rounds` times among `values`."""
    rng = random.Random(seed)
    out = [_step(rng, i) for i in range(progress_first)]
    out.append(f"First guess: {subject} is {values[0]}.")
    for _ in range(rounds):
        out.append(rng.choice(OPENERS) + rng.choice(CLAIMS).format(s=subject, v=rng.choice(values)))
    return " ".join(out)


def converging(steps: int, seed: int, *, wait_every: int = 0, circle_first: int = 0, add_every: int = 0) -> str:
    """A trace making progress: `steps` sentences, a "wait"/"actually" every `wait_every`, a correction that
    adds a missed item every `add_every`, after `circle_first` rounds of early circling."""
    rng = random.Random(seed)
    out = [circles("the count", [24, 25, 26], circle_first, seed)] if circle_first else []
    for i in range(steps):
        if add_every and i % add_every == 1:
            out.append(f"Wait, I missed {NAMES[(i * 11) % len(NAMES)]}: adding it.")
        elif wait_every and i % wait_every == wait_every - 1:
            out.append(rng.choice(["Wait, ", "Actually, ", "Hmm, "]) + f"{NAMES[i % len(NAMES)]} belongs here too.")
        else:
            out.append(_step(rng, i))
    return " ".join(out)


DOOM = {
    "episodes-circle": circles("season 3", [24, 25, 26], 12, 1),
    "letters-short-circle": circles("the r count", [2, 3], 5, 2),
    "circle-after-long-progress": circles("the total", [87, 88, 89], 14, 3, progress_first=25),
    "long-circle": circles("the sum", [41, 42, 43, 44], 60, 4),
    "two-values-circle": circles("the capital", [1890, 1891], 9, 5),
    "circle-after-short-progress": circles("the answer", [7, 8, 9], 8, 6, progress_first=4),
    "long-circle-after-long-progress": circles("the year", [1969, 1970, 1971], 40, 7, progress_first=60),
}
CONVERGING = {
    "plain-progress": converging(80, 5),
    "sparse-waits": converging(90, 6, wait_every=12),
    "waits-every-fifth": converging(60, 9, wait_every=5),
    "converges-late-after-circling": converging(60, 7, circle_first=8),
    "converges-late-after-long-circling": converging(120, 8, circle_first=25),
    "productive-corrections": converging(40, 10, add_every=3),
    "short-progress": converging(8, 11),
    "long-progress-with-waits": converging(300, 12, wait_every=9),
}


@pytest.mark.parametrize("name", sorted(DOOM))
def test_self_correction_circles_are_doom(name):
    verdict = detect("", thinking=DOOM[name], finished=False)
    assert verdict.label == "doom", (verdict.label, verdict.evidence)
    ev = verdict.evidence
    assert ev.where == "thinking" and ev.kind == "corrections" and ev.detail["tail_share"] >= 0.5


@pytest.mark.parametrize("name", sorted(CONVERGING))
def test_converging_traces_are_truncated_not_doom(name):
    verdict = detect("", thinking=CONVERGING[name], finished=False)
    assert verdict.label == "truncated", (verdict.label, verdict.evidence)
    assert not verdict.is_loop


def test_precision_on_both_sides():
    """All traces at once: no converging trace called doom, no circle missed (precision 1 for both labels)."""
    said_doom = {n for n, t in {**DOOM, **CONVERGING}.items() if detect("", thinking=t, finished=False).label == "doom"}
    assert said_doom == set(DOOM)
    assert len(DOOM) + len(CONVERGING) >= 15


@pytest.mark.parametrize("name", ["converges-late-after-long-circling", "long-circle"])
def test_a_trace_with_an_answer_is_never_doom(name):
    """A closed thinking block followed by an answer committed: ok whatever the trace did."""
    trace = {**DOOM, **CONVERGING}[name]
    assert detect("The answer is 42.", thinking=trace, finished=True).label == "ok"


def test_the_share_threshold_is_what_separates_waits_every_fifth():
    """The converging trace with a correction every fifth sentence is doom only if the share bar drops to 0.2:
    the bar (not the count of corrections, which is high) is what keeps it out."""
    trace = CONVERGING["waits-every-fifth"]
    loose = Thresholds(correction_share=0.2)
    assert detect("", thinking=trace, finished=False, thresholds=STANDARD).label == "truncated"
    assert detect("", thinking=trace, finished=False, thresholds=loose).label == "doom"
