"""Apply a recipe: a new checkpoint directory where only the edited slices differ, with provenance.

How the bytes move (memory stays at a few 8 MiB chunks whatever the checkpoint size; torch is never used):
- a shard holding edited tensors is streamed once into a temp file: plain stretches are copied, the
  edited tensors' chunks are patched on the way (`edits.edit_chunk`), and sha256 of source and output
  (and of every edited slice before/after) are computed on the same pass in background threads;
- an untouched file is reflinked where the filesystem can (copy on write), else copied; hard links to the
  source only with `link=True` (then made read-only: one inode, so a write into the output would reach the source);
- every entry of the source is checked first (`_io.fs.check_entry`): links out of the model directory (other
  than an HF-cache snapshot's blobs/), FIFOs and devices are refused by name before anything is written.
The output is assembled in a hidden temp sibling directory (short bounded name) and renamed into place at the
end, so an interrupted apply leaves either no output or a complete one; the source is only ever read. `force`
replaces only an empty directory or an earlier apply output (its `patchkit.json` lists every file in it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK, atomic_write_json, replace_dir, temp_tag
from patchkit._io.fs import check_entry
from patchkit._io.hashing import known_sha256, remember_sha256, sha256_file
from patchkit._io.progress import Progress
from patchkit.edit.in_place import Recovery, _apply_in_place, _check_in_place, guard_source, recover_in_place
from patchkit.edit.output import (
    IN_PLACE_JOURNAL,
    LOCK_FILE,
    UNDO_RECIPE,
    ApplyContext,
    ApplyResult,
    _pid_alive,
    _provenance,
    _source_files,
)
from patchkit.edit.plan import Plan, PlannedEdit
from patchkit.edit.provenance import PROVENANCE_FILE, read_provenance
from patchkit.edit.stream import PatchStream, link_or_copy, write_patched
from patchkit.errors import ApplyError, Fix

__all__ = [
    "ApplyResult",
    "IN_PLACE_JOURNAL",
    "LOCK_FILE",
    "UNDO_RECIPE",
    "PatchStream",
    "Recovery",
    "apply_recipe",
    "read_recipe",
    "recover_in_place",
]

#: outputs at least this large get their digest recorded in the hash cache (push reuses it)
_REMEMBER_MIN = 1 << 20


def _edit_key(e: dict | PlannedEdit) -> tuple:
    get = e.get if isinstance(e, dict) else lambda k: getattr(e, k)
    factor = get("factor")
    return (
        get("layer"),
        get("kind"),
        get("index"),
        get("op"),
        None if factor is None else float(factor),
        get("tensor"),
    )


def _refuse_reapply(source_dir: Path, recipe_name: str, plan: Plan) -> dict | None:
    prov = read_provenance(source_dir)
    if prov is None:
        return None
    prev_name = (prov.get("recipe") or {}).get("normalized", {}).get("name")
    prev = [_edit_key(e) for e in prov.get("edits", []) if isinstance(e, dict)]
    if prev and prev == [_edit_key(e) for e in plan.edits] and prev_name == recipe_name:
        raise ApplyError(
            f"{source_dir} was produced by this recipe ({recipe_name}) already (see its {PROVENANCE_FILE}); "
            "applying it again would stack the edits — use the original base model as --model"
        )
    return prov


def _temp_prefix(name: str) -> str:
    """Prefix of the temp (and trash) dirs of output `name`: bounded, so any legal name works (255 bytes on ext4)."""
    return f".{temp_tag(name)}{TMP_MARK}"


def _clean_stale_temps(parent: Path, name: str) -> None:
    """Remove temp/trash dirs left by an apply to `name` that was killed (their pid no longer runs)."""
    prefixes = [_temp_prefix(name), f".{name}{TMP_MARK}"]  # the second: names of earlier patchkit versions
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None or entry.is_symlink() or not entry.is_dir():
            continue
        rest = entry.name[len(prefix) :]
        pid = rest.removeprefix("old-").split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace `out` unless it is an empty directory or an earlier apply output that holds nothing else.

    An apply output is recognised by its `patchkit.json` (written last by apply) listing every file in it; a
    model patched in place (its provenance says so) is a user's model, never replaced.
    """
    hint = "remove it yourself, or choose another output directory"
    data = {"out": str(out)}
    st = os.lstat(out)
    if stat.S_ISLNK(st.st_mode):
        raise ApplyError(f"output {out} is a symlink; refusing to replace it", hint=hint, data=data)
    if not stat.S_ISDIR(st.st_mode):
        raise ApplyError(f"output {out} exists and is not a directory; refusing to replace it", hint=hint, data=data)
    if not os.listdir(out):
        return
    prov_path = out / PROVENANCE_FILE
    prov = read_provenance(out) if prov_path.is_file() and not prov_path.is_symlink() else None
    if prov is None or not isinstance(prov.get("output_files"), dict) or "patchkit_version" not in prov:
        raise ApplyError(
            f"output {out} is not empty and not a patchkit apply output (no {PROVENANCE_FILE}); refusing to replace it",
            hint=hint,
            data=data,
        )
    if prov.get("in_place"):
        raise ApplyError(
            f"output {out} is a model patched in place (see its {PROVENANCE_FILE}), not an apply "
            "output; refusing to replace it",
            hint=hint,
            data=data,
        )
    allowed = set(prov["output_files"]) | {PROVENANCE_FILE, UNDO_RECIPE}
    for root, dirs, files in os.walk(out):
        for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            rel = os.path.relpath(os.path.join(root, name), out)
            if rel not in allowed and TMP_MARK not in name:
                raise ApplyError(
                    f"output {out} holds {rel}, which patchkit did not write (not in its "
                    f"{PROVENANCE_FILE}); refusing to replace it",
                    hint="move that file out, remove the directory yourself, or choose another output directory",
                    data={**data, "file": rel},
                )


