"""`patchkit recipe resolve`: a recipe's `resolution.ways` tried in order against the local Hub-protocol server.

The fixed checkpoints are made by patching bytes of a copy directly (`patched_copy` from test_extract.py), not by
patchkit. Each test uploads a tiny Gemma 4 base and its "fixed" variants, writes an unresolved recipe listing
ways, and checks what `recipe resolve` tried, what it wrote, and that `apply` never resolves on its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_extract import PREFIX, _upload, patched_copy

from patchkit.cli import main
from patchkit.errors import HubError, RecipeError
from patchkit.recipe import load_recipe, parse_recipe
from patchkit.workflows.resolve import resolve_recipe

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
BASE = "alice/g4"
FIXED_EDITS = [
    (f"{PREFIX}.3.mlp.down_proj.weight", 1, 90, "scale", -0.8),
    (f"{PREFIX}.1.mlp.down_proj.weight", 1, 2, "invert", None),
]
EXPECTED_EDITS = [
    {"layer": 1, "neuron": 2, "op": "invert"},
    {"layer": 3, "neuron": 90, "op": "scale", "factor": -0.8},
]
FITTING = "{kind: neuron, layers: [1, 3], exact_edits: 2, ops: [invert, scale], factors: [-0.8]}"
RECIPE = """# The author's comment: kept when resolve writes the recipe back.
patchkit: 1
name: tiny-g4-loopfix
model: {{repo: alice/g4, architecture: gemma4}}
source: {{kind: paper, reference: "arXiv:2606.13705"}}
resolution:
  status: unresolved
  ways:
{ways}
  constraints: {constraints}
checks:
  loops: {{suite: enumeration, max_loop_rate: 0.1}}   # gate comment
