"""Model references as users write them: a local directory, `org/name` or `org/name@revision`.

Validation needs only config.json, the shard index and the safetensors headers, so a remote model is inspected
with a few small (range) requests through huggingface_hub and never downloaded for it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from patchkit.errors import ModelError, PatchkitError

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


@dataclass
class ModelRef:
    """A resolved model: where it lives, which revision, and lazy access to config, shard list and headers."""

    ref: str
    local_dir: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    is_remote: bool = False
    _headers: dict[str, Any] | None = field(default=None, repr=False)

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._read_json("config.json", required=True)

    @property
    def architecture(self) -> str:
        from patchkit.model.adapters import detect_architecture

        return detect_architecture(self.config)

    def weight_files(self) -> list[str]:
        """Safetensors files holding the weights (from the index when sharded)."""
        index = self._read_json(INDEX_FILE, required=False)
        if index:
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelError(f"{self.ref}: {INDEX_FILE} has no weight_map")
            return sorted(set(weight_map.values()))
        if self.local_dir is not None and not self.is_remote and self.repo_id is None:
            if (self.local_dir / SINGLE_FILE).is_file():
                return [SINGLE_FILE]
            if any(self.local_dir.glob("*.bin")) or any(self.local_dir.glob("*.pt")):
                raise ModelError(f"{self.local_dir}: only pickle weights (.bin/.pt) found; patchkit reads safetensors only",
                                 hint="convert the checkpoint to safetensors first")
            raise ModelError(f"{self.local_dir}: no {SINGLE_FILE} or {INDEX_FILE}")
        return [SINGLE_FILE]

    def headers(self) -> dict[str, Any]:
        """file -> SafetensorsHeader, read from local files or with range requests (never the weights).

        A Hub model whose config is cached but whose shards are not (validate downloads only the small files)
        gets the missing headers through range requests too.
        """
        if self._headers is None:
            from patchkit.model.safetensors_io import read_header

            out: dict[str, Any] = {}
            for name in self.weight_files():
                local = None if self.is_remote else self.local_dir / name
                if local is not None and local.is_file():
                    out[name] = read_header(local)
                elif self.repo_id is not None:
                    out[name] = _remote_header(self, name)
                else:
                    raise ModelError(f"{self.local_dir}: {name} is listed in {INDEX_FILE} but missing",
                                     hint="re-download or re-save the checkpoint")
            self._headers = out
        return self._headers

    def has_local_weights(self) -> bool:
        """True when every weight file is on disk (so headers and loading need no network)."""
        if self.local_dir is None or self.is_remote:
            return False
        index = self.local_dir / INDEX_FILE
        if not index.is_file():
            return (self.local_dir / SINGLE_FILE).is_file()
        try:
            return all((self.local_dir / f).is_file() for f in self.weight_files())
        except ModelError:
            return False

    def tensor_names(self) -> set[str]:
        return {t for h in self.headers().values() for t in h.tensors}

    def _read_json(self, name: str, *, required: bool) -> dict[str, Any]:
        path = self._file(name, required=required)
        if path is None:
            return {}
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{self.ref}: {name} is not valid JSON ({exc})") from None

    def _file(self, name: str, *, required: bool) -> Path | None:
        if self.local_dir is not None and not self.is_remote:
            path = self.local_dir / name
            if path.is_file():
                return path
            if self.repo_id is None or (name == INDEX_FILE and (self.local_dir / SINGLE_FILE).is_file()):
                if required:
                    raise ModelError(f"{self.local_dir}: no {name}", hint="pass a Hugging Face checkpoint directory")
                return None
        return _hub_file(self, name, required=required)  # small file of a Hub model: cache, else one download


def split_ref(ref: str) -> tuple[str, str | None]:
    """`org/name@rev` -> ("org/name", "rev")."""
    if "@" in ref:
        repo, _, rev = ref.partition("@")
        return repo, rev or None
    return ref, None


def resolve_model(ref: str | Path, *, revision: str | None = None) -> ModelRef:
    """Resolve a local directory, or a Hub repo through the local HF cache (offline) or the Hub."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: not a directory", hint="pass the checkpoint directory, not a file")
        local = path.resolve()
        repo, rev = _cache_snapshot_identity(path.absolute())
        return ModelRef(ref=text, local_dir=local, repo_id=repo, revision=rev) if repo else ModelRef(ref=text, local_dir=local)
    repo, rev = split_ref(text)
    if not _REPO_RE.match(repo) or ".." in repo:
        raise ModelError(f"{text}: no such directory, and not a Hub repo id (org/name[@revision])")
    rev = rev or revision
    cached = _cached_snapshot(repo, rev)
    if cached is not None:
        return ModelRef(ref=text, local_dir=cached, repo_id=repo, revision=cached.name)
    return ModelRef(ref=text, repo_id=repo, revision=_remote_sha(repo, rev), is_remote=True)


