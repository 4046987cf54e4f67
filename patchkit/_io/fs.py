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

import gc
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from patchkit.errors import ModelError, PatchkitError

__all__ = [
    "SKIP_DIRS",
    "UnsafeFileError",
    "allowed_roots",
    "check_entry",
    "check_tree",
    "open_regular",
    "parse_json",
    "read_capped",
    "shown",
]

#: Directories of a checkpoint that are never read nor carried over (download caches, VCS metadata).
SKIP_DIRS = frozenset({".cache", ".git", ".huggingface"})
#: A model directory with more entries than this is not a checkpoint (and walking it would take long).
MAX_TREE_ENTRIES = 100_000
#: Digits an integer in a JSON file patchkit reads may have (2**64 has 20); longer ones are hostile.
MAX_INT_DIGITS = 32
#: Characters a number in a JSON file may have before it is refused (float parsing of huge literals is slow).
MAX_NUMBER_CHARS = 64


class UnsafeFileError(ModelError):
    """A path that patchkit refuses to read: a special file, or a link that leaves the model directory."""


def allowed_roots(root: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Real directories that links inside `root` may point into: `root`, and for an HF-cache snapshot its blobs/."""
    real = Path(os.path.realpath(root))
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return tuple(roots)


def _link_out(path: Path, real: Path, root: str | os.PathLike[str]) -> UnsafeFileError:
    return UnsafeFileError(
        f"{path}: is a link to {real}, outside the model directory {root}",
        hint="patchkit follows links only inside the model directory or its Hugging Face cache blobs/; "
        "copy the file in, or remove the link",
        data={"path": str(path), "target": str(real)},
    )


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def check_entry(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    what: str = "file",
    dir_ok: bool = False,
) -> Path:
    """The real path of `path` if it is a regular file (or a directory when `dir_ok`) that may be read.

    With `root`, a path that is or passes through a symlink must resolve inside `allowed_roots(root)`.

    Raises:
        UnsafeFileError: a FIFO, device, socket, a dangling link, or a link out of the model directory.
        FileNotFoundError: the path does not exist (callers turn it into their own message).
    """
    p = Path(path)
    real = Path(os.path.realpath(p))
    if root is not None and not _inside(real, allowed_roots(root)):
        raise _link_out(p, real, root)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if os.path.islink(p):
            raise UnsafeFileError(
                f"{p}: is a dangling link (to {os.readlink(p)})",
                hint="remove it or restore its target",
                data={"path": str(p)},
            ) from None
        raise
    except OSError as exc:  # ELOOP (a link cycle), ENAMETOOLONG, ...
        raise UnsafeFileError(
            f"{p}: cannot be resolved ({exc.strerror or exc})", hint="remove or fix the link", data={"path": str(p)}
        ) from None
    if stat.S_ISREG(st.st_mode) or (dir_ok and stat.S_ISDIR(st.st_mode)):
        return real
    kind = (
        "a directory"
        if stat.S_ISDIR(st.st_mode)
        else "a FIFO"
        if stat.S_ISFIFO(st.st_mode)
        else "a device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "a socket"
        if stat.S_ISSOCK(st.st_mode)
        else "not a regular file"
    )
    raise UnsafeFileError(
        f"{p}: is {kind}, not a regular {what}", hint="patchkit reads only regular files", data={"path": str(p)}
    )


def read_capped(
    path: str | os.PathLike[str],
    max_bytes: int,
    *,
    what: str = "file",
    root: str | os.PathLike[str] | None = None,
    error: type[PatchkitError] = ModelError,
) -> bytes:
    """All bytes of a regular file no larger than `max_bytes`: the size of the opened file is checked before
    reading (fstat), and the read itself stops at the cap (a file that grows while being read is refused too)."""
    with open_regular(path, root, what=what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise error(
                f"{path}: {size} bytes is too large for a {what} (limit {max_bytes})",
                hint=f"is this really a {what}?",
                data={"path": str(path), "size": size, "limit": max_bytes},
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(
            f"{path}: grew past {max_bytes} bytes while being read (limit for a {what})",
            data={"path": str(path), "limit": max_bytes},
        )
    return data


def open_regular(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *, what: str = "file"
) -> BinaryIO:
    """`check_entry`, then open without blocking and re-check the opened file (a FIFO or device swapped in
    between the check and the open is refused, never read). Returns a binary file object (caller closes it)."""
    real = check_entry(path, root, what=what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ENXIO: a socket; ELOOP; EACCES ...
        raise UnsafeFileError(
            f"{path}: cannot be opened as a regular {what} ({exc.strerror or exc})", data={"path": str(path)}
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(
                f"{path}: is not a regular {what} (it changed while being checked)",
                hint="patchkit reads only regular files",
                data={"path": str(path)},
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_tree(
    root: str | os.PathLike[str], *, skip: frozenset[str] = SKIP_DIRS, max_entries: int = MAX_TREE_ENTRIES
) -> None:
    """Refuse a model directory holding anything patchkit must never read or carry over: special files (FIFO,
    socket, device), dangling links, and links that leave `allowed_roots(root)`. Nothing is opened or read;
    links to directories are checked but not descended into; `skip` directories are not entered."""
    root = Path(root)
    roots = allowed_roots(root)
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in [*dirnames, *sorted(filenames)]:
            count += 1
            if count > max_entries:
                raise UnsafeFileError(
                    f"{root}: holds more than {max_entries} files; not a checkpoint directory", data={"path": str(root)}
                )
            entry = Path(dirpath) / name
            if os.path.islink(entry) or name not in dirnames:
                _check_tree_entry(entry, root, roots)


def _check_tree_entry(entry: Path, root: Path, roots: tuple[Path, ...]) -> None:
    try:
        st = os.lstat(entry)
    except FileNotFoundError:  # removed while walking
        return
    if stat.S_ISLNK(st.st_mode):
        real = Path(os.path.realpath(entry))
        if not _inside(real, roots):
            raise _link_out(entry, real, root)
        try:
            st = os.stat(real)
        except OSError:
            raise UnsafeFileError(
                f"{entry}: is a dangling link (to {os.readlink(entry)})",
                hint="remove it or restore its target",
                data={"path": str(entry)},
            ) from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return
    kind = (
        "a FIFO"
        if stat.S_ISFIFO(st.st_mode)
        else "a device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "a socket"
        if stat.S_ISSOCK(st.st_mode)
        else "not a regular file"
    )
    raise UnsafeFileError(
        f"{entry}: is {kind}; a model directory holds only regular files",
        hint="remove it from the model directory",
        data={"path": str(entry)},
    )


class _Refused(Exception):
    """Raised inside the JSON parser's hooks; turned into the caller's error type."""


def parse_json(
    data: bytes,
    label: str,
    *,
    error: type[PatchkitError] = ModelError,
    what: str = "JSON file",
    duplicate: str = "duplicate key {key}",
) -> Any:
    """Strict JSON from untrusted bytes, every failure one `error` line naming `label`.

    Refused: invalid UTF-8, invalid JSON, NaN/Infinity (not JSON), integers of more than MAX_INT_DIGITS digits,
    numbers out of the float range, nesting deep enough to exhaust the parser's recursion, and duplicate keys in an
    object (json.loads would silently keep the last one; `duplicate` words that message, with `{key}`).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: is not valid UTF-8 (byte {exc.start})", data={"path": label}) from None

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _Refused(duplicate.format(key=shown(key)))
                seen.add(key)
        return out

    def parse_int(literal: str) -> int:
        if len(literal) > MAX_INT_DIGITS:
            raise _Refused(f"an integer with {len(literal.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
        return int(literal)

    def parse_float(literal: str) -> float:
        value = float(literal) if len(literal) <= MAX_NUMBER_CHARS else math.inf
        if not math.isfinite(value):
            raise _Refused(f"the number {literal[:24]}{'...' if len(literal) > 24 else ''} is out of range")
        return value

    def parse_constant(name: str) -> Any:
        raise _Refused(f"{name} is not valid JSON")

    collecting = gc.isenabled()
    gc.disable()  # a large document is millions of new objects: generational GC passes would dominate the parse
    try:
        return json.loads(
            text,
            object_pairs_hook=pairs_hook,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
        )
    except _Refused as exc:
        raise error(f"{label}: {exc}", data={"path": label}) from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{label}: is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", data={"path": label}
        ) from None
    except RecursionError:
        raise error(f"{label}: JSON nested too deeply to be a {what}", data={"path": label}) from None
    except (ValueError, OverflowError) as exc:  # belt and braces: int/float conversion limits
        raise error(f"{label}: {shown(str(exc), 80)}", data={"path": label}) from None
    finally:
        if collecting:
            gc.enable()


def shown(text: str, limit: int = 120) -> str:
    """`text` fit for a one-line message: as it is when printable, else its repr; long texts cut."""
    out = text if text.isprintable() else repr(text)
    return out if len(out) <= limit else out[:limit] + "..."


def json_type(value: Any) -> str:
    """How JSON names the type of a parsed value ("object", "array", ...), for messages about hostile files."""
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


#: patchkit's own JSON side files (patchkit.json, gguf-import.json, reports): a 1,100-edit provenance is ~0.5 MB
MAX_SIDE_FILE_BYTES = 64 << 20


def read_json_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    root: str | os.PathLike[str] | None = None,
    max_bytes: int = MAX_SIDE_FILE_BYTES,
    error: type[PatchkitError] = ModelError,
) -> Any:
    """Strict JSON from a regular file of at most `max_bytes` (checked before reading): `read_capped` then
    `parse_json`, every failure one `error` line naming the file."""
    return parse_json(
        read_capped(path, max_bytes, what=what, root=root, error=error), str(path), error=error, what=what
    )
