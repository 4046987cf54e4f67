"""Amplification in `patchkit locate`: units that brake loops rank by what amplifying them achieves, and get x2/x3.

Scaling a unit by f moves a score by (f-1) x its attribution in first order, so a unit with a large negative loop
attribution (a brake) lowers the loop when amplified. Unit tests on synthetic attributions, then a tiny llama
(tests/locate_planted.py) with an added brake neuron that writes against the loop token.
"""

from __future__ import annotations

import pytest
import torch
from locate_planted import LOOP_TOKEN, PLANTED, build_planted, write_suite

from patchkit.locate.attribution import (
    UnitAttribution,
    pick_candidates,
    rank_units,
    selective_effect,
    single_edits,
    unit_factors,
)
from patchkit.locate.candidates import DEFAULT_OPS, Candidate, Edit, parse_ops

BRAKE = (0, 11)  # layer 0 neuron: fires in the list region and writes against the loop token


def _unit(index: int, loop: float, control: float = 0.0, *, kind: str = "neuron", massive: bool = False, **kw):
    return UnitAttribution(0, kind, index, loop, control, 0.0, 1.0, massive, 0.0, **kw)


def _factors(cands: list[Candidate], index: int) -> list[float]:
    return [c.edits[0].factor for c in cands if c.edits[0].index == index]


def test_default_ops_include_amplification():
    assert DEFAULT_OPS == (-1.0, 0.0, 0.5, 2.0, 3.0)
    assert tuple(parse_ops("invert,zero,scale:0.5,scale:2,scale:3")) == DEFAULT_OPS
    from patchkit.cli.locate import locate_cmd

    (opt,) = [p for p in locate_cmd.params if p.name == "ops"]
    assert tuple(parse_ops(opt.default)) == DEFAULT_OPS


def test_selective_effect_is_first_order_in_both_directions():
    # zeroing a driver: loop falls by loop, control moves by |control|
    assert selective_effect(2.0, 0.5, 0.0) == pytest.approx(1.5)
    assert selective_effect(2.0, -0.5, -1.0) == pytest.approx(3.0)  # invert: twice the change
    # x3 of a brake (loop attribution -1): the loop score moves by (3-1) x -1 = -2, control by 2 x 0.1
    assert selective_effect(-1.0, 0.1, 3.0) == pytest.approx(1.8)
    assert selective_effect(-1.0, 0.1, 0.0) < 0 < selective_effect(-1.0, 0.1, 2.0)
    assert selective_effect(1.0, 0.1, 2.0) < 0 < selective_effect(1.0, 0.1, 0.5)


def test_a_strong_brake_ranks_above_a_weak_promoter():
    promoter = _unit(1, 0.5, 0.1)
    brake = _unit(2, -3.0, 0.2)
    generic = _unit(3, 0.4, -2.0)  # moves control text more than loops: either way it hurts
    expert_brake = _unit(4, -3.0, 0.0, kind="expert")  # experts are only suppressed: no amplify side
    ranked = rank_units([promoter, generic, expert_brake, brake], DEFAULT_OPS)
    assert [u.index for u in ranked] == [2, 1, 3, 4]
    assert brake.direction == "amplify" and brake.selectivity == pytest.approx(2 * (3.0 - 0.2))  # x3
    assert promoter.direction == "reduce" and promoter.selectivity == pytest.approx(2 * (0.5 - 0.1))  # invert
    assert expert_brake.direction == "reduce" and expert_brake.selectivity == pytest.approx(-3.0)
    # the single edits spend the budget on each unit's side
    cands = single_edits(ranked, DEFAULT_OPS)
    assert _factors(cands, 2) == [2.0, 3.0]
    assert _factors(cands, 1) == [-1.0, 0.0, 0.5]
    assert [c.edits for c in cands if c.edits[0].index == 4] == [(Edit(0, "expert", 4, 0.0),)]
    # without amplifying ops the brake has nothing beneficial: it ranks last among the neurons, as a reducer
    ranked = rank_units([_unit(1, 0.5, 0.1), _unit(2, -3.0, 0.2)], (0.0, 0.5))
    assert [(u.index, u.direction) for u in ranked] == [(1, "reduce"), (2, "reduce")]
    assert ranked[1].selectivity < 0


