"""What patchkit is willing to read from disk: regular files only, links only where a checkpoint legitimately
has them, and never more bytes than a size cap.

A model directory or recipe comes from someone else. Three things in it can hurt the user: a symlink that points
at a secret (`tokenizer_config.json -> ~/.cache/huggingface/token`), which apply would copy and push would
upload; a special file (a FIFO blocks a read forever, `/dev/zero` never ends); and a file far larger than its
kind can be (a 10 GB "recipe"). Every read of untrusted input goes through `check_entry` / `read_capped`.

Links are followed only when they resolve inside the directory itself, or — for a Hugging Face cache snapshot
(`.../models--org--name/snapshots/<sha>/`) — into that repo's own `blobs/` directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from patchkit.errors import ModelError, PatchkitError

__all__ = ["UnsafeFileError", "allowed_roots", "check_entry", "read_capped"]


class UnsafeFileError(ModelError):
    """A path that patchkit refuses to read: a special file, or a link that leaves the model directory."""


def allowed_roots(root: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Real directories that links inside `root` may point into: `root`, and for an HF-cache snapshot its blobs/."""
    real = Path(os.path.realpath(root))
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return tuple(roots)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def check_entry(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *,
                what: str = "file", dir_ok: bool = False) -> Path:
    """The real path of `path` if it is a regular file (or a directory when `dir_ok`) that may be read.

    With `root`, a path that is or passes through a symlink must resolve inside `allowed_roots(root)`.

    Raises:
        UnsafeFileError: a FIFO, device, socket, a dangling link, or a link out of the model directory.
        FileNotFoundError: the path does not exist (callers turn it into their own message).
    """
    p = Path(path)
    real = Path(os.path.realpath(p))
    if root is not None and not _inside(real, allowed_roots(root)):
        raise UnsafeFileError(
            f"{p}: is a link to {real}, outside the model directory {root}",
            hint="patchkit follows links only inside the model directory or its Hugging Face cache blobs/; "
                 "copy the file in, or remove the link", data={"path": str(p), "target": str(real)})
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if os.path.islink(p):
            raise UnsafeFileError(f"{p}: is a dangling link (to {os.readlink(p)})",
                                  hint="remove it or restore its target", data={"path": str(p)}) from None
        raise
    if stat.S_ISREG(st.st_mode) or (dir_ok and stat.S_ISDIR(st.st_mode)):
        return real
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise UnsafeFileError(f"{p}: is {kind}, not a regular {what}",
                          hint="patchkit reads only regular files", data={"path": str(p)})


def read_capped(path: str | os.PathLike[str], max_bytes: int, *, what: str = "file",
                root: str | os.PathLike[str] | None = None,
                error: type[PatchkitError] = ModelError) -> bytes:
    """All bytes of a regular file no larger than `max_bytes`: the size is checked before reading (stat), and the
    read itself stops at the cap (a file that grows while being read is refused too)."""
    real = check_entry(path, root, what=what)
    size = os.stat(real).st_size
    if size > max_bytes:
        raise error(f"{path}: {size} bytes is too large for a {what} (limit {max_bytes})",
                    hint=f"is this really a {what}?", data={"path": str(path), "size": size, "limit": max_bytes})
    with open(real, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{path}: grew past {max_bytes} bytes while being read (limit for a {what})",
                    data={"path": str(path), "limit": max_bytes})
    return data
