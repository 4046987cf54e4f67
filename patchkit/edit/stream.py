"""Stream one shard with its edits applied, and place untouched shards without writing them.

Memory stays at a few chunks whatever the checkpoint size, and torch is never used: a shard holding edited
tensors is streamed once into a new file — plain stretches are copied with `copy_file_range`, the edited
tensors' chunks are patched on the way (`edit.bytes.edit_chunk`) — while sha256 of source and output (and of
every edited slice before and after) are computed on the same pass in background threads. An untouched file is
reflinked where the filesystem can, else copied; hard links only on request (`link_or_copy(link=True)`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import queue
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from patchkit._io.progress import Progress
from patchkit.edit.bytes import edit_chunk, raw_view
from patchkit.edit.plan import PlannedEdit
from patchkit.errors import ApplyError
from patchkit.model.safetensors_io import CHUNK, SCAN_CHUNK

_FICLONE = 0x40049409


@dataclass
class PatchedFile:
    """What streaming one edited shard produced."""

    source_sha256: str
    output_sha256: str
    size: int
    slice_hashes: list[tuple[str, str]] = field(default_factory=list)  # per edit: (before, after)


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
        return [(b.hexdigest(), a.hexdigest()) for b, a in zip(self._before, self._after, strict=True)]

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
        return PatchedFile(
            source_sha256=src_sha, output_sha256=out_sha, size=stream.size, slice_hashes=stream.slice_hashes
        )
    finally:
        if hasher.thread.is_alive():  # an error in the main thread: let the hasher stop
            hasher.items.put(None)
            hasher.thread.join()


#: With `link`, files below this size are still copied: people edit configs and cards in place, and a hard link
#: would carry that edit into the base model (or the HF cache).
LINK_MIN_BYTES = 16 << 20


def _reflink(src: Path, dst: Path) -> bool:
    """Clone `src` into the new file `dst` (FICLONE: shared extents, copy on write); False where unsupported."""
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        return True
    except OSError:
        try:
            os.unlink(dst)
        except FileNotFoundError:
            pass
        return False


def _make_read_only(path: Path) -> None:
    """Clear the write bits of a hard-linked file (its inode is the source's: the source becomes read-only too)."""
    try:
        mode = os.stat(path).st_mode & 0o7777
        if mode & 0o222:
            os.chmod(path, mode & ~0o222)
    except OSError:
        pass  # not our file (another owner): the link stays writable for whoever may write it


def link_or_copy(src: Path, dst: Path, *, link: bool = False) -> str:
    """Put a byte-identical `src` at the new path `dst`; returns "reflink", "hardlink" or "copy".

    A reflink shares the source's extents copy-on-write: as cheap as a link, and a later write to either file
    never reaches the other. Where the filesystem has none (ext4), the file is copied — unless `link` allows a
    hard link (files of LINK_MIN_BYTES and more), which shares the inode itself: writing into the output would
    write into the source (or the HF-cache blob). A hard-linked file is therefore made read-only, which makes
    the source read-only as well (one inode, one mode).
    """
    src = Path(os.path.realpath(src))
    if _reflink(src, dst):
        return "reflink"
    if link and os.path.getsize(src) >= LINK_MIN_BYTES:
        try:
            os.link(src, dst)
        except OSError:
            pass
        else:
            _make_read_only(dst)
            return "hardlink"
    shutil.copyfile(src, dst)
    return "copy"
