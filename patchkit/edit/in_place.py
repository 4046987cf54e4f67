"""`apply --in-place`: patch a plain local directory itself (invert-only recipes, with an undo recipe).

The directory is locked for the whole run (`fcntl.flock` on `DIR/.patchkit.lock`, never waiting: a second apply
on the same directory stops at once with "another patchkit apply is running on DIR"). The protocol is
restartable at every step, because a journal (`DIR/.patchkit-in-place.json`) says what to undo or finish:

1. prepare — each patched shard is streamed into a hidden temp beside its original
   (`.<tag>.patchkit-tmp-new-<pid>`) and fsynced; the new `patchkit.json` and undo recipe likewise. Nothing
   visible has changed; a kill leaves only temps, which the next in-place run on the directory removes.
2. journal, state "prepared" — every shard due (sha256 before and after, temp and backup names) and the temps.
3. swap, shard by shard — the original is hard-linked to a hidden backup name (renamed there where the
   filesystem has no hard links), then the patched temp is renamed over the shard.
4. commit — the journal is rewritten with state "committed". This is the commit point.
5. finish — `patchkit.json` and the undo recipe are renamed into place, the backups removed, the journal removed.

Recovery (`recover_in_place`), run under the lock by the next apply on the directory (in place or not): a
"prepared" journal is rolled back (each backup renamed back over its shard, temps removed: every shard is the
original again); a "committed" one is rolled forward (step 5 completed: every shard patched, with provenance).
Either way every shard's sha256 is checked against the journal before the journal is removed; a shard that
matches neither state stops the recovery with a message and the journal is kept.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK, atomic_write_json, fsync_dir, temp_tag
from patchkit._io.fs import read_json_file
from patchkit._io.hashing import known_sha256, remember_sha256, sha256_file
from patchkit._io.progress import Progress
from patchkit.edit.output import (
    _SKIP_DIRS,
    IN_PLACE_JOURNAL,
    LOCK_FILE,
    UNDO_RECIPE,
    ApplyContext,
    ApplyResult,
    _pid_alive,
    _provenance,
)
from patchkit.edit.plan import Plan
from patchkit.edit.provenance import PROVENANCE_FILE
from patchkit.edit.stream import write_patched
from patchkit.errors import ApplyError, PatchkitError

JOURNAL_FORMAT = 2
_STALE_TEMP = re.compile(re.escape(TMP_MARK) + r"(?:(?:new|prov|undo)-)?(\d+)$")


def _step(name: str) -> None:
    """Called before each step of the protocol; a no-op (crash tests replace it to kill the process there)."""


# ---------------------------------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------------------------------
class DirLock:
    """patchkit's lock on a model directory: `fcntl.flock` on `DIR/.patchkit.lock`, never waiting.

    Exclusive (an in-place apply, a recovery): creates the lock file and removes it on release. Shared (an apply
    that only reads the directory): taken only when a lock file exists, so a read never writes into the model
    directory. After locking, the file is checked to still be the one at the path (a holder removes it on
    release), so two processes can never both hold it.
    """

    def __init__(self, directory: Path, *, exclusive: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.exclusive = exclusive
        self.fd: int | None = None

    def _busy(self) -> ApplyError:
        return ApplyError(
            f"another patchkit apply is running on {self.directory}",
            hint=f"wait for it to finish, then retry; its lock is {self.path}",
            data={"dir": str(self.directory), "lock": str(self.path)},
        )

    def acquire(self) -> bool:
        """Take the lock: True when held; False for a shared lock nobody can hold (no lock file). ApplyError when
        another process holds it."""
        flags = (
            os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | (os.O_RDWR | os.O_CREAT if self.exclusive else os.O_RDONLY)
        )
        for _ in range(50):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                if not self.exclusive:
                    return False  # no lock file (or unreadable): no in-place apply can be running
                raise ApplyError(
                    f"{self.path}: cannot create patchkit's lock file ({exc.strerror or exc})",
                    hint="--in-place needs a writable directory whose lock file is not a link",
                    data={"path": str(self.path)},
                ) from None
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy() from None
            except OSError as exc:
                os.close(fd)
                if not self.exclusive:
                    return False
                raise ApplyError(
                    f"{self.path}: cannot lock ({exc.strerror or exc})",
                    hint="the filesystem does not support flock; patch a copy with -o OUT instead",
                    data={"path": str(self.path)},
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # its holder removed it between our open and our lock: the lock is free now
            if not self.exclusive:
                return False
        raise self._busy()

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if self.exclusive and os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # while still holding it: whoever opened it meanwhile sees the inode change
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Recovery:
    """What `recover_in_place` did: "rolled-back" (every shard original) or "rolled-forward" (all patched)."""

    action: str
    directory: Path
    recipe: str | None
    recipe_sha256: str | None
    files: list[str]

    @property
    def completed(self) -> bool:
        return self.action == "rolled-forward"

    @property
    def message(self) -> str:
        what = f"the interrupted --in-place apply of {self.recipe or 'a recipe'}"
        if self.completed:
            return (
                f"{self.directory}: completed {what} (rolled forward: {len(self.files)} shard(s) patched, "
                f"{PROVENANCE_FILE} written)"
            )
        return f"{self.directory}: undid {what} (rolled back: every shard is the original again)"


@contextmanager
def guard_source(source_dir: Path, *, in_place: bool, dry_run: bool) -> Iterator[Recovery | None]:
    """Lock the model directory for an apply, after bringing it back to a consistent state.

    In place: an exclusive lock for the whole apply; an interrupted earlier in-place apply is recovered first and
    its stale temps removed. Otherwise: an interrupted in-place apply is recovered under an exclusive lock, then
    the directory is read under a shared lock (so an in-place apply cannot start meanwhile). A dry run writes
    nothing, so it refuses a directory that needs recovering.
    """
    journal = source_dir / IN_PLACE_JOURNAL
    if dry_run:
        if os.path.lexists(journal):
            raise ApplyError(
                f"{source_dir} holds an interrupted --in-place apply ({IN_PLACE_JOURNAL}); a dry run changes nothing",
                hint="run the apply without dry run: it finishes or undoes that apply first and says which",
                data={"dir": str(source_dir)},
            )
        yield None
        return
    if in_place:
        # before the lock (which creates a file): never write into an HF-cache snapshot, not even a lock file
        _refuse_symlinked_shards(source_dir, sorted(p.name for p in source_dir.glob("*.safetensors")))
        with DirLock(source_dir, exclusive=True):
            recovery = recover_in_place(source_dir)
            _clean_stale_temps(source_dir)  # temps of runs killed before their journal existed
            yield recovery
        return
    recovery = None
    if os.path.lexists(journal):
        with DirLock(source_dir, exclusive=True):
            recovery = recover_in_place(source_dir)
    with DirLock(source_dir, exclusive=False):
        yield recovery


# ---------------------------------------------------------------------------------------------------------------
# apply in place
# ---------------------------------------------------------------------------------------------------------------
def _refuse_symlinked_shards(source_dir: Path, names) -> None:
    for f in names:
        if os.path.islink(source_dir / f):
            raise ApplyError(
                f"--in-place refused: {source_dir / f} is a symlink (Hugging Face cache?); the cache is never "
                "modified — write a new directory with -o OUT"
            )


def _check_in_place(source_dir: Path, plan: Plan) -> None:
    _refuse_symlinked_shards(source_dir, plan.weight_files)
    non_invert = sorted({e.op for e in plan.edits if e.op != "invert"})
    if non_invert:
        raise ApplyError(
            f"--in-place refused: op {', '.join(non_invert)} cannot be undone exactly; only invert-only recipes "
            "are applied in place — write a new directory with -o OUT"
        )


def _hidden(rel: str, kind: str, pid: int) -> str:
    """A hidden temp name beside `rel` (bounded length whatever the shard's name); listings skip TMP_MARK names."""
    head, name = os.path.split(rel)
    return os.path.join(head, f".{temp_tag(name)}{TMP_MARK}{kind}-{pid}")


def _write_new(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_journal(directory: Path, journal: dict) -> None:
    atomic_write_json(directory / IN_PLACE_JOURNAL, journal)
    fsync_dir(directory)


def _backup(shard: Path, backup: Path) -> None:
    """Keep the original under a hidden name: a hard link (the shard stays in place), else a rename."""
    if os.path.lexists(backup):
        os.unlink(backup)
    try:
        os.link(shard, backup, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EACCES):
            raise
        os.rename(shard, backup)


def _apply_in_place(ctx: ApplyContext, source_dir: Path, files: list[str], progress: Progress | None) -> ApplyResult:
    """Patch a plain local directory with the journaled protocol of the module docstring."""
    rewritten = ctx.plan.files_to_rewrite
    pid = os.getpid()
    names = {rel: {"new": _hidden(rel, "new", pid), "backup": _hidden(rel, "orig", pid)} for rel in rewritten}
    prov_tmp, undo_tmp = _hidden(PROVENANCE_FILE, "prov", pid), _hidden(UNDO_RECIPE, "undo", pid)
    source_sha: dict[str, dict] = {}
    output_sha: dict[str, dict] = {}
    slice_hashes: dict[int, tuple[str, str]] = {}
    made: list[Path] = []  # temps to remove if this run stops before its journal exists
    journal: dict[str, Any] | None = None
    try:
        # 1. prepare
        for rel, edits in rewritten.items():
            src, new = source_dir / rel, source_dir / names[rel]["new"]
            _step("write")
            new.unlink(missing_ok=True)
            made.append(new)
            known = known_sha256(src)
            res = write_patched(src, new, edits, progress=progress, hash_source=known is None)
            _fsync_file(new)
            source_sha[rel] = {"sha256": known or res.source_sha256, "size": res.size}
            output_sha[rel] = {"sha256": res.output_sha256, "size": res.size, "rewritten": True}
            for e, h in zip(edits, res.slice_hashes, strict=True):
                slice_hashes[id(e)] = h
        for rel in files:
            if rel in rewritten:
                continue
            digest = sha256_file(source_dir / rel)
            size = (source_dir / rel).stat().st_size
            if rel in ctx.plan.weight_files:
                source_sha[rel] = {"sha256": digest, "size": size}
            output_sha[rel] = {"sha256": digest, "size": size, "rewritten": False}
        prov = _provenance(ctx, source_sha, output_sha, slice_hashes)
        prov["in_place"] = True
        prov["undo_recipe"] = UNDO_RECIPE
        _step("prepare-provenance")
        made.append(source_dir / prov_tmp)
        _write_new(source_dir / prov_tmp, (json.dumps(prov, indent=2, default=str) + "\n").encode("utf-8"))
        made.append(source_dir / undo_tmp)
        _write_new(source_dir / undo_tmp, _undo_recipe_text(ctx.text, ctx.recipe.name).encode("utf-8"))
        # 2. journal
        draft = {
            "patchkit_journal": JOURNAL_FORMAT,
            "pid": pid,
            "state": "prepared",
            "recipe": ctx.recipe.name,
            "recipe_sha256": prov["recipe"]["sha256"],
            "files": {
                rel: {
                    "before_sha256": source_sha[rel]["sha256"],
                    "after_sha256": output_sha[rel]["sha256"],
                    "size": output_sha[rel]["size"],
                    **names[rel],
                }
                for rel in rewritten
            },
            "provenance": prov_tmp,
            "undo": undo_tmp,
        }
        _step("journal")
        journal = draft  # from here on a failure rolls back (a journal that was never written is simply absent)
        _write_journal(source_dir, draft)
        # 3. swap
        for rel in rewritten:
            _step("backup")
            _backup(source_dir / rel, source_dir / names[rel]["backup"])
            _step("swap")
            os.replace(source_dir / names[rel]["new"], source_dir / rel)
        for parent in {(source_dir / rel).parent for rel in rewritten}:
            fsync_dir(parent)
        # 4. commit
        _step("commit")
        _write_journal(source_dir, {**journal, "state": "committed"})
        journal["state"] = "committed"
        # 5. finish
        _roll_forward(source_dir, journal, check=False)
    except BaseException as exc:
        err = _failed(source_dir, journal, made, exc)
        if err is exc:
            raise
        raise err from exc
    _step("done")
    for rel in rewritten:
        remember_sha256(source_dir / rel, output_sha[rel]["sha256"])
    return ApplyResult(
        out_dir=source_dir, plan=ctx.plan, provenance=prov, in_place=True, undo_recipe=source_dir / UNDO_RECIPE
    )


def _failed(source_dir: Path, journal: dict | None, made: list[Path], exc: BaseException) -> BaseException:
    """Clean up after an in-process failure; the error to raise (the original one unless it was an OSError)."""
    if journal is None:  # nothing visible changed: drop the temps
        for path in made:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            return ApplyError(
                f"{exc.filename or source_dir}: {exc.strerror or exc} while preparing the patched "
                "shards; nothing was changed (free some space or fix permissions)"
            )
        return exc
    journal_path = source_dir / IN_PLACE_JOURNAL
    if journal.get("state") == "prepared":
        try:
            _roll_back(source_dir, journal, check=False)
        except BaseException:  # noqa: BLE001 - the journal stays: the next apply on the directory recovers
            pass
        else:
            if isinstance(exc, OSError):
                return ApplyError(
                    f"{exc.filename or source_dir}: {exc.strerror or exc} while replacing shards in "
                    "place; rolled back: every shard is the original again"
                )
            return exc
    if isinstance(exc, OSError):
        return ApplyError(
            f"{exc.filename or source_dir}: {exc.strerror or exc} while replacing shards in place; "
            f"{journal_path} records the state and the next apply on {source_dir} finishes or undoes "
            "it"
        )
    return exc


# ---------------------------------------------------------------------------------------------------------------
# recovery
# ---------------------------------------------------------------------------------------------------------------
def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_shards(directory: Path, journal: dict, key: str, state: str) -> None:
    for rel, info in journal["files"].items():
        path = directory / rel
        try:
            digest = sha256_file(path, use_cache=False)
        except FileNotFoundError:
            digest = "missing"
        if digest != info[key]:
            raise ApplyError(
                f"{path}: does not match its {state} sha256 recorded in {directory / IN_PLACE_JOURNAL} after "
                f"recovering an interrupted --in-place apply; the directory was changed by something else",
                hint=f"restore {rel} from a copy of the model, then delete {IN_PLACE_JOURNAL}",
                data={"path": str(path), "expected_sha256": info[key], "sha256": digest},
            )


def _roll_back(directory: Path, journal: dict, *, check: bool = True) -> None:
    """Every shard back to its original (its backup renamed back over it), temps removed, journal removed."""
    for rel, info in journal["files"].items():
        shard, backup, new = directory / rel, directory / info["backup"], directory / info["new"]
        if os.path.lexists(backup):
            if _same_inode(backup, shard):  # linked but not yet swapped (rename of two links to one inode: no-op)
                os.unlink(backup)
            else:
                os.replace(backup, shard)
        if os.path.lexists(new):
            os.unlink(new)
    for key in ("provenance", "undo"):
        if os.path.lexists(directory / journal[key]):
            os.unlink(directory / journal[key])
    for parent in {(directory / rel).parent for rel in journal["files"]}:
        fsync_dir(parent)
    if check:
        _check_shards(directory, journal, "before_sha256", "original")
    _step("rollback-journal")
    (directory / IN_PLACE_JOURNAL).unlink(missing_ok=True)
    fsync_dir(directory)


def _roll_forward(directory: Path, journal: dict, *, check: bool = True) -> None:
    """Finish a committed apply: provenance and undo recipe into place, backups removed, journal removed."""
    for rel, info in journal["files"].items():
        if os.path.lexists(directory / info["new"]):
            os.replace(directory / info["new"], directory / rel)
    if check:
        _check_shards(directory, journal, "after_sha256", "patched")
    _step("provenance")
    if os.path.lexists(directory / journal["provenance"]):
        os.replace(directory / journal["provenance"], directory / PROVENANCE_FILE)
    _step("undo")
    if os.path.lexists(directory / journal["undo"]):
        os.replace(directory / journal["undo"], directory / UNDO_RECIPE)
    _step("cleanup")
    for info in journal["files"].values():
        if os.path.lexists(directory / info["backup"]):
            os.unlink(directory / info["backup"])
    fsync_dir(directory)
    _step("journal-remove")
    os.unlink(directory / IN_PLACE_JOURNAL)
    fsync_dir(directory)


def _safe_rel(directory: Path, name: Any, *, hidden: bool) -> str:
    """A journal entry's path, refused unless it is a plain relative path inside the directory (a journal comes
    with the directory, which may come from someone else)."""
    ok = isinstance(name, str) and name and not os.path.isabs(name) and ".." not in Path(name).parts
    if ok and hidden:
        ok = TMP_MARK in os.path.basename(name)
    if ok:
        ok = not os.path.islink(directory / name) if hidden else True
    if not ok:
        raise ApplyError(
            f"{directory / IN_PLACE_JOURNAL}: names {name!r}, which is not a patchkit temp/shard path "
            f"inside {directory}; refusing to recover from it",
            hint="if you did not run `patchkit apply --in-place` on this directory, delete that file",
            data={"journal": str(directory / IN_PLACE_JOURNAL)},
        )
    return name


def _read_journal(directory: Path) -> dict:
    path = directory / IN_PLACE_JOURNAL
    try:
        if path.is_symlink():
            raise ValueError("it is a link")
        data = read_json_file(path, what="in-place journal", max_bytes=16 << 20)
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no files map")
    except (OSError, ValueError, PatchkitError) as exc:
        raise ApplyError(
            f"{path}: unreadable in-place journal ({exc})",
            hint="compare the shards with a copy of the model, then delete that file",
            data={"journal": str(path)},
        ) from None
    return data


def recover_in_place(directory: str | os.PathLike[str]) -> Recovery | None:
    """Bring a directory left by an interrupted `apply --in-place` back to a consistent state; None if none was.

    Before the commit point the apply is rolled back (every shard original again), after it rolled forward (every
    shard patched, `patchkit.json` and the undo recipe written). The caller holds the directory's lock.

    Raises:
        ApplyError: the journal is unreadable or names paths outside the directory, or a shard matches neither
            the state recovered to (the directory was changed by something else); the journal is kept.
    """
    directory = Path(directory)
    if not os.path.lexists(directory / IN_PLACE_JOURNAL):
        _clean_stale_temps(directory)  # a run killed before its journal existed left only temps
        return None
    journal = _read_journal(directory)
    files = journal["files"]
    if directory.parent.name == "snapshots" or any(os.path.islink(directory / str(rel)) for rel in files):
        raise ApplyError(
            f"{directory / IN_PLACE_JOURNAL}: an in-place journal in a directory patchkit never "
            "patches in place (symlinked shards / Hugging Face cache); refusing to act on it",
            hint="delete that file",
            data={"journal": str(directory / IN_PLACE_JOURNAL)},
        )
    for rel, info in files.items():
        _safe_rel(directory, rel, hidden=False)
        if not isinstance(info, dict) or not all(
            isinstance(info.get(k), str) for k in ("before_sha256", "after_sha256")
        ):
            raise ApplyError(
                f"{directory / IN_PLACE_JOURNAL}: entry {rel!r} has no before/after sha256",
                hint="compare the shards with a copy of the model, then delete that file",
            )
    recipe, recipe_sha = journal.get("recipe"), journal.get("recipe_sha256")
    if journal.get("patchkit_journal") != JOURNAL_FORMAT:
        return _recover_legacy(directory, journal)
    for info in files.values():
        _safe_rel(directory, info.get("new"), hidden=True)
        _safe_rel(directory, info.get("backup"), hidden=True)
    _safe_rel(directory, journal.get("provenance"), hidden=True)
    _safe_rel(directory, journal.get("undo"), hidden=True)
    if journal.get("state") == "committed":
        _roll_forward(directory, journal)
        for rel, info in files.items():
            remember_sha256(directory / rel, info["after_sha256"])
        return Recovery("rolled-forward", directory, recipe, recipe_sha, sorted(files))
    _roll_back(directory, journal)
    return Recovery("rolled-back", directory, recipe, recipe_sha, sorted(files))


def _recover_legacy(directory: Path, journal: dict) -> Recovery:
    """A journal from an earlier patchkit (no backups were kept): only an untouched directory can be recovered."""
    try:
        _check_shards(directory, journal, "before_sha256", "original")
    except ApplyError:
        files = sorted(journal["files"])
        raise ApplyError(
            f"{directory} holds an interrupted --in-place apply from an earlier patchkit ({IN_PLACE_JOURNAL}) that "
            f"kept no backups: {', '.join(files)} may be partly replaced",
            hint=f"compare their sha256 with the before/after values in {directory / IN_PLACE_JOURNAL}, restore the "
            "originals, then delete that file",
            data={"journal": str(directory / IN_PLACE_JOURNAL)},
        ) from None
    os.unlink(directory / IN_PLACE_JOURNAL)
    return Recovery("rolled-back", directory, journal.get("recipe"), None, sorted(journal["files"]))


def _clean_stale_temps(directory: Path) -> None:
    """Remove in-place temps left by a killed run (not in any journal; their pid no longer runs). Lock held."""
    for root, dirs, names in os.walk(directory, followlinks=False):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and TMP_MARK not in d]
        for name in names:
            m = _STALE_TEMP.search(name)
            if m and name.startswith(".") and not _pid_alive(int(m.group(1))):
                try:
                    os.unlink(os.path.join(root, name))
                except OSError:
                    pass


def _undo_recipe_text(text: str, name: str) -> str:
    """The recipe that undoes an invert-only recipe: the same edits under a new name (invert is its own inverse)."""
    from io import StringIO

    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(text)
    data["name"] = f"{name}-undo"
    data["description"] = f"Undo of recipe {name} applied in place (invert is its own inverse)."
    data["source"] = {"kind": "manual", "reference": f"undo of {name}"}
    for key in ("publish", "checks"):
        data.pop(key, None)
    buf = StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()
