"""Ground truth of the planted-SET loop model (tests/locate_planted_set.py), not of any search over it.

The model counts (w30 -> w31 -> ...); 7 "loop" units over 6 layers each push the loop token w20 inside the list
region, and a "brake" pushes against it too weakly, so every list becomes "... w36 w20 w20 w20". Proven here:
the planted model loops on every enumeration probe (train and heldout) and none of its controls; the unplanted
model (the same weights with ordinary units in the 8 places) never loops; the intended fix (FIX_FACTORS: the 7
loop units x0, the brake x3) gives back the unplanted behaviour; partial fixes do not.

Is the brake strictly needed? Not when all 7 loop units are zeroed: then the model is the unplanted one plus the
brake, which only pushes against the loop, so "7 zeroed, brake x1" is already loop-free (asserted below; no
additive design can do otherwise). It IS needed as soon as any one loop unit is left untouched: each loop unit
alone keeps every list looping (the drive is 7-fold redundant), and the brake x3 is exactly what ends that loop.
So a search has to find all 7 loop units, or 6 of them plus the brake.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from locate_planted_set import (
    FIX_FACTORS,
    LIST_REGION,
    LOOP_TOKEN,
    PLANTED_UNITS,
    build_planted_set,
    fix_factors,
    planted_units,
    write_suite,
)

from patchkit.locate.candidates import Candidate, Edit

LOOPS = [(layer, n) for layer, n, kind in PLANTED_UNITS if kind == "reduce"]
BRAKE = next((layer, n) for layer, n, kind in PLANTED_UNITS if kind == "amplify")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two fighting other jobs
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model
    from patchkit.locate.generation import Runner
    from patchkit.locate.hooks import ModelView

    root = tmp_path_factory.mktemp("planted-set")
    suite = load_suite(str(write_suite(root / "suite.yaml")))
    out: dict = {"suite": suite, "root": root}
    for name, planted in (("planted", True), ("unplanted", False)):
        model, tok = load_model(build_planted_set(root / name, planted=planted), dtype="float32", device="cpu")
        out[name] = Runner(ModelView(model), tok, max_new_tokens=48)
    return out


def _cand(factors: dict[tuple[int, int], float]) -> Candidate:
    return Candidate(tuple(Edit(layer, "neuron", n, f) for (layer, n), f in sorted(factors.items())))


def _zero(units) -> dict[tuple[int, int], float]:
    return {u: 0.0 for u in units}


def _summaries(runner, probes, configs: list[dict[tuple[int, int], float]]) -> list[dict]:
    """One batched greedy run of every probe under every edit configuration -> sweep.summarize per config."""
    from patchkit.locate.generation import prompt_ids
    from patchkit.locate.greedy import Row
    from patchkit.locate.sweep import summarize

    rows = [Row(c, prompt_ids(runner.tokenizer, p), [], runner.budget(p)) for c in range(len(configs)) for p in probes]
    runner.generate([_cand(f) for f in configs], rows)
    n = len(probes)
    return [summarize(runner.results(probes, rows[c * n : (c + 1) * n])) for c in range(len(configs))]


def test_ground_truth_constants():
    layers = {layer for layer, _, _ in PLANTED_UNITS}
    kinds = [kind for _, _, kind in PLANTED_UNITS]
    assert len(PLANTED_UNITS) == 8 and len(set((layer, n) for layer, n, _ in PLANTED_UNITS)) == 8
    assert len(layers) >= 4 and kinds.count("amplify") == 1 and kinds.count("reduce") == 7
    assert FIX_FACTORS == {**_zero(LOOPS), BRAKE: 3.0}
    # the full-size geometry keeps the same structure
    big = planted_units(12, 512)
    assert len(big) == 8 and len({layer for layer, _, _ in big}) >= 4 and all(0 <= n < 512 for _, n, _ in big)
    assert sorted(fix_factors(big).values()) == [0.0] * 7 + [3.0]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_planted_loops_on_lists_not_on_controls(models, split):
    probes = models["suite"].select(split=split).probes
    assert sum(p.kind == "enumeration" for p in probes) >= 4 and any(p.kind == "control" for p in probes)
    runner = models["planted"]
    rows, results = runner.run_base(probes)
    from patchkit.locate.sweep import summarize

    s = summarize(results)
    assert s["loop_rate"] >= 0.75 and s["good_lists"] == 0
    assert s["control_accuracy"] == 1.0 and s["control_loops"] == 0
    for probe, row, res in zip(probes, rows, results, strict=True):
        if probe.kind == "enumeration":  # the list reaches w36, then repeats the loop token
            assert res.is_loop and row.generated[-3:] == [LOOP_TOKEN] * 3
            assert row.generated.index(LOOP_TOKEN) > 0 and row.generated[row.generated.index(LOOP_TOKEN) - 1] == 36
        else:
            assert res.correct and LOOP_TOKEN not in row.generated


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_unplanted_never_loops(models, split):
    from patchkit.locate.sweep import summarize

    _rows, results = models["unplanted"].run_base(models["suite"].select(split=split).probes)
    s = summarize(results)
    assert s["loops"] == 0 and s["control_loops"] == 0
    assert s["good_list_rate"] == 1.0 and s["control_accuracy"] == 1.0


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_full_fix_gives_back_the_unplanted_model(models, split):
    probes = models["suite"].select(split=split).probes
    inverted = {**{u: -1.0 for u in LOOPS}, BRAKE: 3.0}
    fixed, fixed_inv = _summaries(models["planted"], probes, [FIX_FACTORS, inverted])
    _rows, base_unplanted = models["unplanted"].run_base(probes)
    from patchkit.locate.sweep import summarize

    ref = summarize(base_unplanted)
    for s in (fixed, fixed_inv):
        assert s["loop_rate"] == ref["loop_rate"] == 0.0
        assert s["good_list_rate"] == ref["good_list_rate"] == 1.0
        assert s["control_accuracy"] == 1.0 and s["control_loops"] == 0
        assert s["completeness"] == pytest.approx(ref["completeness"])


def test_partial_fixes_keep_the_loop(models):
    """<= 4 loop units zeroed (with or without the brake x3) loops; 6 zeroed loops unless the brake is x3."""
    probes = models["suite"].select(split="train").probes
    fours = list(itertools.combinations(LOOPS, 4))[::5]  # 7 of the 35 subsets, every unit in some
    configs = [_zero(sub) for sub in fours] + [{**_zero(sub), BRAKE: 3.0} for sub in fours]
    sixes = [_zero(u for u in LOOPS if u != left) for left in LOOPS]
    configs += sixes + [{**six, BRAKE: 3.0} for six in sixes] + [_zero(LOOPS)]
    out = _summaries(models["planted"], probes, configs)
    k = 2 * len(fours)
    for s in out[:k]:  # any 4 (brake or not): every list still loops
        assert s["loop_rate"] == 1.0 and s["good_lists"] == 0
    for s in out[k : k + 7]:  # any one loop unit left, brake x1: every list still loops
        assert s["loop_rate"] == 1.0 and s["good_lists"] == 0
    for s in out[k + 7 : k + 14]:  # ... and the brake x3 ends it
        assert s["loop_rate"] == 0.0 and s["good_list_rate"] == 1.0
    assert out[-1]["loop_rate"] == 0.0  # all 7 zeroed: loop-free without the brake (see the module docstring)
    assert all(s["control_accuracy"] == 1.0 and s["control_loops"] == 0 for s in out)


def test_brake_the_wrong_way_makes_nothing_better(models):
    probes = models["suite"].select(split="train").probes
    base, off, inverted, off_six = _summaries(
        models["planted"],
        probes,
        [{}, {BRAKE: 0.0}, {BRAKE: -1.0}, {**_zero(LOOPS[1:]), BRAKE: 0.0}],
    )
    for s in (off, inverted, off_six):
        assert s["loop_rate"] >= base["loop_rate"] == 1.0 and s["good_lists"] == 0


def test_gradient_sees_all_eight(models):
    """d(loop log-odds)/d(factor) at the loop positions: every planted unit stands out, with the right sign."""
    runner = models["planted"]
    view, model = runner.view, runner.view.model
    probes = models["suite"].select(split="train", kind="enumeration").probes
    rows, _ = runner.run_base(probes)
    factors = [torch.ones(view.intermediate_size(i), requires_grad=True) for i in range(view.num_layers)]
    acts: dict[int, torch.Tensor] = {}

    def hook(i):
        def pre(_module, args):
            acts[i] = args[0].detach()
            return (args[0] * factors[i],) + tuple(args[1:])

        return pre

    handles = [view.down_proj(i).register_forward_pre_hook(hook(i)) for i in range(view.num_layers)]
    try:
        total, count = torch.zeros(()), 0
        list_acts, ctrl_acts = [], []
        for row in rows:
            ids = torch.tensor([row.prefix + row.generated])
            logits = model(input_ids=ids).logits[0]
            start = len(row.prefix) - 1
            pos = [start + i for i, t in enumerate(row.generated) if t == LOOP_TOKEN]
            lg = logits[pos]
            rest = torch.cat([lg[:, :LOOP_TOKEN], lg[:, LOOP_TOKEN + 1 :]], dim=1)
            total = total + (lg[:, LOOP_TOKEN] - torch.logsumexp(rest, dim=1)).sum()
            count += len(pos)
            in_list = [i for i, t in enumerate(ids[0].tolist()) if t in LIST_REGION or t == LOOP_TOKEN]
            list_acts.append({u: acts[u[0]][0, in_list, u[1]] for u in LOOPS + [BRAKE]})
        (total / count).backward()
        ctrl = torch.tensor([[90, 91, 92, 93, 94, 95, 96, 97]])
        with torch.no_grad():
            model(input_ids=ctrl)
        ctrl_acts = {u: acts[u[0]][0, :, u[1]] for u in LOOPS + [BRAKE]}
    finally:
        for h in handles:
            h.remove()
    grad = {(i, n): float(factors[i].grad[n]) for i in range(view.num_layers) for n in range(len(factors[i]))}
    ordinary = max(abs(g) for u, g in grad.items() if u not in FIX_FACTORS)
    assert all(grad[u] > 5 * ordinary for u in LOOPS)  # the loop units push the loop token up
    assert -grad[BRAKE] > 2 * ordinary  # the brake pushes it down
    assert max(grad[u] for u in LOOPS) < 2 * min(grad[u] for u in LOOPS)  # no loop unit dominates
    # activations ~1 inside the list region (ordinary size, not outliers), exactly 0 on the control prompt
    for u in LOOPS + [BRAKE]:
        a = torch.cat([d[u] for d in list_acts])
        assert 0.7 < float(a.min()) and float(a.max()) < 1.5
        assert float(ctrl_acts[u].abs().max()) == 0.0
