"""Publish patched checkpoints to the Hugging Face Hub and fetch them back, through `huggingface_hub` only.

`plan_push` (no network) decides what a push uploads; `execute_push` creates the repo, uploads everything in one
commit (or one pull request), then `verify_remote` re-lists the remote files and checks their sizes and LFS
sha256 against the local provenance. A re-run after an interruption is cheap: the client's preupload / LFS batch
calls skip objects the server already has. `pull` and `fetch_differing_shards` download with `snapshot_download`.
Tokens come from the standard sources (HF_TOKEN, `hf auth login`) and never appear in messages or files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from patchkit.errors import HubError, PatchkitError, VerifyError

PROVENANCE_FILE = "patchkit.json"
CARD_FILE = "README.md"
#: Files the Hub stores through LFS whatever their size (plus anything >= 10 MB); used for the dry-run plan only,
#: the server decides for real in its preupload answer.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".model")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_HASH_CHUNK = 8 * 1024 * 1024
_SKIP_PARTS = {".cache", ".git", ".huggingface"}
#: never published: the Hub manages .gitattributes; the undo recipe of an in-place apply is a local convenience
_SKIP_FILES = {".gitattributes", "patchkit-undo.yaml"}
_TMP_MARK = ".patchkit-tmp-"
_log = logging.getLogger("patchkit.hub")


# ---------------------------------------------------------------------------------------------------------------
# value objects
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures (5xx, 429, connection resets) around whole Hub operations."""

    attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 16.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)


@dataclass(frozen=True)
class UploadFile:
    """One file of a push: where it is, what it must hash to, and whether the Hub will store it through LFS."""

    path: str
    size: int
    sha256: str
    lfs: bool
    local_path: Path | None = None  # None for generated content (the card) ...
    data: bytes | None = field(default=None, repr=False)  # ... whose bytes are carried here

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "lfs": self.lfs}


@dataclass
class PushPlan:
    """Everything a push will do, computed without touching the network (what `--dry-run` prints)."""

    source_dir: Path
    repo_id: str
    revision: str
    create_pr: bool
    private: bool
    message: str
    files: list[UploadFile]
    card: str
    provenance: dict[str, Any] | None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "pr": self.create_pr,
            "private": self.private,
            "message": self.message,
            "files": [f.to_json() for f in self.files],
            "total_bytes": self.total_bytes,
            "card": self.card,
        }


@dataclass
class RemoteCheck:
    """Result of comparing the remote tree at one commit with what was meant to be uploaded."""

    ok: bool
    checked: int
    mismatches: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # remote files that the push did not write (left untouched)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "mismatches": self.mismatches, "extra": self.extra}


@dataclass
class PushResult:
    plan: PushPlan
    repo_url: str
    commit_url: str
    commit_oid: str
    pr_url: str | None
    check: RemoteCheck

    def to_json(self) -> dict[str, Any]:
        plan = self.plan.to_json()
        plan.pop("card")
        return {
            **plan,
            "repo_url": self.repo_url,
            "commit_url": self.commit_url,
            "commit": self.commit_oid,
            "pr_url": self.pr_url,
            "verified": self.check.to_json(),
        }


@dataclass
class PullResult:
    repo_id: str
    revision: str | None
    commit: str
    path: Path
    files: list[str]
    provenance_ok: bool | None  # None: the repo carries no patchkit.json
    mismatches: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "path": str(self.path),
            "files": self.files,
            "provenance_ok": self.provenance_ok,
            "mismatches": self.mismatches,
        }


# ---------------------------------------------------------------------------------------------------------------
# references, tokens, endpoints
# ---------------------------------------------------------------------------------------------------------------
def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """`org/name[@rev]` -> (repo_id, revision or None); HubError on anything else."""
    repo_id, _, revision = ref.strip().partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise HubError(f"{ref!r} is not a Hub repo reference", hint="write it as ORG/NAME or ORG/NAME@REVISION")
    return repo_id, (revision or None)


