"""Publish patched checkpoints to the Hugging Face Hub and fetch them back, through `huggingface_hub` only.

`plan_push` (no network) decides what a push uploads: an `apply` output directory, or a patched GGUF (a .gguf
file, any part of a split set, or a directory holding one split set) whose provenance is inside the file; `execute_push` creates the repo, uploads everything in one
commit (or one pull request), then `verify_remote` re-lists the remote files and checks their sizes and LFS
sha256 against the local provenance. A re-run after an interruption is cheap: the client's preupload / LFS batch
calls skip objects the server already has. `pull` and `fetch_differing_shards` download with `snapshot_download`,
by commit sha, and record the branch -> commit mapping in the HF cache's refs/ so `HF_HUB_OFFLINE=1` finds the
copy later. `pull` checks what it downloaded: against `patchkit.json`, or for a patched GGUF, the edited rows
against the sha256 its `patchkit.*` metadata records. Retries are huggingface_hub's own (see
`patchkit.model.hub_client`); failures are one line. Tokens come from the standard sources (HF_TOKEN,
`hf auth login`) and never appear in messages or files.

What a push will not upload, refused by name before any request: a file that contains the user's Hub token (every
byte of every file is scanned, the generated card too; the message never shows the token), a link that leaves the
directory (except an HF-cache snapshot's links into its blobs/), a link to a directory, and special files (FIFOs,
devices, sockets).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchkit._io.atomic import TMP_MARK
from patchkit._io.fs import UnsafeFileError, check_entry, read_json_file
from patchkit._io.hashing import known_sha256, remember_sha256, sha256_file
from patchkit.edit.output import BOOKKEEPING, HUB_MANAGED
from patchkit.edit.provenance import PROVENANCE_FILE
from patchkit.errors import Fix, HubError, VerifyError
from patchkit.model.hub_client import (
    check_repo_id,
    download_snapshot,
    guarded,
    hub_api,
    parse_repo_ref,
    record_ref,
    resolve_commit,
    resolve_token,
)

if TYPE_CHECKING:
    from patchkit.model.gguf_model import GGUFModel

CARD_FILE = "README.md"
#: Files the Hub stores through LFS whatever their size (plus anything >= 10 MB); used for the dry-run plan only,
#: the server decides for real in its preupload answer.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".model")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_HASH_CHUNK = 8 * 1024 * 1024
_SKIP_PARTS = {".cache", ".git", ".huggingface"}
#: never published: the Hub manages .gitattributes; the undo recipe of an in-place apply is a local convenience;
#: the in-place journal and lock are patchkit's bookkeeping (patchkit.json itself is published)
_SKIP_FILES = HUB_MANAGED | (BOOKKEEPING - {PROVENANCE_FILE})

_log = logging.getLogger("patchkit.publish.hub")


# ---------------------------------------------------------------------------------------------------------------
# value objects
# ---------------------------------------------------------------------------------------------------------------
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
    token_checked: str | None = field(default=None, repr=False)  # sha256 of the token the files were scanned for
    format: str = "checkpoint"  # "checkpoint" (an apply output directory) or "gguf"
    card_source: Path | None = None  # what the card was generated from (named if the card holds the token)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "format": self.format,
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
    #: False when the branch already held every file: no commit was made (and with --pr, no pull request opened);
    #: `commit_oid` is then the branch's existing head
    changed: bool = True

    def to_json(self) -> dict[str, Any]:
        plan = self.plan.to_json()
        plan.pop("card")
        return {
            **plan,
            "repo_url": self.repo_url,
            "commit_url": self.commit_url,
            "commit": self.commit_oid,
            "pr_url": self.pr_url,
            "changed": self.changed,
            "verified": self.check.to_json(),
        }


@dataclass
class PullResult:
    repo_id: str
    revision: str | None
    commit: str
    path: Path
    files: list[str]
    provenance_ok: bool | None  # None: nothing to check against (no patchkit.json, no GGUF with patchkit metadata)
    mismatches: list[str] = field(default_factory=list)
    #: what the files were checked against: "patchkit.json", "gguf" (the patchkit.* metadata inside each patched
    #: .gguf: its edited rows against the sha256 recorded there), or None
    checked_against: str | None = None
    #: the patched GGUF files checked (first part of each model), for "gguf"
    gguf_files: list[str] = field(default_factory=list)
    #: files that could not be checked, and why (e.g. a .gguf of an architecture patchkit does not map)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "path": str(self.path),
            "files": self.files,
            "provenance_ok": self.provenance_ok,
            "checked_against": self.checked_against,
            "gguf_files": self.gguf_files,
            "mismatches": self.mismatches,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------------------------
def load_provenance(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    data = read_json_file(path, what="provenance file", root=directory, error=HubError)
    if not isinstance(data, dict) or not isinstance(data.get("output_files"), dict):
        raise HubError(f"{path}: no `output_files` map", hint="re-run `patchkit apply` to rewrite it")
    return data


def _local_files(directory: Path) -> list[Path]:
    """Files to publish: skips VCS / huggingface_hub metadata, patchkit's bookkeeping and the Hub-managed root
    .gitattributes.

    Raises:
        UnsafeFileError: a link out of the directory (an HF-cache snapshot's links into its blobs/ excepted), a
            link to a directory, or a special file — named, before anything is read or sent.
    """
    files = []
    for root, dirs, names in os.walk(directory, followlinks=False):
        kept = []
        for d in sorted(dirs):
            path = Path(root) / d
            if d in _SKIP_PARTS or TMP_MARK in d:
                continue
            if path.is_symlink():
                check_entry(path, directory, dir_ok=True)
                raise UnsafeFileError(
                    f"{path}: is a link to a directory; patchkit pushes only regular files",
                    hint="replace the link with the files themselves",
                    data={"path": str(path)},
                )
            kept.append(d)
        dirs[:] = kept
        for name in names:
            path = Path(root) / name
            rel = path.relative_to(directory)
            if rel.as_posix() in _SKIP_FILES or TMP_MARK in name:  # TMP_MARK: an apply still (or never) finishing
                continue
            check_entry(path, directory)
            files.append(path)
    return sorted(files)


def _token_bytes(token: str | None) -> bytes | None:
    return token.encode("utf-8") if token and len(token) >= 8 else None


def _contains(path: Path, needle: bytes, chunk: int = _HASH_CHUNK) -> bool:
    """Whether the file's bytes contain `needle` anywhere (streamed; matches across chunk boundaries too)."""
    keep = len(needle) - 1
    buf = bytearray(chunk + keep)
    view = memoryview(buf)
    carried = 0
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view[carried : carried + chunk]):
            end = carried + n
            if buf.find(needle, 0, end) >= 0:
                return True
            carried = min(keep, end)
            buf[:carried] = buf[end - carried : end]
    return False


