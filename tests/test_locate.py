"""`patchkit locate` on a tiny llama with a planted loop neuron and a massive-activation decoy (tests/locate_planted.py).

The planted model counts (w30 -> w31 -> ...); layer 1 neuron 7 fires inside the list region and makes greedy
output repeat "w40"; layer 0 neuron 3 has a huge activation on every token but writes almost nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from locate_planted import DECOY, PLANTED, build_planted, write_suite

from patchkit.locate import Candidate, Edit, LocateSettings, run_locate


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("planted")
    return build_planted(root / "model"), write_suite(root / "suite.yaml")


@pytest.fixture(scope="module")
def located(planted, tmp_path_factory):
    model_dir, suite = planted
    out = tmp_path_factory.mktemp("out")
    settings = LocateSettings(suite=str(suite), method="screen", max_new_tokens=48, budget_minutes=10, device="cpu")
    result = run_locate(str(model_dir), out=out / "recipe.yaml", settings=settings, resume=out / "cache")
    return result, out, settings


def _loops(model_dir: Path, suite: Path, split: str) -> tuple[int, int]:
    from patchkit.checks.loops import LoopSettings, run_suite
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model

    model, tok = load_model(model_dir)
    settings = LoopSettings(max_new_tokens=48, split=split)
    run = run_suite(load_suite(suite).select(split=split), model=model, tokenizer=tok, settings=settings)
    m = run.metrics()
    return m.loops, m.n


def test_finds_the_planted_neuron_not_the_decoy(located):
    result, _out, _settings = located
    assert result.found
    edits = result.winner["candidate"]["edits"]
    assert [(e["layer"], e["index"]) for e in edits] == [PLANTED]
    assert result.report["layers"][0]["layer"] == PLANTED[0]  # the ablation ranks the planted layer first
    decoy = [u for u in result.report["units"] if (u["layer"], u["index"]) == DECOY]
    # the decoy is the layer's massive-activation outlier and is flagged as such
    if decoy:
        assert decoy[0]["massive"]
    screen = {r["candidate"]["label"]: r["score"] for r in result.report["screen"]}
    best_decoy = max((s for label, s in screen.items() if label.startswith(f"L{DECOY[0]} n{DECOY[1]} ")), default=-1.0)
    assert best_decoy < 0.1 < screen[f"L{PLANTED[0]} n{PLANTED[1]} x0"]


def test_heldout_confirms_and_recipe_removes_the_loop(located, planted, tmp_path):
    from patchkit.edit.apply import apply_recipe
    from patchkit.recipe import load_recipe

    result, out, _settings = located
    model_dir, suite = planted
    held = result.heldout
    assert held["base"]["loops"] == held["base"]["n"] > 0 and held["edited"]["loops"] == 0
    assert held["edited"]["good_lists"] > held["base"]["good_lists"]
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.source.kind == "locate" and recipe.source.confirmed_on_heldout is True
    assert recipe.source.scores["heldout"]["base"]["loop_rate"]["ci95"][1] <= 1.0
    assert recipe.source.probes["confirmation"] == "heldout split"
    assert [(e.layer, e.index) for e in recipe.expanded_edits()] == [PLANTED]
    # the written recipe, applied to the checkpoint's bytes, removes the planted loop on every split
    patched = apply_recipe(out / "recipe.yaml", model=str(model_dir), out=tmp_path / "patched").out_dir
    assert _loops(model_dir, suite, "heldout")[0] > 0
    for split in ("train", "heldout"):
        assert _loops(patched, suite, split)[0] == 0
    report = json.loads((out / "recipe.locate" / "locate-report.json").read_text())
    assert report["confirmed"] and (out / "recipe.locate" / "layers.png").stat().st_size > 1000
    assert (out / "recipe.locate" / "sweep.png").stat().st_size > 1000


def test_selection_never_sees_heldout_probes(located):
    result, _out, _settings = located
    swept = {p["probe"] for r in result.report["sweep"] for p in r["per_probe"]}
    assert swept and all(not p.startswith(("count-b", "ctrl-b")) for p in swept)


def test_resume_reuses_every_stage(located, planted):
    _result, out, settings = located
    model_dir, _suite = planted
    again = run_locate(str(model_dir), out=out / "again.yaml", settings=settings, resume=out / "cache")
    assert set(again.cached_stages) >= {"collect", "layers", "attribution", "sweep", "heldout"}
    assert again.winner["candidate"] == _result.winner["candidate"]


def test_no_loops_gives_an_unresolved_recipe(planted, tmp_path):
    from patchkit.generate.loading import load_model
    from patchkit.recipe import load_recipe

    model_dir, suite = planted
    model, tok = load_model(model_dir)
    with torch.no_grad():
        model.model.layers[PLANTED[0]].mlp.down_proj.weight[:, PLANTED[1]] = 0.0
    result = run_locate(
        (model, tok),
        out=tmp_path / "r.yaml",
        settings=LocateSettings(suite=str(suite), method="screen", max_new_tokens=48, device="cpu"),
    )
    assert not result.found and "does not loop" in result.report["reason"]
    recipe = load_recipe(tmp_path / "r.yaml")
    assert not recipe.is_resolved and recipe.edits == []


def test_row_edits_match_runtime_edits(planted):
    """A batch row with its own edit computes exactly what the whole-model runtime edit computes."""
    from patchkit.edit.runtime import runtime_edits
    from patchkit.generate.loading import load_model
    from patchkit.locate.hooks import ModelView, row_edits
    from patchkit.recipe import ResolvedEdit

    model_dir, _ = planted
    model, _tok = load_model(model_dir)
    ids = torch.tensor([[30, 31, 32, 33, 36, 37]] * 3)
    cands = [
        Candidate(),
        Candidate((Edit(1, "neuron", 7, 0.0),)),
        Candidate((Edit(0, "neuron", 3, -1.0), Edit(1, "neuron", 5, 0.5))),
    ]
    with torch.no_grad(), row_edits(ModelView(model), cands):
        rows = model(input_ids=ids).logits
    for r, cand in enumerate(cands):
        edits = [ResolvedEdit(e.layer, "neuron", e.index, "scale", e.factor) for e in cand.edits]
        with torch.no_grad(), runtime_edits(model, edits):
            ref = model(input_ids=ids[:1]).logits[0]
        torch.testing.assert_close(rows[r], ref, rtol=1e-5, atol=1e-5)


def test_expert_row_edits_and_attribution_on_moe(tmp_path):
    """Gemma 4 MoE: per-row expert suppression equals the runtime edit; experts get routing attribution."""
    from fixtures.tiny_models import build

    from patchkit.edit.runtime import runtime_edits
    from patchkit.generate.loading import load_model
    from patchkit.locate.attribution import attribute
    from patchkit.locate.hooks import ModelView, row_edits
    from patchkit.locate.teacher import build_batch
    from patchkit.locate.transcripts import Transcript
    from patchkit.recipe import ResolvedEdit

    model, _tok = load_model(build("gemma4-moe", tmp_path / "moe"))
    view = ModelView(model)
    moe = [layer for layer in range(view.num_layers) if view.is_moe(layer)]
    assert moe
    layer = moe[0]
    ids = torch.tensor([[5, 9, 17, 33, 41, 7, 9, 17]] * 2)
    cands = [Candidate(), Candidate((Edit(layer, "expert", 2, 0.0),))]
    with torch.no_grad(), row_edits(view, cands):
        rows = model(input_ids=ids).logits
    with torch.no_grad(), runtime_edits(model, [ResolvedEdit(layer, "expert", 2, "suppress", 0.0)]):
        ref = model(input_ids=ids[:1]).logits[0]
    torch.testing.assert_close(rows[1], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rows[0], rows[1])
    gen = [9, 17, 33, 9, 17, 33, 9, 17, 33, 9, 17, 33, 9, 17, 33, 9, 17, 33]
    loop = Transcript("x", "enumeration", [5, 6], gen, "loop", True, loop_start=3)
    ctrl = Transcript("c", "control", [7, 8], [11, 12, 13, 14], "eos", False)
    batch = build_batch([loop], [ctrl], [], pad_id=0)
    units = attribute(view, batch, [layer])
    experts = [u for u in units if u.kind == "expert"]
    assert len(experts) == view.num_experts(layer) and any(u.loop != 0 for u in experts)
    # one sequence per backward pass gives the same sums as the whole batch at once
    _assert_same_units(units, attribute(view, batch, [layer], max_rows=1))


def _assert_same_units(a, b):
    key = lambda u: (u.layer, u.kind, u.index)  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    assert [key(u) for u in a] == [key(u) for u in b]
    for name in ("loop", "control", "novel", "mean_abs_act"):
        torch.testing.assert_close(
            torch.tensor([getattr(u, name) for u in a]),
            torch.tensor([getattr(u, name) for u in b]),
            rtol=1e-4,
            atol=1e-6,
        )


def test_pieces_give_the_same_attribution_and_layer_ranking(planted, monkeypatch):
    """Attribution and layer ranking run the batch in pieces (bounded memory); the numbers must not change."""
    from patchkit.generate.loading import load_model
    from patchkit.locate import ablation, teacher
    from patchkit.locate.attribution import attribute
    from patchkit.locate.hooks import ModelView
    from patchkit.locate.teacher import build_batch
    from patchkit.locate.transcripts import Transcript

    model_dir, _suite = planted
    model, _tok = load_model(model_dir)
    view = ModelView(model)
    loops = [
        Transcript(
            f"l{i}", "enumeration", [2, 30 + i], list(range(31 + i, 37)) + [40] * (12 + i), "loop", True, loop_start=7
        )
        for i in range(3)
    ]
    ctrl = [Transcript(f"c{i}", "control", [2, 90], list(range(91, 95 + i)), "eos", False) for i in range(2)]
    batch = build_batch(loops, ctrl, [[2, 50, 51, 52, 53, 54, 55]], pad_id=0)
    assert len(batch.chunks(2)) == 3 and sum(p.n for p in batch.chunks(2)) == batch.n
    _assert_same_units(attribute(view, batch, [0, 1], max_rows=100), attribute(view, batch, [0, 1], max_rows=2))
    monkeypatch.setattr(ablation, "GRAD_ROWS", 100)
    monkeypatch.setattr(teacher.mean_scores, "__defaults__", (100,))
    whole = {s.layer: s for s in ablation.rank_layers(view, batch, exact_top=2)}
    monkeypatch.setattr(ablation, "GRAD_ROWS", 1)
    monkeypatch.setattr(teacher.mean_scores, "__defaults__", (1,))
    pieces = {s.layer: s for s in ablation.rank_layers(view, batch, exact_top=2)}
    assert whole.keys() == pieces.keys()
    for layer in whole:
        for side in ("est", "exact"):
            for op, d in getattr(whole[layer], side).items():
                for g, v in d.items():
                    assert getattr(pieces[layer], side)[op][g] == pytest.approx(v, rel=1e-4, abs=1e-5), (
                        layer,
                        side,
                        op,
                        g,
                    )


def test_loop_positions():
    from patchkit.locate.transcripts import loop_start, repeat_positions

    toks = [1, 2, 3, 4, 5, 6] + [7, 8, 9] * 6
    rep = repeat_positions(toks)
    assert not any(rep[:9]) and all(rep[12:])
    assert loop_start(toks) is not None and 6 <= loop_start(toks) <= 12
    assert loop_start(list(range(40))) is None


def test_parse_ops():
    from patchkit.errors import PatchkitError
    from patchkit.locate import parse_ops

    assert parse_ops("invert,zero,scale:0.5") == [-1.0, 0.0, 0.5]
    for bad in ("flip", "scale:x", "scale:1", ""):
        with pytest.raises(PatchkitError):
            parse_ops(bad)


def test_cli_json(planted, located, tmp_path):
    """The command is a thin shell over run_locate (it reuses the fixture's stage cache via --resume)."""
    from click.testing import CliRunner

    from patchkit.cli import main

    model_dir, suite = planted
    _result, out, _settings = located
    res = CliRunner().invoke(
        main,
        [
            "locate",
            str(model_dir),
            "--method",
            "screen",
            "--suite",
            str(suite),
            "-o",
            str(tmp_path / "r.yaml"),
            "--max-new-tokens",
            "48",
            "--budget-minutes",
            "10",
            "--device",
            "cpu",
            "--resume",
            str(out / "cache"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["found"] and data["winner"]["candidate"]["edits"][0]["layer"] == PLANTED[0]
    assert "collect" in data["cached_stages"] and (tmp_path / "r.yaml").is_file()
    bad = CliRunner().invoke(main, ["locate", str(model_dir), "--suite", str(suite), "--ops", "flip"])
    assert bad.exit_code == 2 and "error:" in bad.output and "flip" in bad.output


def _unresolved(path: Path, layers: list[int], model: str = "planted/model") -> Path:
    path.write_text(f"""patchkit: 1
name: planted-loopfix
description: Loop fix for the planted model.
model: {{repo: {model}, architecture: llama}}
source: {{kind: paper, reference: "planted-model notes"}}
resolution:
  status: unresolved
  method: locate
  constraints: {{kind: neuron, layers: {layers}, max_edits: 1, ops: [zero]}}
checks:
  loops: {{max_loop_rate: 0.2}}
publish: {{license: apache-2.0}}
""")
    return path


def test_from_recipe_searches_the_constraints_and_writes_the_indices_back(planted, tmp_path):
    from click.testing import CliRunner

    from patchkit.cli import main
    from patchkit.recipe import load_recipe

    model_dir, suite = planted
    recipe = _unresolved(tmp_path / "fix.yaml", [PLANTED[0]])
    res = CliRunner().invoke(
        main,
        [
            "locate",
            str(model_dir),
            "--method",
            "screen",
            "--suite",
            str(suite),
            "--from-recipe",
            str(recipe),
            "--max-new-tokens",
            "48",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["recipe"] == str(recipe) and out["found"]
    written = load_recipe(recipe)  # written back in place
    assert written.is_resolved and written.resolution.method == "locate"
    assert [(e.layer, e.index, e.op) for e in written.expanded_edits()] == [(*PLANTED, "zero")]
    assert written.name == "planted-loopfix" and written.publish.license == "apache-2.0"
    assert written.checks.loops.max_loop_rate == 0.2
    assert written.source.kind == "locate" and written.source.constraints_from["reference"] == "planted-model notes"
    assert written.resolution.constraints.layers == [PLANTED[0]]
    # only the constrained layer and op were searched
    report = json.loads((tmp_path / "fix.locate" / "locate-report.json").read_text())
    assert report["settings"]["layers"] == [PLANTED[0]] and report["settings"]["ops"] == [0.0]
    assert {r["candidate"]["edits"][0]["layer"] for r in report["screen"]} == {PLANTED[0]}
    # a resolved recipe is refused as --from-recipe
    again = CliRunner().invoke(main, ["locate", str(model_dir), "--suite", str(suite), "--from-recipe", str(recipe)])
    assert again.exit_code == 2 and "already resolved" in again.output


def test_from_recipe_outside_the_loop_layer_stays_unresolved(planted, tmp_path):
    from patchkit.recipe import load_recipe

    model_dir, suite = planted
    recipe = load_recipe(_unresolved(tmp_path / "fix.yaml", [DECOY[0]]))
    result = run_locate(
        str(model_dir),
        out=tmp_path / "out.yaml",
        from_recipe=recipe,
        settings=LocateSettings(suite=str(suite), method="screen", max_new_tokens=48, device="cpu"),
    )
    assert not result.found
    written = load_recipe(tmp_path / "out.yaml")
    assert not written.is_resolved and written.edits == []
    assert written.resolution.constraints.layers == [DECOY[0]] and written.resolution.constraints.get("last_locate")
    with pytest.raises(Exception, match="layer 5 is out of range"):
        run_locate(
            str(model_dir),
            out=tmp_path / "bad.yaml",
            from_recipe=load_recipe(_unresolved(tmp_path / "b.yaml", [5])),
            settings=LocateSettings(suite=str(suite), method="screen", max_new_tokens=48, device="cpu"),
        )
