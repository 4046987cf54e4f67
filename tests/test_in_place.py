"""apply --in-place: SIGKILL at every step of the journaled protocol, then recovery (all shards original, or all
patched with provenance, sha256-checked); the rerun completes; the lock keeps two applies apart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.tiny_models import raw_llama_checkpoint
from test_apply import sha, snapshot, write_recipe

from patchkit.edit.apply import IN_PLACE_JOURNAL, LOCK_FILE, apply_recipe, recover_in_place
from patchkit.edit.in_place import DirLock
from patchkit.edit.provenance import PROVENANCE_FILE
from patchkit.edit.verify import verify_patched
from patchkit.errors import ApplyError

TESTS = Path(__file__).parent
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
EDITS = ["{layer: 0, neuron: 3, op: invert}", "{layer: 2, neuron: [1, 4], op: invert}"]  # shards 1 and 3

CHILD = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import patchkit.edit.in_place as I
import patchkit.edit.stream as S
step, nth, recipe, base = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
S.COPY_PIECE = 1024  # many copy calls per shard, so a kill can land inside one
seen = 0

def hit():
    global seen
    seen += 1
    if seen == nth:
        if step.startswith("wait:"):  # hold the lock until the parent says go
            open(base + ".waiting", "w").close()
            for _ in range(600):
                if os.path.exists(base + ".go"):
                    return
                time.sleep(0.05)
        else:
            os.kill(os.getpid(), signal.SIGKILL)

real_step, real_copy = I._step, S._copy_range
def step_hook(name):
    if name == step.removeprefix("wait:"):
        hit()
def copy_hook(*args):
    if step == "copy":
        hit()
    return real_copy(*args)
I._step, S._copy_range = step_hook, copy_hook
from patchkit.edit.apply import apply_recipe
result = apply_recipe(recipe, model=base, in_place=True)
print("\n".join(result.warnings))
print("finished without being killed")
"""

#: (step, occurrence) -> the state recovery must reach: "before" (rolled back, or never started) or "after"
POINTS = [
    (("copy", 3), "before"),
    (("write", 2), "before"),
    (("prepare-provenance", 1), "before"),
    (("journal", 1), "before"),
    (("backup", 1), "before"),
    (("swap", 1), "before"),
    (("backup", 2), "before"),
    (("swap", 2), "before"),
    (("commit", 1), "before"),
    (("provenance", 1), "after"),
    (("undo", 1), "after"),
    (("cleanup", 1), "after"),
    (("journal-remove", 1), "after"),
    (("done", 1), "after"),
]


@pytest.fixture(autouse=True)
def _engine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