def _refuse_token(
    directory: Path,
    paths: list[Path],
    token: str | None,
    card: bytes | None = None,
    card_source: Path | None = None,
) -> str | None:
    """HubError naming the first file that contains the user's token (never the token); returns sha256 of the token
    checked (None when there is no token). `card_source`: what the card was generated from (default: the
    directory's patchkit.json)."""
    needle = _token_bytes(token)
    if needle is None:
        return None
    for path in paths:
        if _contains(path, needle):
            raise HubError(
                f"{path}: contains your Hugging Face token; refusing to upload it",
                hint="remove the token from that file (and revoke the token if the file was shared)",
                data={"path": str(path)},
            )
    if card is not None and needle in card:
        raise HubError(
            f"{card_source or directory / PROVENANCE_FILE}: the model card generated from it contains your Hugging Face "
            "token; refusing to upload it",
            hint="remove the token from the recipe text recorded there",
        )
    return hashlib.sha256(needle).hexdigest()


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
    out: dict[Path, str] = {}
    todo = []
    for path in paths:
        digest = known_sha256(path)
        if digest:
            out[path] = digest
        else:
            todo.append(path)
    total = sum(p.stat().st_size for p in todo)
    if not progress or total < 64 * 1024 * 1024:
        out.update({p: sha256_file(p, use_cache=False) for p in todo})
    else:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(
            TextColumn("hashing {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("files", total=total)
            for path in todo:
                bar.update(task, description=path.name)
                out[path] = sha256_file(path, use_cache=False, progress=lambda n: bar.advance(task, n))
    for path in todo:
        if path.stat().st_size >= 1 << 20:
            remember_sha256(path, out[path])
    return out


def _will_be_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD


def _upload(path: Path, name: str, sha256: str) -> UploadFile:
    """One local file to upload as `name` (LFS by patchkit's rule: weights and large files)."""
    size = path.stat().st_size
    return UploadFile(path=name, size=size, sha256=sha256, lfs=_will_be_lfs(path.name, size), local_path=path)


def _card_upload(card_text: str, where: Path, secret: str | None, *, card_source: Path | None = None) -> UploadFile:
    """The generated README.md, refused by name when it would carry the Hub token."""
    data = card_text.encode("utf-8")
    _refuse_token(where, [], secret, data, card_source=card_source)
    return UploadFile(path=CARD_FILE, size=len(data), sha256=hashlib.sha256(data).hexdigest(), lfs=False, data=data)


def plan_push(
    directory: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool = False,
    message: str | None = None,
    allow_unpatched: bool = False,
    loops_report: str | Path | dict | None = None,
    bench_report: str | Path | dict | None = None,
    progress: bool = False,
    token: str | None = None,
) -> PushPlan:
    """Check DIR against its provenance and decide what to upload. Touches no network.

    Refuses a directory without patchkit.json (unless `allow_unpatched`) and one whose files changed since
    `patchkit apply` wrote it: the card and the post-push verification both rely on those hashes. Refuses, by
    name, a file containing the Hub token (`token`, else the one huggingface_hub would use), a link out of the
    directory and a special file.

    A patched GGUF instead of DIR (a .gguf file, any part of a split set, or a directory holding one split set
    and no patchkit.json): uploads every .gguf part under its file name plus a card built from the `patchkit.*`
    metadata inside the file; refuses a GGUF without that metadata (unless `allow_unpatched`) and one whose
    edited rows no longer hold the bytes the metadata records.
    """
    from patchkit.publish.card import card_for_dir

    directory = Path(directory)
    repo_id = check_repo_id(repo_id)
    gguf = gguf_push_target(directory)
    if gguf is not None:
        return _plan_gguf_push(
            directory,
            gguf,
            repo_id,
            revision=revision,
            create_pr=create_pr,
            private=private,
            message=message,
            allow_unpatched=allow_unpatched,
            loops_report=loops_report,
            bench_report=bench_report,
            progress=progress,
            token=token,
        )
    if not os.path.lexists(directory):
        raise HubError(
            f"{directory}: no such file or directory",
            hint="pass the output directory of `patchkit apply`, or the patched .gguf it wrote",
        )
    if not directory.is_dir():
        raise HubError(
            f"{directory}: not a directory or a .gguf file",
            hint="pass the output directory of `patchkit apply`, or the patched .gguf it wrote",
        )
    provenance = load_provenance(directory)
    if provenance is None and not allow_unpatched:
        raise HubError(
            f"{directory}: no {PROVENANCE_FILE} (not an output of `patchkit apply`)",
            hint="run `patchkit apply RECIPE --out DIR` first",
            fix=Fix("allow_unpatched", why="to push it anyway"),
        )
    paths = [p for p in _local_files(directory) if p.relative_to(directory).as_posix() != CARD_FILE]
    if not any(p.name != PROVENANCE_FILE for p in paths):
        raise HubError(f"{directory}: nothing to upload", hint="pass the output directory of `patchkit apply`")
    secret = resolve_token(token)
    token_checked = _refuse_token(directory, paths, secret)
    hashes = _hash_all(paths, progress=progress)
    if provenance is not None:
        _check_against_provenance(directory, paths, hashes, provenance)
    files = [_upload(p, p.relative_to(directory).as_posix(), hashes[p]) for p in paths]
    card = card_for_dir(
        directory, provenance=provenance, loops_report=loops_report, bench_report=bench_report, repo_id=repo_id
    )
    card_text = str(card)
    files.append(_card_upload(card_text, directory, secret))
    if message is None:
        name = ((provenance or {}).get("recipe", {}).get("normalized") or {}).get("name")
        message = f"patchkit: {name}" if name else "patchkit: upload patched checkpoint"
    return PushPlan(
        source_dir=directory,
        repo_id=repo_id,
        revision=revision or "main",
        create_pr=create_pr,
        private=private,
        message=message,
        files=files,
        card=card_text,
        provenance=provenance,
        token_checked=token_checked,
    )


def _check_against_provenance(directory: Path, paths: list[Path], hashes: dict[Path, str], provenance: dict) -> None:
    recorded: dict[str, dict] = provenance["output_files"]
    present = {
        p.relative_to(directory).as_posix(): p for p in paths if p.name != PROVENANCE_FILE or p.parent != directory
    }
    for name, info in recorded.items():
        if name == CARD_FILE:
            continue  # the base card copied by apply is replaced by the patchkit card
        if name in HUB_MANAGED:
            continue  # outputs of earlier patchkit versions copied and listed it; the Hub writes its own
        if name not in present:
            raise HubError(
                f"{directory / name}: listed in {PROVENANCE_FILE} but missing",
                hint="re-run `patchkit apply` into a fresh directory",
            )
        path = present[name]
        if path.stat().st_size != info.get("size") or hashes[path] != info.get("sha256"):
            raise HubError(
                f"{path}: changed since `patchkit apply` (size/sha256 differ from {PROVENANCE_FILE})",
                hint="re-run `patchkit apply`",
                fix=Fix("allow_unpatched", why="to push it as is"),
            )
    for name, path in present.items():
        if name not in recorded:
            raise HubError(
                f"{path}: not listed in {PROVENANCE_FILE}",
                hint="remove it, or re-run `patchkit apply` so provenance covers it",
            )


# ---------------------------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------------------------
def gguf_push_target(path: Path) -> GGUFModel | None:
    """The GGUF model a push path names, or None for an apply output directory (or a path that is neither).

    A .gguf file (any part of a split set names the whole set), or a directory with no patchkit.json whose
    files are one GGUF model: a single .gguf or every part of one split set (a README.md is replaced by the
    card, an in-place apply's bookkeeping is never uploaded; anything else is refused by name, since it would not
    be uploaded). A directory with .safetensors files is a checkpoint directory, whatever else it holds.

    Raises:
        ModelError: the GGUF is damaged, a part is missing, or the header is not one patchkit reads.
        HubError: a directory holding more than one GGUF model, or files that are not part of it.
    """
    from patchkit.model.gguf_model import is_gguf_path, open_gguf_model

    path = Path(path)
    if is_gguf_path(path) and not path.is_dir():
        if not os.path.lexists(path):
            return None  # plan_push names the missing path
        return open_gguf_model(path)
    if not path.is_dir() or (path / PROVENANCE_FILE).exists():
        return None
    files = _local_files(path)
    ggufs = [p for p in files if p.name.lower().endswith(".gguf")]
    if not ggufs or any(p.name.endswith(".safetensors") for p in files):
        return None  # a checkpoint directory (that may also hold a .gguf): the directory rules apply
    nested = [p for p in ggufs if p.parent != path]
    if nested:
        raise HubError(
            f"{nested[0]}: a .gguf in a subdirectory; a GGUF push uploads one model from the top of {path}",
            hint="push the .gguf file itself",
        )
    model = open_gguf_model(ggufs[0])
    members = {os.path.normcase(os.path.abspath(p)) for p in model.files}
    others = [p for p in ggufs if os.path.normcase(os.path.abspath(p)) not in members]
    if others:
        raise HubError(
            f"{path}: holds more than one GGUF model ({model.files[0].name} and {others[0].name})",
            hint="push one .gguf file (or one split set) at a time",
        )
    from patchkit.edit.gguf_apply import JOURNAL_SUFFIX, LOCK_SUFFIX, SIDECAR_SUFFIX

    first = model.files[0].name
    bookkeeping = {CARD_FILE} | {first + suffix for suffix in (SIDECAR_SUFFIX, JOURNAL_SUFFIX, LOCK_SUFFIX)}
    extra = [p for p in files if p not in ggufs and p.relative_to(path).as_posix() not in bookkeeping]
    if extra:
        raise HubError(
            f"{extra[0]}: not part of the GGUF model in {path}; a GGUF push uploads only the .gguf files and a "
            "generated README.md",
            hint="move it out of the directory, or push the .gguf file itself",
        )
    return model


def gguf_edit_mismatches(model: GGUFModel, provenance: dict) -> list[tuple[Path, str]]:
    """(file, what is wrong) for every edit of a patched GGUF whose rows no longer hold the bytes the file's own
    `patchkit.provenance` metadata records (sha256 of the edited rows after apply); empty when all match.

    Shared by push (refuse to publish a file changed after apply: its card would describe another file) and pull
    (a downloaded GGUF is checked against its own record, as a checkpoint is checked against its patchkit.json).
    """
    parts = model.parts
    out: list[tuple[Path, str]] = []
    for record in provenance.get("edits") or []:
        if not isinstance(record, dict):
            continue
        name, rows, size, digest = (
            record.get("tensor"),
            record.get("rows"),
            record.get("bytes"),
            record.get("after_sha256"),
        )
        found = model.tensor(name) if isinstance(name, str) else None
        if (
            found is None
            or not (isinstance(rows, list) and len(rows) == 2 and all(isinstance(r, int) for r in rows))
            or not isinstance(size, int)
            or not isinstance(digest, str)
            or rows[1] <= rows[0]
            or size <= 0
            or size % (rows[1] - rows[0])
        ):
            out.append(
                (
                    model.files[0],
                    f"its patchkit.provenance metadata records an edit patchkit cannot locate ({name!r}, rows {rows!r})",
                )
            )
            continue
        part, tensor = found
        start = tensor.start + rows[0] * (size // (rows[1] - rows[0]))
        if start + size > tensor.end:
            out.append(
                (
                    model.files[0],
                    f"its patchkit.provenance metadata records rows {rows[0]}–{rows[1] - 1} of {name}, past the end "
                    "of that tensor",
                )
            )
            continue
        with open(parts[part].real_path, "rb", buffering=0) as handle:
            data = os.pread(handle.fileno(), size, start)
        if hashlib.sha256(data).hexdigest() != digest:
            out.append(
                (
                    parts[part].path,
                    f"rows {rows[0]}–{rows[1] - 1} of {name} changed since `patchkit apply` (their sha256 differs "
                    "from the file's patchkit.provenance)",
                )
            )
    return out


def _check_gguf_edits(model: GGUFModel, provenance: dict) -> None:
    """HubError naming the first edit whose rows no longer match the file's own provenance (`gguf_edit_mismatches`)."""
    problems = gguf_edit_mismatches(model, provenance)
    if problems:
        path, what = problems[0]
        raise HubError(f"{path}: {what}", hint="re-run `patchkit apply` to write the GGUF again")


def _plan_gguf_push(
    given: Path,
    model: GGUFModel,
    repo_id: str,
    *,
    revision: str | None,
    create_pr: bool,
    private: bool,
    message: str | None,
    allow_unpatched: bool,
    loops_report,
    bench_report,
    progress: bool,
    token: str | None,
) -> PushPlan:
    from patchkit.edit.gguf_apply import refuse_journaled, sidecar_path
    from patchkit.edit.gguf_plan import provenance_of
    from patchkit.publish.card import card_for_gguf

    first = model.files[0]
    refuse_journaled(model)  # an interrupted in-place apply: its bytes are half written
    provenance = provenance_of(model.parts[0])
    if provenance is None and not allow_unpatched:
        sidecar = sidecar_path(model)
        if os.path.lexists(sidecar):
            raise HubError(
                f"{first}: patched in place, so its provenance is in {sidecar.name}, not in the file",
                hint="apply the recipe to the original with `-o NEW.gguf` to write a GGUF that carries it",
                fix=Fix("allow_unpatched", why="to push it without provenance"),
            )
        raise HubError(
            f"{first}: no patchkit metadata in this GGUF (not an output of `patchkit apply`)",
            hint="run `patchkit apply RECIPE --model SOURCE.gguf -o PATCHED.gguf` first",
            fix=Fix("allow_unpatched", why="to push it anyway"),
        )
    if provenance is not None:
        _check_gguf_edits(model, provenance)
    paths = list(model.files)
    secret = resolve_token(token)
    token_checked = _refuse_token(given, paths, secret)
    hashes = _hash_all(paths, progress=progress)
    files = [_upload(p, p.name, hashes[p]) for p in paths]
    card = card_for_gguf(
        first,
        provenance=provenance,
        hashes={f.path: f.sha256 for f in files},
        loops_report=loops_report,
        bench_report=bench_report,
        repo_id=repo_id,
    )
    card_text = str(card)
    files.append(_card_upload(card_text, given, secret, card_source=first))
    if message is None:
        name = ((provenance or {}).get("recipe") or {}).get("name")
        message = f"patchkit: {name}" if name else "patchkit: upload GGUF"
    return PushPlan(
        source_dir=given,
        repo_id=repo_id,
        revision=revision or "main",
        create_pr=create_pr,
        private=private,
        message=message,
        files=files,
        card=card_text,
        provenance=provenance,
        token_checked=token_checked,
        format="gguf",
        card_source=first,
    )


# ---------------------------------------------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------------------------------------------
def _operations(plan: PushPlan):
    from huggingface_hub import CommitOperationAdd

    ops = []
    for item in plan.files:
        if item.local_path is None:
            op = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=item.data or b"")
        else:
            op = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(item.local_path))
            op.upload_info.sha256 = bytes.fromhex(item.sha256)  # hashed once already in plan_push
        ops.append(op)
    return ops


def execute_push(plan: PushPlan, *, endpoint: str | None = None, token: str | None = None) -> PushResult:
    """Create the repo if needed, upload the plan in one commit (or one PR), verify the remote copy.

    When the target branch already holds every file (a re-run, or `--pr` with nothing new), huggingface_hub makes
    no commit and opens no pull request; the result says so (`changed` False) instead of reporting an upload.
    Returns the result whatever the verification found; `fail_on_mismatch(result.check, ...)` turns a
    mismatch into the exit-1 error (the CLI prints the report first).
    """
    token = resolve_token(token)
    if not token:
        raise HubError(
            "no Hugging Face token found", hint="set HF_TOKEN or run `hf auth login` with a token that has write access"
        )
    needle = _token_bytes(token)
    if needle is not None and plan.token_checked != hashlib.sha256(needle).hexdigest():
        # the plan was scanned for another token (or none): scan again for the one this push uses
        _refuse_token(
            plan.source_dir,
            [f.local_path for f in plan.files if f.local_path is not None],
            token,
            b"".join(f.data or b"" for f in plan.files if f.local_path is None),
            card_source=plan.card_source,
        )
    api = hub_api(endpoint, token)
    repo_id = plan.repo_id

    guarded("checking the token", lambda: api.whoami(cache=True), endpoint=endpoint, writing=True)
    repo_url = guarded(
        "creating",
        lambda: api.create_repo(repo_id, private=plan.private, exist_ok=True),
        repo_id=repo_id,
        endpoint=endpoint,
        writing=True,
    )
    if plan.revision != "main" and not plan.create_pr and not plan.revision.startswith("refs/pr/"):
        guarded(
            f"creating branch {plan.revision!r} in",
            lambda: api.create_branch(repo_id, branch=plan.revision, exist_ok=True),
            repo_id=repo_id,
            endpoint=endpoint,
            writing=True,
        )
    # the head before the commit: huggingface_hub answers a commit with nothing new by returning this same head
    head = guarded(
        "reading",
        lambda: api.model_info(repo_id, revision=plan.revision).sha,
        repo_id=repo_id,
        revision=plan.revision,
        endpoint=endpoint,
        writing=True,
    )

    if plan.format == "gguf":
        description = (
            "Published with patchkit: the recipe, the source GGUF's sha256 and the edits are in the file's "
            "patchkit.* metadata and in README.md."
        )
    else:
        description = "Published with patchkit: see patchkit.json for the recipe, base revision and file hashes."

    def commit():
        # LFS objects an earlier, interrupted push uploaded are skipped by the LFS batch call (resume).
        return api.create_commit(
            repo_id,
            operations=_operations(plan),
            commit_message=plan.message,
            commit_description=description,
            revision=plan.revision,
            create_pr=plan.create_pr,
        )

    # Per-file upload bars come from huggingface_hub (tqdm on stderr; HF_HUB_DISABLE_PROGRESS_BARS=1 hides them).
    info = guarded("uploading to", commit, repo_id=repo_id, revision=plan.revision, endpoint=endpoint, writing=True)
    check = verify_remote(repo_id, info.oid, plan.files, endpoint=endpoint, token=token, api=api)
    return PushResult(
        plan=plan,
        repo_url=str(repo_url),
        commit_url=info.commit_url,
        commit_oid=info.oid,
        pr_url=info.pr_url,
        check=check,
        changed=info.pr_url is not None or info.oid != head,
    )


def push(
    directory: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool = False,
    message: str | None = None,
    allow_unpatched: bool = False,
    loops_report=None,
    bench_report=None,
    endpoint: str | None = None,
    token: str | None = None,
    progress: bool = True,
) -> PushResult:
    """Publish an `apply` output directory, or a patched GGUF, to the Hub in one commit (or one pull request),
    then verify it.

    The directory must match its `patchkit.json` (a changed file is refused); the model card is generated from
    the provenance and the optional loop/bench reports. A patched GGUF (a .gguf file or split set written by
    `patchkit apply --model X.gguf`) is uploaded as its .gguf file(s) under their file names, with a card built
    from the `patchkit.*` metadata inside it. After the commit, the remote tree is listed and every file's size
    and sha256 compared with the local copy.

    Args:
        directory: an output of `apply_recipe`; or a patched .gguf (any part of a split set), or the directory
            holding a patched split set.
        repo_id: `org/name` (created if missing).
        revision: push to this branch (created from main if missing). create_pr: open a pull request instead.
        private: create the repo private. message: commit message.
        allow_unpatched: push a directory (or a GGUF) without provenance.
        loops_report, bench_report: JSON reports (paths or dicts) whose results go into the card.
        endpoint, token: Hub endpoint and token (default: HF_ENDPOINT / HF_TOKEN / `hf auth login`).
        progress: show a hashing bar for large checkpoints.

    Returns:
        PushResult: commit URL and oid, the uploaded files, the remote check, and whether anything changed.

    Raises:
        HubError: the Hub refused or could not be reached (one line saying what to do; never the token).

    Example:
        >>> push("./e2b-fixed", "my-org/gemma-4-E2B-it-noloop", create_pr=True).commit_url  # doctest: +SKIP
        >>> push("./e2b-fixed-Q4_K_M.gguf", "my-org/gemma-4-E2B-it-noloop-GGUF").commit_url  # doctest: +SKIP
    """
    plan = plan_push(
        directory,
        repo_id,
        revision=revision,
        create_pr=create_pr,
        private=private,
        message=message,
        allow_unpatched=allow_unpatched,
        loops_report=loops_report,
        bench_report=bench_report,
        progress=progress,
        token=token,
    )
    return execute_push(plan, endpoint=endpoint, token=token)


def verify_remote(
    repo_id: str,
    revision: str,
    expected: list[UploadFile],
    *,
    endpoint: str | None = None,
    token: str | None = None,
    api=None,
) -> RemoteCheck:
    """List the remote tree at `revision` and compare every expected file's size and hash.

    LFS files are compared by their sha256 (the LFS oid); regular files by git blob id (sha1 of the content),
    which is what the Hub lists for them.
    """
    from huggingface_hub.hf_api import RepoFile

    api = api or hub_api(endpoint, resolve_token(token))
    tree = guarded(
        "listing files of",
        lambda: [f for f in api.list_repo_tree(repo_id, revision=revision, recursive=True) if isinstance(f, RepoFile)],
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
        writing=True,
    )
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
    extra = sorted(p for p in remote if p not in wanted and p not in HUB_MANAGED)
    return RemoteCheck(ok=not mismatches, checked=len(expected), mismatches=mismatches, extra=extra)


def _git_blob_sha1(item: UploadFile) -> str:
    if item.local_path is not None:
        return git_blob_sha1_file(item.local_path)
    data = item.data or b""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# pull and remote diff
# ---------------------------------------------------------------------------------------------------------------
def pull(
    ref: str,
    *,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
) -> PullResult:
    """Download ORG/NAME[@REV] into the HF cache (or `local_dir`) and check it against its own provenance.

    The revision is resolved to a commit first (one request: a Hub that cannot be reached fails here, in one
    line), so a branch that moves during the download cannot mix versions; once a download into the HF cache is
    complete, the branch -> commit mapping is recorded in its refs/ as `snapshot_download` does, so
    `--model ORG/NAME` finds the copy later with HF_HUB_OFFLINE=1.

    What the files are checked against: the repo's `patchkit.json` (size and sha256 of every file), else, for each
    patched GGUF in it, the `patchkit.*` metadata inside the file (the sha256 of every edited row range, the
    check `push` makes before uploading one).

    Args:
        ref: `org/name` or `org/name@revision`.
        local_dir: download here instead of the HF cache.
        endpoint, token: as for `push`. allow_patterns: download only matching files.

    Returns:
        PullResult: the local path, the commit, and whether every file matches the provenance (None if there is
        nothing to check against: no patchkit.json and no GGUF carrying patchkit metadata).

    Raises:
        HubError: the repo or revision does not exist, or the Hub could not be reached.

    Example:
        >>> pull("my-org/gemma-4-E2B-it-noloop").provenance_ok  # doctest: +SKIP
        True
    """
    repo_id, revision = parse_repo_ref(ref)
    commit = resolve_commit(repo_id, revision, endpoint=endpoint, token=token, record=False)
    path = download_snapshot(
        repo_id,
        commit,
        local_dir=local_dir,
        endpoint=endpoint,
        token=token,
        allow_patterns=allow_patterns,
    )
    if local_dir is None and revision != commit:
        record_ref(repo_id, revision, commit)  # only now: the ref never points at a half-downloaded snapshot
    files = [p.relative_to(path).as_posix() for p in _local_files(path)]
    provenance = load_provenance(path)
    if provenance is None:
        checked, mismatches, notes = _check_pulled_ggufs(path, files)
        return PullResult(
            repo_id,
            revision,
            commit,
            path,
            files,
            provenance_ok=not mismatches if checked else None,
            mismatches=mismatches,
            checked_against="gguf" if checked else None,
            gguf_files=checked,
            notes=notes,
        )
    mismatches = []
    for name, info in provenance["output_files"].items():
        if name == CARD_FILE or name in HUB_MANAGED or (allow_patterns is not None and name not in files):
            continue
        local = path / name
        if not local.is_file():
            mismatches.append(f"{name}: listed in {PROVENANCE_FILE} but not in the repo")
        elif local.stat().st_size != info.get("size") or sha256_file(local, use_cache=False) != info.get("sha256"):
            mismatches.append(f"{name}: differs from {PROVENANCE_FILE}")
    return PullResult(
        repo_id,
        revision,
        commit,
        path,
        files,
        provenance_ok=not mismatches,
        mismatches=mismatches,
        checked_against=PROVENANCE_FILE,
    )


def _check_pulled_ggufs(path: Path, files: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(first file of each patched GGUF model checked, mismatches, notes) for the .gguf files of a pulled repo.

    Each model (a file, or a split set, taken once from its first part) is checked against the `patchkit.*`
    metadata inside it (`gguf_edit_mismatches`). A GGUF without that metadata has nothing to be checked against;
    one patchkit cannot open (another architecture, a split set only partly downloaded, a damaged header) is
    named in a note, not an error: pull fetches any repo.
    """
    from patchkit.edit.gguf_plan import provenance_of
    from patchkit.errors import ModelError
    from patchkit.model.gguf_model import open_gguf_model, split_part_paths

    checked: list[str] = []
    mismatches: list[str] = []
    notes: list[str] = []
    for name in files:
        local = path / name
        if not name.lower().endswith(".gguf"):
            continue
        try:
            if split_part_paths(local)[0] != local:
                continue  # a later part of a split set: checked with its first part
            model = open_gguf_model(local)
        except ModelError as exc:
            notes.append(f"{name}: not checked ({exc.message})")
            continue
        provenance = provenance_of(model.parts[0])
        if provenance is None:
            continue
        checked.append(name)
        for file, what in gguf_edit_mismatches(model, provenance):
            rel = Path(file).relative_to(path).as_posix() if Path(file).is_relative_to(path) else str(file)
            mismatches.append(f"{rel}: {what}")
    return checked, mismatches, notes


def fail_on_mismatch(check: RemoteCheck, commit_url: str) -> None:
    """Raise VerifyError (exit 1) naming the first mismatches when the remote copy is not what was pushed."""
    if not check.ok:
        shown = "; ".join(check.mismatches[:3])
        more = f" (+{len(check.mismatches) - 3} more)" if len(check.mismatches) > 3 else ""
        raise VerifyError(
            f"remote files do not match the local copy at {commit_url}: {shown}{more}",
            hint="re-run `patchkit push`; if it persists, compare with `patchkit pull`",
        )
