"""Apply a recipe: a new checkpoint directory where only the edited slices differ, with provenance.

How the bytes move (memory stays at a few 8 MiB chunks whatever the checkpoint size; torch is never used):
- a shard holding edited tensors is streamed once into a temp file: plain stretches are copied, the
  edited tensors' chunks are patched on the way (`edits.edit_chunk`), and sha256 of source and output
  (and of every edited slice before/after) are computed on the same pass in background threads;
- an untouched shard is reflinked, else hard-linked, else copied (never written to afterwards: every
  later write goes to a new temp file that is renamed over, so a link can never carry an edit back);
- every other file (config, tokenizer, chat template, index) is copied; HF-cache symlinks are resolved.
The output is assembled in a hidden temp sibling directory and renamed into place at the end, so an
interrupted apply leaves either no output or a complete one; the source is only ever read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from patchkit._version import __version__
from patchkit._io.atomic import TMP_MARK, atomic_write_json, atomic_write_text
from patchkit._io.progress import Progress
from patchkit.edit.bytes import edit_chunk, raw_view
from patchkit.errors import Fix, ApplyError
from patchkit.edit.plan import Plan, PlannedEdit
from patchkit.edit.provenance import (
    PROVENANCE_FILE,
    known_sha256,
    read_provenance,
    remember_sha256,
    sha256_file,
    utc_now,
)
from patchkit.model.safetensors_io import CHUNK, SCAN_CHUNK


UNDO_RECIPE = "patchkit-undo.yaml"
IN_PLACE_JOURNAL = ".patchkit-in-place.json"
_SKIP_DIRS = {".cache", ".git", ".huggingface"}
_FICLONE = 0x40049409


@dataclass
class PatchedFile:
    """What streaming one edited shard produced."""

    source_sha256: str
    output_sha256: str
    size: int
    slice_hashes: list[tuple[str, str]] = field(default_factory=list)  # per edit: (before, after)


@dataclass
class ApplyResult:
    out_dir: Path | None
    plan: Plan
    provenance: dict[str, Any] | None
    dry_run: bool = False
    in_place: bool = False
    undo_recipe: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "warnings": self.warnings,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "dry_run": self.dry_run,
            "in_place": self.in_place,
            "undo_recipe": str(self.undo_recipe) if self.undo_recipe else None,
            "plan": self.plan.to_json(),
            "provenance": self.provenance,
        }


# --- byte level ------------------------------------------------------------------------------------------


class PatchStream:
    """The bytes of `src` with `edits` applied, in file order.

    `segments()` yields ("copy", start, end) for stretches that stay as they are and ("edited", offset,
    chunk) for chunks of edited tensors, already patched; iterating yields (offset, chunk) for the whole
    file (verify compares those). Chunks are views of reused buffers (fresh 8 MiB allocations cost more in
    page faults than the copy itself): use each one before asking for the next.
    After a full pass, `slice_hashes[i]` holds sha256 (before, after) of edit i's slice.
    """

    def __init__(self, src: Path, edits: list[PlannedEdit]):
        self.src = Path(src)
        self.edits = edits
        self.size = os.path.getsize(src)
        self._before = [hashlib.sha256() for _ in edits]
        self._after = [hashlib.sha256() for _ in edits]
        self._buf = bytearray(CHUNK)

    @property
    def slice_hashes(self) -> list[tuple[str, str]]:
        return [(b.hexdigest(), a.hexdigest()) for b, a in zip(self._before, self._after)]

    def segments(self):
        regions: dict[str, list[int]] = {}
        for i, e in enumerate(self.edits):
            regions.setdefault(e.tensor, []).append(i)
        order = sorted(regions.values(), key=lambda idx: self.edits[idx[0]].tensor_start)
        with open(self.src, "rb", buffering=0) as fin:
            pos = 0
            for idx in order:
                first = self.edits[idx[0]]
                if pos < first.tensor_start:
                    yield "copy", pos, first.tensor_start
                yield from self._tensor(fin.fileno(), first, [(i, self.edits[i].selection) for i in idx])
                pos = first.tensor_end
            if pos < self.size:
                yield "copy", pos, self.size

    def __iter__(self):
        with open(self.src, "rb", buffering=0) as fin:
            for seg in self.segments():
                if seg[0] == "edited":
                    yield seg[1], seg[2]
                    continue
                _, a, b = seg
                while a < b:
                    n = min(CHUNK, b - a)
                    yield a, self._read(fin.fileno(), a, n)
                    a += n

    def _read(self, fd: int, a: int, n: int) -> memoryview:
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        if os.preadv(fd, [view], a) != n:
            raise ApplyError(f"{self.src}: file shrank while reading (offset {a})")
        return view

    def _tensor(self, fd: int, first: PlannedEdit, selections):
        itemsize = first.itemsize
        step = CHUNK - CHUNK % itemsize
        a = first.tensor_start
        while a < first.tensor_end:
            n = min(step, first.tensor_end - a)
            chunk = self._read(fd, a, n)
            raw = raw_view(chunk, first.dtype)
            e0 = (a - first.tensor_start) // itemsize
            for i, sel in selections:
                e = self.edits[i]
                positions = sel.positions_in(e0, e0 + len(raw))
                edit_chunk(raw, positions, first.dtype, e.op, e.factor, self._before[i], self._after[i])
            del raw
            yield "edited", a, chunk
            a += n


class _BackgroundHasher:
    """sha256 of a shard's source and output, computed in a thread while the main thread copies.

    Work items, in file order, name byte ranges already written to the output: ("copy", a, b) — equal in
    source and output, read once from the source — or ("edited", a, b) — read from both files (the page
    cache serves them). Until the first edited range one hash serves both files. No buffers are shared
    with the main thread.
    """

    def __init__(self, src: Path, dst: Path, hash_source: bool):
        self.src, self.dst, self.hash_source = src, dst, hash_source
        self.src_h, self.out_h = hashlib.sha256(), hashlib.sha256()
        self.items: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _ranges(self, fd: int, a: int, b: int, buf: bytearray):
        while a < b:
            n = min(SCAN_CHUNK, b - a)
            view = memoryview(buf)[:n]
            if os.preadv(fd, [view], a) != n:
                raise ApplyError(f"{self.src}: file shrank while hashing (offset {a})")
            yield view
            a += n

    def _run(self) -> None:
        diverged = not self.hash_source
        buf = bytearray(SCAN_CHUNK)
        try:
            with open(self.src, "rb", buffering=0) as fin, open(self.dst, "rb", buffering=0) as fout:
                while (item := self.items.get()) is not None:
                    kind, a, b = item
                    if kind == "edited" and not diverged:
                        self.out_h = self.src_h.copy()
                        diverged = True
                    if self.hash_source:
                        for view in self._ranges(fin.fileno(), a, b, buf):
                            self.src_h.update(view)
                            if diverged and kind == "copy":
                                self.out_h.update(view)
                    elif kind == "copy":
                        for view in self._ranges(fin.fileno(), a, b, buf):
                            self.out_h.update(view)
                    if kind == "edited":
                        for view in self._ranges(fout.fileno(), a, b, buf):
                            self.out_h.update(view)
            if not diverged:
                self.out_h = self.src_h.copy()
        except BaseException as exc:  # re-raised in the main thread by finish()
            self.error = exc
            while self.items.get() is not None:
                pass

    def put(self, item: tuple[str, int, int]) -> None:
        self.items.put(item)

    def finish(self) -> tuple[str, str]:
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return (self.src_h.hexdigest() if self.hash_source else ""), self.out_h.hexdigest()


#: Bytes per copy_file_range call (also the progress granularity).
COPY_PIECE = 64 << 20


def _copy_range(fd_in: int, fd_out: int, a: int, b: int) -> None:
    """Copy [a, b) of the source to the same offsets of the output, in the kernel when it can."""
    while a < b:
        n = min(COPY_PIECE, b - a)
        try:
            done = os.copy_file_range(fd_in, fd_out, n, a, a)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = os.pread(fd_in, n, a)
            done = len(data)
            _pwrite_all(fd_out, data, a)
        if done <= 0:
            raise ApplyError(f"source file shrank while copying (offset {a})")
        a += done


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def write_patched(
    src: Path, dst: Path, edits: list[PlannedEdit], *, progress: Progress | None = None, hash_source: bool = True
) -> PatchedFile:
    """Write `src` with `edits` applied to the new file `dst`; returns checksums. `dst` must not exist.

    Unedited stretches are copied in the kernel (copy_file_range: no trip through Python, reflinked
    extents where the filesystem shares them); edited tensors are read, patched and written in chunks.
    A background thread hashes source and output meanwhile, so the hash overlaps the copy.
    """
    stream = PatchStream(src, edits)
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    hasher = _BackgroundHasher(src, dst, hash_source)
    try:
        try:
            with open(src, "rb", buffering=0) as fin:
                for seg in stream.segments():
                    if seg[0] == "copy":
                        for a in range(seg[1], seg[2], COPY_PIECE):
                            b = min(a + COPY_PIECE, seg[2])
                            _copy_range(fin.fileno(), fout, a, b)
                            hasher.put(("copy", a, b))
                            if progress:
                                progress(dst.name, b, stream.size)
                    else:
                        _, offset, chunk = seg
                        # copy first, then overwrite: rewriting cached pages is cheaper than extending the file
                        _copy_range(fin.fileno(), fout, offset, offset + len(chunk))
                        _pwrite_all(fout, chunk, offset)
                        hasher.put(("edited", offset, offset + len(chunk)))
                        if progress:
                            progress(dst.name, offset + len(chunk), stream.size)
        finally:
            os.close(fout)
        src_sha, out_sha = hasher.finish()
        if os.path.getsize(dst) != stream.size:
            raise ApplyError(f"{dst}: wrote {os.path.getsize(dst)} bytes, expected {stream.size}")
        return PatchedFile(source_sha256=src_sha, output_sha256=out_sha, size=stream.size, slice_hashes=stream.slice_hashes)
    finally:
        if hasher.thread.is_alive():  # an error in the main thread: let the hasher stop
            hasher.items.put(None)
            hasher.thread.join()


#: Files below this size are always copied: people edit configs and cards in place, and a hard link would
#: carry that edit into the base model (or the HF cache).
LINK_MIN_BYTES = 16 << 20


def link_or_copy(src: Path, dst: Path) -> str:
    """Put a byte-identical `src` at `dst`: reflink, else hard link (large files only), else copy."""
    src = Path(os.path.realpath(src))
    if os.path.getsize(src) < LINK_MIN_BYTES:
        shutil.copyfile(src, dst)
        return "copy"
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        return "reflink"
    except OSError:
        try:
            os.unlink(dst)
        except FileNotFoundError:
            pass
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        pass
    shutil.copyfile(src, dst)
    return "copy"


# --- directory level -------------------------------------------------------------------------------------


def _source_files(source_dir: Path) -> list[str]:
    """Every file of a checkpoint directory (relative paths), minus caches and our own temp/provenance files."""
    out = []
    for root, dirs, files in os.walk(source_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and TMP_MARK not in d)
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), source_dir)
            if rel in (PROVENANCE_FILE, UNDO_RECIPE, IN_PLACE_JOURNAL) or TMP_MARK in name:
                continue
            out.append(rel)
    return out


def _edit_key(e: dict | PlannedEdit) -> tuple:
    get = e.get if isinstance(e, dict) else lambda k: getattr(e, k)
    return (get("layer"), get("kind"), get("index"), get("op"), float(get("factor")), get("tensor"))


def _refuse_reapply(source_dir: Path, recipe_name: str, plan: Plan) -> dict | None:
    prov = read_provenance(source_dir)
    if prov is None:
        return None
    prev_name = (prov.get("recipe") or {}).get("normalized", {}).get("name")
    prev = [_edit_key(e) for e in prov.get("edits", []) if isinstance(e, dict)]
    if prev and prev == [_edit_key(e) for e in plan.edits] and prev_name == recipe_name:
        raise ApplyError(
            f"{source_dir} was produced by this recipe ({recipe_name}) already (see its {PROVENANCE_FILE}); "
            "applying it again would stack the edits — use the original base model as --model"
        )
    return prov


def _clean_stale_temps(parent: Path, name: str) -> None:
    """Remove temp dirs left by an apply that was killed (their pid no longer runs)."""
    prefix = f".{name}{TMP_MARK}"
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_recipe(recipe: Any) -> tuple[Any, str, str | None]:
    """(Recipe, verbatim text, path or None) of a Recipe or a recipe path."""
    from patchkit import recipe as recipe_mod

    if isinstance(recipe, (str, Path)):
        loaded = recipe_mod.load_recipe(recipe)  # read once: provenance records exactly the text that was parsed
        return loaded, loaded.source_text or recipe_mod.recipe_to_yaml(loaded), str(recipe)
    text = getattr(recipe, "source_text", None) or recipe_mod.recipe_to_yaml(recipe)
    return recipe, text, getattr(recipe, "path", None)


def _normalized(recipe: Any) -> dict:
    dump = getattr(recipe, "model_dump", None)
    return dump(mode="json", exclude_none=True) if dump else {}


def _pin_warnings(recipe: Any, ref: Any) -> list[str]:
    """ModelError when the recipe pins another revision than the model's; a warning when it pins none."""
    from patchkit.model.refs import check_revision_pin

    warning = check_revision_pin(getattr(recipe, "model", None), ref)
    return [warning] if warning else []