"""


def diff_way(reference: str, status: str, cited_in: str | None = None) -> str:
    way = f"    - {{method: diff, reference: {reference}, status: {status}"
    return way + (f', cited_in: "{cited_in}"}}' if cited_in else "}")


LOCATE = "    - {method: locate}"


@pytest.fixture(scope="module")
def dense_base(tmp_path_factory) -> Path:
    import torch
    from fixtures.tiny_models import build

    return build("gemma4", tmp_path_factory.mktemp("g4") / "base", dtype=torch.bfloat16, shard="100KB")


@pytest.fixture
def uploaded(hub, dense_base, tmp_path, monkeypatch):
    """BASE and its fixed variant alice/g4-noloop on the local Hub: (base commit, fixed commit)."""
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "hashes"))
    base_commit = _upload(hub, BASE, dense_base)
    fixed_commit = _upload(hub, "alice/g4-noloop", patched_copy(dense_base, tmp_path / "fixed", FIXED_EDITS))
    return base_commit, fixed_commit


def write(tmp_path: Path, *ways: str, constraints: str = FITTING, name: str = "fix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(RECIPE.format(ways="\n".join(ways), constraints=constraints))
    return path


def resolve(*args: str):
    return CliRunner().invoke(main, ["recipe", "resolve", *args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --- resolving -----------------------------------------------------------------------------------------------


def test_a_published_reference_resolves_and_is_recorded(uploaded, tmp_path):
    base_commit, fixed_commit = uploaded
    recipe = write(tmp_path, diff_way("alice/g4-noloop", "published", "the announcement"), LOCATE)
    res = resolve(str(recipe), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["resolved"] is True and out["resolved_via"] == "ways[0]" and out["written"] == str(recipe)
    first, second = out["ways"]
    assert (first["outcome"], first["exists"], first["sha"], first["extracted"]) == (
        "resolved",
        True,
        fixed_commit,
        True,
    )
    assert first["status"] == "published" and first["warnings"] == [] and out["warnings"] == []
    assert second["outcome"] == "not-tried" and second["method"] == "locate"
    assert out["edits"] == EXPECTED_EDITS and f"patchkit verify {recipe}" in out["next"]

    text = recipe.read_text()
    assert text.startswith("# The author's comment") and "# gate comment" in text  # written back, comments kept
    rec = load_recipe(recipe)
    assert rec.is_resolved and rec.model.revision == base_commit
    assert rec.resolution.resolved_via == "ways[0]" and rec.resolution.via.reference == "alice/g4-noloop"
    assert rec.resolution.constraints.exact_edits == 2 and len(rec.resolution.ways) == 2  # kept, not dropped
    assert rec.source.reference == f"alice/g4-noloop@{fixed_commit}"
    assert rec.source.model_extra["reference_status"] == "published"
    assert rec.source.model_extra["reference_cited_in"] == "the announcement"
    assert rec.source.model_extra["extracted_by"].endswith("recipe resolve")
    # the resolved recipe re-checks against its pinned reference
    ok = CliRunner().invoke(main, ["verify", str(recipe), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True, ok.output
    # resolving again is refused (bad input), pointing at verify
    again = resolve(str(recipe))
    assert again.exit_code == 2 and "already resolved" in again.output and "patchkit verify" in again.output


def test_a_missing_inferred_reference_falls_through_to_the_next_way(uploaded, hub, tmp_path):
    _, fixed_commit = uploaded
    recipe = write(tmp_path, diff_way("alice/g4-E2B-noloop", "inferred"), diff_way("alice/g4-noloop", "published"))
    hub.reset()
    report = resolve_recipe(recipe)  # the library call the CLI wraps; it writes nothing
    assert report.resolved and report.via == "ways[1]"
    missing, used = report.ways
    assert (missing.outcome, missing.exists, missing.sha, missing.extracted) == ("missing", False, None, False)
    assert missing.status == "inferred" and "no such repository" in (missing.detail or "")
    assert (used.outcome, used.sha, used.extracted) == ("resolved", fixed_commit, True)
    assert report.result is not None and report.result.edits == EXPECTED_EDITS
    assert load_recipe(recipe).is_resolved is False  # the library does not write
    assert "resolved_via: ways[1]" in report.result.text and "reference_status: published" in report.result.text
    # the existence checks asked for metadata only: nothing of the missing repo was downloaded
    assert hub.requests(path="/api/models/alice/g4-E2B-noloop")
    assert not hub.requests(path="alice/g4-E2B-noloop/resolve/")

    res = resolve(str(recipe))
    assert res.exit_code == 0, res.output
    assert "ways[0] diff alice/g4-E2B-noloop (inferred): missing" in res.output
    assert f"ways[1] diff alice/g4-noloop (published) @ {fixed_commit}: resolved" in res.output
    assert f"resolved via ways[1] diff alice/g4-noloop (published) @ {fixed_commit}: 2 edited unit(s)" in res.output
    assert load_recipe(recipe).resolution.resolved_via == "ways[1]"


def test_an_inferred_reference_that_exists_resolves_but_stays_inferred(uploaded, tmp_path):
    recipe = write(tmp_path, diff_way("alice/g4-noloop", "inferred"))
    res = resolve(str(recipe))
    assert res.exit_code == 0, res.output
    assert "ways[0] diff alice/g4-noloop (inferred)" in res.output and "(published)" not in res.output
    assert re.search(r"warning: alice/g4-noloop is an inferred reference .*review the edits", res.output)
    rec = load_recipe(recipe)
    assert rec.source.model_extra["reference_status"] == "inferred" and rec.resolution.via.status == "inferred"


def test_when_no_reference_exists_it_says_what_it_tried_and_to_run_locate(uploaded, tmp_path):
    recipe = write(
        tmp_path, diff_way("alice/g4-E2B-noloop", "inferred"), LOCATE, diff_way("alice/g4-noloop", "published")
    )
    before = recipe.read_text()
    res = resolve(str(recipe), "--json")
    assert res.exit_code == 1, res.output  # nothing resolved: a failed attempt, not bad input
    out = json.loads(res.stdout)
    assert out["resolved"] is False and out["written"] is None and out["edits"] is None
    assert [w["outcome"] for w in out["ways"]] == ["missing", "run-locate", "not-tried"]
    assert out["next"] == f"`patchkit locate {BASE} --from-recipe {recipe}` on a machine with the model and a GPU"
    assert recipe.read_text() == before
    plain = resolve(str(recipe))
    assert plain.exit_code == 1
    assert "ways[0] diff alice/g4-E2B-noloop (inferred): missing" in plain.output
    (line,) = error_lines(plain.output)
    assert "no reference could be used" in line and f"--from-recipe {recipe}" in line


def test_a_reference_that_breaks_the_constraints_resolves_with_warnings(uploaded, tmp_path):
    constraints = (
        "{kind: neuron, layers: [1], exact_edits: 3, ops: [invert], factors: [3.0], "
        "partial_edits: [{layer: 1, op: scale, factor: 3.0}]}"
    )
    recipe = write(tmp_path, diff_way("alice/g4-noloop", "published"), constraints=constraints)
    res = resolve(str(recipe), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    warnings = out["ways"][0]["warnings"]
    assert out["warnings"] == warnings and len(warnings) == 5
    assert warnings[0].startswith("edits in layers [3] outside the constrained layers [1]")
    assert warnings[1].startswith("2 edited units, the source states exactly 3")
    assert warnings[2].startswith("ops ['scale'] not among the constrained ops ['invert']")
    assert warnings[3].startswith("scale factors ['-0.8'] not among the constrained factors [3.0]")
    assert warnings[4].startswith("partial_edits[0] (layer 1 scale x3) has no matching edit")
    assert all(w.endswith("(the reference is authoritative)") for w in warnings)
    assert load_recipe(recipe).edits  # the reference wins: resolved anyway
    plain = resolve(
        str(write(tmp_path, diff_way("alice/g4-noloop", "published"), constraints=constraints, name="b.yaml"))
    )
    assert plain.exit_code == 0 and len([x for x in plain.output.splitlines() if x.startswith("warning:")]) == 5


def test_a_reference_whose_diff_is_not_expressible_is_refused_naming_the_tensor(hub, dense_base, tmp_path):
    _upload(hub, BASE, dense_base)
    odd = patched_copy(dense_base, tmp_path / "odd", [(f"{PREFIX}.0.self_attn.q_proj.weight", 0, 3, "invert", None)])
    _upload(hub, "alice/g4-odd", odd)
    _upload(hub, "alice/g4-noloop", patched_copy(dense_base, tmp_path / "fixed", FIXED_EDITS))
    recipe = write(tmp_path, diff_way("alice/g4-odd", "inferred"), diff_way("alice/g4-noloop", "published"), LOCATE)
    before = recipe.read_text()
    res = resolve(str(recipe), "--json")
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    refused = out["ways"][0]
    assert refused["outcome"] == "refused" and refused["extracted"] is False
    assert "model.layers.0.self_attn.q_proj.weight changed" in refused["detail"]
    assert out["ways"][1]["outcome"] == "exists" and "ways[0] came first" in out["ways"][1]["detail"]
    plain = resolve(str(recipe))
    (line,) = error_lines(plain.output)
    assert "was refused" in line and "self_attn.q_proj.weight" in line and "patchkit locate" in line
    assert recipe.read_text() == before


def test_offline_says_so_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = write(tmp_path, diff_way("alice/g4-noloop", "published"), LOCATE)
    res = resolve(str(recipe))
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "needs the Hub" in res.output and "HF_HUB_OFFLINE is set" in res.output
    assert constants.HF_HUB_CACHE in res.output and f"patchkit recipe resolve {recipe}" in res.output
    with pytest.raises(HubError, match="needs the Hub"):
        resolve_recipe(recipe)
    # a recipe whose first way is locate needs no Hub: it says to run locate
    only_locate = write(tmp_path, LOCATE, name="loc.yaml")
    report = resolve_recipe(only_locate)
    assert not report.resolved and report.ways[0].outcome == "run-locate" and "patchkit locate" in report.next


def test_a_shipped_name_writes_a_copy_in_the_working_directory(uploaded, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    write(shipped, diff_way("alice/g4-noloop", "published"), name="x1.yaml")
    before = (shipped / "x1.yaml").read_text()
    monkeypatch.setattr("patchkit.recipe.packaged.recipes_dir", lambda: shipped)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = resolve("x1")
    assert res.exit_code == 0, res.output
    assert (shipped / "x1.yaml").read_text() == before and load_recipe(work / "x1.yaml").is_resolved
    assert "wrote the resolved copy to" in res.output
    again = resolve("x1")
    assert again.exit_code == 2 and "already exists" in again.output


def test_out_writes_elsewhere_and_keeps_the_recipe(uploaded, tmp_path):
    recipe = write(tmp_path, diff_way("alice/g4-noloop", "published"))
    before = recipe.read_text()
    res = resolve(str(recipe), "-o", str(tmp_path / "resolved.yaml"))
    assert res.exit_code == 0, res.output
    assert recipe.read_text() == before and load_recipe(tmp_path / "resolved.yaml").is_resolved


def test_the_older_single_way_form_resolves_and_is_never_called_published(uploaded, tmp_path):
    _, fixed_commit = uploaded
    recipe = tmp_path / "old.yaml"
    recipe.write_text(
        RECIPE.format(ways="", constraints=FITTING).replace(
            "  ways:\n\n", "  method: diff\n  reference: alice/g4-noloop\n"
        )
    )
    res = resolve(str(recipe))
    assert res.exit_code == 0, res.output
    assert f"resolution diff alice/g4-noloop (unmarked) @ {fixed_commit}: resolved" in res.output
    assert "warning: alice/g4-noloop is not marked published or inferred" in res.output
    rec = load_recipe(recipe)
    assert rec.is_resolved and rec.resolution.ways is None and rec.resolution.resolved_via is None
    assert "reference_status" not in rec.source.model_extra


# --- apply never resolves ----------------------------------------------------------------------------------


def test_apply_of_an_unresolved_recipe_names_recipe_resolve_and_never_touches_the_hub(uploaded, hub, tmp_path):
    recipe = write(tmp_path, diff_way("alice/g4-E2B-noloop", "inferred"), diff_way("alice/g4-noloop", "published"))
    hub.reset()
    res = CliRunner().invoke(main, ["apply", str(recipe), "--dry-run"])
    assert res.exit_code == 2
    (line,) = error_lines(res.output)
    assert f"run `patchkit recipe resolve {recipe}` first" in line and "unresolved" in line
    assert "diff alice/g4-E2B-noloop (inferred), then diff alice/g4-noloop (published)" in line
    assert not hub.log  # no Hub request at all: nothing resolved behind the user's back
    assert load_recipe(recipe).is_resolved is False


# --- the schema ---------------------------------------------------------------------------------------------

HEAD = "patchkit: 1\nname: t\nsource: {kind: paper}\nmodel: {repo: org/base}\nresolution:\n  status: unresolved\n"


@pytest.mark.parametrize(
    "body, says",
    [
        (
            "  ways:\n    - {method: diff, refrence: org/x, status: inferred}\n",
            r"r\.yaml:8:\d+: resolution\.ways\[0\]\.refrence: unknown key; did you mean `reference`",
        ),
        ("  ways:\n    - {method: diff, reference: org/x}\n", r"resolution\.ways\[0\]: .*`published`.*`inferred`"),
        ("  ways:\n    - {method: diff, reference: org/x@main, status: published}\n", r"give the revision separately"),
        ("  ways:\n    - {method: diff, reference: ../x, status: published}\n", r"must be a Hub reference"),
        ("  ways:\n    - {method: diff, status: published}\n", r"needs the fixed checkpoint's Hub repo"),
        ("  ways:\n    - {method: paper}\n", r"ways\[0\]\.method: 'paper' is not allowed"),
        ("  ways:\n    - {method: locate, reference: org/x}\n", r"a locate way takes no reference"),
        ("  ways:\n    - {method: diff, reference: org/x, status: maybe}\n", r"status: 'maybe' is not allowed"),
        ("  ways: []\n", r"resolution\.ways: must list at least one way"),
        ("  method: diff\n  ways:\n    - {method: locate}\n", r"resolution\.method: `method` and `ways` both"),
        ("  ways:\n    - {method: locate}\n  resolved_via: ways[1]\n", r"does not name one of `ways`"),
    ],
)
def test_ways_are_strict(body, says):
    with pytest.raises(RecipeError) as info:
        parse_recipe(HEAD + body, "r.yaml")
    assert re.search(says, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_the_single_method_form_is_one_way():
    rec = parse_recipe(HEAD + "  method: diff\n  reference: org/fixed@main\n", "r.yaml")
    (way,) = rec.resolution.effective_ways()
    assert (way.method, way.reference, way.revision, way.status) == ("diff", "org/fixed", "main", None)
    assert way.describe() == "diff org/fixed@main (unmarked)"
    locate = parse_recipe(HEAD + "  method: locate\n  reference: arXiv:1\n", "r.yaml").resolution.effective_ways()
    assert [(w.method, w.cited_in) for w in locate] == [("locate", "arXiv:1")]
    assert parse_recipe(HEAD + "  method: manual\n", "r.yaml").resolution.effective_ways() == []


def test_the_shipped_gemma_recipes_list_their_references():
    expected = {
        "e2b": ("edgerunner-ai/gemma-4-E2B-it-noloop", "inferred"),
        "e4b": ("edgerunner-ai/gemma-4-E4B-it-noloop", "inferred"),
        "31b": ("edgerunner-ai/gemma-4-31B-it-noloop", "inferred"),
        "26b-a4b": ("edgerunner-ai/gemma-4-26B-A4B-it-noloop", "published"),
    }
    for name, (reference, status) in expected.items():
        rec = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        first, *rest = rec.resolution.ways
        assert (first.method, first.reference, first.status) == ("diff", reference, status), name
        assert [w.method for w in rest] == ["locate"], name
        assert f"patchkit recipe resolve {name}" in rec.resolution.how_to_resolve, name
        assert (first.cited_in is not None) == (status == "published"), name  # only a published one cites a source