def _check_repo_id(repo_id: str) -> str:
    parsed, revision = parse_repo_ref(repo_id)
    if revision is not None:
        raise HubError(f"--repo {repo_id!r} must not carry @revision", hint="use --revision BRANCH for a branch")
    return parsed


def hub_endpoint(endpoint: str | None = None) -> str:
    """Explicit endpoint, else HF_ENDPOINT read now (not at import), else the public Hub."""
    if endpoint:
        return endpoint.rstrip("/")
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """The token huggingface_hub would use: explicit, HF_TOKEN, or the `hf auth login` store."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(endpoint), token=token, library_name="patchkit")


# ---------------------------------------------------------------------------------------------------------------
# errors and retries
# ---------------------------------------------------------------------------------------------------------------
def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> int | None:
    for item in _chain(exc):
        try:
            response = getattr(item, "response", None)
        except RuntimeError:  # httpx raises when a request error has no response attached
            response = None
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _is_connection_error(exc: BaseException) -> bool:
    for item in _chain(exc):
        name = type(item).__name__
        module = type(item).__module__ or ""
        if isinstance(item, (ConnectionError, TimeoutError)):
            return True
        if module.startswith(("httpx", "httpcore", "h11")) and name.endswith(
            ("TransportError", "NetworkError", "RemoteProtocolError", "ConnectError", "ReadError", "WriteError",
             "Timeout", "TimeoutException", "ReadTimeout", "WriteTimeout", "ConnectTimeout", "PoolTimeout",
             "LocalProtocolError", "ProtocolError")
        ):
            return True
    return False


def _offline(exc: BaseException) -> bool:
    return any(type(item).__name__ == "OfflineModeIsEnabled" for item in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """5xx, 429, 408 and dropped/reset connections are worth retrying; everything else is final."""
    if _offline(exc):
        return False
    status = _status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    return _is_connection_error(exc)


def with_retries(fn: Callable[[], Any], *, policy: RetryPolicy, on_retry: Callable[[int, BaseException], None] | None = None):
    """Call `fn`, retrying transient failures with exponential backoff (jittered)."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except PatchkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified just below
            if attempt >= policy.attempts or not is_transient(exc):
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def map_hub_error(exc: BaseException, *, action: str, repo_id: str | None = None, revision: str | None = None,
                  endpoint: str | None = None, attempts: int | None = None) -> HubError:
    """Turn a huggingface_hub/httpx failure into a one-line HubError that says what to do (never the token)."""
    from huggingface_hub.errors import RevisionNotFoundError

    where = f" {repo_id}" if repo_id else ""
    if _offline(exc):
        return HubError(f"offline mode is on (HF_HUB_OFFLINE) while {action}{where}",
                        hint="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to reach the Hub")
    status = _status(exc)
    retried = f" after {attempts} attempts" if attempts and attempts > 1 else ""
    if status == 401:
        return HubError(
            f"the Hub rejected the token (401) while {action}{where}",
            hint="set a valid token in HF_TOKEN or run `hf auth login` (HF_TOKEN wins over the stored login)",
        )
    if status == 403:
        namespace = repo_id.split("/")[0] if repo_id else "that"
        return HubError(
            f"no permission (403) while {action}{where}",
            hint=f"use a token with write access to the {namespace!r} namespace, or push to a repo you own",
        )
    if status == 404:
        if any(isinstance(item, RevisionNotFoundError) for item in _chain(exc)):
            return HubError(f"revision {revision!r} not found in{where} (404)",
                            hint="check the branch / commit name; `--revision` creates a branch when pushing")
        return HubError(f"repository{where} not found (404) while {action}",
                        hint="check ORG/NAME, and that your token can see it if it is private")
    if status == 409:
        return HubError(f"conflict (409) while {action}{where}: another operation on the repo is in progress",
                        hint="wait a moment and re-run the same command; pushes resume where they stopped")
    if status == 412:
        return HubError(f"the branch moved while {action}{where} (412)", hint="re-run the same command")
    if status == 400 and "README.md" in str(exc):
        return HubError(f"the Hub refused the model card while {action}{where}", hint="run `patchkit card` and fix its metadata")
    if status is not None and status >= 500 or status in (408, 429):
        return HubError(f"the Hub answered {status}{retried} while {action}{where}",
                        hint="try again later; re-running resumes and uploads only what is missing")
    if status is not None:
        return HubError(f"the Hub answered {status} while {action}{where}", hint="see `patchkit push --help`")
    if _is_connection_error(exc):
        return HubError(f"lost the connection to {hub_endpoint(endpoint)}{retried} while {action}{where}",
                        hint="check your network or HF_ENDPOINT, then re-run; uploads resume")
    return HubError(f"{action}{where} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _guard(action: str, fn: Callable[[], Any], *, policy: RetryPolicy, repo_id: str | None = None,
           revision: str | None = None, endpoint: str | None = None):
    def say(attempt: int, exc: BaseException) -> None:
        status = _status(exc)
        why = f"HTTP {status}" if status else "connection lost"
        _log.warning("%s while %s %s; retrying (attempt %d of %d)", why, action, repo_id or "", attempt + 1,
                     policy.attempts)

    try:
        return with_retries(fn, policy=policy, on_retry=say)
    except PatchkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise map_hub_error(exc, action=action, repo_id=repo_id, revision=revision, endpoint=endpoint,
                            attempts=policy.attempts if is_transient(exc) else None) from exc


