"""Destructive and fragile operations on hostile inputs: --force never removes what patchkit did not write, links
out of the model dir and special files are refused before anything is written, push never uploads the token,
any legal output name works, and verify/diff never take the sha256 cache's word for equal bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.tiny_models import raw_llama_checkpoint

from hostile.harness import refuse
from patchkit.cli import main
from patchkit.edit.apply import IN_PLACE_JOURNAL, apply_recipe
from patchkit.edit.in_place import DirLock
from patchkit.edit.provenance import PROVENANCE_FILE

RECIPE = """patchkit: 1
name: tiny-fix
model: {repo: test-org/tiny-llama, revision: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, architecture: llama}
source: {kind: manual, reference: unit test}
edits:
  - {layer: 1, neuron: 5, op: invert}
"""
TOKEN = "hf_" + "Zq7" * 12


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def base(tmp_path):
    return raw_llama_checkpoint(tmp_path / "base", "BF16", shards=2)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture
def secret(tmp_path):
    """Something outside the model dir that must never be copied or uploaded (a stand-in for the HF token file)."""
    d = tmp_path / "home" / ".cache" / "huggingface"
    d.mkdir(parents=True)
    (d / "token").write_text(TOKEN)
    return d / "token"


def _no_temps(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".patchkit-tmp-" in p.name]


def _apply(recipe, base, out, *extra):
    return ["apply", str(recipe), "--model", str(base), "-o", str(out), *extra]


# --- --force replaces only what patchkit wrote ------------------------------------------------------------------
def test_force_refuses_a_directory_patchkit_did_not_write(tmp_path, recipe, base):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    refuse(
        _apply(recipe, base, mine, "--force"), names=[str(mine), "not a patchkit apply output"], unchanged=[mine, base]
    )
    _no_temps(tmp_path)


def test_force_refuses_an_apply_output_holding_foreign_files(tmp_path, recipe, base):
    out = tmp_path / "out"
    apply_recipe(recipe, model=str(base), out=out)
    (out / "notes.md").write_text("mine")
    refuse(_apply(recipe, base, out, "--force"), names=[str(out), "notes.md"], unchanged=[out, base])
    _no_temps(tmp_path)


def test_force_refuses_a_model_patched_in_place(tmp_path, recipe, base):
    model = tmp_path / "model"
    shutil.copytree(base, model)
    apply_recipe(recipe, model=str(model), in_place=True)
    refuse(_apply(recipe, base, model, "--force"), names=[str(model), "patched in place"], unchanged=[model, base])


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_force_refuses_a_file_or_a_link(tmp_path, recipe, base, kind):
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("not a directory")
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "data").write_text("x")
        target.symlink_to(tmp_path / "elsewhere")
    refuse(_apply(recipe, base, target, "--force"), names=str(target), unchanged=[target, tmp_path / "elsewhere", base])


def test_force_replaces_an_empty_directory_and_an_earlier_output(tmp_path, recipe, base):
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(2):
        res = CliRunner().invoke(main, _apply(recipe, base, out, "--force"))
        assert res.exit_code == 0, res.output
        assert (out / PROVENANCE_FILE).exists()
    _no_temps(tmp_path)


# --- links and special files in the model dir --------------------------------------------------------------------
def test_a_link_out_of_the_model_dir_is_refused_before_anything_is_written(tmp_path, recipe, base, secret):
    (base / "tokenizer_config.json").unlink()
    (base / "tokenizer_config.json").symlink_to(secret)
    out = tmp_path / "out"
    for extra in ((), ("--dry-run",)):
        refuse(
            _apply(recipe, base, out, *extra),
            names="tokenizer_config.json",
            unchanged=[base, secret.parent],
            absent=[out],
        )
    refuse(
        ["apply", str(recipe), "--model", str(base), "--in-place"],
        names="tokenizer_config.json",
        unchanged=[base, secret.parent],
    )
    _no_temps(tmp_path)


def test_a_linked_directory_out_of_the_model_dir_is_refused(tmp_path, recipe, base, secret):
    (base / "extras").symlink_to(secret.parent, target_is_directory=True)
    out = tmp_path / "out"
    refuse(_apply(recipe, base, out), names="extras", unchanged=[base, secret.parent], absent=[out])


def test_a_fifo_in_the_model_dir_is_refused_without_hanging(tmp_path, recipe, base):
    os.mkfifo(base / "chat_template.jinja")
    out = tmp_path / "out"
    r = refuse(_apply(recipe, base, out), names=["chat_template.jinja", "FIFO"], unchanged=[base], absent=[out])
    assert r.seconds < 10


def test_links_inside_the_model_dir_are_followed(tmp_path, recipe, base):
    (base / "generation_config.json").rename(base / "gen.json")
    (base / "generation_config.json").symlink_to("gen.json")
    res = CliRunner().invoke(main, _apply(recipe, base, tmp_path / "out"))
    assert res.exit_code == 0, res.output
    out_file = tmp_path / "out" / "generation_config.json"
    assert not out_file.is_symlink() and out_file.read_bytes() == (base / "gen.json").read_bytes()


# --- in place: lock and journal ------------------------------------------------------------------------------------
def test_in_place_on_a_locked_directory_is_refused(tmp_path, recipe, base):
    with DirLock(base):
        refuse(
            ["apply", str(recipe), "--model", str(base), "--in-place"],
            names=f"another patchkit apply is running on {base}",
            unchanged=[base],
        )


def test_a_journal_naming_paths_outside_the_model_is_refused(tmp_path, recipe, base):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    shard = "model-00001-of-00002.safetensors"
    (base / IN_PLACE_JOURNAL).write_text(
        json.dumps(
            {
                "patchkit_journal": 2,
                "state": "prepared",
                "recipe": "x",
                "files": {
                    shard: {
                        "before_sha256": "0" * 64,
                        "after_sha256": "1" * 64,
                        "new": ".n.patchkit-tmp-new-1",
                        "backup": "../victim.txt",
                    }
                },
                "provenance": ".p.patchkit-tmp-prov-1",
                "undo": ".u.patchkit-tmp-undo-1",
            }
        )
    )
    refuse(
        ["apply", str(recipe), "--model", str(base), "--in-place"],
        names=[IN_PLACE_JOURNAL, "../victim.txt"],
        unchanged=[base, victim],
    )


# --- output names -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [230, 255])
def test_any_legal_output_name_works(tmp_path, recipe, base, length):
    parent = tmp_path / "outs"
    out = parent / ("n" * (length - 4) + ".out")
    assert len(os.fsencode(out.name)) == length
    for extra in ((), ("--force",)):  # the second run replaces the first (a trash dir with a bounded name too)
        res = CliRunner().invoke(main, _apply(recipe, base, out, *extra))
        assert res.exit_code == 0, res.output
        assert (out / PROVENANCE_FILE).exists()
    assert sorted(p.name for p in parent.iterdir()) == [out.name]
    res = CliRunner().invoke(main, ["verify", str(recipe), "--model", str(base), "--patched", str(out)])
    assert res.exit_code == 0, res.output
    # other atomic writes beside a long name (a recipe written by diff --as-recipe)
    long_recipe = tmp_path / ("r" * (length - 5) + ".yaml")
    res = CliRunner().invoke(main, ["diff", str(base), str(out), "--as-recipe", "-o", str(long_recipe)])
    assert res.exit_code == 0, res.output
    assert "neuron: 5" in long_recipe.read_text()


# --- push ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def output(tmp_path, recipe, base):
    out = tmp_path / "out"
    apply_recipe(recipe, model=str(base), out=out)
    return out


def test_push_refuses_a_file_holding_the_token_without_printing_it(tmp_path, output):
    config = json.loads((output / "tokenizer_config.json").read_text() or "{}")
    config["auth"] = TOKEN
    (output / "tokenizer_config.json").write_text(json.dumps(config))
    r = refuse(
        ["push", str(output), "--repo", "alice/x", "--dry-run"],
        names=["tokenizer_config.json", "contains your Hugging Face token"],
        unchanged=[output],
    )
    assert TOKEN not in r.output


def test_push_finds_the_token_inside_a_shard(tmp_path, output):
    shard = output / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-len(TOKEN) :] = TOKEN.encode()
    shard.write_bytes(bytes(data))
    r = refuse(["push", str(output), "--repo", "alice/x", "--dry-run"], names=shard.name, unchanged=[output])
    assert TOKEN not in r.output


def test_push_refuses_links_out_and_special_files(tmp_path, output, secret):
    (output / "tokenizer_config.json").unlink()
    (output / "tokenizer_config.json").symlink_to(secret)
    refuse(
        ["push", str(output), "--repo", "alice/x", "--dry-run"],
        names=["tokenizer_config.json", "outside"],
        unchanged=[output, secret.parent],
    )
    (output / "tokenizer_config.json").unlink()
    os.mkfifo(output / "tokenizer_config.json")
    refuse(
        ["push", str(output), "--repo", "alice/x", "--dry-run"],
        names=["tokenizer_config.json", "FIFO"],
        unchanged=[output],
    )


# --- verify / diff never trust the stat cache ----------------------------------------------------------------------
def _rewrite_keeping_mtime(path: Path, offset: int) -> None:
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_file_changed_with_its_mtime_restored_does_not_verify(tmp_path, recipe, base, output):
    from patchkit._io import hashing

    shard = output / "model-00001-of-00002.safetensors"  # untouched by the recipe: compared with the base
    size = shard.stat().st_size
    old = hashlib.sha256(shard.read_bytes()).hexdigest()
    _rewrite_keeping_mtime(shard, size - 3)
    # even when the cache holds the old digest for the file's current stat (a write inside one timestamp tick)
    hashing.remember_sha256(shard, old)
    assert hashing.known_sha256(shard) == old
    res = CliRunner().invoke(main, ["verify", str(recipe), "--model", str(base), "--patched", str(output)])
    assert res.exit_code == 1 and f"{shard.name}" in res.stderr and f"at byte {size - 3}" in res.stderr, res.output
    res = CliRunner().invoke(main, ["diff", str(base), str(output), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert not report["identical"] and any(c["file_b"] == shard.name for c in report["changed"]), report
