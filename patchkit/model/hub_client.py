"""The Hub client every layer shares: endpoint and token lookup, one-line errors, revision resolution (recorded
in the HF cache's refs/ as `snapshot_download` does), snapshot downloads and HTTP Range reads of remote files — all
through `huggingface_hub`.

Model references (`patchkit.model.refs`) read remote headers and download snapshots through it; publishing
(`patchkit.publish.hub`) builds push and pull on it. It never prints or stores a token.

Retries are huggingface_hub's own: its `http_backoff` retries 5xx, 429 and dropped connections per request on
the calls that are safe to repeat (LFS batch and uploads, preupload, tree listings, downloads). patchkit adds no
layer of its own on top: wrapping whole operations multiplied those retries (4 x 6 attempts of one LFS upload,
minutes of backoff before a DNS failure was reported). What patchkit adds is the mapping of every failure to one
line that says what to do. Every entry point starts with one plain request (`model_info` or `whoami`, which
huggingface_hub does not retry), so a Hub that cannot be reached at all (DNS, connection refused) is reported after
that one attempt, in a line naming HF_HUB_OFFLINE and the local cache: the way to work without the network.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from patchkit.errors import Fix, HubError, PatchkitError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_log = logging.getLogger("patchkit.model.hub_client")


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
# errors
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


def _unreachable(exc: BaseException) -> str | None:
    """Why no connection could be opened at all ("the host name did not resolve", "connection refused", ...), or
    None when the failure is something else (a connection that dropped mid-request, an HTTP answer)."""
    items = list(exception_chain(exc))
    if any(isinstance(item, socket.gaierror) for item in items):
        return "the host name did not resolve"
    if any(isinstance(item, ConnectionRefusedError) for item in items):
        return "connection refused"
    if any(type(item).__name__ == "ConnectTimeout" for item in items):
        return "the connection timed out"
    if any(type(item).__name__ == "ConnectError" for item in items):
        text = _first_line(next(item for item in items if type(item).__name__ == "ConnectError"))
        return f"cannot connect: {text}" if text else "cannot connect"
    return None


def _offline(exc: BaseException) -> bool:
    return any(type(item).__name__ == "OfflineModeIsEnabled" for item in exception_chain(exc))


def hub_cache_dir() -> str:
    """The HF cache directory huggingface_hub reads and writes now (HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def map_hub_error(
    exc: BaseException,
    *,
    action: str,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    writing: bool = False,
) -> HubError:
    """Turn a huggingface_hub/httpx failure into a one-line HubError that says what to do (never the token).

    `writing`: the action uploads (a push). Only then does the advice talk about re-running to resume uploads;
    a read that cannot reach the Hub points at HF_HUB_OFFLINE and the local cache instead.
    """
    from huggingface_hub.errors import RevisionNotFoundError

    where = f" {repo_id}" if repo_id else ""
    if _offline(exc):
        return HubError(
            f"offline mode is on (HF_HUB_OFFLINE) while {action}{where}",
            hint="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to reach the Hub",
        )
    status = http_status(exc)
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
            hint="wait a moment and re-run the same command"
            + ("; pushes resume where they stopped" if writing else ""),
        )
    if status == 412:
        return HubError(f"the branch moved while {action}{where} (412)", hint="re-run the same command")
    if status == 400 and "README.md" in str(exc):
        return HubError(
            f"the Hub refused the model card while {action}{where}", hint="run `patchkit card` and fix its metadata"
        )
    if status is not None and status >= 500 or status in (408, 429):
        return HubError(
            f"the Hub answered {status} while {action}{where}",
            hint="try again later"
            + ("; re-running uploads only the files the Hub does not have yet" if writing else ""),
        )
    if status is not None:
        return HubError(f"the Hub answered {status} while {action}{where}", hint="see `patchkit push --help`")
    why = _unreachable(exc)
    if why is not None:
        if writing:
            hint = "check your network or HF_ENDPOINT, then re-run"
        else:
            hint = (
                "check your network or HF_ENDPOINT; to work from the local Hugging Face cache "
                f"({hub_cache_dir()}) without the network, set HF_HUB_OFFLINE=1"
            )
        return HubError(f"cannot reach {hub_endpoint(endpoint)} ({why}) while {action}{where}", hint=hint)
    if _is_connection_error(exc):
        return HubError(
            f"lost the connection to {hub_endpoint(endpoint)} while {action}{where}",
            hint="check your network or HF_ENDPOINT, then re-run"
            + ("; the upload resumes where it stopped" if writing else ""),
        )
    return HubError(f"{action}{where} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def guarded(
    action: str,
    fn: Callable[[], Any],
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    writing: bool = False,
):
    """`fn()`, with any failure turned into one HubError line (`map_hub_error`); patchkit errors pass through.

    No retries here: huggingface_hub retries each request that is safe to repeat itself (see the module docstring).
    """
    try:
        return fn()
    except PatchkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise map_hub_error(
            exc, action=action, repo_id=repo_id, revision=revision, endpoint=endpoint, writing=writing
        ) from exc


