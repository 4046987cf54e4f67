"""Files beside the checkpoint and files named on the command line (reports, provenance, texts, task files) are
read with the same rules as models: regular files only, no links out of the directory, a size cap checked before
reading — one line, exit 2, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hubserver.checkpoints import make_base, make_patched

from hostile.harness import refuse


@pytest.fixture
def patched(tmp_path: Path) -> Path:
    return make_patched(make_base(tmp_path / "base"), tmp_path / "patched")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    os.mkfifo(path)
    return path


def test_card_refuses_a_fifo_report(patched, fifo, tmp_path):
    out = tmp_path / "README.md"
    refuse(
        ["card", str(patched), "--loops-report", str(fifo), "-o", str(out)],
        names=str(fifo),
        unchanged=[patched],
        absent=[out],
    )


def test_card_refuses_dev_zero_as_a_report(patched, tmp_path):
    link = tmp_path / "bench.json"
    os.symlink("/dev/zero", link)
    out = tmp_path / "README.md"
    refuse(
        ["card", str(patched), "--bench-report", str(link), "-o", str(out)],
        names=str(link),
        unchanged=[patched],
        absent=[out],
    )


def test_card_refuses_provenance_linked_out_of_the_directory(patched, tmp_path):
    outside = tmp_path / "elsewhere.json"
    (patched / "patchkit.json").rename(outside)
    os.symlink(outside, patched / "patchkit.json")
    out = tmp_path / "README.md"
    refuse(["card", str(patched), "-o", str(out)], names="patchkit.json", unchanged=[outside], absent=[out])


def test_push_refuses_a_provenance_bomb(patched, tmp_path):
    prov = patched / "patchkit.json"
    with open(prov, "r+b") as fh:  # a sparse 65 MiB "provenance": refused from its size, never read
        fh.truncate((64 << 20) + 1)
    refuse(["push", str(patched), "--repo", "alice/x", "--dry-run"], names="patchkit.json", unchanged=[patched])


def test_detect_refuses_a_fifo(fifo):
    refuse(["detect", str(fifo)], names=str(fifo), unchanged=[fifo.parent])


def test_bench_refuses_a_fifo_task_file(patched, fifo):
    refuse(
        ["bench", str(patched), "--patched", str(patched), "--tasks", "qa", "--task-file", str(fifo)],
        names=str(fifo),
        unchanged=[patched],
    )
