"""`patchkit recipe extract`: edits resolved from a published fixed checkpoint, offline against the local Hub
server. The fixed checkpoints here are made by patching bytes of a copy directly (numpy / torch rounding), not
by patchkit, so extraction is checked against an independent edit; then apply(extracted recipe) must
reproduce the fixed checkpoint byte for byte, with the same slice checksums the recipe recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from patchkit.cli import main
from patchkit.errors import RecipeError
from patchkit.model.safetensors_io import read_header
from patchkit.recipe import load_recipe, parse_recipe
from patchkit.workflows.resolve import extract_recipe

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def load_recipe_text(text: str):
    return parse_recipe(text, "<test>")


RAW = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32}


@pytest.fixture(scope="module")
def moe_base(tmp_path_factory) -> Path:
    """Tiny Gemma 4 MoE in bf16, sharded so that most shards are untouched by an expert edit."""
    import torch
    from fixtures.tiny_models import build

    return build("gemma4-moe", tmp_path_factory.mktemp("moe") / "base", dtype=torch.bfloat16, shard="60KB")


def _owner(directory: Path, tensor: str) -> Path:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    return directory / index["weight_map"][tensor]


def patched_copy(base: Path, out: Path, edits: list[tuple[str, int, int, str, float | None]]) -> Path:
    """Copy `base` and change slices in place: (tensor, axis, index, op, factor) with op invert|zero|scale|noise."""
    import torch

    shutil.copytree(base, out)
    for tensor, axis, index, op, factor in edits:
        path = _owner(out, tensor) if (out / "model.safetensors.index.json").exists() else out / "model.safetensors"
        header = read_header(path)
        info = header.tensors[tensor]
        start, _ = header.absolute(tensor)
        mm = np.memmap(path, dtype=RAW[info.dtype], mode="r+", offset=start, shape=(info.numel,)).reshape(info.shape)
        sel = [slice(None)] * len(info.shape)
        sel[axis] = slice(index, index + 1)  # keeps a view even for 1-D tensors
        view = mm[tuple(sel)]
        if op == "invert":
            view ^= np.array(0x8000 if info.dtype != "F32" else 0x80000000, dtype=view.dtype)
        elif op == "zero":
            view[...] = 0
        elif op in ("scale", "noise"):  # torch's own bf16 rounding, independent of patchkit.edit.bytes
            t = torch.from_numpy(np.ascontiguousarray(view).astype(np.int32).astype(np.int16)).view(torch.bfloat16)
            t = t.float()
            t = t * factor if op == "scale" else t + torch.linspace(0.01, 0.02, t.numel()).reshape(t.shape)
            view[...] = t.to(torch.bfloat16).view(torch.int16).numpy().astype(np.uint16)
        mm.flush()
        del mm
    return out


def _upload(hub, repo: str, folder: Path) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(repo)
    return api.upload_folder(repo_id=repo, folder_path=str(folder)).oid


PREFIX = "model.layers"
TEMPLATE = """patchkit: 1
name: tiny-moe-loopfix
description: Suppress the experts that the published fix suppressed.
model: {{repo: alice/g4-moe, architecture: gemma4}}
source: {{kind: paper, reference: "arXiv:2606.13705", claims: ["3 expert slots"]}}
resolution:
  status: unresolved
  method: diff
  reference: {reference}
  constraints: {{kind: expert, exact_edits: 3, ops: [suppress]}}
checks:
  loops: {{suite: enumeration, max_loop_rate: 0.1}}