def read_recipe(recipe: Any) -> tuple[Any, str, str | None]:
    """(Recipe, verbatim text, path or None) of a Recipe or a recipe path."""
    from patchkit import recipe as recipe_mod

    if isinstance(recipe, (str, Path)):
        loaded = recipe_mod.load_recipe(recipe)  # read once: provenance records exactly the text that was parsed
        return loaded, loaded.source_text or recipe_mod.recipe_to_yaml(loaded), str(recipe)
    text = getattr(recipe, "source_text", None) or recipe_mod.recipe_to_yaml(recipe)
    return recipe, text, getattr(recipe, "path", None)


def _pin_warnings(recipe: Any, ref: Any) -> list[str]:
    """ModelError when the recipe pins another revision than the model's; a warning when it pins none."""
    from patchkit.model.refs import check_revision_pin

    warning = check_revision_pin(getattr(recipe, "model", None), ref)
    return [warning] if warning else []


def _resolve(recipe: Any, model: str | None):
    from patchkit.model.refs import ensure_local, resolve_model

    if model is None:
        spec = getattr(recipe, "model", None)
        repo = getattr(spec, "repo", None)
        if not repo:
            raise ApplyError("the recipe names no model.repo", fix=Fix("model", "REF", "(the base checkpoint)"))
        ref = resolve_model(repo, revision=getattr(spec, "revision", None))
    else:
        ref = resolve_model(model)
    return ref, Path(ensure_local(ref))  # a local dir as it is; a Hub ref: its complete snapshot in the HF cache


def apply_recipe(
    recipe: Any,
    *,
    model: str | None = None,
    out: Path | None = None,
    dry_run: bool = False,
    in_place: bool = False,
    force: bool = False,
    link: bool = False,
    progress: Progress | None = None,
) -> ApplyResult:
    """Write a patched copy of a checkpoint in which only the recipe's slices differ, plus `patchkit.json`.

    The source is never modified (except with `in_place`, for invert-only recipes, which also writes an undo
    recipe; and to finish or undo an interrupted in-place apply found in it, which the result's warnings name).
    Edits are exact in the checkpoint's own dtype; files without edits are reflinked or copied (hard-linked with
    `link`); the output directory appears atomically, complete or not at all.

    Args:
        recipe: a Recipe or a recipe path (its exact bytes are recorded in provenance).
        model: the base checkpoint: a local dir or a Hub ref (default: the recipe's `model.repo@revision`).
        out: output directory (default: `./<recipe name>`).
        dry_run: plan only; write nothing.
        in_place: patch a plain local directory itself (locked meanwhile; restartable after a crash).
        force: replace an existing output directory — only an empty one or an earlier apply output.
        link: hard-link untouched shards (16 MB and more) to the source where no reflink is possible, instead of
            copying them; the linked files (and so the source's) are made read-only.
        progress: `progress(stage, done_bytes, total_bytes)` per written shard.

    Returns:
        ApplyResult: the output dir, the plan (tensors, byte ranges) and the provenance written.

    Raises:
        RecipeError: the recipe is invalid or unresolved (the message says what to run to resolve it).
        ApplyError: output problems (exists without `force`, not replaceable, overlaps the source, disk errors),
            another apply running on the directory (in place).
        ModelError: the base model cannot be found or does not fit the recipe; UnsafeFileError (a ModelError):
            a link out of the model directory or a special file in it.

    Example:
        >>> apply_recipe("recipes/e2b.yaml", model="./gemma-4-E2B-it", out="./e2b-fixed")  # doctest: +SKIP
    """
    from patchkit.edit.plan import plan_recipe

    recipe_obj, text, recipe_path = read_recipe(recipe)
    recipe_obj.require_resolved()  # an unresolved recipe: one line saying what to run (workflows.resolve resolves)
    ref, source_dir = _resolve(recipe_obj, model)
    if in_place and out is not None:
        raise ApplyError("patching in place and writing an output directory exclude each other; pick one")
    with guard_source(source_dir, in_place=in_place, dry_run=dry_run) as recovery:
        warnings = ([recovery.message] if recovery else []) + _pin_warnings(recipe_obj, ref)
        files = _source_files(source_dir)  # refuses links out of the model dir and special files, before any write
        plan = plan_recipe(recipe_obj, ref, source_dir=source_dir)
        if (
            in_place
            and recovery is not None
            and recovery.completed
            and recovery.recipe_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
        ):
            # the rerun of an in-place apply that was interrupted after its commit point: it is done now
            return ApplyResult(
                out_dir=source_dir,
                plan=plan,
                provenance=read_provenance(source_dir),
                in_place=True,
                undo_recipe=source_dir / UNDO_RECIPE,
                warnings=warnings,
            )
        parent = _refuse_reapply(source_dir, recipe_obj.name, plan)
        if in_place:
            _check_in_place(source_dir, plan)
        elif out is None:
            out = Path.cwd() / recipe_obj.name
        if out is not None:
            out = Path(os.path.abspath(out))
            real_out, real_src = os.path.realpath(out), os.path.realpath(source_dir)
            if real_out == real_src or real_out.startswith(real_src + os.sep) or real_src.startswith(real_out + os.sep):
                raise ApplyError(
                    f"output {out} overlaps the source model {source_dir}",
                    hint="choose another output directory, or patch in place",
                    data={"out": str(out), "source": str(source_dir)},
                )
            if os.path.lexists(out):
                if not force:
                    raise ApplyError(
                        f"output directory {out} already exists",
                        hint="or choose another output directory",
                        fix=Fix("force", why="to replace it"),
                        data={"out": str(out)},
                    )
                _check_replaceable(out)
        if dry_run:
            return ApplyResult(
                out_dir=out if not in_place else source_dir,
                plan=plan,
                provenance=None,
                dry_run=True,
                in_place=in_place,
                warnings=warnings,
            )

        ctx = ApplyContext(recipe_obj, text, recipe_path, ref, plan, parent)
        if in_place:
            result = _apply_in_place(ctx, source_dir, files, progress)  # turns its own OSErrors into ApplyErrors
        else:
            assert out is not None
            try:
                result = _apply_to_new_dir(ctx, source_dir, files, out, force, link, progress)
            except OSError as exc:
                raise ApplyError(
                    f"{exc.filename or out}: {exc.strerror or exc} while writing the output; nothing was changed "
                    "(free some space, fix permissions, or choose another -o)"
                ) from exc
        result.warnings = warnings
        return result


