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

from patchkit.errors import ModelError

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        from patchkit.adapters import detect_architecture

        return detect_architecture(self.config)

    def weight_files(self) -> list[str]:
        """Safetensors files holding the weights (from the index when sharded)."""
        index = self._read_json(INDEX_FILE, required=False)
        if index:
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelError(f"{self.ref}: {INDEX_FILE} has no weight_map")
            return sorted(set(weight_map.values()))
        if self.local_dir is not None and not self.is_remote:
            if (self.local_dir / SINGLE_FILE).is_file():
                return [SINGLE_FILE]
            if any(self.local_dir.glob("*.bin")) or any(self.local_dir.glob("*.pt")):
                raise ModelError(f"{self.local_dir}: only pickle weights (.bin/.pt) found; patchkit reads safetensors only",
                                 hint="convert the checkpoint to safetensors first")
            raise ModelError(f"{self.local_dir}: no {SINGLE_FILE} or {INDEX_FILE}")
        return [SINGLE_FILE]

    def headers(self) -> dict[str, Any]:
        """file -> SafetensorsHeader, read from local files or with range requests (never the weights)."""
        if self._headers is None:
            if self.is_remote:
                self._headers = _remote_headers(self)
            else:
                from patchkit.safetensors_io import read_header

                self._headers = {name: read_header(self.local_dir / name) for name in self.weight_files()}
        return self._headers

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
        if not self.is_remote:
            path = self.local_dir / name
            if path.is_file():
                return path
            if required:
                raise ModelError(f"{self.local_dir}: no {name}", hint="pass a Hugging Face checkpoint directory")
            return None
        return _hub_file(self, name, required=required)


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
        return ModelRef(ref=text, local_dir=path.resolve())
    repo, rev = split_ref(text)
    if not _REPO_RE.match(repo):
        raise ModelError(f"{text}: no such directory, and not a Hub repo id (org/name[@revision])")
    rev = rev or revision
    cached = _cached_snapshot(repo, rev)
    if cached is not None:
        return ModelRef(ref=text, local_dir=cached, repo_id=repo, revision=cached.name)
    return ModelRef(ref=text, repo_id=repo, revision=_remote_sha(repo, rev), is_remote=True)


def ensure_local(ref: str | ModelRef) -> Path:
    """A complete local copy (for loading into transformers): local dirs as they are, Hub repos via snapshot_download."""
    model = ref if isinstance(ref, ModelRef) else resolve_model(ref)
    if model.local_dir is not None and not model.is_remote and (model.repo_id is None or _snapshot_complete(model)):
        return model.local_dir
    from patchkit.hub import download_snapshot

    return Path(download_snapshot(model.repo_id, model.revision))


def check_revision_pin(recipe_spec: Any, model: ModelRef) -> str | None:
    """None when the recipe's pin matches; a warning string when unpinned; ModelError on a mismatch."""
    pinned = getattr(recipe_spec, "revision", None)
    if not pinned:
        return "the recipe does not pin model.revision: results may differ on another revision of the base model"
    if model.revision and not (model.revision.startswith(pinned) or pinned.startswith(model.revision)):
        raise ModelError(
            f"the recipe pins revision {pinned} but {model.ref} is at {model.revision}",
            hint="use the pinned revision (org/name@sha) or update the recipe's model.revision",
        )
    return None


# --- Hub helpers -----------------------------------------------------------------------------------------


def _snapshot_complete(model: ModelRef) -> bool:
    try:
        return all((model.local_dir / f).is_file() for f in model.weight_files())
    except ModelError:
        return False


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot dir of a repo (needs config.json in the cache), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    hit = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(hit, str):
        return Path(hit).parent
    return None


def _remote_sha(repo: str, revision: str | None) -> str | None:
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(repo, exc) from None
    return info.sha


def _hub_file(model: ModelRef, name: str, *, required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(model.repo_id, name, revision=model.revision))
    except EntryNotFoundError:
        if required:
            raise ModelError(f"{model.repo_id}: the repo has no {name}") from None
        return None
    except Exception as exc:  # noqa: BLE001
        if not required and "404" in str(exc):
            return None
        raise _hub_error(model.repo_id, exc) from None


def _remote_headers(model: ModelRef) -> dict[str, Any]:
    """Headers of every remote shard, read with HTTP Range requests (the real 8-byte length prefix included)."""
    from patchkit.hub import read_safetensors_header
    from patchkit.safetensors_io import header_from_dict

    out = {}
    for name in model.weight_files():
        length, obj = read_safetensors_header(model.repo_id, name, revision=model.revision)
        out[name] = header_from_dict(obj, path=f"{model.repo_id}/{name}", header_len=length)
    return out


def _hub_error(repo: str | None, exc: Exception) -> ModelError:
    text = " ".join(str(exc).split())
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401 or "401" in text:
        return ModelError(f"{repo}: the Hub refused the token (401)", hint="log in with `hf auth login` or set HF_TOKEN")
    if status == 404 or "RepositoryNotFound" in type(exc).__name__ or "404" in text:
        return ModelError(f"{repo}: not found on the Hub and not in the local cache",
                          hint="check the repo id / revision, or pass a local directory")
    if "offline" in text.lower() or "LocalEntryNotFound" in type(exc).__name__:
        return ModelError(f"{repo}: not in the local Hugging Face cache and the Hub is unreachable (offline)",
                          hint="download it first with `patchkit pull` on a machine with Hub access")
    return ModelError(f"{repo}: Hub request failed: {text[:200]}")