# ---------------------------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------------------------
def load_provenance(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HubError(f"{path}: not valid JSON ({exc})", hint="re-run `patchkit apply` to rewrite it") from exc
    if not isinstance(data, dict) or not isinstance(data.get("output_files"), dict):
        raise HubError(f"{path}: no `output_files` map", hint="re-run `patchkit apply` to rewrite it")
    return data


def _local_files(directory: Path) -> list[Path]:
    """Files to publish: skips VCS / huggingface_hub metadata and the Hub-managed root .gitattributes."""
    files = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part in _SKIP_PARTS for part in rel.parts) or not path.is_file() or rel.as_posix() in _SKIP_FILES:
            continue
        if _TMP_MARK in path.name:  # an apply still (or never) finishing
            continue
        files.append(path)
    return files


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def git_blob_sha1_file(path: Path) -> str:
    """Git's object id for a regular (non-LFS) file: what the Hub lists as its `blob_id`."""
    size = path.stat().st_size
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_all(paths: list[Path], *, progress: bool) -> dict[Path, str]:
    """sha256 of every file, with a byte-level progress bar for large checkpoints.

    Digests that patchkit already knows for certain (an HF-cache blob name, or the (inode, size, mtime) cache
    that `patchkit apply` fills while writing) are reused, so pushing right after apply does not re-read
    tens of gigabytes; any change to a file changes its mtime and forces a fresh hash.
    """
    try:
        from patchkit.provenance import known_sha256, remember_sha256
    except ImportError:  # pragma: no cover - the core engine is part of the same package
        known_sha256 = remember_sha256 = None  # type: ignore[assignment]
    out: dict[Path, str] = {}
    todo = []
    for path in paths:
        digest = known_sha256(path) if known_sha256 else None
        if digest:
            out[path] = digest
        else:
            todo.append(path)
    total = sum(p.stat().st_size for p in todo)
    if not progress or total < 64 * 1024 * 1024:
        out.update({p: sha256_file(p) for p in todo})
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        from patchkit.cli._common import err_console

        with Progress(TextColumn("hashing {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task("files", total=total)
            for path in todo:
                bar.update(task, description=path.name)
                out[path] = sha256_file(path, lambda n: bar.advance(task, n))
    if remember_sha256:
        for path in todo:
            if path.stat().st_size >= 1 << 20:
                remember_sha256(path, out[path])
    return out


def _will_be_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD


def plan_push(directory: str | Path, repo_id: str, *, revision: str | None = None, create_pr: bool = False,
              private: bool = False, message: str | None = None, allow_unpatched: bool = False,
              loops_report: str | Path | dict | None = None, bench_report: str | Path | dict | None = None,
              progress: bool = False) -> PushPlan:
    """Check DIR against its provenance and decide what to upload. Touches no network.

    Refuses a directory without patchkit.json (unless `allow_unpatched`) and one whose files changed since
    `patchkit apply` wrote it: the card and the post-push verification both rely on those hashes.
    """
    from patchkit.card import card_for_dir

    directory = Path(directory)
    repo_id = _check_repo_id(repo_id)
    if not directory.is_dir():
        raise HubError(f"{directory}: not a directory", hint="pass the output directory of `patchkit apply`")
    provenance = load_provenance(directory)
    if provenance is None and not allow_unpatched:
        raise HubError(f"{directory}: no {PROVENANCE_FILE} (not an output of `patchkit apply`)",
                       hint="run `patchkit apply RECIPE --out DIR` first, or pass --allow-unpatched")
    paths = [p for p in _local_files(directory) if p.relative_to(directory).as_posix() != CARD_FILE]
    if not any(p.name != PROVENANCE_FILE for p in paths):
        raise HubError(f"{directory}: nothing to upload", hint="pass the output directory of `patchkit apply`")
    hashes = _hash_all(paths, progress=progress)
    if provenance is not None:
        _check_against_provenance(directory, paths, hashes, provenance)
    files = [
        UploadFile(path=p.relative_to(directory).as_posix(), size=p.stat().st_size, sha256=hashes[p],
                   lfs=_will_be_lfs(p.name, p.stat().st_size), local_path=p)
        for p in paths
    ]
    card = card_for_dir(directory, provenance=provenance, loops_report=loops_report, bench_report=bench_report,
                        repo_id=repo_id)
    card_text = str(card)
    card_bytes = card_text.encode("utf-8")
    files.append(UploadFile(path=CARD_FILE, size=len(card_bytes), sha256=hashlib.sha256(card_bytes).hexdigest(),
                            lfs=False, data=card_bytes))
    if message is None:
        name = ((provenance or {}).get("recipe", {}).get("normalized") or {}).get("name")
        message = f"patchkit: {name}" if name else "patchkit: upload patched checkpoint"
    return PushPlan(source_dir=directory, repo_id=repo_id, revision=revision or "main", create_pr=create_pr,
                    private=private, message=message, files=files, card=card_text, provenance=provenance)


def _check_against_provenance(directory: Path, paths: list[Path], hashes: dict[Path, str], provenance: dict) -> None:
    recorded: dict[str, dict] = provenance["output_files"]
    present = {p.relative_to(directory).as_posix(): p for p in paths if p.name != PROVENANCE_FILE or p.parent != directory}
    for name, info in recorded.items():
        if name == CARD_FILE:
            continue  # the base card copied by apply is replaced by the patchkit card
        if name not in present:
            raise HubError(f"{directory / name}: listed in {PROVENANCE_FILE} but missing",
                           hint="re-run `patchkit apply` into a fresh directory")
        path = present[name]
        if path.stat().st_size != info.get("size") or hashes[path] != info.get("sha256"):
            raise HubError(f"{path}: changed since `patchkit apply` (size/sha256 differ from {PROVENANCE_FILE})",
                           hint="re-run `patchkit apply`, or pass --allow-unpatched to push it as is")
    for name, path in present.items():
        if name not in recorded:
            raise HubError(f"{path}: not listed in {PROVENANCE_FILE}",
                           hint="remove it, or re-run `patchkit apply` so provenance covers it")


# ---------------------------------------------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------------------------------------------
def _operations(plan: PushPlan):
    from huggingface_hub import CommitOperationAdd

    ops = []
    for item in plan.files:
        if item.local_path is None:
            op = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=item.data)
        else:
            op = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(item.local_path))
            op.upload_info.sha256 = bytes.fromhex(item.sha256)  # hashed once already in plan_push
        ops.append(op)
    return ops


