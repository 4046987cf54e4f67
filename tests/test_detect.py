"""Loop detector: labelled transcripts (hand-written and real SmolLM2 outputs), evidence, hard negatives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from patchkit.checks.detect import CERTAIN, STANDARD, certain_loop, detect, split_thinking

TRANSCRIPTS = Path(__file__).parent / "transcripts"
FILES = sorted(TRANSCRIPTS.glob("*.txt"))


def _classify(path: Path):
    raw = path.read_text(encoding="utf-8")
    thinking, answer, closed = split_thinking(raw)
    unfinished = ".unfinished" in path.name
    return detect(
        answer,
        finished=not unfinished and closed,
        thinking=thinking if thinking is not None and not answer.strip() else None,
    )


def test_transcript_corpus_covers_every_label_and_hard_negatives():
    labels = {p.name.split("__")[0] for p in FILES}
    assert labels == {"ok", "verbatim", "decay", "doom", "truncated"}
    names = " ".join(p.name for p in FILES)
    for hard_negative in ("refrain", "code-repeated-lines", "table", "us-states-complete"):
        assert hard_negative in names
    assert any(p.name.startswith("smollm2") or "__smollm2" in p.name for p in FILES), "real transcripts missing"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript_label(path):
    expected = path.name.split("__")[0]
    verdict = _classify(path)
    assert verdict.label == expected, (verdict.label, verdict.evidence)
    assert verdict.is_loop == (expected in ("verbatim", "decay", "doom"))
    if verdict.is_loop:
        ev = verdict.evidence
        assert ev is not None and ev.span.strip() and ev.start >= 0


def test_numbered_decay_is_item_level_with_evidence():
    head = "Here are the states:\n1. Alabama\n2. Alaska\n3. Arizona\n"
    loop = "".join(f"{i}. New Mexico\n" for i in range(4, 30))
    verdict = detect(head + loop, finished=False)
    assert verdict.label == "decay"
    ev = verdict.evidence
    assert ev.unit == "items" and ev.period == 1
    assert "New Mexico" in ev.span
    # the loop starts at the first repeated item, not at the list head
    assert (head + loop)[ev.start :].startswith("New Mexico")
    assert ev.copies >= 20


def test_verbatim_evidence_period_and_start():
    prefix = "The scene is the scene of the balcony"
    text = prefix + " of the balcony" * 30
    ev = detect(text, finished=False).evidence
    assert ev.kind == "verbatim-chars" and ev.period == len(" of the balcony")
    assert ev.start <= len(prefix) and text[ev.start : ev.start + ev.period] == ev.span
    assert ev.copies == pytest.approx((len(text) - ev.start) / ev.period)


def test_short_refrain_at_the_end_is_not_a_loop():
    text = "And the crowd sang along:\nLet it be, let it be, let it be, let it be."
    assert detect(text).label == "ok"


def test_two_copies_of_a_long_block_only_count_when_cut_off():
    block = "Season one introduces the six friends and their apartment in Manhattan, with many guest stars. "
    text = "Summary: " + block * 2
    assert detect(text, finished=True).label == "ok"  # a chorus repeated twice, then the model stopped
    assert detect(text, finished=False).label == "verbatim"  # still repeating when the budget ran out


def test_truncated_vs_ok_depends_on_finished():
    text = "1. Bulbasaur\n2. Ivysaur\n3. Venusaur\n4. Charmander\n5. Charmeleon"
    assert detect(text, finished=True).label == "ok"
    assert detect(text, finished=False).label == "truncated"


def test_doom_needs_exhausted_thinking_and_recent_corrections():
    thinking = (
        "Season 3 had 24 episodes. Wait, actually 25. Hmm, let me re-check. Actually 24. "
        "No, wait, that's wrong, it was 25. Actually, let me reconsider the special. Hmm"
    )
    assert detect("", thinking=thinking, finished=False).label == "doom"
    # the same trace followed by a final answer is not a doom loop
    assert detect("Season 3 has 25 episodes.", thinking=thinking, finished=True).label == "ok"
    # corrections only early in a long trace that then progresses: still thinking, not doom
    progressing = "Wait, actually it is 25. Hmm, let me re-check. " + " ".join(
        f"Episode {i} is titled Part {i} and aired in week {i}." for i in range(40)
    )
    assert detect("", thinking=progressing, finished=False).label == "truncated"


def test_split_thinking_markers():
    assert split_thinking("<think>\nhmm</think>\nParis") == ("\nhmm", "\nParis", True)
    thinking, answer, closed = split_thinking("<|channel>thought\nlet me see<channel|>Paris")
    assert (thinking, answer, closed) == ("let me see", "Paris", True)
    assert split_thinking("<think>still going") == ("still going", "", False)
    assert split_thinking("plain") == (None, "plain", True)


def test_certain_is_stricter_than_standard():
    assert CERTAIN.min_copies > STANDARD.min_copies and CERTAIN.min_span_chars > STANDARD.min_span_chars
    assert CERTAIN.item_span > STANDARD.item_span


def test_every_certain_loop_prefix_is_a_loop_for_detect():
    """Early stop must never change a verdict: whatever certain_loop fires on, detect calls a loop."""
    rng = random.Random(7)
    words = ["Andromeda", "Antlia", "Apus", "Aquarius", "Aquila", "Ara", "Aries", "Auriga", "Bootes", "Caelum"]
    fired = 0
    for _ in range(60):
        head = "\n".join(f"{i}. {w}" for i, w in enumerate(rng.sample(words, rng.randint(0, 8)), 1))
        block = rng.choice(["New Mexico", "Alpha Centauri (AZC)", "A-", "the balcony of ", "Hydrogen, Carbon, "])
        style = rng.choice(["numbered", "plain"])
        body = "".join((f"{i}. {block}\n" if style == "numbered" else block) for i in range(9, 9 + rng.randint(3, 60)))
        text = head + "\n" + body
        for cut in range(20, len(text), 37):
            prefix = text[:cut]
            if certain_loop(prefix):
                fired += 1
                assert detect(prefix, finished=False).is_loop, prefix
    assert fired > 50


def test_detector_is_fast_on_long_text():
    import time

    text = "\n".join(f"{i}. Item number {i} of a long list" for i in range(1, 600))
    start = time.perf_counter()
    for _ in range(5):
        assert detect(text).label == "ok"
    assert time.perf_counter() - start < 2.0
