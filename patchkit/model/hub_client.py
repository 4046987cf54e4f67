"""The Hub client every layer shares: endpoint and token lookup, retries, one-line errors, snapshot
downloads and HTTP Range reads of remote files — all through `huggingface_hub`.

Model references (`patchkit.model.refs`) read remote headers and download snapshots through it; publishing
(`patchkit.publish.hub`) builds push and pull on it. It never prints or stores a token.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit.errors import Fix, HubError, PatchkitError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_log = logging.getLogger("patchkit.model.hub_client")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures (5xx, 429, connection resets) around whole Hub operations."""

    attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 16.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)


# ---------------------------------------------------------------------------------------------------------------
# references, tokens, endpoints
# ---------------------------------------------------------------------------------------------------------------
def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """`org/name[@rev]` -> (repo_id, revision or None); HubError on anything else."""
    repo_id, _, revision = ref.strip().partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise HubError(f"{ref!r} is not a Hub repo reference", hint="write it as ORG/NAME or ORG/NAME@REVISION")
    return repo_id, (revision or None)


def check_repo_id(repo_id: str) -> str:
    parsed, revision = parse_repo_ref(repo_id)
    if revision is not None:
        raise HubError(
            f"repo {repo_id!r} must not carry @revision", fix=Fix("revision", "BRANCH", "to push to a branch")
        )
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


def hub_api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(endpoint), token=token, library_name="patchkit")


# ---------------------------------------------------------------------------------------------------------------
# errors and retries
# ---------------------------------------------------------------------------------------------------------------
def exception_chain(exc: BaseException) -> Iterable[BaseException]:
    """`exc`, then its causes and contexts, each once (a cycle-safe walk of the chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def http_status(exc: BaseException) -> int | None:
    for item in exception_chain(exc):
        try:
            response = getattr(item, "response", None)
        except RuntimeError:  # httpx raises when a request error has no response attached
            response = None
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _is_connection_error(exc: BaseException) -> bool:
    for item in exception_chain(exc):
        name = type(item).__name__
        module = type(item).__module__ or ""
        if isinstance(item, (ConnectionError, TimeoutError)):
            return True
        if module.startswith(("httpx", "httpcore", "h11")) and name.endswith(
            (
                "TransportError",
                "NetworkError",
                "RemoteProtocolError",
                "ConnectError",
                "ReadError",
                "WriteError",
                "Timeout",
                "TimeoutException",
                "ReadTimeout",
                "WriteTimeout",
                "ConnectTimeout",
                "PoolTimeout",
                "LocalProtocolError",
                "ProtocolError",
            )
        ):
            return True
    return False


def _offline(exc: BaseException) -> bool:
    return any(type(item).__name__ == "OfflineModeIsEnabled" for item in exception_chain(exc))


def is_transient(exc: BaseException) -> bool:
    """5xx, 429, 408 and dropped/reset connections are worth retrying; everything else is final."""
    if _offline(exc):
        return False
    status = http_status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    return _is_connection_error(exc)


def with_retries(
    fn: Callable[[], Any], *, policy: RetryPolicy, on_retry: Callable[[int, BaseException], None] | None = None
):
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


def map_hub_error(
    exc: BaseException,
    *,
    action: str,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    attempts: int | None = None,
) -> HubError:
    """Turn a huggingface_hub/httpx failure into a one-line HubError that says what to do (never the token)."""
    from huggingface_hub.errors import RevisionNotFoundError

    where = f" {repo_id}" if repo_id else ""
    if _offline(exc):
        return HubError(
            f"offline mode is on (HF_HUB_OFFLINE) while {action}{where}",
            hint="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to reach the Hub",
        )
    status = http_status(exc)
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
        if any(isinstance(item, RevisionNotFoundError) for item in exception_chain(exc)):
            return HubError(f"revision {revision!r} not found in{where} (404)", hint="check the branch / commit name")
        return HubError(
            f"repository{where} not found (404) while {action}",
            hint="check ORG/NAME, and that your token can see it if it is private",
        )
    if status == 409:
        return HubError(
            f"conflict (409) while {action}{where}: another operation on the repo is in progress",
            hint="wait a moment and re-run the same command; pushes resume where they stopped",
        )
    if status == 412:
        return HubError(f"the branch moved while {action}{where} (412)", hint="re-run the same command")
    if status == 400 and "README.md" in str(exc):
        return HubError(
            f"the Hub refused the model card while {action}{where}", hint="run `patchkit card` and fix its metadata"
        )
    if status is not None and status >= 500 or status in (408, 429):
        return HubError(
            f"the Hub answered {status}{retried} while {action}{where}",
            hint="try again later; re-running resumes and uploads only what is missing",
        )
    if status is not None:
        return HubError(f"the Hub answered {status} while {action}{where}", hint="see `patchkit push --help`")
    if _is_connection_error(exc):
        return HubError(
            f"lost the connection to {hub_endpoint(endpoint)}{retried} while {action}{where}",
            hint="check your network or HF_ENDPOINT, then re-run; uploads resume",
        )
    return HubError(f"{action}{where} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def guarded(
    action: str,
    fn: Callable[[], Any],
    *,
    policy: RetryPolicy,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
):
    def say(attempt: int, exc: BaseException) -> None:
        status = http_status(exc)
        why = f"HTTP {status}" if status else "connection lost"
        _log.warning(
            "%s while %s %s; retrying (attempt %d of %d)", why, action, repo_id or "", attempt + 1, policy.attempts
        )

    try:
        return with_retries(fn, policy=policy, on_retry=say)
    except PatchkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise map_hub_error(
            exc,
            action=action,
            repo_id=repo_id,
            revision=revision,
            endpoint=endpoint,
            attempts=policy.attempts if is_transient(exc) else None,
        ) from exc


def download_snapshot(
    repo_id: str,
    revision: str | None = None,
    *,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """`snapshot_download` with patchkit's retries and error messages; the one entry point for remote models."""
    from huggingface_hub import snapshot_download

    policy = retry or RetryPolicy()
    result = guarded(
        "downloading",
        lambda: snapshot_download(
            repo_id,
            revision=revision,
            local_dir=str(local_dir) if local_dir else None,
            endpoint=hub_endpoint(endpoint),
            token=resolve_token(token),
            allow_patterns=allow_patterns,
        ),
        policy=policy,
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
    )
    return Path(result)


