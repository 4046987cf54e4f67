"""Apply a recipe to a GGUF file (or split set): a new file that differs only in the edited rows' scale bytes and
in the `patchkit.*` provenance metadata, or, with `in_place`, the scale bytes of the file itself.

New file: the header is copied entry by entry (any earlier `patchkit.*` entries dropped), the provenance entries
are appended, the tensor-info table is copied as it is (tensor offsets are relative to the data section, so they
stay valid), and the data section is copied in the kernel (`copy_file_range`) with the edited rows written over
it. The source's sha256 is computed by a thread on the same pass and written last into a fixed-width field kept
for it, so the file is read once. Everything goes to a temp file (a temp directory for a split set) renamed into
place at the end: an interrupted apply leaves nothing behind. Memory stays at a few MB whatever the file size.

In place: only the changed bytes are written (each a scale field). A journal beside the file records every
range's old and new bytes before the first write; provenance, with the old bytes for `undo`, goes to a sidecar
`<file>.patchkit.json` (the header cannot grow in place). A run killed half way is rolled back by the next
apply or undo on that file, from the journal.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK, atomic_write_json, fsync_dir, temp_tag
from patchkit._io.hashing import known_sha256, sha256_file
from patchkit._io.progress import Progress
from patchkit._version import __version__
from patchkit.edit.gguf_plan import PREFIX, GGUFPlan, plan_gguf, provenance_of, string_kv
from patchkit.edit.provenance import utc_now
from patchkit.edit.stream import COPY_PIECE, _copy_range, _pwrite_all, link_or_copy
from patchkit.errors import ApplyError, Fix
from patchkit.model.gguf_header import GGUFHeader
from patchkit.model.gguf_model import GGUFModel, open_gguf_model

__all__ = [
    "GGUFApplyResult",
    "JOURNAL_SUFFIX",
    "SIDECAR_SUFFIX",
    "apply_gguf",
    "recover_gguf",
    "journal_path",
    "refuse_journaled",
    "sidecar_path",
    "undo_gguf_in_place",
]

SIDECAR_SUFFIX = ".patchkit.json"
JOURNAL_SUFFIX = ".patchkit-journal.json"
LOCK_SUFFIX = ".patchkit.lock"


@dataclass
class GGUFApplyResult:
    out: Path
    plan: GGUFPlan
    provenance: dict[str, Any] | None
    dry_run: bool = False
    in_place: bool = False
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "gguf",
            "out": str(self.out),
            "files": [str(f) for f in self.files],
            "dry_run": self.dry_run,
            "in_place": self.in_place,
            "plan": self.plan.to_json(),
            "provenance": self.provenance,
            "warnings": self.warnings,
        }


# --- the new header -----------------------------------------------------------------------------------------


def _provenance_doc(recipe: Any, text: str, recipe_path: str | None, plan: GGUFPlan, parent: dict | None) -> dict:
    model = plan.model
    doc: dict[str, Any] = {
        "created": utc_now(),
        # the file name only: a published GGUF must not carry the author's directory layout
        "recipe": {"name": recipe.name, "file": Path(recipe_path).name if recipe_path else None},
        "base": {
            "files": [{"name": p.path.name, "size": p.size} for p in model.parts],
            "repo": recipe.model.repo,
            "revision": recipe.model.revision,
            "architecture": model.architecture,
            "gguf_architecture": model.gguf_architecture,
            "file_type": model.file_type(),
        },
        "edits": [e.to_json() for e in plan.edits],
    }
    if parent is not None:
        doc["parent"] = {
            "recipe": (parent.get("recipe") or {}).get("name"),
            "recipe_sha256": (parent.get("recipe") or {}).get("sha256"),
            "created": parent.get("created"),
        }
    return doc


def _placeholder(n_parts: int) -> str:
    return " ".join(["0" * 64] * n_parts)


def _new_header(source: bytes, header: GGUFHeader, entries: list[tuple[str, str]]) -> tuple[bytes, int]:
    """(the header bytes up to the padding, the offset of the source-sha256 value inside them)."""
    kept = [source[a:b] for k, a, b in header.kv_spans if not k.startswith(PREFIX)]
    out = bytearray(source[:8])
    out += struct.pack("<QQ", len(header.tensors), len(kept) + len(entries))
    for raw in kept:
        out += raw
    sha_at = -1
    for key, value in entries:
        entry = string_kv(key, value)
        if key == f"{PREFIX}source.sha256":
            sha_at = len(out) + len(entry) - len(value.encode("utf-8"))
        out += entry
    a, b = header.tensor_info_span
    out += source[a:b]
    return bytes(out), sha_at


def _read_header_bytes(header: GGUFHeader) -> bytes:
    with open(header.real_path, "rb", buffering=0) as fh:
        n = header.tensor_info_span[1]
        data = os.pread(fh.fileno(), n, 0)
    if len(data) != n:
        raise ApplyError(f"{header.path}: the file shrank while it was read")
    return data


def _write_part(
    header: GGUFHeader,
    plan: GGUFPlan,
    part: int,
    dst: Path,
    entries: list[tuple[str, str]],
    progress: Progress | None,
) -> int:
    """Write part `part` with its edits to the new file `dst`; returns where its source-sha256 field is (or -1)."""
    source = _read_header_bytes(header)
    head, sha_at = _new_header(source, header, entries)
    data_offset = -(-len(head) // header.alignment) * header.alignment
    delta = data_offset - header.data_offset
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _pwrite_all(fout, head + b"\0" * (data_offset - len(head)), 0)
        with open(header.real_path, "rb", buffering=0) as fin:
            pos, end = header.data_offset, header.size
            for e in plan.edits_of(part) + [None]:
                stop = end if e is None else e.target.start
                for a in range(pos, stop, COPY_PIECE):
                    b = min(a + COPY_PIECE, stop)
                    _copy_range_shifted(fin.fileno(), fout, a, b, delta)
                    if progress:
                        progress(dst.name, b - header.data_offset, end - header.data_offset)
                if e is None:
                    break
                _pwrite_all(fout, e.after, e.target.start + delta)
                pos = e.target.end
        os.fsync(fout)
    finally:
        os.close(fout)
    expected = header.size + delta
    if os.path.getsize(dst) != expected:
        raise ApplyError(f"{dst}: wrote {os.path.getsize(dst)} bytes, expected {expected}")
    return sha_at


def _copy_range_shifted(fd_in: int, fd_out: int, a: int, b: int, delta: int) -> None:
    if delta == 0:
        _copy_range(fd_in, fd_out, a, b)
        return
    while a < b:
        n = min(COPY_PIECE, b - a)
        try:
            done = os.copy_file_range(fd_in, fd_out, n, a, a + delta)
        except OSError:
            data = os.pread(fd_in, n, a)
            done = len(data)
            _pwrite_all(fd_out, data, a + delta)
        if done <= 0:
            raise ApplyError(f"source file shrank while copying (offset {a})")
        a += done


# --- apply -------------------------------------------------------------------------------------------------


def _in_place_provenance(model: GGUFModel) -> dict | None:
    """The sidecar an in-place apply left beside the file (its recipe, edits and undo data), or None."""
    from patchkit._io.fs import read_json_file
    from patchkit.errors import PatchkitError

    path = sidecar_path(model)
    if not os.path.lexists(path):
        return None
    try:
        doc = read_json_file(path, what="patchkit in-place record", root=path.parent)
    except (OSError, PatchkitError):
        return None
    return doc if isinstance(doc, dict) else None


def _refuse_reapply(model: GGUFModel, text: str) -> dict | None:
    prov = provenance_of(model.parts[0]) or _in_place_provenance(model)
    if prov is None:
        return None
    if (prov.get("recipe") or {}).get("sha256") == hashlib.sha256(text.encode("utf-8")).hexdigest():
        raise ApplyError(
            f"{model.path} was produced by this recipe already (its patchkit.* metadata says so); applying it again "
            "would stack the edits — use the original GGUF as --model"
        )
    return prov


def _out_path(model: GGUFModel, recipe: Any, out: Path | None) -> Path:
    if model.is_split:
        return Path(os.path.abspath(out if out is not None else Path.cwd() / recipe.name))
    if out is None:
        return Path.cwd() / f"{recipe.name}.gguf"
    out = Path(os.path.abspath(out))
    return out / model.path.name if out.is_dir() else out


def _check_out(model: GGUFModel, out: Path, force: bool) -> None:
    sources = {os.path.realpath(p.real_path) for p in model.parts}
    targets = [out / p.path.name for p in model.parts] if model.is_split else [out]
    for t in targets:
        if os.path.realpath(t) in sources:
            raise ApplyError(
                f"output {t} is the source GGUF itself", hint="choose another -o, or patch with --in-place"
            )
    if not os.path.lexists(out):
        return
    if not force:
        raise ApplyError(
            f"output {out} already exists",
            hint="or choose another output",
            fix=Fix("force", why="to replace it"),
            data={"out": str(out)},
        )
    if model.is_split:
        if not out.is_dir() or out.is_symlink():
            raise ApplyError(f"output {out} exists and is not a directory; refusing to replace it")
        for entry in out.iterdir():
            if not (entry.suffix == ".gguf" and _is_patchkit_output(entry)):
                raise ApplyError(
                    f"output {out} holds {entry.name}, which is not a patchkit GGUF output; refusing to replace it",
                    hint="remove it yourself, or choose another output directory",
                )
    elif not _is_patchkit_output(out):
        raise ApplyError(
            f"output {out} exists and is not a GGUF written by patchkit apply; refusing to replace it",
            hint="remove it yourself, or choose another output",
        )


def _is_patchkit_output(path: Path) -> bool:
    from patchkit.errors import PatchkitError
    from patchkit.model.gguf_header import scan_gguf_header

    if path.is_symlink() or not path.is_file():
        return False
    try:
        return provenance_of(scan_gguf_header(path)) is not None
    except PatchkitError:
        return False


def apply_gguf(
    recipe: Any,
    *,
    model: str | os.PathLike[str],
    out: Path | None = None,
    dry_run: bool = False,
    in_place: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> GGUFApplyResult:
    """Apply a recipe to a .gguf file or split set: a new file (or directory of parts) with only the edited rows'
    scale bytes changed and provenance in `patchkit.*` metadata; or, with `in_place`, the file itself (journaled).

    Args:
        recipe: a Recipe or a recipe path (its exact bytes go into the metadata).
        model: the .gguf file (any part of a split set names the whole set).
        out: the output file (or, for a split set, directory); an existing directory gets the source's file name.
            Default: `./<recipe name>.gguf` (a split set: `./<recipe name>/`).
        dry_run: plan only (every refusal still happens), write nothing.
        in_place: edit the scale bytes of the file itself; provenance and undo data go to `<file>.patchkit.json`.
        force: replace an existing output that an earlier GGUF apply wrote (never anything else).
        progress: `progress(stage, done_bytes, total_bytes)` per written file.

    Raises:
        RecipeError: the recipe does not fit the file (layer, index, quant type, factor), naming the tensor.
        ModelError: the GGUF is damaged, hostile or not a model patchkit maps.
        ApplyError: output problems; nothing is left half-written.
    """
    from patchkit.edit.apply import read_recipe

    recipe_obj, text, recipe_path = read_recipe(recipe)
    recipe_obj.require_resolved()
    gguf_model = open_gguf_model(model)
    warnings: list[str] = []
    if in_place:
        if out is not None:
            raise ApplyError("patching in place and writing an output exclude each other; pick one")
        with _locked(gguf_model):
            message = recover_gguf(gguf_model)
            if message:
                warnings.append(message)
            plan = plan_gguf(recipe_obj, gguf_model)
            _refuse_reapply(gguf_model, text)
            if dry_run:
                return GGUFApplyResult(gguf_model.path, plan, None, True, True, gguf_model.files, warnings)
            prov = _apply_in_place(gguf_model, plan, recipe_obj, text, recipe_path)
        return GGUFApplyResult(gguf_model.path, plan, prov, False, True, gguf_model.files, warnings)
    refuse_journaled(gguf_model)
    plan = plan_gguf(recipe_obj, gguf_model)
    parent = _refuse_reapply(gguf_model, text)
    target = _out_path(gguf_model, recipe_obj, out)
    _check_out(gguf_model, target, force)
    files = [target / p.path.name for p in gguf_model.parts] if gguf_model.is_split else [target]
    if dry_run:
        return GGUFApplyResult(target, plan, None, True, False, files, warnings)
    try:
        prov = _write_new(gguf_model, plan, recipe_obj, text, recipe_path, parent, target, progress)
    except OSError as exc:
        raise ApplyError(
            f"{exc.filename or target}: {exc.strerror or exc} while writing the output; nothing was changed "
            "(free some space, fix permissions, or choose another -o)"
        ) from exc
    return GGUFApplyResult(target, plan, prov, False, False, files, warnings)


def _write_new(
    model: GGUFModel,
    plan: GGUFPlan,
    recipe: Any,
    text: str,
    recipe_path: str | None,
    parent: dict | None,
    target: Path,
    progress: Progress | None,
) -> dict:
    doc = _provenance_doc(recipe, text, recipe_path, plan, parent)
    entries = [
        (f"{PREFIX}version", __version__),
        (f"{PREFIX}recipe", text),
        (f"{PREFIX}recipe.sha256", hashlib.sha256(text.encode("utf-8")).hexdigest()),
        (f"{PREFIX}source.sha256", _placeholder(len(model.parts))),
        (f"{PREFIX}provenance", json.dumps(doc, sort_keys=True)),
    ]
    parent_dir = target.parent
    parent_dir.mkdir(parents=True, exist_ok=True)
    tag = f".{temp_tag(target.name)}{TMP_MARK}{os.getpid()}-"
    if model.is_split:
        tmp_dir = Path(tempfile.mkdtemp(dir=parent_dir, prefix=tag))
        tmp_first = tmp_dir / model.parts[0].path.name
    else:
        fd, name = tempfile.mkstemp(dir=parent_dir, prefix=tag, suffix=".gguf")
        os.close(fd)
        os.unlink(name)
        tmp_dir, tmp_first = None, Path(name)
    try:
        # the sources' sha256 on threads while the kernel copies them (hashlib releases the GIL): one read each
        with ThreadPoolExecutor(max_workers=2) as pool:
            hashes = [pool.submit(sha256_file, p.real_path) for p in model.parts]
            sha_at = -1
            for i, header in enumerate(model.parts):
                dst = tmp_first if i == 0 else tmp_dir / header.path.name  # type: ignore[operator]
                if i == 0:
                    sha_at = _write_part(header, plan, 0, dst, entries, progress)
                elif i in plan.parts_with_edits:
                    _write_part(header, plan, i, dst, [], progress)
                else:
                    link_or_copy(header.real_path, dst)
            digests = [h.result() for h in hashes]
        fd = os.open(tmp_first, os.O_WRONLY)
        try:
            _pwrite_all(fd, " ".join(digests).encode("ascii"), sha_at)
            os.fsync(fd)
        finally:
            os.close(fd)
        if tmp_dir is not None:
            if os.path.lexists(target):
                shutil.rmtree(target)
            os.rename(tmp_dir, target)
        else:
            os.replace(tmp_first, target)
        fsync_dir(parent_dir)
    except BaseException:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            try:
                os.unlink(tmp_first)
            except FileNotFoundError:
                pass
        raise
    doc["source_sha256"] = digests
    doc["patchkit_version"] = __version__
    doc["recipe"]["sha256"] = entries[2][1]
    return doc


# --- in place -----------------------------------------------------------------------------------------------


def _first(model: GGUFModel) -> Path:
    """The file that names a model's in-place records: the first part of a split set, whichever part was given."""
    return model.parts[0].path