def execute_push(plan: PushPlan, *, endpoint: str | None = None, token: str | None = None,
                 retry: RetryPolicy | None = None) -> PushResult:
    """Create the repo if needed, upload the plan in one commit (or one PR), verify the remote copy.

    Returns the result whatever the verification found; `fail_on_mismatch(result.check, ...)` turns a
    mismatch into the exit-1 error (the CLI prints the report first).
    """
    policy = retry or RetryPolicy()
    token = resolve_token(token)
    if not token:
        raise HubError("no Hugging Face token found",
                       hint="set HF_TOKEN or run `hf auth login` with a token that has write access")
    api = _api(endpoint, token)
    repo_id = plan.repo_id

    _guard("checking the token", lambda: api.whoami(cache=True), policy=policy, endpoint=endpoint)
    repo_url = _guard("creating", lambda: api.create_repo(repo_id, private=plan.private, exist_ok=True),
                      policy=policy, repo_id=repo_id, endpoint=endpoint)
    if plan.revision != "main" and not plan.create_pr and not plan.revision.startswith("refs/pr/"):
        _guard(f"creating branch {plan.revision!r} in", lambda: api.create_branch(repo_id, branch=plan.revision,
                                                                                 exist_ok=True),
               policy=policy, repo_id=repo_id, endpoint=endpoint)

    description = "Published with patchkit: see patchkit.json for the recipe, base revision and file hashes."

    def commit():
        # Fresh operations per attempt; objects uploaded by a failed attempt are skipped by the LFS batch call.
        return api.create_commit(repo_id, operations=_operations(plan), commit_message=plan.message,
                                 commit_description=description, revision=plan.revision, create_pr=plan.create_pr)

    # Per-file upload bars come from huggingface_hub (tqdm on stderr; HF_HUB_DISABLE_PROGRESS_BARS=1 hides them).
    info = _guard("uploading to", commit, policy=policy, repo_id=repo_id, revision=plan.revision, endpoint=endpoint)
    check = verify_remote(repo_id, info.oid, plan.files, endpoint=endpoint, token=token, retry=policy, api=api)
    return PushResult(plan=plan, repo_url=str(repo_url), commit_url=info.commit_url, commit_oid=info.oid,
                      pr_url=info.pr_url, check=check)