def remote_files(
    repo_id: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[str, dict[str, Any]]:
    """(commit oid, {path: RepoFile}) of a remote revision, resolved once so later reads are consistent."""
    from huggingface_hub.hf_api import RepoFile

    policy = retry or RetryPolicy()
    api = hub_api(endpoint, resolve_token(token))
    info = guarded(
        "reading",
        lambda: api.model_info(repo_id, revision=revision),
        policy=policy,
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
    )
    tree = guarded(
        "listing files of",
        lambda: [f for f in api.list_repo_tree(repo_id, revision=info.sha, recursive=True) if isinstance(f, RepoFile)],
        policy=policy,
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
    )
    return info.sha, {f.path: f for f in tree}


def open_remote(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    block_size: int = 1 << 20,
):
    """A seekable read-only file over HTTP Range requests (huggingface_hub's HfFileSystem): read a safetensors
    header or a byte range of a remote shard without downloading it."""
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=hub_endpoint(endpoint), token=resolve_token(token))
    try:
        return fs.open(f"{repo_id}/{filename}", "rb", revision=revision, block_size=block_size)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        if isinstance(exc, FileNotFoundError) and http_status(exc) is None:
            raise HubError(
                f"{repo_id}: no file {filename!r} at revision {revision or 'main'}",
                hint="check the file name with `patchkit pull --json`",
            ) from exc
        raise map_hub_error(
            exc, action=f"opening {filename} in", repo_id=repo_id, revision=revision, endpoint=endpoint
        ) from exc


def read_safetensors_header(
    repo_id: str, filename: str, *, revision: str | None = None, endpoint: str | None = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """(header length in bytes, parsed JSON header) of a remote safetensors file, fetched with Range requests.

    Tensor data starts at byte 8 + header length; `data_offsets` in the header are relative to it.
    """
    length, raw = read_safetensors_header_bytes(repo_id, filename, revision=revision, endpoint=endpoint, token=token)
    from patchkit._io.fs import parse_json

    return length, parse_json(
        raw,
        f"{repo_id}/{filename}: safetensors header",
        error=HubError,
        what="safetensors header",
        duplicate="tensor {key}: duplicate key in header",
    )


def read_safetensors_header_bytes(
    repo_id: str, filename: str, *, revision: str | None = None, endpoint: str | None = None, token: str | None = None
) -> tuple[int, bytes]:
    """(header length, raw JSON header bytes) of a remote safetensors file, fetched with Range requests; the
    length is checked against `safetensors_io.MAX_HEADER_LEN` before the header is requested."""
    import struct

    from patchkit.model.safetensors_io import MAX_HEADER_LEN

    with open_remote(repo_id, filename, revision=revision, endpoint=endpoint, token=token) as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise HubError(f"{repo_id}/{filename}: shorter than a safetensors header", hint="is it a safetensors file?")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_LEN:
            raise HubError(f"{repo_id}/{filename}: header of {length} bytes is not plausible", hint="corrupt file?")
        raw = handle.read(length)
    if len(raw) != length:
        raise HubError(f"{repo_id}/{filename}: the file ends inside its {length}-byte header", hint="corrupt upload?")
    return length, raw


def _pattern(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)  # fnmatch-escape an exact file name


def fetch_differing_shards(
    ref_a: str, ref_b: str, *, endpoint: str | None = None, token: str | None = None, retry: RetryPolicy | None = None
) -> tuple[Path, Path, list[str]]:
    """Download two Hub revisions for `patchkit diff`, skipping LFS files whose sha256 is the same on both sides.

    Small (non-LFS) files such as config.json and the shard index are always fetched. Returns the two snapshot
    directories (which lack the identical LFS files) and the sorted names of those identical files.
    """
    repo_a, rev_a = parse_repo_ref(ref_a)
    repo_b, rev_b = parse_repo_ref(ref_b)
    sha_a, files_a = remote_files(repo_a, rev_a, endpoint=endpoint, token=token, retry=retry)
    sha_b, files_b = remote_files(repo_b, rev_b, endpoint=endpoint, token=token, retry=retry)
    identical = sorted(
        name
        for name, entry in files_a.items()
        if entry.lfs is not None
        and name in files_b
        and files_b[name].lfs is not None
        and files_b[name].lfs.sha256 == entry.lfs.sha256
    )
    skip = set(identical)

    def wanted(files: dict[str, Any]) -> list[str]:
        return [_pattern(name) for name in files if name not in skip and name != ".gitattributes"]

    dir_a = download_snapshot(
        repo_a, sha_a, endpoint=endpoint, token=token, retry=retry, allow_patterns=wanted(files_a)
    )
    dir_b = download_snapshot(
        repo_b, sha_b, endpoint=endpoint, token=token, retry=retry, allow_patterns=wanted(files_b)
    )
    return dir_a, dir_b, identical
