"""Resolve recipes and materialize references: the orchestration that may touch the Hub.

The byte engine (`patchkit.edit`) never downloads. This workflow does what needs the network first — fetching two
Hub revisions for a diff (only the shards whose LFS sha256 differ), resolving an unresolved diff recipe from its
published reference — and then calls the engine on local directories.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from patchkit._io.progress import Progress
from patchkit.edit.apply import ApplyResult, apply_recipe
from patchkit.edit.diff import DiffReport, diff_checkpoints, resolve_dir
from patchkit.edit.extract import ExtractResult, ReferenceCheck, compare_with_reference, recipe_from_diff
from patchkit.errors import Fix, PatchkitError, RecipeError

__all__ = [
    "diff_refs",
    "extract_recipe",
    "hub_offline",
    "resolve_then_apply",
    "resolve_unresolved",
    "verify_against_reference",
]


def _is_hub_ref(ref: str | os.PathLike[str]) -> bool:
    text = str(ref)
    return not Path(text).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", text) is not None


def diff_refs(a: str | os.PathLike[str], b: str | os.PathLike[str], *, progress: Progress | None = None) -> DiffReport:
    """Compare checkpoint A with checkpoint B (B is the patched one): directories, HF-cache snapshots or Hub refs.

    Between two Hub revisions, shards whose LFS sha256 match are not even downloaded; the report lists them as
    identical files.

    Args:
        a: the base checkpoint (directory, HF-cache snapshot, or `org/name[@revision]`).
        b: the patched checkpoint, same forms.
        progress: `progress(stage, done_bytes, total_bytes)`.

    Returns:
        DiffReport: changed tensors with each changed slice classified (inverted / zeroed / scaled by c).

    Raises:
        ModelError / HubError: a checkpoint cannot be found or downloaded.

    Example:
        >>> report = diff_refs("./gemma-4-E2B-it", "./e2b-fixed")  # doctest: +SKIP
        >>> [(c.tensor, len(c.slices)) for c in report.changed]  # doctest: +SKIP
    """
    if _is_hub_ref(a) and _is_hub_ref(b):
        from patchkit.model.hub_client import fetch_differing_shards

        dir_a, dir_b, identical = fetch_differing_shards(str(a), str(b))
        return diff_checkpoints(dir_a, dir_b, skip=frozenset(identical), progress=progress)
    return diff_checkpoints(resolve_dir(a), resolve_dir(b), progress=progress)


def extract_recipe(
    base: str | os.PathLike[str],
    fixed: str | os.PathLike[str],
    *,
    template: Any = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> ExtractResult:
    """A resolved recipe reproducing FIXED from BASE (DiffError if any change is not expressible as recipe ops).

    Args:
        base: the unfixed checkpoint: a directory, or a Hub ref `org/name[@revision]`.
        fixed: the published fixed checkpoint, same forms.
        template: an (unresolved) Recipe whose name, description, model, checks, publish and constraints are kept.
        name: the new recipe's name (default: the template's, else derived from FIXED).
        progress: called as `progress(stage, done, total)` while comparing tensors.

    Returns:
        ExtractResult with the recipe, its verbatim text, the slice checksums and what was downloaded.

    Raises:
        DiffError: a change no recipe op expresses (names the first one). HubError: the Hub could not be read.

    Example:
        >>> extract_recipe("google/gemma-4-26B-A4B-it", "some-org/gemma-4-26B-A4B-it-noloop").edits  # doctest: +SKIP
    """
    report = diff_refs(base, fixed, progress=progress)
    return recipe_from_diff(report, base, fixed, template=template, name=name)


def resolve_then_apply(recipe: Any, *, model: str | None = None, **apply_kwargs: Any) -> ApplyResult:
    """`apply_recipe`, resolving an unresolved diff recipe from its reference first (the Hub is needed then).

    The resolved recipe is what gets applied and recorded in provenance; the result's warnings say it was resolved.
    """
    from patchkit.edit.apply import read_recipe

    recipe_obj, text, recipe_path = read_recipe(recipe)
    if recipe_obj.is_resolved:
        return apply_recipe(recipe_obj, model=model, **apply_kwargs)
    resolved = resolve_unresolved(recipe_obj, model=model)
    result = apply_recipe(resolved.recipe, model=model, **apply_kwargs)
    result.warnings.append(
        f"resolved {recipe_path or recipe_obj.name} from {resolved.reference} (patchkit recipe extract)"
    )
    return result


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE), read the way the client reads it."""
    import huggingface_hub.constants as constants

    return bool(constants.HF_HUB_OFFLINE)


def _base_ref(recipe: Any, model: str | None) -> str:
    if model:
        return str(model)
    spec = recipe.model
    if not spec.repo:
        raise RecipeError(
            f"{recipe.where('model')}: model.repo is missing; cannot tell which base to diff against",
            hint="add model.repo",
            fix=Fix("model", "REF"),
        )
    return f"{spec.repo}@{spec.revision}" if spec.revision else spec.repo


def resolve_unresolved(recipe: Any, *, model: str | None = None, progress: Progress | None = None) -> ExtractResult:
    """Resolve an unresolved diff recipe from its reference (needs the Hub), else RecipeError saying what to run."""
    from patchkit.recipe.resolution import how_to_resolve

    res = recipe.resolution
    where = recipe.where("resolution")
    head = f"{where}: recipe {recipe.name!r} is unresolved (it carries no edits yet)"
    if res is None or res.method != "diff" or not res.reference:
        raise RecipeError(f"{head}: {how_to_resolve(recipe)}")
    if hub_offline():
        raise RecipeError(
            f"{head} and resolving it from {res.reference} needs the Hub (HF_HUB_OFFLINE is set): "
            f"{how_to_resolve(recipe)}"
        )
    try:
        return extract_recipe(_base_ref(recipe, model), res.reference, template=recipe, progress=progress)
    except RecipeError:
        raise
    except PatchkitError as exc:
        raise RecipeError(
            f"{head}; resolving it from {res.reference} failed ({exc}); {how_to_resolve(recipe)}"
        ) from None


def verify_against_reference(
    recipe: Any, *, model: str | None = None, progress: Progress | None = None
) -> ReferenceCheck:
    """Re-extract a diff-resolved recipe from its base and reference and compare edits and slice checksums.

    Raises:
        RecipeError: the recipe is not resolved by diff (it has no reference to re-check; exit 2, bad input).
    A difference is not raised: it is the returned ReferenceCheck's `ok=False` (the CLI exits 1 on it).
    """
    from patchkit.recipe import load_recipe

    rec = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    res = rec.resolution
    reference = (res.reference if res is not None and res.method == "diff" else None) or (
        rec.source.reference if rec.source.kind == "diff" else None
    )
    if not reference or (res is not None and res.status == "unresolved"):
        # bad input (exit 2), not a failed check (1): nothing was compared, so nothing can have differed
        raise RecipeError(
            f"{rec.where('resolution') if res is not None else rec.path or rec.name}: not a recipe resolved by diff "
            "(no reference to re-check it against)",
            fix=Fix("patched", "DIR", "to verify a patched checkpoint instead"),
        )
    base = model or (rec.source.model_extra or {}).get("base") or _base_ref(rec, None)
    fresh = extract_recipe(base, reference, progress=progress)
    return compare_with_reference(rec, fresh)
