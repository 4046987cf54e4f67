"""A subprocess apply SIGKILLed at several points leaves the source byte-identical and the output absent
or complete; the next apply cleans up the dead run's temp directory and succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.tiny_models import raw_llama_checkpoint
from test_apply import snapshot, write_recipe

from patchkit._io.atomic import temp_tag
from patchkit.edit.apply import apply_recipe
from patchkit.edit.verify import verify_patched

TESTS = Path(__file__).parent

CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import patchkit.edit.apply as A
import patchkit.edit.stream as S
point, nth, recipe, base, out = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
S.CHUNK = 512  # many chunks per shard, so a kill can land in the middle of one
S.COPY_PIECE = 1024
calls = 0

def killing(orig, after=False):
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = orig(*args, **kwargs)
        if calls == nth and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

if point == "write":
    S._copy_range = killing(S._copy_range)
    S._pwrite_all = killing(S._pwrite_all)
elif point == "link":
    A.link_or_copy = killing(A.link_or_copy)
elif point == "provenance":
    A.atomic_write_json = killing(A.atomic_write_json)
elif point in ("rename", "after-rename"):
    A.os.rename = killing(os.rename, after=point == "after-rename")
A.apply_recipe(recipe, model=base, out=out)
print("finished without being killed")
"""

POINTS = [("write", 1), ("write", 7), ("link", 1), ("link", 3), ("provenance", 1), ("rename", 1), ("after-rename", 1)]


@pytest.fixture(autouse=True)
def _engine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


def test_sigkill_at_each_point_leaves_source_intact_and_output_absent_or_complete(tmp_path):
    base = raw_llama_checkpoint(tmp_path / "base", "BF16", shards=3)
    recipe = write_recipe(
        tmp_path / "r.yaml", ["{layer: 1, neuron: 5, op: invert}", "{layer: 2, neuron: 1, op: scale, factor: 0.5}"]
    )
    before = snapshot(base)
    outcomes = {}
    for point, nth in POINTS:
        out = tmp_path / f"out-{point}-{nth}"
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(TESTS), point, str(nth), str(recipe), str(base), str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == -signal.SIGKILL, (point, nth, proc.stdout, proc.stderr)
        assert snapshot(base) == before, (point, nth)
        if out.exists():
            assert (out / "patchkit.json").exists(), (point, nth)
            assert verify_patched(recipe, model=str(base), patched=out).ok, (point, nth)
            outcomes[(point, nth)] = "complete"
        else:
            outcomes[(point, nth)] = "absent"
    assert outcomes[("after-rename", 1)] == "complete"
    assert outcomes[("write", 7)] == "absent" and outcomes[("provenance", 1)] == "absent"
    # a later apply to the same output removes the dead run's temp dir and succeeds
    out = tmp_path / "out-write-7"
    prefix = f".{temp_tag(out.name)}.patchkit-tmp-"
    assert any(p.name.startswith(prefix) for p in tmp_path.iterdir())
    apply_recipe(recipe, model=str(base), out=out)
    assert not any(p.name.startswith(prefix) for p in tmp_path.iterdir())
    assert verify_patched(recipe, model=str(base), patched=out).ok
