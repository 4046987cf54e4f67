"""Real-model proof on the embedded SmolLM2-135M-Instruct: greedy decoding loops on the 88 constellations, answers
a control, and the detector says so (early stop included). Kept small: 3 prompts, <= 200 new tokens."""

from __future__ import annotations

import pytest
import torch

from patchkit.checks.loops import LoopSettings, run_suite
from patchkit.checks.probes import parse_suite
from patchkit.generate.loading import load_model

pytestmark = pytest.mark.slow

SUITE = """\
suite: smollm2-proof
version: 1
probes:
  - id: iau-constellations
    kind: enumeration
    split: train
    category: astronomy
    source: IAU (88 constellations); only a few listed here, completeness is not asserted
    truth: [Andromeda, Antlia, Apus, Aquarius, Aquila, Ara, Aries, Auriga, Bootes, Caelum, Orion, Ursa Major]
    prompts: ["List all 88 IAU constellations."]
  - id: chemical-elements
    kind: enumeration
    split: heldout
    category: chemistry
    truth: [Hydrogen, Helium, Lithium, Beryllium, Boron, Carbon, Nitrogen, Oxygen, Fluorine, Neon, Argon]
    prompts: ["List all chemical elements."]
  - id: capital-france
    kind: control
    split: train
    category: geography
    prompts: ["What is the capital of France?"]
    answer: {any: [Paris]}
    max_new_tokens: 48
"""


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    """(model, tokenizer) of the embedded SmolLM2, imported once per session from its GGUF."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two fighting other jobs
    try:
        yield load_model(smollm2_dir)
    finally:
        torch.set_num_threads(threads)


def test_smollm2_greedy_loops_on_enumeration_and_answers_control(smollm2):
    model, tok = smollm2
    suite = parse_suite(SUITE, "smollm2-proof.yaml")
    run = run_suite(suite, model=model, tokenizer=tok, settings=LoopSettings(max_new_tokens=200), label="smollm2")
    results = {r.probe.item_id: r for r in run.results}

    constellations = results["iau-constellations"]
    assert constellations.is_loop, constellations.generation.text
    assert constellations.verdict.label in ("decay", "verbatim")
    evidence = constellations.verdict.evidence
    repeated = evidence.span.split(" | ")[0]
    assert constellations.generation.text.count(repeated) >= 5
    # the loop was certain before the budget ran out: the row left the batch early
    assert constellations.generation.stop_reason == "loop" and constellations.generation.tokens < 200
    assert not constellations.good_list

    elements = results["chemical-elements"]
    assert elements.is_loop, elements.generation.text

    control = results["capital-france"]
    assert control.correct and not control.is_loop and control.generation.finished, control.generation.text

    metrics = run.metrics()
    assert metrics.loops == 2 and metrics.n == 2 and metrics.control_failures == []
