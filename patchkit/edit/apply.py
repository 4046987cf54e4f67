"""Apply a recipe: a new checkpoint directory where only the edited slices differ, with provenance.

How the bytes move (memory stays at a few 8 MiB chunks whatever the checkpoint size; torch is never used):
- a shard holding edited tensors is streamed once into a temp file: plain stretches are copied, the
  edited tensors' chunks are patched on the way (`edits.edit_chunk`), and sha256 of source and output
  (and of every edited slice before/after) are computed on the same pass in background threads;
- an untouched shard is reflinked, else hard-linked, else copied (never written to afterwards: every
  later write goes to a new temp file that is renamed over, so a link can never carry an edit back);
- every other file (config, tokenizer, chat template, index) is copied; HF-cache symlinks are resolved.
The output is assembled in a hidden temp sibling directory and renamed into place at the end, so an
interrupted apply leaves either no output or a complete one; the source is only ever read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK, atomic_write_json
from patchkit._io.progress import Progress
from patchkit.edit.plan import Plan, PlannedEdit
from patchkit.edit.provenance import (
    PROVENANCE_FILE,
    known_sha256,
    read_provenance,
    remember_sha256,
    sha256_file,
)
from patchkit.errors import ApplyError, Fix
from patchkit.edit.in_place import _apply_in_place, _check_in_place, _refuse_interrupted_in_place
from patchkit.edit.output import (
    IN_PLACE_JOURNAL,
    UNDO_RECIPE,
    ApplyContext,
    ApplyResult,
    _pid_alive,
    _provenance,
    _source_files,
)
from patchkit.edit.stream import PatchStream, link_or_copy, write_patched

__all__ = ["ApplyResult", "IN_PLACE_JOURNAL", "UNDO_RECIPE", "PatchStream", "apply_recipe", "read_recipe"]


def _edit_key(e: dict | PlannedEdit) -> tuple:
    get = e.get if isinstance(e, dict) else lambda k: getattr(e, k)
    return (get("layer"), get("kind"), get("index"), get("op"), float(get("factor")), get("tensor"))


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


def _clean_stale_temps(parent: Path, name: str) -> None:
    """Remove temp dirs left by an apply that was killed (their pid no longer runs)."""
    prefix = f".{name}{TMP_MARK}"
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


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
    progress: Progress | None = None,
) -> ApplyResult:
    """Write a patched copy of a checkpoint in which only the recipe's slices differ, plus `patchkit.json`.

    The source is never modified (except with `in_place`, for invert-only recipes, which also writes an undo
    recipe). Edits are exact in the checkpoint's own dtype; shards without edits are hard-linked or copied; the
    output directory appears atomically, complete or not at all.

    Args:
        recipe: a Recipe or a recipe path (its exact bytes are recorded in provenance).
        model: the base checkpoint: a local dir or a Hub ref (default: the recipe's `model.repo@revision`).
        out: output directory (default: `./<recipe name>`).
        dry_run: plan only; write nothing.
        in_place: patch a plain local directory itself.
        force: replace an existing output directory.
        progress: `progress(stage, done_bytes, total_bytes)` per written shard.

    Returns:
        ApplyResult: the output dir, the plan (tensors, byte ranges) and the provenance written.

    Raises:
        RecipeError: the recipe is invalid or unresolved (the message says what to run to resolve it).
        ApplyError: output problems (exists without `force`, overlaps the source, disk errors).
        ModelError: the base model cannot be found or does not fit the recipe.

    Example:
        >>> apply_recipe("recipes/e2b.yaml", model="./gemma-4-E2B-it", out="./e2b-fixed")  # doctest: +SKIP
    """
    from patchkit.edit.plan import plan_recipe

    recipe_obj, text, recipe_path = read_recipe(recipe)
    recipe_obj.require_resolved()  # an unresolved recipe: one line saying what to run (workflows.resolve resolves)
    ref, source_dir = _resolve(recipe_obj, model)
    _refuse_interrupted_in_place(source_dir)
    warnings = _pin_warnings(recipe_obj, ref)
    plan = plan_recipe(recipe_obj, ref, source_dir=source_dir)
    parent = _refuse_reapply(source_dir, recipe_obj.name, plan)
    if in_place and out is not None:
        raise ApplyError("patching in place and writing an output directory exclude each other; pick one")
    if in_place:
        _check_in_place(source_dir, plan)
    elif out is None:
        out = Path.cwd() / recipe_obj.name
    if out is not None:
        out = Path(os.path.abspath(out))
        real_out, real_src = os.path.realpath(out), os.path.realpath(source_dir)
        if real_out == real_src or real_out.startswith(real_src + os.sep) or real_src.startswith(real_out + os.sep):
            raise ApplyError(f"output {out} overlaps the source model {source_dir}", hint="choose another output directory, or patch in place",
                             data={"out": str(out), "source": str(source_dir)})
        if os.path.lexists(out) and not force:
            raise ApplyError(f"output directory {out} already exists", hint="or choose another output directory",
                             fix=Fix("force", why="to replace it"), data={"out": str(out)})
    if dry_run:
        return ApplyResult(out_dir=out if not in_place else source_dir, plan=plan, provenance=None, dry_run=True,
                           in_place=in_place, warnings=warnings)

    ctx = ApplyContext(recipe_obj, text, recipe_path, ref, plan, parent)
    try:
        result = _apply_in_place(ctx, source_dir, progress) if in_place else _apply_to_new_dir(ctx, source_dir, out, force, progress)
        result.warnings = warnings
        return result
    except OSError as exc:
        where = exc.filename or (source_dir if in_place else out)
        if in_place and (source_dir / IN_PLACE_JOURNAL).exists():
            raise ApplyError(
                f"{where}: {exc.strerror or exc} while replacing shards in place; some may be replaced already "
                f"(see {source_dir / IN_PLACE_JOURNAL})"
            ) from exc
        raise ApplyError(
            f"{where}: {exc.strerror or exc} while writing the output; nothing was changed "
            "(free some space, fix permissions, or choose another -o)"
        ) from exc


def _apply_to_new_dir(ctx: ApplyContext, source_dir: Path, out: Path, force: bool, progress: Progress | None) -> ApplyResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TMP_MARK}{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o755)
        rewritten = ctx.plan.files_to_rewrite
        source_sha: dict[str, dict] = {}
        output_sha: dict[str, dict] = {}
        slice_hashes: dict[int, tuple[str, str]] = {}
        files = _source_files(source_dir)
        # untouched files first: linked at once, their digests computed in the background meanwhile
        with ThreadPoolExecutor(max_workers=2) as pool:
            digests = {}
            for rel in files:
                if rel in rewritten:
                    continue
                src = Path(os.path.realpath(source_dir / rel))
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(src, tmp / rel)
                digests[rel] = pool.submit(sha256_file, src)
            for rel in files:
                if rel not in rewritten:
                    continue
                src = Path(os.path.realpath(source_dir / rel))
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                known = known_sha256(src)
                res = write_patched(src, tmp / rel, rewritten[rel], progress=progress, hash_source=known is None)
                source_sha[rel] = {"sha256": known or res.source_sha256, "size": res.size}
                if not known:
                    remember_sha256(src, res.source_sha256)
                output_sha[rel] = {"sha256": res.output_sha256, "size": res.size, "rewritten": True}
                for e, h in zip(rewritten[rel], res.slice_hashes):
                    slice_hashes[id(e)] = h
            for rel, future in digests.items():
                digest, size = future.result(), (tmp / rel).stat().st_size
                if rel in ctx.plan.weight_files:
                    source_sha[rel] = {"sha256": digest, "size": size}
                output_sha[rel] = {"sha256": digest, "size": size, "rewritten": False}
        source_sha = dict(sorted(source_sha.items()))
        output_sha = dict(sorted(output_sha.items()))
        prov = _provenance(ctx, source_sha, output_sha, slice_hashes)
        atomic_write_json(tmp / PROVENANCE_FILE, prov)
        for rel, meta in output_sha.items():
            if meta["rewritten"]:
                remember_sha256(tmp / rel, meta["sha256"])
        _publish_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ApplyResult(out_dir=out, plan=ctx.plan, provenance=prov)


def _publish_dir(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temp dir into place (replacing an existing `out` only with --force)."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not force:
        raise ApplyError(f"output directory {out} already exists", hint="or choose another output directory",
                             fix=Fix("force", why="to replace it"), data={"out": str(out)})
    trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.patchkit-old-"))
    os.rename(out, trash / "old")
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)
