"""Resolve recipes and materialize references: the orchestration that may touch the Hub.

The byte engine (`patchkit.edit`) never downloads. This workflow does what needs the network first — fetching two
Hub revisions for a diff (only the shards whose LFS sha256 differ), resolving an unresolved recipe by trying its
`resolution.ways` in order (`resolve_recipe`, what `patchkit recipe resolve` runs) — and then calls the engine on
local directories. `apply` never resolves: resolving reaches the Hub and may pick an inferred reference, so it is
a step the user runs and reviews (`patchkit.recipe.resolution.unresolved_error` says so).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit._io.progress import Progress
from patchkit.edit.diff import DiffError, DiffReport, diff_checkpoints, resolve_dir
from patchkit.edit.extract import ExtractResult, ReferenceCheck, compare_with_reference, recipe_from_diff
from patchkit.errors import Fix, HubError, RecipeError

__all__ = [
    "ResolveReport",
    "WayOutcome",
    "diff_refs",
    "extract_recipe",
    "hub_offline",
    "resolve_recipe",
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
    via: int | None = None,
) -> ExtractResult:
    """A resolved recipe reproducing FIXED from BASE (DiffError if any change is not expressible as recipe ops).

    Args:
        base: the unfixed checkpoint: a directory, or a Hub ref `org/name[@revision]`.
        fixed: the published fixed checkpoint, same forms.
        template: an (unresolved) Recipe whose name, description, model, checks, publish and constraints are kept.
        name: the new recipe's name (default: the template's, else derived from FIXED).
        progress: called as `progress(stage, done, total)` while comparing tensors.
        via: the index of the template's `resolution.ways` entry FIXED is (recorded as `resolved_via`).

    Returns:
        ExtractResult with the recipe, its verbatim text, the slice checksums and what was downloaded.

    Raises:
        DiffError: a change no recipe op expresses (names the first one). HubError: the Hub could not be read.

    Example:
        >>> extract_recipe("google/gemma-4-26B-A4B-it", "some-org/gemma-4-26B-A4B-it-noloop").edits  # doctest: +SKIP
    """
    report = diff_refs(base, fixed, progress=progress)
    return recipe_from_diff(report, base, fixed, template=template, name=name, via=via)


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


@dataclass
class WayOutcome:
    """What `resolve_recipe` did with one way of `resolution.ways` (every way is listed, tried or not).

    `outcome`: `resolved` (its edits are the recipe's now), `missing` (no such repo or revision on the Hub),
    `unusable` (exists, but no safetensors weights or not readable with this token), `exists` (checked, not
    extracted: an earlier way won), `refused` (its diff is not expressible as recipe ops), `run-locate` (a
    locate way: needs the model and a GPU, so it is left to the user), `not-tried` (after the way that stopped)."""

    way: str
    method: str
    reference: str | None = None
    status: str | None = None  # published | inferred | None (the older single-way form)
    revision: str | None = None  # as the recipe asked
    outcome: str = "not-tried"
    exists: bool | None = None
    sha: str | None = None  # the commit the revision points at now (the pin)
    files: int | None = None
    extracted: bool = False
    warnings: list[str] = field(default_factory=list)
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "way": self.way,
            "method": self.method,
            "reference": self.reference,
            "status": self.status,
            "revision": self.revision,
            "outcome": self.outcome,
            "exists": self.exists,
            "sha": self.sha,
            "files": self.files,
            "extracted": self.extracted,
            "warnings": self.warnings,
            "detail": self.detail,
        }

    def line(self) -> str:
        """`ways[0] diff org/x (inferred): missing (404)`: one line of `recipe resolve`'s report."""
        what = (
            "locate --from-recipe"
            if self.method == "locate"
            else f"diff {self.reference} ({self.status or 'unmarked'})"
        )
        pin = f" @ {self.sha}" if self.sha else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.way} {what}{pin}: {self.outcome}{detail}"


@dataclass
class ResolveReport:
    """The result of `resolve_recipe`: every way with its outcome, the resolved recipe if one way worked, and the
    command to run next (verify + apply when resolved; locate, or what was refused, otherwise)."""

    recipe: str
    arg: str
    resolved: bool
    ways: list[WayOutcome]
    next: str
    via: str | None = None
    result: ExtractResult | None = None
    warnings: list[str] = field(default_factory=list)  # constraint departures, an inferred reference
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.resolved,
            "recipe": self.recipe,
            "resolved": self.resolved,
            "resolved_via": self.via,
            "ways": [w.to_json() for w in self.ways],
            "warnings": self.warnings,
            "next": self.next,
            "message": self.message,
            "edits": self.result.edits if self.result is not None else None,
            "text": self.result.text if self.result is not None else None,
        }