"""


def _moe_fixed(moe_base: Path, out: Path) -> Path:
    return patched_copy(
        moe_base,
        out,
        [
            (f"{PREFIX}.1.router.per_expert_scale", 0, 2, "zero", None),
            (f"{PREFIX}.1.router.per_expert_scale", 0, 4, "zero", None),
            (f"{PREFIX}.3.router.per_expert_scale", 0, 0, "zero", None),
        ],
    )


def test_extract_moe_suppressed_experts_from_the_hub(hub, moe_base, tmp_path, monkeypatch):
    from patchkit.edit.apply import apply_recipe
    from patchkit.edit.verify import verify_patched

    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "hashes"))
    fixed = _moe_fixed(moe_base, tmp_path / "fixed")
    base_commit = _upload(hub, "alice/g4-moe", moe_base)
    fixed_commit = _upload(hub, "alice/g4-moe-noloop", fixed)
    template = tmp_path / "moe.yaml"
    template.write_text(TEMPLATE.format(reference="alice/g4-moe-noloop"))
    res = CliRunner().invoke(
        main, ["recipe", "extract", "alice/g4-moe", "alice/g4-moe-noloop", "--into", str(template), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["edits"] == [
        {"layer": 1, "expert": [2, 4], "op": "suppress"},
        {"layer": 3, "expert": 0, "op": "suppress"},
    ]
    assert out["notes"] == [] and out["written"] == str(template)
    # only the shards holding layers 1 and 3's router were downloaded; the others were never fetched
    changed = {_owner(moe_base, f"{PREFIX}.{layer}.router.per_expert_scale").name for layer in (1, 3)}
    shards = {p.name for p in moe_base.glob("*.safetensors")}
    assert len(shards) > len(changed)
    assert set(out["downloaded_files"]) == changed and set(out["identical_files"]) == shards - changed
    snapshot = Path(out["diff"]["b"])
    assert not any((snapshot / f).exists() for f in out["identical_files"])

    recipe = load_recipe(template)
    assert recipe.is_resolved and recipe.name == "tiny-moe-loopfix" and recipe.checks.loops.max_loop_rate == 0.1
    assert recipe.model.revision == base_commit
    assert recipe.source.kind == "diff" and recipe.source.reference == f"alice/g4-moe-noloop@{fixed_commit}"
    assert recipe.resolution.method == "diff" and recipe.resolution.constraints.exact_edits == 3
    sums = recipe.source.model_extra["checksums"]
    assert [(c["layer"], c["index"]) for c in sums] == [(1, 2), (1, 4), (3, 0)]

    # apply(extracted recipe) == the published fix, with the slice checksums the recipe recorded
    result = apply_recipe(template, model=str(moe_base), out=tmp_path / "out")
    applied = {(e["layer"], e["index"]): (e["before_sha256"], e["after_sha256"]) for e in result.provenance["edits"]}
    assert applied == {(c["layer"], c["index"]): (c["before_sha256"], c["after_sha256"]) for c in sums}
    assert verify_patched(template, model=str(moe_base), patched=fixed).ok

    # the recipe re-checks against its reference: ok, and a hand-edited index is caught
    ok = CliRunner().invoke(main, ["verify", str(template), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    template.write_text(template.read_text().replace("expert: [2, 4]", "expert: [2, 5]"))
    bad = CliRunner().invoke(main, ["verify", str(template)])
    assert bad.exit_code == 1 and "does not match its reference" in bad.output
    assert len([line for line in bad.output.splitlines() if line.startswith("error:")]) == 1


def test_apply_never_resolves_an_unresolved_diff_recipe(hub, moe_base, tmp_path, monkeypatch):
    """Even with the Hub reachable and the reference published, apply refuses and names `recipe resolve`."""
    from patchkit.edit.apply import apply_recipe

    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "hashes"))
    _upload(hub, "alice/g4-moe", moe_base)
    _upload(hub, "alice/g4-moe-noloop", _moe_fixed(moe_base, tmp_path / "fixed"))
    template = tmp_path / "moe.yaml"
    template.write_text(TEMPLATE.format(reference="alice/g4-moe-noloop"))
    before = template.read_text()
    # the byte engine never resolves (no network in patchkit.edit)
    with pytest.raises(RecipeError, match="unresolved"):
        apply_recipe(template, out=tmp_path / "out")
    hub.reset()
    res = CliRunner().invoke(main, ["apply", str(template), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"run `patchkit recipe resolve {template}` first" in lines[0]
    assert "diff alice/g4-moe-noloop (unmarked)" in lines[0]  # the older single-way form: never called published
    assert not hub.log and not (tmp_path / "out").exists()
    assert template.read_text() == before  # apply never rewrites the user's recipe


def test_extract_dense_scale_and_invert_from_local_dirs(tiny_gemma4_bf16, tmp_path):
    fixed = patched_copy(
        tiny_gemma4_bf16,
        tmp_path / "fixed",
        [
            (f"{PREFIX}.3.mlp.down_proj.weight", 1, 90, "scale", -0.8),
            (f"{PREFIX}.1.mlp.down_proj.weight", 1, 2, "invert", None),
        ],
    )
    result = extract_recipe(tiny_gemma4_bf16, fixed, name="dense-fix")
    from patchkit.recipe.validate import validate_recipe

    assert validate_recipe(result.recipe).warnings == [
        "no model given and none found offline: checked the recipe schema only (pass --model)"
    ]
    tampered = load_recipe_text(
        result.text.replace("{layer: 1, neuron: 2, op: invert}", "{layer: 1, neuron: 3, op: invert}")
    )
    assert any("no checksum in source.checksums" in w for w in validate_recipe(tampered).warnings)
    assert result.edits == [
        {"layer": 1, "neuron": 2, "op": "invert"},
        {"layer": 3, "neuron": 90, "op": "scale", "factor": -0.8},
    ]
    assert result.downloaded_files == [] and result.recipe.source.reference == str(fixed)
    assert result.recipe.resolution.status == "resolved" and len(result.checksums) == 2
    out = tmp_path / "dense.yaml"
    res = CliRunner().invoke(main, ["recipe", "extract", str(tiny_gemma4_bf16), str(fixed), "-o", str(out)])
    assert res.exit_code == 0 and out.exists(), res.output
    again = CliRunner().invoke(main, ["recipe", "extract", str(tiny_gemma4_bf16), str(fixed), "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize(
    "edit, says",
    [
        (
            (f"{PREFIX}.0.self_attn.q_proj.weight", 0, 3, "invert", None),
            r"self_attn\.q_proj\.weight changed but is not a down_proj/up_proj/expert tensor a recipe can edit",
        ),
        (
            (f"{PREFIX}.2.mlp.down_proj.weight", 1, 7, "noise", None),
            r"index 7: change is not an inversion, zeroing or exact scaling",
        ),
    ],
)
def test_extract_refuses_changes_a_recipe_cannot_express(tiny_gemma4_bf16, tmp_path, edit, says):
    import re

    fixed = patched_copy(tiny_gemma4_bf16, tmp_path / "fixed", [edit])
    res = CliRunner().invoke(
        main, ["recipe", "extract", str(tiny_gemma4_bf16), str(fixed), "-o", str(tmp_path / "r.yaml")]
    )
    assert res.exit_code == 2 and re.search(says, res.output), res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "r.yaml").exists()


def test_verify_without_patched_needs_a_diff_resolved_recipe(tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text("patchkit: 1\nname: m\nsource: {kind: manual}\nedits: [{layer: 0, neuron: 1, op: zero}]\n")
    res = CliRunner().invoke(main, ["verify", str(recipe)])
    # bad input (exit 2), not a failed check (exit 1): nothing was compared
    assert res.exit_code == 2 and "not a recipe resolved by diff" in res.output and "--patched" in res.output