def push(directory: str | Path, repo_id: str, *, revision: str | None = None, create_pr: bool = False,
         private: bool = False, message: str | None = None, allow_unpatched: bool = False,
         loops_report=None, bench_report=None, endpoint: str | None = None, token: str | None = None,
         retry: RetryPolicy | None = None, progress: bool = True) -> PushResult:
    """`plan_push` + `execute_push` (progress: the hashing bar; upload bars follow huggingface_hub's settings)."""
    plan = plan_push(directory, repo_id, revision=revision, create_pr=create_pr, private=private, message=message,
                     allow_unpatched=allow_unpatched, loops_report=loops_report, bench_report=bench_report,
                     progress=progress)
    return execute_push(plan, endpoint=endpoint, token=token, retry=retry)


def verify_remote(repo_id: str, revision: str, expected: list[UploadFile], *, endpoint: str | None = None,
                  token: str | None = None, retry: RetryPolicy | None = None, api=None) -> RemoteCheck:
    """List the remote tree at `revision` and compare every expected file's size and hash.

    LFS files are compared by their sha256 (the LFS oid); regular files by git blob id (sha1 of the content),
    which is what the Hub lists for them.
    """
    from huggingface_hub.hf_api import RepoFile

    policy = retry or RetryPolicy()
    api = api or _api(endpoint, resolve_token(token))
    tree = _guard("listing files of", lambda: [f for f in api.list_repo_tree(repo_id, revision=revision,
                                                                               recursive=True)
                                               if isinstance(f, RepoFile)],
                  policy=policy, repo_id=repo_id, revision=revision, endpoint=endpoint)
    remote = {f.path: f for f in tree}
    mismatches = []
    for item in expected:
        entry = remote.get(item.path)
        if entry is None:
            mismatches.append(f"{item.path}: missing on the remote")
            continue
        if entry.size != item.size:
            mismatches.append(f"{item.path}: remote size {entry.size} != local {item.size}")
            continue
        if entry.lfs is not None:
            if entry.lfs.sha256 != item.sha256:
                mismatches.append(f"{item.path}: remote LFS sha256 {entry.lfs.sha256[:12]} != local {item.sha256[:12]}")
        else:
            local = _git_blob_sha1(item)
            if entry.blob_id != local:
                mismatches.append(f"{item.path}: remote blob {entry.blob_id[:12]} != local {local[:12]}")
    wanted = {f.path for f in expected}
    extra = sorted(p for p in remote if p not in wanted and p != ".gitattributes")
    return RemoteCheck(ok=not mismatches, checked=len(expected), mismatches=mismatches, extra=extra)