def test_single_edits_respect_directions():
    driver = _unit(1, 1.0, 0.1, direction="reduce")
    brake = _unit(2, -1.0, 0.1, direction="amplify")
    # a unit whose recorded direction disagrees with its attributions (a cached unit from before directions):
    # its own side first, then the other side too, since that is beneficial in first order
    stale = _unit(3, -1.0, 0.1)
    # neither side helps: only its own side is screened
    useless = _unit(4, 0.1, 1.0, direction="amplify")
    assert unit_factors(driver, DEFAULT_OPS) == [-1.0, 0.0, 0.5]
    assert unit_factors(brake, DEFAULT_OPS) == [2.0, 3.0]
    assert stale.direction == "reduce" and unit_factors(stale, DEFAULT_OPS) == [-1.0, 0.0, 0.5, 2.0, 3.0]
    assert unit_factors(useless, DEFAULT_OPS) == [2.0, 3.0]
    # ops with nothing on a unit's side: it gets the ops there are (an explicit --ops zero zeroes every unit)
    assert unit_factors(brake, (0.0,)) == [0.0]
    assert unit_factors(driver, (3.0,)) == [3.0]
    cands = single_edits([driver, brake], DEFAULT_OPS)
    assert [c.label for c in cands] == ["L0 n1 x-1", "L0 n1 x0", "L0 n1 x0.5", "L0 n2 x2", "L0 n2 x3"]


def test_pick_candidates_keeps_the_largest_raw_effect_on_either_side():
    small = [_unit(i, 0.01 * i, 0.0) for i in range(1, 12)]
    # a massive-activation brake: a huge negative loop attribution, but it moves control text too
    massive_brake = _unit(99, -10.0, 12.0, massive=True)
    ranked = rank_units([*small, massive_brake], DEFAULT_OPS)
    assert massive_brake.direction == "amplify" and massive_brake.selectivity < 0
    picked = pick_candidates(ranked, top=10, max_massive=0)
    assert len(picked) == 11 and picked[-1] is massive_brake  # not among the top 10, kept for its raw effect


def test_json_round_trip_and_old_cached_dicts():
    u = rank_units([_unit(5, -2.0, 0.3)], DEFAULT_OPS)[0]
    d = u.to_json()
    assert d["direction"] == "amplify"
    assert UnitAttribution.from_json(d) == u
    old = dict(d)
    del old["direction"]
    back = UnitAttribution.from_json(old)
    assert back.direction == "reduce" and back.loop == -2.0


# ---- a tiny llama with a planted loop neuron and a brake -----------------------------------------------------------


@pytest.fixture(scope="module")
def braked(tmp_path_factory):
    """The planted model plus a brake: layer 0 neuron 11 fires on the list region and writes -0.02 x the loop
    token's direction (weak enough that the model still loops; amplified, it cancels the planted neuron)."""
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model
    from patchkit.locate.generation import Runner
    from patchkit.locate.hooks import ModelView
    from patchkit.locate.teacher import build_batch

    root = tmp_path_factory.mktemp("braked")
    model, tok = load_model(build_planted(root / "model"))
    suite = write_suite(root / "suite.yaml")
    layer, n = BRAKE
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        against = emb[LOOP_TOKEN - 1].clone()
        against[:2] = 0.0  # not the list / decoy markers: only the loop token's logit moves
        marker = torch.zeros(emb.shape[1])
        marker[0] = 1.0
        mlp = model.model.layers[layer].mlp
        mlp.gate_proj.weight[n] = 3.0 * marker
        mlp.up_proj.weight[n] = 3.0 * marker
        mlp.down_proj.weight[:, n] = -0.02 * against
    view = ModelView(model)
    runner = Runner(view, tok, max_new_tokens=48)
    probes = load_suite(str(suite)).select(split="train").probes
    rows, results = runner.run_base(probes)
    transcripts = runner.transcripts(probes, rows, results)
    looping = [t for t in transcripts if t.kind == "enumeration" and t.is_loop and t.loop_start is not None]
    controls = [t for t in transcripts if t.kind == "control" and not t.is_loop]
    assert looping and controls  # the brake is too weak to stop the planted loop
    return view, build_batch(looping, controls, [], pad_id=runner.pad_id)


def test_attribution_amplifies_the_brake_and_the_screen_confirms_it(braked):
    from patchkit.locate.attribution import attribute, screen

    view, batch = braked
    units = attribute(view, batch, [0, 1])
    key = {(u.layer, u.index): u for u in units if u.kind == "neuron"}
    brake, planted = key[BRAKE], key[PLANTED]
    assert brake.loop < 0 and brake.direction == "amplify" and brake.selectivity > 0
    assert planted.loop > 0 and planted.direction == "reduce" and planted.selectivity > 0
    top = pick_candidates(units, top=5)
    assert brake in top and planted in top
    cands = single_edits([brake], DEFAULT_OPS)
    assert [c.edits[0].factor for c in cands] == [2.0, 3.0]
    got = {r.candidate.edits[0].factor: r for r in screen(view, batch, [*cands, *single_edits([planted], [0.0])])}
    assert got[3.0].d_loop < got[2.0].d_loop < 0  # amplifying the brake lowers the loop log-prob, more at x3
    assert got[3.0].flips_loop > 0 and got[3.0].score > 0
    assert abs(got[3.0].d_control) < 1e-3