def cached_model(repo: str, revision: str | None = None) -> ModelRef | None:
    """The HF-cache copy of `repo` (needs its config.json cached), without any network access; else None."""
    cached = _cached_snapshot(repo, revision)
    if cached is None:
        return None
    return ModelRef(ref=f"{repo}@{revision}" if revision else repo, local_dir=cached, repo_id=repo, revision=cached.name)


def _cache_snapshot_identity(path: Path) -> tuple[str | None, str | None]:
    """(repo, commit) for a directory inside the HF cache (`models--org--name/snapshots/<sha>`), else (None, None)."""
    parent = path.parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--") and _SHA_RE.match(path.name):
        parts = parent.parent.name[len("models--"):].split("--")
        if len(parts) == 2 and all(parts):
            return "/".join(parts), path.name
    return None, None


def ensure_local(ref: str | ModelRef) -> Path:
    """A complete local copy (for loading into transformers): local dirs as they are, Hub repos via snapshot_download."""
    model = ref if isinstance(ref, ModelRef) else resolve_model(ref)
    if model.local_dir is not None and not model.is_remote and (model.repo_id is None or _snapshot_complete(model)):
        return model.local_dir
    from patchkit.model.hub_client import download_snapshot

    return Path(download_snapshot(model.repo_id, model.revision))


def check_revision_pin(recipe_spec: Any, model: ModelRef) -> str | None:
    """None when the recipe's pin matches; a warning string when unpinned; ModelError on a mismatch.

    Only commit shas (7-40 hex digits) can be compared; a branch or tag name is reported as "not pinned".
    """
    pinned = str(getattr(recipe_spec, "revision", None) or "").lower()
    if not pinned:
        return "the recipe does not pin model.revision: results may differ on another revision of the base model"
    if not _SHA_RE.match(pinned):
        return f"the recipe's model.revision {pinned!r} is a branch or tag, not a commit sha: it can move"
    have = (model.revision or "").lower()
    if have and _SHA_RE.match(have) and not (have.startswith(pinned) or pinned.startswith(have)):
        raise ModelError(
            f"the recipe pins revision {pinned} but {model.ref} is at {have}",
            hint="use the pinned revision (org/name@sha) or update the recipe's model.revision",
        )
    return None


# --- Hub helpers -----------------------------------------------------------------------------------------


def _snapshot_complete(model: ModelRef) -> bool:
    return model.has_local_weights()


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot dir of a repo (needs config.json in the cache), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a malformed cache entry is simply "not cached"
        return None
    if isinstance(hit, str):
        return Path(hit).parent
    return None


def _remote_sha(repo: str, revision: str | None) -> str | None:
    """The commit a revision points at (one model_info call at HF_ENDPOINT, read now)."""
    from huggingface_hub import HfApi

    from patchkit.model.hub_client import hub_endpoint, resolve_token

    try:
        info = HfApi(endpoint=hub_endpoint(), token=resolve_token(), library_name="patchkit").model_info(
            repo, revision=revision)
    except Exception as exc:  # noqa: BLE001 - becomes one line
        raise _hub_error(repo, exc, revision=revision) from None
    return info.sha


def _hub_file(model: ModelRef, name: str, *, required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from patchkit.model.hub_client import hub_endpoint, resolve_token

    try:
        return Path(hf_hub_download(model.repo_id, name, revision=model.revision, endpoint=hub_endpoint(),
                                    token=resolve_token()))
    except EntryNotFoundError:
        if required:
            raise ModelError(f"{model.repo_id}: the repo has no {name}") from None
        return None
    except Exception as exc:  # noqa: BLE001
        offline = any(type(e).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") for e in _causes(exc))
        if not required and (_status_of(exc) == 404 or (offline and model.local_dir is not None)):
            return None  # an optional file (the shard index) that the offline cache does not have
        raise _hub_error(model.repo_id, exc, revision=model.revision) from None


def _remote_header(model: ModelRef, name: str) -> Any:
    """One remote shard's header via HTTP Range requests (the real 8-byte length prefix included)."""
    from patchkit.model.hub_client import read_safetensors_header
    from patchkit.model.safetensors_io import header_from_dict

    length, obj = read_safetensors_header(model.repo_id, name, revision=model.revision)
    return header_from_dict(obj, path=f"{model.repo_id}@{model.revision or 'main'}/{name}", header_len=length)


def _status_of(exc: BaseException) -> int | None:
    from patchkit.model.hub_client import http_status

    return http_status(exc)


def _hub_error(repo: str | None, exc: BaseException, *, revision: str | None = None) -> PatchkitError:
    names = {type(e).__name__ for e in _causes(exc)}
    if names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError"}:
        return ModelError(f"{repo}: not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE)",
                          hint="download it once with `patchkit pull` where the Hub is reachable, or pass a local dir")
    from patchkit.model.hub_client import map_hub_error

    return map_hub_error(exc, action="resolving", repo_id=repo, revision=revision)


def _causes(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
