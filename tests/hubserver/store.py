"""On-disk repository store for the test Hub: commits, branches, pull-request refs, git blobs and LFS objects.

Content lives on disk (`objects/<git-sha1>` for regular files, `lfs/<sha256>` for LFS objects); the repo
metadata (commits, refs, discussions) is kept in memory and mirrored to `state.json` for debugging.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HEX40 = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid`/`blobId` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class FileEntry:
    size: int
    oid: str  # git blob sha1 (of the content, or of the LFS pointer)
    lfs_sha256: str | None = None
    pointer_size: int | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, FileEntry]
    date: str


@dataclass
class Discussion:
    num: int
    title: str
    author: str
    is_pull_request: bool
    base: str
    created_at: str
    status: str = "open"


@dataclass
class Repo:
    repo_id: str
    private: bool
    owner: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    pr_refs: dict[int, str] = field(default_factory=dict)
    discussions: list[Discussion] = field(default_factory=list)

    def resolve(self, revision: str) -> str | None:
        """Branch name, refs/heads/x, refs/pr/N or a full commit oid -> commit oid (None if unknown)."""
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision in self.branches:
            return self.branches[revision]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match:
            return self.pr_refs.get(int(match.group(1)))
        if HEX40.match(revision) and revision in self.commits:
            return revision
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class Store:
    """Thread-safe store; every mutation happens under one lock (the server is small and tests are sequential)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self._counter = 0
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # ---- blobs ---------------------------------------------------------------------------------------
    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        path = self.lfs_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "objects" / oid
        if not path.exists():
            tmp = self.root / "tmp" / f"{oid}.{os.getpid()}.{threading.get_ident()}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def blob_path(self, oid: str) -> Path:
        return self.root / "objects" / oid

    def content_path(self, entry: FileEntry) -> Path:
        return self.lfs_path(entry.lfs_sha256) if entry.lfs_sha256 else self.blob_path(entry.oid)

    # ---- repos ---------------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, private: bool, owner: str) -> Repo:
        with self.lock:
            repo = Repo(repo_id=repo_id, private=private, owner=owner)
            gitattributes = (
                b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
            )
            oid = self.put_blob(gitattributes)
            files = {".gitattributes": FileEntry(size=len(gitattributes), oid=oid)}
            first = self._new_commit(None, "initial commit", "", files)
            repo.commits[first.oid] = first
            repo.branches["main"] = first.oid
            self.repos[repo_id] = repo
            self.save()
            return repo

    def _new_commit(self, parent: str | None, title: str, description: str, files: dict[str, FileEntry]) -> Commit:
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps(
                [parent, title, sorted((p, e.oid) for p, e in files.items()), self._counter, time.time()]
            ).encode()
        ).hexdigest()
        return Commit(oid=digest, parent=parent, title=title, description=description, files=files, date=_now())

    def commit(self, repo: Repo, parent_oid: str, title: str, description: str, files: dict[str, FileEntry]) -> Commit:
        with self.lock:
            new = self._new_commit(parent_oid, title, description, files)
            repo.commits[new.oid] = new
            return new

    def open_pr(self, repo: Repo, commit_oid: str, *, title: str, author: str, base: str) -> Discussion:
        with self.lock:
            num = len(repo.discussions) + 1
            repo.pr_refs[num] = commit_oid
            disc = Discussion(num=num, title=title, author=author, is_pull_request=True, base=base, created_at=_now())
            repo.discussions.append(disc)
            self.save()
            return disc

    def save(self) -> None:
        """Mirror the metadata to state.json (atomic), so a failing test leaves something to look at."""
        with self.lock:
            data = {rid: asdict(repo) for rid, repo in self.repos.items()}
            tmp = self.root / "state.json.tmp"
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, self.root / "state.json")
