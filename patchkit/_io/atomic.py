"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

Every file patchkit writes (recipes, provenance, reports, plots, caches, cards) goes through here: a temp file
beside the target (same filesystem, so the rename is atomic), fsync, then `os.replace`. A crash leaves at most a
dot-prefixed temp file, which the next write of the same target ignores.

Temp names stay short whatever the target's name (`temp_tag`): a name may be up to 255 bytes, and a temp name
built by appending a suffix to it would not be.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: marks patchkit's temp files and directories so that listings (push, diff) can skip them
TMP_MARK = ".patchkit-tmp-"

_READABLE = re.compile(r"[^A-Za-z0-9._-]+")


def temp_tag(name: str, *, keep: int = 24) -> str:
    """A short, deterministic stand-in for a file name in temp names: its first `keep` plain characters (for people
    reading a listing) and 10 hex digits of its sha256 (so two targets never share a tag). At most keep + 11 chars."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:10]
    readable = _READABLE.sub("", name)[:keep].strip(".")
    return f"{readable}-{digest}" if readable else digest


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make renames and unlinks in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on a clean exit fsync it and rename it over `path`, else remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix if 1 < len(target.suffix) <= 16 else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{temp_tag(target.name)}{TMP_MARK}", suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared and published
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename over `path`."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text, atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 2) -> Path:
    """JSON (non-JSON values rendered with `str`), newline-terminated, atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: float | None = None) -> Path:
    """Write a matplotlib figure as a PNG atomically (a reader never sees half a PNG) and close it either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", **({} if dpi is None else {"dpi": dpi}))
    finally:
        plt.close(fig)
    return Path(path)


def umask_modes(directory: str | os.PathLike[str], *, files: bool = True) -> None:
    """Give a directory built under `mkdtemp` (owner-only) the modes the user's umask would have given it, and its
    top-level files too with `files`, so an output looks like anything else the user creates."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    if files:
        for entry in Path(directory).iterdir():
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, 0o666 & ~mask)


def replace_dir(tmp: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Rename the finished directory `tmp` to `out`. An existing `out` (the caller has decided it may go) is first
    renamed into a hidden trash sibling with a bounded name, so a reader sees the old tree or the new one, never a
    mix, and any legal output name works; the trash is removed last."""
    tmp, out = Path(tmp), Path(out)
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{temp_tag(out.name)}{TMP_MARK}old-{os.getpid()}-"))
    os.rename(out, trash / "old")
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)