def _apply_to_new_dir(
    ctx: ApplyContext, source_dir: Path, files: list[str], out: Path, force: bool, link: bool, progress: Progress | None
) -> ApplyResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_temp_prefix(out.name)}{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o755)
        rewritten = ctx.plan.files_to_rewrite
        source_sha: dict[str, dict] = {}
        output_sha: dict[str, dict] = {}
        slice_hashes: dict[int, tuple[str, str]] = {}
        placed: dict[str, str] = {}
        # untouched files first: reflinked / copied at once, their digests computed in the background meanwhile
        with ThreadPoolExecutor(max_workers=2) as pool:
            digests: dict[str, str | Future[str]] = {}
            for rel in files:
                if rel in rewritten:
                    continue
                src = check_entry(source_dir / rel, source_dir)  # again, right before reading it
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                known = known_sha256(src)
                placed[rel] = link_or_copy(src, tmp / rel, link=link)
                if known and placed[rel] == "hardlink":
                    remember_sha256(src, known)  # a new link changes the inode's ctime, hence its cache key
                digests[rel] = known or pool.submit(sha256_file, src)
            for rel in files:
                if rel not in rewritten:
                    continue
                src = check_entry(source_dir / rel, source_dir)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                known = known_sha256(src)
                res = write_patched(src, tmp / rel, rewritten[rel], progress=progress, hash_source=known is None)
                source_sha[rel] = {"sha256": known or res.source_sha256, "size": res.size}
                if not known:
                    remember_sha256(src, res.source_sha256)
                output_sha[rel] = {"sha256": res.output_sha256, "size": res.size, "rewritten": True}
                for e, h in zip(rewritten[rel], res.slice_hashes, strict=True):
                    slice_hashes[id(e)] = h
            for rel, pending in digests.items():
                digest = pending if isinstance(pending, str) else pending.result()
                size = (tmp / rel).stat().st_size
                if rel in ctx.plan.weight_files:
                    source_sha[rel] = {"sha256": digest, "size": size}
                output_sha[rel] = {"sha256": digest, "size": size, "rewritten": False}
        source_sha = dict(sorted(source_sha.items()))
        output_sha = dict(sorted(output_sha.items()))
        prov = _provenance(ctx, source_sha, output_sha, slice_hashes)
        atomic_write_json(tmp / PROVENANCE_FILE, prov)
        for rel, meta in output_sha.items():  # so that push right after apply does not re-read the shards
            if meta["size"] >= _REMEMBER_MIN and placed.get(rel) != "hardlink":
                remember_sha256(tmp / rel, meta["sha256"])
        _publish_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ApplyResult(out_dir=out, plan=ctx.plan, provenance=prov)


def _publish_dir(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temp dir into place (replacing an existing `out` only with force, and only when it is
    empty or an earlier apply output: `_check_replaceable`)."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not force:
        raise ApplyError(
            f"output directory {out} already exists",
            hint="or choose another output directory",
            fix=Fix("force", why="to replace it"),
            data={"out": str(out)},
        )
    _check_replaceable(out)
    replace_dir(tmp, out)