def _git_blob_sha1(item: UploadFile) -> str:
    if item.local_path is not None:
        return git_blob_sha1_file(item.local_path)
    data = item.data or b""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# pull and remote diff
# ---------------------------------------------------------------------------------------------------------------
def pull(ref: str, *, local_dir: str | Path | None = None, endpoint: str | None = None, token: str | None = None,
         retry: RetryPolicy | None = None, allow_patterns: list[str] | None = None) -> PullResult:
    """Download ORG/NAME[@REV] into the HF cache (or `local_dir`) and check it against its patchkit.json.

    The revision is resolved to a commit first, so a branch that moves during the download cannot mix versions.
    """
    repo_id, revision = parse_repo_ref(ref)
    policy = retry or RetryPolicy()
    api = _api(endpoint, resolve_token(token))
    commit = _guard("reading", lambda: api.model_info(repo_id, revision=revision).sha, policy=policy,
                    repo_id=repo_id, revision=revision, endpoint=endpoint)
    path = download_snapshot(repo_id, commit, local_dir=local_dir, endpoint=endpoint, token=token, retry=policy,
                             allow_patterns=allow_patterns)
    files = [p.relative_to(path).as_posix() for p in _local_files(path)]
    provenance = load_provenance(path)
    if provenance is None:
        return PullResult(repo_id, revision, commit, path, files, provenance_ok=None)
    mismatches = []
    for name, info in provenance["output_files"].items():
        if name == CARD_FILE or (allow_patterns is not None and name not in files):
            continue
        local = path / name
        if not local.is_file():
            mismatches.append(f"{name}: listed in {PROVENANCE_FILE} but not in the repo")
        elif local.stat().st_size != info.get("size") or sha256_file(local) != info.get("sha256"):
            mismatches.append(f"{name}: differs from {PROVENANCE_FILE}")
    return PullResult(repo_id, revision, commit, path, files, provenance_ok=not mismatches, mismatches=mismatches)


def download_snapshot(repo_id: str, revision: str | None = None, *, local_dir: str | Path | None = None,
                      endpoint: str | None = None, token: str | None = None, retry: RetryPolicy | None = None,
                      allow_patterns: list[str] | None = None) -> Path:
    """`snapshot_download` with patchkit's retries and error messages; the one entry point for remote models."""
    from huggingface_hub import snapshot_download

    policy = retry or RetryPolicy()
    result = _guard(
        "downloading",
        lambda: snapshot_download(repo_id, revision=revision, local_dir=str(local_dir) if local_dir else None,
                                  endpoint=hub_endpoint(endpoint), token=resolve_token(token),
                                  allow_patterns=allow_patterns),
        policy=policy, repo_id=repo_id, revision=revision, endpoint=endpoint,
    )
    return Path(result)


def remote_files(repo_id: str, revision: str | None = None, *, endpoint: str | None = None,
                 token: str | None = None, retry: RetryPolicy | None = None) -> tuple[str, dict[str, Any]]:
    """(commit oid, {path: RepoFile}) of a remote revision, resolved once so later reads are consistent."""
    from huggingface_hub.hf_api import RepoFile

    policy = retry or RetryPolicy()
    api = _api(endpoint, resolve_token(token))
    info = _guard("reading", lambda: api.model_info(repo_id, revision=revision), policy=policy, repo_id=repo_id,
                  revision=revision, endpoint=endpoint)
    tree = _guard("listing files of", lambda: [f for f in api.list_repo_tree(repo_id, revision=info.sha,
                                                                               recursive=True)
                                               if isinstance(f, RepoFile)],
                  policy=policy, repo_id=repo_id, revision=revision, endpoint=endpoint)
    return info.sha, {f.path: f for f in tree}