def sidecar_path(model: GGUFModel) -> Path:
    """`FILE.patchkit.json`: an in-place patch's provenance and undo data (named after part 1 of a split set)."""
    return _first(model).with_name(_first(model).name + SIDECAR_SUFFIX)


def journal_path(model: GGUFModel) -> Path:
    """`FILE.patchkit-journal.json`: present only while an in-place apply runs or after one was interrupted."""
    return _first(model).with_name(_first(model).name + JOURNAL_SUFFIX)


class _locked:
    """An exclusive flock on `<file>.patchkit.lock` for the whole in-place apply (one writer per file)."""

    def __init__(self, model: GGUFModel) -> None:
        self.path = _first(model).with_name(_first(model).name + LOCK_SUFFIX)
        self.fd = -1

    def __enter__(self) -> _locked:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ApplyError(
                f"another patchkit apply is editing {self.path.name[: -len(LOCK_SUFFIX)]} in place"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


def refuse_journaled(model: GGUFModel) -> None:
    if os.path.lexists(journal_path(model)):
        raise ApplyError(
            f"{model.path}: an in-place apply was interrupted ({journal_path(model).name} exists); its bytes are half "
            "written",
            hint="run `patchkit apply RECIPE --model FILE --in-place --undo` to roll it back first",
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _writable(model: GGUFModel) -> None:
    for header in model.parts:
        if header.path.is_symlink():
            raise ApplyError(
                f"{header.path} is a symlink (an HF-cache blob?); editing it in place would change the file it "
                "points to",
                hint="apply without --in-place to write a new file",
            )


def _apply_in_place(model: GGUFModel, plan: GGUFPlan, recipe: Any, text: str, recipe_path: str | None) -> dict:
    _writable(model)
    if os.path.lexists(sidecar_path(model)):
        raise ApplyError(
            f"{model.path} is already patched in place (see {sidecar_path(model).name})",
            hint="undo it first with --in-place --undo, or apply to the original file",
        )
    source_sha = [known_sha256(p.real_path) for p in model.parts]  # before the bytes change (stat-keyed cache)
    runs = [
        {"part": e.target.part, "offset": off, "before": _b64(old), "after": _b64(new)}
        for e in plan.edits
        for off, old, new in e.runs()
    ]
    journal = {
        "patchkit_version": __version__,
        "recipe_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "files": [p.path.name for p in model.parts],
        "sizes": [p.size for p in model.parts],
        "runs": runs,
    }
    atomic_write_json(journal_path(model), journal)
    fsync_dir(model.path.parent)
    _write_runs(model, runs, "after")
    doc = _provenance_doc(recipe, text, recipe_path, plan, None)
    doc.update(
        {
            "in_place": True,
            "patchkit_version": __version__,
            "source_sha256": source_sha,
            "recipe": {**doc["recipe"], "text": text, "sha256": journal["recipe_sha256"]},
            "undo": runs,
        }
    )
    atomic_write_json(sidecar_path(model), doc)
    os.unlink(journal_path(model))
    fsync_dir(model.path.parent)
    return doc


def _write_runs(model: GGUFModel, runs: list[dict], which: str) -> None:
    fds: dict[int, int] = {}
    try:
        for run in runs:
            part = int(run["part"])
            if part not in fds:
                fds[part] = os.open(model.parts[part].real_path, os.O_WRONLY)
            _pwrite_all(fds[part], base64.b64decode(run[which]), int(run["offset"]))
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)


def _check_runs(model: GGUFModel, runs: list[dict], *which: str) -> bool:
    """True when every run holds one of the `which` versions of its bytes (before / after)."""
    for run in runs:
        wants = [base64.b64decode(run[w]) for w in which]
        header = model.parts[int(run["part"])]
        with open(header.real_path, "rb", buffering=0) as fh:
            if os.pread(fh.fileno(), len(wants[0]), int(run["offset"])) not in wants:
                return False
    return True


def _load_runs(path: Path, model: GGUFModel, key: str) -> list[dict]:
    from patchkit._io.fs import read_json_file

    doc = read_json_file(path, what="patchkit in-place record", root=path.parent)
    runs = doc.get(key) if isinstance(doc, dict) else None
    ok = isinstance(runs, list) and all(
        isinstance(r, dict)
        and isinstance(r.get("part"), int)
        and 0 <= r["part"] < len(model.parts)
        and isinstance(r.get("offset"), int)
        and all(isinstance(r.get(k), str) for k in ("before", "after"))
        for r in runs
    )
    if not ok or runs is None:
        raise ApplyError(f"{path}: not a patchkit in-place record (damaged?)", hint="restore the GGUF from its source")
    for r in runs:
        size = len(base64.b64decode(r["before"]))
        if size != len(base64.b64decode(r["after"])) or not (
            model.parts[r["part"]].data_offset <= r["offset"] <= model.parts[r["part"]].size - size
        ):
            raise ApplyError(f"{path}: a recorded range lies outside the tensor data; refusing to write it")
    return runs


def recover_gguf(model: GGUFModel) -> str | None:
    """Roll back an in-place apply that was interrupted (its journal is still there); the message says so."""
    journal = journal_path(model)
    if not os.path.lexists(journal):
        return None
    runs = _load_runs(journal, model, "runs")
    _write_runs(model, runs, "before")
    if not _check_runs(model, runs, "before"):  # pragma: no cover - the disk refused the bytes
        raise ApplyError(
            f"{model.path}: rolling back the interrupted in-place apply failed; restore it from its source"
        )
    try:
        os.unlink(sidecar_path(model))  # written just before the journal is removed: it belongs to the rolled-back run
    except FileNotFoundError:
        pass
    os.unlink(journal)
    fsync_dir(model.path.parent)
    return f"{model.path}: an interrupted in-place apply was found and rolled back ({len(runs)} byte ranges restored)"


def undo_gguf_in_place(model_path: str | os.PathLike[str]) -> str:
    """Restore a GGUF patched in place (or roll back an interrupted in-place apply) from its sidecar or journal."""
    model = open_gguf_model(model_path)
    with _locked(model):
        message = recover_gguf(model)
        if message:
            return message
        sidecar = sidecar_path(model)
        if not os.path.lexists(sidecar):
            raise ApplyError(f"{model.path} carries no in-place patch ({sidecar.name} is missing); nothing to undo")
        runs = _load_runs(sidecar, model, "undo")
        # a run may already hold its old bytes: an undo killed half way is finished by the next one
        if not _check_runs(model, runs, "after", "before"):
            raise ApplyError(
                f"{model.path}: its bytes are not the ones the in-place apply wrote (changed since?); refusing to undo",
                hint="restore the GGUF from its source",
            )
        _write_runs(model, runs, "before")
        os.unlink(sidecar)
        fsync_dir(model.path.parent)
    return f"{model.path}: in-place patch undone ({len(runs)} byte ranges restored)"
