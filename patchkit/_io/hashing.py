"""The one SHA-256 helper: streamed file hashing with a cache, so multi-gigabyte shards are not re-read.

Provenance records the sha256 of every source and output shard, and `push` checks them again. Hashing 60 GB on
each run would dwarf the copy it accompanies, so `apply` and `push` reuse digests they already know:
- an HF cache blob is named by its sha256 (LFS files: 64 hex characters), so the name is the digest
  (`blob_sha256`);
- otherwise a small cache (`sha256.json` in `patchkit._io.cache.cache_root()`: `$PATCHKIT_CACHE`, default
  `~/.cache/patchkit`) maps a file's (device, inode, size, mtime_ns, ctime_ns) to its digest (`cached_sha256`).
  A write changes mtime and ctime; restoring mtime with `os.utime` still changes ctime, which no user call can
  set back. Hard links share an inode, so a linked output shard is a cache hit too (making a link changes ctime,
  so apply records the digest again right after linking). `PATCHKIT_NO_HASH_CACHE=1` disables the cache.

The stat cache is a speed-up, never a proof: a write inside one timestamp tick after the digest was recorded
(or a filesystem with coarse or unreliable timestamps) leaves a stale entry. So `verify` never consults it
(it compares bytes), and `diff` only treats files as identical without reading them when they are the same
inode or both are HF blobs whose names are their digests (`blob_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from patchkit._io.atomic import atomic_write_bytes
from patchkit._io.cache import cache_root

#: read size for streamed hashing and scans: large enough for full disk bandwidth, small enough for flat memory
HASH_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _cache_path() -> Path:
    return cache_root() / "sha256.json"


def _cache_enabled() -> bool:
    return os.environ.get("PATCHKIT_NO_HASH_CACHE", "") in ("", "0")


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _load_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


_CACHE_LOCK = threading.Lock()


def remember_sha256(path: str | os.PathLike[str], digest: str) -> None:
    """Record a digest computed elsewhere (e.g. while writing a patched shard)."""
    if not _cache_enabled():
        return
    with _CACHE_LOCK:
        _remember(path, digest)


def _remember(path: str | os.PathLike[str], digest: str) -> None:
    try:
        st = os.stat(path)
        cache = _load_cache()
        cache[_key(st)] = digest
        if len(cache) > 50_000:  # keep the file small; old entries are just recomputed
            cache = dict(list(cache.items())[-25_000:])
        target = _cache_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(cache).encode("utf-8"), fsync=False)
    except OSError:
        pass  # a cache that cannot be written only costs time


def blob_sha256(path: str | os.PathLike[str]) -> str | None:
    """The digest an HF-cache blob is named by (`.../blobs/<64 hex>`), else None. Reads nothing."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if os.path.basename(os.path.dirname(real)) == "blobs" and _HEX64.match(name):
        return name
    return None


def cached_sha256(path: str | os.PathLike[str]) -> str | None:
    """The digest recorded in the stat-keyed cache for `path`'s current (dev, inode, size, mtime, ctime), else None.

    A speed-up for apply and push only: never use it to conclude that two files are equal (see the module doc).
    """
    if not _cache_enabled():
        return None
    try:
        return _load_cache().get(_key(os.stat(os.path.realpath(path))))
    except OSError:
        return None


def known_sha256(path: str | os.PathLike[str]) -> str | None:
    """The digest of `path` if known without reading it (HF blob name, else the stat cache), else None."""
    return blob_sha256(path) or cached_sha256(path)


def sha256_file(
    path: str | os.PathLike[str], *, use_cache: bool = True, progress: Callable[[int], None] | None = None
) -> str:
    """sha256 of a file, streamed in chunks (memory stays at one chunk).

    Args:
        path: the file to hash.
        use_cache: reuse a digest known for certain (HF blob name, stat-keyed cache) and remember a new one.
        progress: called with the number of bytes hashed after each chunk (for a byte-level progress bar).
    """
    if use_cache:
        hit = known_sha256(path)
        if hit:
            return hit
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress(n)
    digest = h.hexdigest()
    if use_cache and os.path.getsize(path) >= (1 << 20):
        remember_sha256(path, digest)
    return digest
