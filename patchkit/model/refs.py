"""Model references as users write them: a local directory, `org/name` or `org/name@revision`.

Validation needs only config.json, the shard index and the safetensors headers, so a remote model is inspected
with a few small (range) requests through huggingface_hub and never downloaded for it.

A model directory comes from someone else, so every read here goes through `patchkit._io.fs`: the directory is
checked once (no FIFO, socket, device, dangling link or link leaving it, except an HF-cache snapshot's links into
its blobs/), config.json and the index are read with a size cap and parsed strictly (no duplicate keys, no NaN, no
thousand-digit integers, no unbounded nesting), `weight_map` paths must stay inside the directory, and the index
must agree with the shard headers tensor by tensor.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from patchkit._io.fs import check_tree, json_type, parse_json, read_capped, shown
from patchkit.errors import ModelError, PatchkitError
from patchkit.model.hub_client import exception_chain, http_status

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Size caps (bytes): the released Gemma 4 config.json is ~10 KB and the largest public shard indexes a few MB.
MAX_CONFIG_BYTES = 8 << 20
MAX_INDEX_BYTES = 64 << 20
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
    #: Only the local directory counts (a copy of a Hub model being patched): never fall back to the Hub.
    local_only: bool = False
    _headers: dict[str, Any] | None = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)
    _weight_map: Any = field(default=False, repr=False)  # False: not read yet

    @cached_property
    def config(self) -> dict[str, Any]:
        config = self._read_json(CONFIG_FILE, required=True, cap=MAX_CONFIG_BYTES)
        if not isinstance(config, dict):
            raise ModelError(
                f"{self.where(CONFIG_FILE)}: is a JSON {json_type(config)}, not an object",
                hint="pass a Hugging Face checkpoint directory",
            )
        return config

    @property
    def config_source(self) -> str:
        """config.json as error messages name it (its path, or repo@revision/config.json)."""
        return self.where(CONFIG_FILE)

    @property
    def architecture(self) -> str:
        from patchkit.model.adapters import detect_architecture

        return detect_architecture(self.config, source=self.config_source)

    def at(self, directory: str | os.PathLike[str]) -> ModelRef:
        """This model read from `directory` only (a complete local copy of it, e.g. its downloaded snapshot)."""
        directory = Path(directory)
        if self.local_dir is not None and not self.is_remote and Path(os.path.realpath(directory)) == self.local_dir:
            return self
        return ModelRef(
            ref=self.ref,
            local_dir=Path(os.path.realpath(directory)),
            repo_id=self.repo_id,
            revision=self.revision,
            local_only=True,
        )

    def where(self, name: str) -> str:
        """How messages name file `name` of this model: its local path, or repo@revision/name."""
        if self._is_local:
            return str(self._dir / name)
        return f"{self.repo_id}@{self.revision or 'main'}/{name}"

    @property
    def _is_local(self) -> bool:
        return self.local_dir is not None and not self.is_remote

    @property
    def _dir(self) -> Path:
        """The local directory (only called where `_is_local` holds)."""
        if self.local_dir is None:
            raise ModelError(f"{self.ref}: no local copy")
        return self.local_dir

    def check_local(self) -> None:
        """Refuse a local model directory holding special files or links that leave it (once per ref)."""
        if self._is_local and not self._checked:
            check_tree(self._dir)
            self._checked = True

    def weight_map(self) -> dict[str, str] | None:
        """The index's tensor -> weight file map, its paths normalised (`./a.safetensors` -> `a.safetensors`);
        None for a single-file checkpoint."""
        if self._weight_map is False:
            self._weight_map = self._read_weight_map()
        return self._weight_map

    def _read_weight_map(self) -> dict[str, str] | None:
        index = self._read_json(INDEX_FILE, required=False, cap=MAX_INDEX_BYTES)
        if index is None:
            return None
        where = self.where(INDEX_FILE)
        if not isinstance(index, dict):
            raise ModelError(f"{where}: is a JSON {json_type(index)}, not an object")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(
                f"{where}: has no weight_map"
                + ("" if weight_map is None else f" object (got a JSON {json_type(weight_map)})"),
                hint="re-download or re-save the checkpoint",
            )
        out: dict[str, str] = {}
        checked: dict[str, str] = {}
        for tensor, file in weight_map.items():
            if not tensor or not tensor.isprintable():
                raise ModelError(f"{where}: weight_map has an empty or unprintable tensor name {shown(tensor, 80)}")
            if not isinstance(file, str):
                raise ModelError(
                    f"{where}: weight_map[{shown(tensor, 120)}] must be a file name, got a JSON {json_type(file)}"
                )
            if file not in checked:
                checked[file] = _safe_weight_path(where, tensor, file)
            out[tensor] = checked[file]
        return out

    def weight_files(self) -> list[str]:
        """Safetensors files holding the weights (from the index when sharded), as normalised relative paths."""
        self.check_local()
        weight_map = self.weight_map()
        if weight_map is not None:
            return sorted(set(weight_map.values()))
        if self._is_local and (self.repo_id is None or self.local_only):
            if os.path.lexists(self._dir / SINGLE_FILE):
                return [SINGLE_FILE]
            if any(self._dir.glob("*.bin")) or any(self._dir.glob("*.pt")):
                raise ModelError(
                    f"{self.local_dir}: only pickle weights (.bin/.pt) found; patchkit reads safetensors only",
                    hint="convert the checkpoint to safetensors first",
                )
            raise ModelError(f"{self.local_dir}: no {SINGLE_FILE} or {INDEX_FILE}")
        return [SINGLE_FILE]

    def headers(self) -> dict[str, Any]:
        """file -> SafetensorsHeader, read from local files or with range requests (never the weights).

        A Hub model whose config is cached but whose shards are not (validate downloads only the small files)
        gets the missing headers through range requests too. With a shard index, the index and the headers must
        agree tensor by tensor (no tensor in two files, none where the index does not put it).
        """
        if self._headers is None:
            from patchkit.model.safetensors_io import read_header

            self.check_local()
            weight_map = self.weight_map()
            files = sorted(set(weight_map.values())) if weight_map is not None else self.weight_files()
            out: dict[str, Any] = {}
            for name in files:
                local = self._dir / name if self._is_local else None
                if local is not None and os.path.lexists(local):
                    out[name] = read_header(local, root=self.local_dir)
                elif self.repo_id is not None and not self.local_only:
                    out[name] = _remote_header(self, name)
                else:
                    listed = f"is listed in {INDEX_FILE} but" if weight_map is not None else "is"
                    raise ModelError(
                        f"{self.local_dir}: {name} {listed} missing", hint="re-download or re-save the checkpoint"
                    )
            self._check_owners(out, weight_map)
            self._headers = out
        return self._headers

    def _check_owners(self, headers: dict[str, Any], weight_map: dict[str, str] | None) -> None:
        owner: dict[str, str] = {}
        for file, header in headers.items():
            for tensor in header.tensors:
                if tensor in owner:
                    raise ModelError(
                        f"tensor {tensor} is in two weight files: {self.where(owner[tensor])} and {self.where(file)}",
                        hint="which copy is meant is ambiguous; re-save the checkpoint",
                        data={"tensor": tensor, "files": [owner[tensor], file]},
                    )
                owner[tensor] = file
        if weight_map is None:
            return
        index = self.where(INDEX_FILE)
        for tensor, file in weight_map.items():
            have = owner.get(tensor)
            if have != file:
                held = f"{self.where(have)} holds it" if have else "no weight file holds it"
                raise ModelError(
                    f"{index}: weight_map puts tensor {tensor} in {file}, but {held}",
                    hint="the index and the shards disagree; re-download or re-save the checkpoint",
                    data={"tensor": tensor, "index": file, "file": have},
                )
        for tensor, file in owner.items():
            if tensor not in weight_map:
                raise ModelError(
                    f"{self.where(file)}: holds tensor {tensor}, which {index} does not list",
                    hint="the index and the shards disagree; re-download or re-save the checkpoint",
                    data={"tensor": tensor, "file": file},
                )

    def has_local_weights(self) -> bool:
        """True when every weight file is on disk (so headers and loading need no network).

        A file that is there but unusable (a special file, a link out, a malformed index) counts as there: reading
        it refuses it by name, instead of silently downloading a replacement."""
        if not self._is_local:
            return False
        if not os.path.lexists(self._dir / INDEX_FILE):
            return os.path.lexists(self._dir / SINGLE_FILE)
        return all(os.path.lexists(self._dir / f) for f in self.weight_files())

    def tensor_names(self) -> set[str]:
        return {t for h in self.headers().values() for t in h.tensors}

    def _read_json(self, name: str, *, required: bool, cap: int) -> Any:
        """The parsed JSON of a small model file (None when an optional file is absent)."""
        self.check_local()
        path = self._file(name, required=required)
        if path is None:
            return None
        root = self.local_dir if self._is_local and path.parent == self.local_dir else path.parent
        label = self.where(name) if root == self.local_dir else str(path)
        data = read_capped(path, cap, what=f"{name} file", root=root)
        return parse_json(data, label, what=name)

    def _file(self, name: str, *, required: bool) -> Path | None:
        if self._is_local:
            path = self._dir / name
            if os.path.lexists(path):
                return path
            if (
                self.repo_id is None
                or self.local_only
                or (name == INDEX_FILE and os.path.lexists(self._dir / SINGLE_FILE))
            ):
                if required:
                    raise ModelError(f"{self.local_dir}: no {name}", hint="pass a Hugging Face checkpoint directory")
                return None
        return _hub_file(self, name, required=required)  # small file of a Hub model: cache, else one download


def _safe_weight_path(where: str, tensor: str, file: str) -> str:
    """A weight_map file path as a normalised relative path inside the model directory, or a ModelError."""
    what = f"{where}: weight_map[{shown(tensor, 120)}] = {shown(file, 120)}"
    if not file or not file.isprintable() or "\\" in file:
        raise ModelError(f"{what} is not a plain file name", hint="the index is malformed or hostile")
    if posixpath.isabs(file) or file.startswith("~"):
        raise ModelError(
            f"{what} is an absolute path; weight files must be inside the model directory",
            hint="the index is malformed or hostile",
        )
    if ".." in file.split("/"):
        raise ModelError(
            f"{what} goes up a directory (..); weight files must be inside the model directory",
            hint="the index is malformed or hostile",
        )
    norm = posixpath.normpath(file)
    if norm in (".", "") or not norm.endswith(".safetensors"):
        raise ModelError(f"{what} is not a .safetensors file", hint="the index is malformed or hostile")
    return norm


def split_ref(ref: str) -> tuple[str, str | None]:
    """`org/name@rev` -> ("org/name", "rev")."""
    if "@" in ref:
        repo, _, rev = ref.partition("@")
        return repo, rev or None
    return ref, None


def resolve_model(ref: str | Path, *, revision: str | None = None) -> ModelRef:
    """Resolve a local directory, or a Hub repo `org/name[@revision]`.

    A Hub repo is resolved the way huggingface_hub resolves it: a full commit sha is looked up in the local HF
    cache first (it can never point elsewhere); a branch or tag (default main) is asked of the Hub — one
    `model_info` request, whose answer is recorded in the cache's refs/ — and then looked up in the cache. With
    HF_HUB_OFFLINE set, only the cache is read, through the refs/ that `pull`, `apply` and `snapshot_download` write.
    Never the other way round: a cached refs/main must not hide a newer main while the Hub can be asked.
    """
    from patchkit.model.hub_client import is_commit_sha

    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: not a directory", hint="pass the checkpoint directory, not a file")
        local = path.resolve()
        repo, rev = _cache_snapshot_identity(path.absolute())
        return (
            ModelRef(ref=text, local_dir=local, repo_id=repo, revision=rev)
            if repo
            else ModelRef(ref=text, local_dir=local)
        )
    repo, rev = split_ref(text)
    if not _REPO_RE.match(repo) or ".." in repo:
        raise ModelError(f"{text}: no such directory, and not a Hub repo id (org/name[@revision])")
    rev = rev or revision
    if is_commit_sha(rev) or _offline():
        cached = _cached_snapshot(repo, rev)
        if cached is not None:
            return ModelRef(ref=text, local_dir=cached, repo_id=repo, revision=cached.name)
        if _offline():
            raise _not_cached_offline(repo, rev)
    sha = _remote_sha(repo, rev)
    cached = _cached_snapshot(repo, sha)
    if cached is not None:
        return ModelRef(ref=text, local_dir=cached, repo_id=repo, revision=sha)
    return ModelRef(ref=text, repo_id=repo, revision=sha, is_remote=True)


def cached_model(repo: str, revision: str | None = None) -> ModelRef | None:
    """The HF-cache copy of `repo` (needs its config.json cached), without any network access; else None."""
    cached = _cached_snapshot(repo, revision)
    if cached is None:
        return None
    return ModelRef(
        ref=f"{repo}@{revision}" if revision else repo, local_dir=cached, repo_id=repo, revision=cached.name
    )


def _cache_snapshot_identity(path: Path) -> tuple[str | None, str | None]:
    """(repo, commit) for a directory inside the HF cache (`models--org--name/snapshots/<sha>`), else (None, None)."""
    parent = path.parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--") and _SHA_RE.match(path.name):
        parts = parent.parent.name[len("models--") :].split("--")
        if len(parts) == 2 and all(parts):
            return "/".join(parts), path.name
    return None, None


def ensure_local(ref: str | ModelRef) -> Path:
    """A complete local copy (for loading into transformers): local dirs as they are, Hub repos via snapshot_download."""
    model = ref if isinstance(ref, ModelRef) else resolve_model(ref)
    if model.local_dir is not None and not model.is_remote and (model.repo_id is None or _snapshot_complete(model)):
        return model.local_dir
    from patchkit.model.hub_client import download_snapshot

    if model.repo_id is None:
        raise ModelError(f"{model.ref}: not a local directory nor a Hub repo")
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


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub sees it now."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _not_cached_offline(repo: str, revision: str | None) -> ModelError:
    from patchkit.model.hub_client import hub_cache_dir

    at = f"@{revision}" if revision else ""
    return ModelError(
        f"{repo}{at}: not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE)",
        hint=f"the cache is {hub_cache_dir()}; download the model into it once where the Hub is reachable "
        f"(`patchkit pull {repo}{at}`), or pass a local directory",
    )


def _remote_sha(repo: str, revision: str | None) -> str:
    """The commit a revision points at: one model_info call at HF_ENDPOINT (read now), recorded in the HF cache's
    refs/ so that the snapshot downloaded for it is found offline by `org/name`."""
    from patchkit.model.hub_client import resolve_commit

    return resolve_commit(repo, revision)


def _hub_file(model: ModelRef, name: str, *, required: bool) -> Path | None:
    if model.repo_id is None:
        if required:
            raise ModelError(f"{model.ref}: no {name}")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from patchkit.model.hub_client import hub_endpoint, resolve_token

    try:
        return Path(
            hf_hub_download(
                model.repo_id, name, revision=model.revision, endpoint=hub_endpoint(), token=resolve_token()
            )
        )
    except EntryNotFoundError:
        if required:
            raise ModelError(f"{model.repo_id}: the repo has no {name}") from None
        return None
    except Exception as exc:  # noqa: BLE001
        offline = any(
            type(e).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") for e in exception_chain(exc)
        )
        if not required and (http_status(exc) == 404 or (offline and model.local_dir is not None)):
            return None  # an optional file (the shard index) that the offline cache does not have
        raise _hub_error(model.repo_id, exc, revision=model.revision) from None


def _remote_header(model: ModelRef, name: str) -> Any:
    """One remote shard's header via HTTP Range requests (the real 8-byte length prefix included)."""
    from patchkit.model.hub_client import read_safetensors_header_bytes
    from patchkit.model.safetensors_io import parse_header

    if model.repo_id is None:
        raise ModelError(f"{model.ref}: {name} is not on disk and the model has no Hub repo")
    _, raw = read_safetensors_header_bytes(model.repo_id, name, revision=model.revision)
    return parse_header(raw, path=f"{model.repo_id}@{model.revision or 'main'}/{name}")


def _hub_error(repo: str | None, exc: BaseException, *, revision: str | None = None) -> PatchkitError:
    names = {type(e).__name__ for e in exception_chain(exc)}
    if names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError"} and repo is not None:
        return _not_cached_offline(repo, revision)
    from patchkit.model.hub_client import map_hub_error

    return map_hub_error(exc, action="resolving", repo_id=repo, revision=revision)