def _child(step: str, nth: int, recipe: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(TESTS), step, str(nth), str(recipe), str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _state(model: Path, before: dict, after: dict) -> str:
    """ "before" / "after" when every shard is in that state, else the per-shard picture (a failure)."""
    now = {f: sha(model / f) if (model / f).exists() else "missing" for f in SHARDS}
    if now == {f: before[f] for f in SHARDS}:
        return "before"
    if now == {f: after[f] for f in SHARDS}:
        return "after"
    return str({f: "before" if now[f] == before[f] else "after" if now[f] == after[f] else now[f] for f in SHARDS})


def _hidden(model: Path) -> list[str]:
    return sorted(p.name for p in model.iterdir() if p.name.startswith("."))


@pytest.fixture
def setup(tmp_path):
    pristine = raw_llama_checkpoint(tmp_path / "pristine", "BF16", shards=3)
    recipe = write_recipe(tmp_path / "r.yaml", EDITS)
    reference = tmp_path / "reference"
    apply_recipe(recipe, model=str(pristine), out=reference)
    before, after = snapshot(pristine), snapshot(reference)
    assert before[SHARDS[1]] == after[SHARDS[1]] and before[SHARDS[0]] != after[SHARDS[0]]
    return pristine, recipe, before, after


def test_sigkill_at_every_step_then_recovery_and_rerun(tmp_path, setup):
    pristine, recipe, before, after = setup
    killed = {}
    for (step, nth), _ in POINTS:  # two children at a time (two cores)
        model = tmp_path / f"m-{step}-{nth}"
        shutil.copytree(pristine, model)
        killed[(step, nth)] = (model, _child(step, nth, recipe, model))
        if len(killed) % 2 == 0:
            for _, proc in list(killed.values())[-2:]:
                proc.wait(timeout=60)
    for (step, nth), expected in POINTS:
        model, proc = killed[(step, nth)]
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (step, nth, out, err)
        if expected == "before":
            assert not (model / PROVENANCE_FILE).exists(), (step, nth)
        # the rerun path works on a copy (links are copied as files: recovery does not depend on them)
        rerun = tmp_path / f"rerun-{step}-{nth}"
        shutil.copytree(model, rerun, symlinks=True)

        # 1. recovery alone: all original, or all patched with provenance, checked by sha256
        recovery = recover_in_place(model)
        assert _state(model, before, after) == expected, (step, nth)
        has_journal = step not in ("copy", "write", "prepare-provenance", "journal", "done")
        assert (recovery is not None) == has_journal, (step, nth)
        if recovery is not None:
            assert recovery.action == ("rolled-back" if expected == "before" else "rolled-forward")
        assert not (model / IN_PLACE_JOURNAL).exists()
        assert set(_hidden(model)) <= {LOCK_FILE}, (step, nth, _hidden(model))  # the killed run's lock file may stay
        if expected == "after":
            prov = json.loads((model / PROVENANCE_FILE).read_text())
            assert prov["in_place"] and {f: prov["output_files"][f]["sha256"] for f in SHARDS} == {
                f: after[f] for f in SHARDS
            }
            assert (model / "patchkit-undo.yaml").exists()
            assert verify_patched(recipe, model=str(pristine), patched=model).ok, (step, nth)
        else:
            assert not (model / "patchkit-undo.yaml").exists()

        # 2. the rerun of the same command: finishes or redoes the apply and says which
        if step == "done":  # the apply had completed: a rerun is refused as a second application
            with pytest.raises(ApplyError, match="was produced by this recipe"):
                apply_recipe(recipe, model=str(rerun), in_place=True)
        else:
            result = apply_recipe(recipe, model=str(rerun), in_place=True)
            said = " ".join(result.warnings)
            if has_journal:
                assert ("rolled back" if expected == "before" else "rolled forward") in said, (step, nth, said)
            assert result.provenance and result.provenance["in_place"]
        assert _state(rerun, before, after) == "after", (step, nth)
        assert verify_patched(recipe, model=str(pristine), patched=rerun).ok, (step, nth)
        assert _hidden(rerun) == [], (step, nth, _hidden(rerun))  # no temps, backups, journal or lock left
        assert sha(rerun / SHARDS[1]) == before[SHARDS[1]]


@pytest.mark.parametrize(
    "first, second, expected",
    [
        (("swap", 2), ("rollback-journal", 1), "before"),  # killed again while rolling back
        (("undo", 1), ("cleanup", 1), "after"),  # killed again while rolling forward
    ],
)
def test_recovery_itself_survives_a_kill(tmp_path, setup, first, second, expected):
    pristine, recipe, before, after = setup
    model = tmp_path / "m"
    shutil.copytree(pristine, model)
    for step, nth in (first, second):
        proc = _child(step, nth, recipe, model)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (step, nth)
    assert (model / IN_PLACE_JOURNAL).exists()
    assert recover_in_place(model).action == ("rolled-back" if expected == "before" else "rolled-forward")
    assert _state(model, before, after) == expected
    assert not (model / IN_PLACE_JOURNAL).exists()


def test_the_next_plain_apply_recovers_the_directory_and_says_so(tmp_path, setup):
    pristine, recipe, before, after = setup
    model = tmp_path / "m"
    shutil.copytree(pristine, model)
    proc = _child("swap", 2, recipe, model)
    proc.communicate(timeout=60)
    assert _state(model, before, after) != "before"  # half-swapped: shard 1 patched, shard 3 not
    with pytest.raises(ApplyError, match="interrupted --in-place apply .* a dry run changes nothing"):
        apply_recipe(recipe, model=str(model), out=tmp_path / "out", dry_run=True)
    from click.testing import CliRunner

    from patchkit.cli import main

    res = CliRunner().invoke(main, ["apply", str(recipe), "--model", str(model), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "undid the interrupted --in-place apply of tiny-fix" in res.stderr
    assert _state(model, before, after) == "before" and _hidden(model) == []
    assert verify_patched(recipe, model=str(pristine), patched=tmp_path / "out").ok


def test_two_concurrent_in_place_runs_one_is_refused(tmp_path, setup):
    pristine, recipe, before, after = setup
    model = tmp_path / "m"
    shutil.copytree(pristine, model)
    other = write_recipe(tmp_path / "other.yaml", ["{layer: 1, neuron: 2, op: invert}"], name="other")
    first = _child("wait:journal", 1, recipe, model)  # holds the lock, paused before its journal
    try:
        for _ in range(600):
            if (tmp_path / "m.waiting").exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "m.waiting").exists(), first.communicate()
        cli = [sys.executable, "-c", "from patchkit.cli import main; main()"]
        for args in (
            ["apply", str(other), "--model", str(model), "--in-place"],
            ["apply", str(other), "--model", str(model), "-o", str(tmp_path / "copy")],
        ):
            second = subprocess.run(cli + args, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stderr
            errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
            assert errors == [
                f"error: another patchkit apply is running on {model} (wait for it to finish, then "
                f"retry; its lock is {model / LOCK_FILE})"
            ], second.stderr
        assert not (tmp_path / "copy").exists()
    finally:
        (tmp_path / "m.go").touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert _state(model, before, after) == "after"  # the first recipe's edits, complete; nothing of the other
    assert json.loads((model / PROVENANCE_FILE).read_text())["recipe"]["normalized"]["name"] == "tiny-fix"
    assert _hidden(model) == []
    apply_recipe(other, model=str(model), in_place=True)  # free again once the first is done


def test_lock_is_exclusive_within_one_process_too(tmp_path, setup):
    pristine, recipe, _, _ = setup
    model = tmp_path / "m"
    shutil.copytree(pristine, model)
    with DirLock(model):
        with pytest.raises(ApplyError, match=f"another patchkit apply is running on {model}"):
            apply_recipe(recipe, model=str(model), in_place=True)
        assert snapshot(model) == snapshot(pristine) | {LOCK_FILE: sha(model / LOCK_FILE)}
    assert not (model / LOCK_FILE).exists()


def test_a_hostile_journal_is_refused_and_nothing_outside_is_touched(tmp_path, setup):
    pristine, recipe, before, _ = setup
    model = tmp_path / "m"
    shutil.copytree(pristine, model)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    journal = {
        "patchkit_journal": 2,
        "state": "committed",
        "recipe": "x",
        "recipe_sha256": "0" * 64,
        "files": {
            SHARDS[0]: {
                "before_sha256": before[SHARDS[0]],
                "after_sha256": "1" * 64,
                "new": "../victim.txt",
                "backup": ".b.patchkit-tmp-orig-1",
            }
        },
        "provenance": ".p.patchkit-tmp-prov-1",
        "undo": ".u.patchkit-tmp-undo-1",
    }
    (model / IN_PLACE_JOURNAL).write_text(json.dumps(journal))
    with pytest.raises(ApplyError, match=r"names '../victim.txt', which is not a patchkit temp/shard path"):
        apply_recipe(recipe, model=str(model), in_place=True)
    assert victim.read_text() == "keep me" and snapshot(model) == snapshot(pristine) | {
        IN_PLACE_JOURNAL: sha(model / IN_PLACE_JOURNAL)
    }


def test_a_journal_from_an_earlier_patchkit(tmp_path, setup):
    pristine, recipe, before, after = setup
    model = tmp_path / "m"
    shutil.copytree(pristine, model)
    legacy = {
        "recipe": "tiny-fix",
        "files": {f: {"before_sha256": before[f], "after_sha256": after[f]} for f in (SHARDS[0], SHARDS[2])},
    }
    (model / IN_PLACE_JOURNAL).write_text(json.dumps(legacy))
    assert recover_in_place(model).action == "rolled-back"  # nothing was replaced yet: just the journal goes
    assert not (model / IN_PLACE_JOURNAL).exists()
    shutil.copyfile(tmp_path / "reference" / SHARDS[0], model / SHARDS[0])  # half-replaced, no backups kept
    (model / IN_PLACE_JOURNAL).write_text(json.dumps(legacy))
    with pytest.raises(ApplyError, match="from an earlier patchkit .* kept no backups"):
        recover_in_place(model)
    assert (model / IN_PLACE_JOURNAL).exists()