def _resolve(recipe: Any, model: str | None):
    from patchkit.model.refs import ensure_local, resolve_model

    if model is None:
        spec = getattr(recipe, "model", None)
        repo = getattr(spec, "repo", None)
        if not repo:
            raise ApplyError("the recipe names no model.repo", fix=Fix("model", "REF", "(the base checkpoint)"))
        ref = resolve_model(repo, revision=getattr(spec, "revision", None))
    else:
        ref = resolve_model(model)
    return ref, Path(ensure_local(ref))  # a local dir as it is; a Hub ref: its complete snapshot in the HF cache


def apply_recipe(
    recipe: Any,
    *,
    model: str | None = None,
    out: Path | None = None,
    dry_run: bool = False,
    in_place: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ApplyResult:
    """Write a patched copy of a checkpoint in which only the recipe's slices differ, plus `patchkit.json`.

    The source is never modified (except with `in_place`, for invert-only recipes, which also writes an undo
    recipe). Edits are exact in the checkpoint's own dtype; shards without edits are hard-linked or copied; the
    output directory appears atomically, complete or not at all.

    Args:
        recipe: a Recipe or a recipe path (its exact bytes are recorded in provenance).
        model: the base checkpoint: a local dir or a Hub ref (default: the recipe's `model.repo@revision`).
        out: output directory (default: `./<recipe name>`).
        dry_run: plan only; write nothing.
        in_place: patch a plain local directory itself.
        force: replace an existing output directory.
        progress: `progress(stage, done_bytes, total_bytes)` per written shard.

    Returns:
        ApplyResult: the output dir, the plan (tensors, byte ranges) and the provenance written.

    Raises:
        RecipeError: the recipe is invalid or unresolved (the message says what to run to resolve it).
        ApplyError: output problems (exists without `force`, overlaps the source, disk errors).
        ModelError: the base model cannot be found or does not fit the recipe.

    Example:
        >>> apply_recipe("recipes/e2b.yaml", model="./gemma-4-E2B-it", out="./e2b-fixed")  # doctest: +SKIP
    """
    from patchkit.edit.plan import plan_recipe

    recipe_obj, text, recipe_path = read_recipe(recipe)
    recipe_obj.require_resolved()  # an unresolved recipe: one line saying what to run (workflows.resolve resolves)
    ref, source_dir = _resolve(recipe_obj, model)
    _refuse_interrupted_in_place(source_dir)
    warnings = _pin_warnings(recipe_obj, ref)
    plan = plan_recipe(recipe_obj, ref, source_dir=source_dir)
    parent = _refuse_reapply(source_dir, recipe_obj.name, plan)
    if in_place and out is not None:
        raise ApplyError("patching in place and writing an output directory exclude each other; pick one")
    if in_place:
        _check_in_place(source_dir, plan)
    elif out is None:
        out = Path.cwd() / recipe_obj.name
    if out is not None:
        out = Path(os.path.abspath(out))
        real_out, real_src = os.path.realpath(out), os.path.realpath(source_dir)
        if real_out == real_src or real_out.startswith(real_src + os.sep) or real_src.startswith(real_out + os.sep):
            raise ApplyError(f"output {out} overlaps the source model {source_dir}", hint="choose another output directory, or patch in place",
                             data={"out": str(out), "source": str(source_dir)})
        if os.path.lexists(out) and not force:
            raise ApplyError(f"output directory {out} already exists", hint="or choose another output directory",
                             fix=Fix("force", why="to replace it"), data={"out": str(out)})
    if dry_run:
        return ApplyResult(out_dir=out if not in_place else source_dir, plan=plan, provenance=None, dry_run=True,
                           in_place=in_place, warnings=warnings)

    ctx = _Context(recipe_obj, text, recipe_path, ref, plan, parent)
    try:
        result = _apply_in_place(ctx, source_dir, progress) if in_place else _apply_to_new_dir(ctx, source_dir, out, force, progress)
        result.warnings = warnings
        return result
    except OSError as exc:
        where = exc.filename or (source_dir if in_place else out)
        if in_place and (source_dir / IN_PLACE_JOURNAL).exists():
            raise ApplyError(
                f"{where}: {exc.strerror or exc} while replacing shards in place; some may be replaced already "
                f"(see {source_dir / IN_PLACE_JOURNAL})"
            ) from exc
        raise ApplyError(
            f"{where}: {exc.strerror or exc} while writing the output; nothing was changed "
            "(free some space, fix permissions, or choose another -o)"
        ) from exc


@dataclass
class _Context:
    recipe: Any
    text: str
    recipe_path: str | None
    ref: Any
    plan: Plan
    parent: dict | None


def _apply_to_new_dir(ctx: _Context, source_dir: Path, out: Path, force: bool, progress: Progress | None) -> ApplyResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TMP_MARK}{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o755)
        rewritten = ctx.plan.files_to_rewrite
        source_sha: dict[str, dict] = {}
        output_sha: dict[str, dict] = {}
        slice_hashes: dict[int, tuple[str, str]] = {}
        files = _source_files(source_dir)
        # untouched files first: linked at once, their digests computed in the background meanwhile
        with ThreadPoolExecutor(max_workers=2) as pool:
            digests = {}
            for rel in files:
                if rel in rewritten:
                    continue
                src = Path(os.path.realpath(source_dir / rel))
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(src, tmp / rel)
                digests[rel] = pool.submit(sha256_file, src)
            for rel in files:
                if rel not in rewritten:
                    continue
                src = Path(os.path.realpath(source_dir / rel))
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                known = known_sha256(src)
                res = write_patched(src, tmp / rel, rewritten[rel], progress=progress, hash_source=known is None)
                source_sha[rel] = {"sha256": known or res.source_sha256, "size": res.size}
                if not known:
                    remember_sha256(src, res.source_sha256)
                output_sha[rel] = {"sha256": res.output_sha256, "size": res.size, "rewritten": True}
                for e, h in zip(rewritten[rel], res.slice_hashes):
                    slice_hashes[id(e)] = h
            for rel, future in digests.items():
                digest, size = future.result(), (tmp / rel).stat().st_size
                if rel in ctx.plan.weight_files:
                    source_sha[rel] = {"sha256": digest, "size": size}
                output_sha[rel] = {"sha256": digest, "size": size, "rewritten": False}
        source_sha = dict(sorted(source_sha.items()))
        output_sha = dict(sorted(output_sha.items()))
        prov = _provenance(ctx, source_sha, output_sha, slice_hashes)
        atomic_write_json(tmp / PROVENANCE_FILE, prov)
        for rel, meta in output_sha.items():
            if meta["rewritten"]:
                remember_sha256(tmp / rel, meta["sha256"])
        _publish_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ApplyResult(out_dir=out, plan=ctx.plan, provenance=prov)