def open_remote(repo_id: str, filename: str, *, revision: str | None = None, endpoint: str | None = None,
                token: str | None = None, block_size: int = 1 << 20):
    """A seekable read-only file over HTTP Range requests (huggingface_hub's HfFileSystem): read a safetensors
    header or a byte range of a remote shard without downloading it."""
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=hub_endpoint(endpoint), token=resolve_token(token))
    try:
        return fs.open(f"{repo_id}/{filename}", "rb", revision=revision, block_size=block_size)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        if isinstance(exc, FileNotFoundError) and _status(exc) is None:
            raise HubError(f"{repo_id}: no file {filename!r} at revision {revision or 'main'}",
                           hint="check the file name with `patchkit pull --json`") from exc
        raise map_hub_error(exc, action=f"opening {filename} in", repo_id=repo_id, revision=revision,
                            endpoint=endpoint) from exc


def read_safetensors_header(repo_id: str, filename: str, *, revision: str | None = None, endpoint: str | None = None,
                            token: str | None = None) -> tuple[int, dict[str, Any]]:
    """(header length in bytes, parsed JSON header) of a remote safetensors file, fetched with Range requests.

    Tensor data starts at byte 8 + header length; `data_offsets` in the header are relative to it.
    """
    import struct

    with open_remote(repo_id, filename, revision=revision, endpoint=endpoint, token=token) as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise HubError(f"{repo_id}/{filename}: shorter than a safetensors header", hint="is it a safetensors file?")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100 * 1024 * 1024:
            raise HubError(f"{repo_id}/{filename}: header of {length} bytes is not plausible", hint="corrupt file?")
        raw = handle.read(length)
    try:
        return length, json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HubError(f"{repo_id}/{filename}: safetensors header is not JSON", hint="corrupt upload?") from exc


def _pattern(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)  # fnmatch-escape an exact file name


def fetch_differing_shards(ref_a: str, ref_b: str, *, endpoint: str | None = None, token: str | None = None,
                           retry: RetryPolicy | None = None) -> tuple[Path, Path, list[str]]:
    """Download two Hub revisions for `patchkit diff`, skipping LFS files whose sha256 is the same on both sides.

    Small (non-LFS) files such as config.json and the shard index are always fetched. Returns the two snapshot
    directories (which lack the identical LFS files) and the sorted names of those identical files.
    """
    repo_a, rev_a = parse_repo_ref(ref_a)
    repo_b, rev_b = parse_repo_ref(ref_b)
    sha_a, files_a = remote_files(repo_a, rev_a, endpoint=endpoint, token=token, retry=retry)
    sha_b, files_b = remote_files(repo_b, rev_b, endpoint=endpoint, token=token, retry=retry)
    identical = sorted(
        name for name, entry in files_a.items()
        if entry.lfs is not None and name in files_b and files_b[name].lfs is not None
        and files_b[name].lfs.sha256 == entry.lfs.sha256
    )
    skip = set(identical)

    def wanted(files: dict[str, Any]) -> list[str]:
        return [_pattern(name) for name in files if name not in skip and name != ".gitattributes"]

    dir_a = download_snapshot(repo_a, sha_a, endpoint=endpoint, token=token, retry=retry, allow_patterns=wanted(files_a))
    dir_b = download_snapshot(repo_b, sha_b, endpoint=endpoint, token=token, retry=retry, allow_patterns=wanted(files_b))
    return dir_a, dir_b, identical


def fail_on_mismatch(check: RemoteCheck, commit_url: str) -> None:
    """Raise VerifyError (exit 1) naming the first mismatches when the remote copy is not what was pushed."""
    if not check.ok:
        shown = "; ".join(check.mismatches[:3])
        more = f" (+{len(check.mismatches) - 3} more)" if len(check.mismatches) > 3 else ""
        raise VerifyError(f"remote files do not match the local copy at {commit_url}: {shown}{more}",
                          hint="re-run `patchkit push`; if it persists, compare with `patchkit pull`")