def _way_label(index: int, ways_listed: bool) -> str:
    return f"ways[{index}]" if ways_listed else "resolution"


def _check_reference(outcome: WayOutcome, repo: str, revision: str | None) -> None:
    """Existence and the commit `revision` points at now, from one `model_info` request (file names only: no
    weights are downloaded). A missing repo or revision is an outcome (the next way is tried); a Hub that cannot
    be reached, a rejected token or a server error is a HubError (one line), since no later way could do better."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from patchkit.model.hub_client import exception_chain, hub_api, map_hub_error, resolve_token

    api = hub_api(None, resolve_token(None))
    try:
        info = api.model_info(repo, revision=revision)
    except Exception as exc:  # noqa: BLE001 - mapped to an outcome or one HubError line below
        chain = list(exception_chain(exc))
        if any(isinstance(e, GatedRepoError) for e in chain):
            outcome.exists, outcome.outcome = True, "unusable"
            outcome.detail = "gated: this token cannot read it (accept its terms on the Hub, or set HF_TOKEN)"
            return
        if any(isinstance(e, RevisionNotFoundError) for e in chain):
            outcome.exists, outcome.outcome, outcome.detail = False, "missing", f"revision {revision!r} not found"
            return
        if any(isinstance(e, RepositoryNotFoundError) for e in chain):
            outcome.exists, outcome.outcome, outcome.detail = False, "missing", "no such repository on the Hub"
            return
        raise map_hub_error(exc, action="checking the reference", repo_id=repo, revision=revision) from exc
    names = [s.rfilename for s in (info.siblings or [])]
    outcome.exists, outcome.sha, outcome.files = True, str(info.sha), len(names)
    if not any(n.endswith(".safetensors") for n in names) or "config.json" not in names:
        outcome.outcome = "unusable"
        outcome.detail = "no config.json + safetensors weights to diff"
    else:
        outcome.outcome = "exists"


def _offline_error(recipe: Any, arg: str) -> HubError:
    from patchkit.model.hub_client import hub_cache_dir

    return HubError(
        f"{recipe.where('resolution')}: resolving recipe {recipe.name!r} needs the Hub (it checks each reference "
        f"there and pins its commit), but HF_HUB_OFFLINE is set: the local cache ({hub_cache_dir()}) cannot say "
        "whether a reference exists or where it points now",
        hint=f"unset HF_HUB_OFFLINE where the Hub is reachable and run `patchkit recipe resolve {arg}`",
        data={"offline": True, "cache": hub_cache_dir()},
    )


def resolve_recipe(
    recipe: Any, *, model: str | None = None, name: str | None = None, progress: Progress | None = None
) -> ResolveReport:
    """Resolve an unresolved recipe by trying its `resolution.ways` in order; the first that works wins.

    Every diff way's reference is checked on the Hub first (existence and the commit its revision points at, one
    request each, no weights); `extract` then runs on the first reference that exists, pinned to that commit, and
    the edits are compared with `resolution.constraints` (a departure is a warning: the reference is
    authoritative). A locate way cannot run here (it needs the model and a GPU): reaching it ends the attempt with
    the `patchkit locate ... --from-recipe` command to run. Nothing is written: the report carries the resolved
    recipe's text (comments of the recipe file kept) for the caller to write.

    Args:
        recipe: a Recipe, or a recipe path / shipped name.
        model: the base checkpoint to diff against (default: the recipe's model.repo@revision).
        name: how to name the recipe in commands to run next (default: its path).
        progress: `progress(stage, done, total)` while comparing tensors.

    Returns:
        ResolveReport: `resolved`, `via` (`ways[N]`), each way's outcome, warnings, the next command, the result.

    Raises:
        RecipeError: the recipe is already resolved, or has no way patchkit can run (a paper citation only).
        HubError: offline (HF_HUB_OFFLINE) or the Hub cannot be reached / answers with an error (one line).

    Example:
        >>> report = resolve_recipe("recipes/26b-a4b.yaml")  # doctest: +SKIP
        >>> report.via, [w.outcome for w in report.ways]  # doctest: +SKIP
        ('ways[0]', ['resolved'])
    """
    from patchkit.recipe import load_recipe

    rec = recipe if not isinstance(recipe, (str, Path)) else load_recipe(recipe)
    arg = name or rec.path or "RECIPE"
    res = rec.resolution
    if rec.is_resolved or res is None:
        raise RecipeError(
            f"{rec.where('resolution') if res is not None else arg}: recipe {rec.name!r} is already resolved "
            "(it has its edits)",
            hint=f"re-check a diff-resolved recipe against its reference with `patchkit verify {arg}`",
        )
    ways = res.effective_ways()
    listed = res.ways is not None
    if not ways:
        raise RecipeError(
            f"{rec.where('resolution')}: recipe {rec.name!r} lists no way patchkit can run (method "
            f"{res.method or 'none'})",
            hint="add `ways: [{method: diff, reference: org/name, status: published}, {method: locate}]`, or fill in "
            "`edits:` by hand",
        )
    outcomes = [
        WayOutcome(_way_label(i, listed), w.method, w.reference, w.status, w.revision) for i, w in enumerate(ways)
    ]
    first_locate = next((i for i, w in enumerate(ways) if w.method == "locate"), len(ways))
    diff_ways = [i for i in range(first_locate) if ways[i].method == "diff"]
    if diff_ways and hub_offline():
        raise _offline_error(rec, arg)
    base = _base_ref(rec, model)
    locate_cmd = f"patchkit locate {base} --from-recipe {arg}"
    for i in diff_ways:  # existence + pin for every reference before the first locate way: cheap, no weights
        _check_reference(outcomes[i], str(ways[i].reference), ways[i].revision)
    chosen = next((i for i in diff_ways if outcomes[i].outcome == "exists"), None)
    for i in diff_ways:
        if chosen is not None and i > chosen and outcomes[i].outcome == "exists":
            outcomes[i].detail = f"not extracted: {outcomes[chosen].way} came first"
    if chosen is None:
        if first_locate < len(ways):
            outcomes[first_locate].outcome = "run-locate"
            outcomes[first_locate].detail = "needs the model and a GPU: run it yourself"
            nxt = f"`{locate_cmd}` on a machine with the model and a GPU"
        else:
            nxt = f"check the references, or add {{method: locate}} to resolution.ways and run `{locate_cmd}`"
        tried = "; ".join(o.line() for o in outcomes[: first_locate + 1] if o.outcome != "not-tried")
        return ResolveReport(
            recipe=rec.name,
            arg=arg,
            resolved=False,
            ways=outcomes,
            next=nxt,
            message=f"{rec.name}: no reference could be used ({tried}); next: {nxt}",
        )
    out = outcomes[chosen]
    fixed = f"{ways[chosen].reference}@{out.sha}"
    try:
        result = extract_recipe(base, fixed, template=rec, progress=progress, via=chosen)
    except DiffError as exc:
        out.outcome, out.detail = "refused", exc.message
        nxt = f"check {ways[chosen].reference}, or run `{locate_cmd}` on a machine with the model and a GPU"
        return ResolveReport(
            recipe=rec.name,
            arg=arg,
            resolved=False,
            ways=outcomes,
            next=nxt,
            message=f"{rec.name}: {out.way} {ways[chosen].reference} was refused: {exc.message}; next: {nxt}",
        )
    out.outcome, out.extracted = "resolved", True
    out.warnings = [f"{note} (the reference is authoritative)" for note in result.notes]
    warnings = list(out.warnings) + list(result.warnings)
    if ways[chosen].status == "inferred":
        warnings.insert(
            0,
            f"{ways[chosen].reference} is an inferred reference (its name follows the published pattern; no cited "
            "source names it): review the edits before publishing them",
        )
    elif ways[chosen].status is None:
        warnings.insert(0, f"{ways[chosen].reference} is not marked published or inferred in the recipe")
    units = len(result.recipe.expanded_edits())
    return ResolveReport(
        recipe=rec.name,
        arg=arg,
        resolved=True,
        ways=outcomes,
        next="`patchkit verify RESOLVED` (re-extracts and compares), then `patchkit apply RESOLVED`",
        via=out.way,
        result=result,
        warnings=warnings,
        message=f"{rec.name}: resolved via {out.way} {ways[chosen].describe()} @ {out.sha}: {units} edited unit(s) "
        f"in {len(result.edits)} edit(s)",
    )


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