def _publish_dir(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temp dir into place (replacing an existing `out` only with --force)."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not force:
        raise ApplyError(f"output directory {out} already exists", hint="or choose another output directory",
                             fix=Fix("force", why="to replace it"), data={"out": str(out)})
    trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.patchkit-old-"))
    os.rename(out, trash / "old")
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def _check_in_place(source_dir: Path, plan: Plan) -> None:
    for f in plan.weight_files:
        if os.path.islink(source_dir / f):
            raise ApplyError(
                f"--in-place refused: {source_dir / f} is a symlink (Hugging Face cache?); the cache is never "
                "modified — write a new directory with -o OUT"
            )
    non_invert = sorted({e.op for e in plan.edits if e.op != "invert"})
    if non_invert:
        raise ApplyError(
            f"--in-place refused: op {', '.join(non_invert)} cannot be undone exactly; only invert-only recipes "
            "are applied in place — write a new directory with -o OUT"
        )


def _apply_in_place(ctx: _Context, source_dir: Path, progress: Progress | None) -> ApplyResult:
    """Patch a plain local directory: new shard files are built beside the old ones, then renamed over them."""
    rewritten = ctx.plan.files_to_rewrite
    temps: dict[str, Path] = {}
    source_sha: dict[str, dict] = {}
    output_sha: dict[str, dict] = {}
    slice_hashes: dict[int, tuple[str, str]] = {}
    for stale in source_dir.glob(f".*{TMP_MARK}*"):  # shard temps of a killed in-place run
        pid = stale.name.rsplit(TMP_MARK, 1)[1]
        if stale.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    try:
        for rel, edits in rewritten.items():
            src = source_dir / rel
            tmp = src.with_name(f".{src.name}{TMP_MARK}{os.getpid()}")
            if tmp.exists():
                tmp.unlink()
            known = known_sha256(src)
            res = write_patched(src, tmp, edits, progress=progress, hash_source=known is None)
            temps[rel] = tmp
            source_sha[rel] = {"sha256": known or res.source_sha256, "size": res.size}
            output_sha[rel] = {"sha256": res.output_sha256, "size": res.size, "rewritten": True}
            for e, h in zip(edits, res.slice_hashes):
                slice_hashes[id(e)] = h
        for rel in _source_files(source_dir):
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
        # Shards are replaced one by one; a journal says which ones were due until the last rename is done.
        journal = {"recipe": ctx.recipe.name, "files": {rel: {"before_sha256": source_sha[rel]["sha256"],
                                                              "after_sha256": output_sha[rel]["sha256"]}
                                                        for rel in temps}}
        atomic_write_json(source_dir / IN_PLACE_JOURNAL, journal)
        undo_path = source_dir / UNDO_RECIPE  # after the journal: never an undo recipe for an unpatched dir
        atomic_write_text(undo_path, _undo_recipe_text(ctx.text, ctx.recipe.name))
        for rel, tmp in list(temps.items()):
            _swap_in(tmp, source_dir / rel)
            del temps[rel]
            remember_sha256(source_dir / rel, output_sha[rel]["sha256"])
        atomic_write_json(source_dir / PROVENANCE_FILE, prov)
        (source_dir / IN_PLACE_JOURNAL).unlink()
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return ApplyResult(out_dir=source_dir, plan=ctx.plan, provenance=prov, in_place=True, undo_recipe=undo_path)


def _swap_in(tmp: Path, dst: Path) -> None:
    """Atomically replace one shard with its patched version."""
    os.replace(tmp, dst)


def _refuse_interrupted_in_place(source_dir: Path) -> None:
    journal = source_dir / IN_PLACE_JOURNAL
    if journal.exists():
        try:
            files = sorted(json.loads(journal.read_text()).get("files", {}))
        except (OSError, ValueError, AttributeError):
            files = []
        raise ApplyError(
            f"{source_dir} holds an interrupted --in-place apply ({IN_PLACE_JOURNAL}): {', '.join(files) or 'its shards'} "
            f"may be partly replaced; compare their sha256 with the before/after values in {journal}, restore the "
            "originals, then delete that file"
        )


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


def _provenance(ctx: _Context, source_sha: dict, output_sha: dict, slice_hashes: dict) -> dict[str, Any]:
    spec = getattr(ctx.recipe, "model", None)
    ref = ctx.ref
    prov: dict[str, Any] = {
        "patchkit_version": __version__,
        "created": utc_now(),
        "recipe": {
            "path": ctx.recipe_path,
            "sha256": hashlib.sha256(ctx.text.encode("utf-8")).hexdigest(),
            "text": ctx.text,
            "normalized": _normalized(ctx.recipe),
        },
        "base": {
            "ref": getattr(ref, "ref", None),
            "repo": getattr(ref, "repo_id", None),
            "revision": getattr(ref, "revision", None),
            "architecture": getattr(spec, "architecture", None),
        },
        "source_files": dict(sorted(source_sha.items())),
        "output_files": dict(sorted(output_sha.items())),
        "edits": [
            {
                "layer": e.layer, "kind": e.kind, "index": e.index, "op": e.op, "factor": e.factor,
                "tensor": e.tensor, "file": e.file,
                "before_sha256": slice_hashes[id(e)][0], "after_sha256": slice_hashes[id(e)][1],
            }
            for e in ctx.plan.edits
        ],
    }
    if ctx.parent is not None:
        prov["parent"] = {
            "recipe": (ctx.parent.get("recipe") or {}).get("normalized", {}).get("name"),
            "recipe_sha256": (ctx.parent.get("recipe") or {}).get("sha256"),
            "created": ctx.parent.get("created"),
        }
    return prov