# ---------------------------------------------------------------------------------------------------------------
# revisions and downloads
# ---------------------------------------------------------------------------------------------------------------
def record_ref(repo_id: str, revision: str | None, commit: str) -> None:
    """Record in the HF cache that `revision` (default main) of `repo_id` is `commit`, as `snapshot_download` does.

    Downloads by commit sha (every patchkit download is, so that a moving branch cannot mix two versions) do not
    write `refs/<branch>` themselves; without that file, `HF_HUB_OFFLINE=1` cannot find the cached snapshot of
    `org/name`. Uses huggingface_hub's own writer (atomic, skipped when unchanged); a read-only cache only warns,
    as in huggingface_hub.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, repo_folder_name

    name = revision or constants.DEFAULT_REVISION
    storage = os.path.join(hub_cache_dir(), repo_folder_name(repo_id=repo_id, repo_type="model"))
    try:
        _cache_commit_hash_for_specific_revision(storage, name, commit)
    except OSError as exc:
        _log.warning("could not record %s@%s -> %s in the HF cache: %s", repo_id, name, commit, exc)


def resolve_commit(
    repo_id: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    record: bool = True,
) -> str:
    """The commit sha `revision` (default main) of a Hub repo points at now: one `model_info` request.

    With `record` (downloads into the HF cache), the branch / tag -> commit mapping is written to the cache's
    refs/ (`record_ref`), so the snapshot downloaded next is found by `org/name` when offline.

    Raises:
        HubError: one line; a Hub that cannot be reached is reported after this single request.
    """
    api = hub_api(endpoint, resolve_token(token))
    commit = guarded(
        "resolving",
        lambda: api.model_info(repo_id, revision=revision).sha,
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
    )
    if record and revision != commit:
        record_ref(repo_id, revision, commit)
    return str(commit)


def is_commit_sha(revision: str | None) -> bool:
    """A full 40-hex commit sha: the one kind of revision that can never point elsewhere."""
    return bool(revision and _COMMIT.fullmatch(revision))


def download_snapshot(
    repo_id: str,
    revision: str | None = None,
    *,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """`snapshot_download` with patchkit's error messages; the one entry point for downloading remote models."""
    from huggingface_hub import snapshot_download

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
    record: bool = False,
) -> tuple[str, dict[str, Any]]:
    """(commit oid, {path: RepoFile}) of a remote revision, resolved once so later reads are consistent.

    `record`: write the revision -> commit mapping to the HF cache's refs/ now (`resolve_commit`); a caller that
    downloads afterwards records it once the download is complete instead (`record_ref`).
    """
    from huggingface_hub.hf_api import RepoFile

    commit = resolve_commit(repo_id, revision, endpoint=endpoint, token=token, record=record)
    api = hub_api(endpoint, resolve_token(token))
    tree = guarded(
        "listing files of",
        lambda: [f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)],
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
    )
    return commit, {f.path: f for f in tree}


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
    ref_a: str, ref_b: str, *, endpoint: str | None = None, token: str | None = None
) -> tuple[Path, Path, list[str]]:
    """Download two Hub revisions for `patchkit diff`, skipping LFS files whose sha256 is the same on both sides.

    Small (non-LFS) files such as config.json and the shard index are always fetched. Returns the two snapshot
    directories (which lack the identical LFS files) and the sorted names of those identical files. Each branch
    named is recorded in the HF cache's refs/ once its files are down, as `snapshot_download` would.
    """
    repo_a, rev_a = parse_repo_ref(ref_a)
    repo_b, rev_b = parse_repo_ref(ref_b)
    sha_a, files_a = remote_files(repo_a, rev_a, endpoint=endpoint, token=token)
    sha_b, files_b = remote_files(repo_b, rev_b, endpoint=endpoint, token=token)
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

    dir_a = download_snapshot(repo_a, sha_a, endpoint=endpoint, token=token, allow_patterns=wanted(files_a))
    dir_b = download_snapshot(repo_b, sha_b, endpoint=endpoint, token=token, allow_patterns=wanted(files_b))
    for repo, rev, sha in ((repo_a, rev_a, sha_a), (repo_b, rev_b, sha_b)):
        if rev != sha:
            record_ref(repo, rev, sha)  # after the download, as `pull` does
    return dir_a, dir_b, identical
