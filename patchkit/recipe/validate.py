"""Validate a recipe against a model (or an offline size profile) without reading any weights."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit.errors import Fix, ModelError
from patchkit.recipe import Recipe, load_recipe


@dataclass
class ValidationReport:
    recipe: str
    name: str
    resolved: bool
    against: str  # "model", "profile", "schema-only"
    model: str | None
    architecture: str | None
    edits: int
    slices: int
    layers: list[int]
    warnings: list[str] = field(default_factory=list)
    search_space: dict[str, Any] | None = None  # unresolved recipes: what locate / extract would search
    #: fields still to fill in, each `file:line:col: field: what to write` (a starter from `patchkit new` has them)
    to_fill: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **self.__dict__}


def fields_to_fill(rec: Recipe) -> list[str]:
    """The fields a recipe leaves for its author to fill in, each as `file:line:col: field: what to write`.

    Why a list apart from the warnings: a recipe without `model.repo` is valid (the base may only exist locally),
    but a starter made from a local copy leaves the repo and revision empty on purpose, and its author needs to be
    told exactly which lines to complete before `apply` can find the base on its own or a card can name it.
    """
    out = []
    if not rec.model.repo:
        out.append(
            f"{rec.where('model', 'repo')}: model.repo: write the base model's Hub repo id (org/name) if it is on "
            "the Hub (else name its directory as the model each time you apply or verify)"
        )
    if not rec.model.revision:
        out.append(
            f"{rec.where('model', 'revision')}: model.revision: write the 40-hex commit sha of the base the edits "
            "were found on"
        )
    if not rec.is_resolved:
        from patchkit.recipe.resolution import how_to_resolve

        out.append(f"{rec.where('edits')}: edits: {how_to_resolve(rec)}")
    return out


def _profile_config(repo: str | None) -> dict[str, Any] | None:
    if not repo or importlib.util.find_spec("patchkit.model.profiles") is None:
        return None
    from patchkit.model import profiles

    return profiles.get_profile(repo)


def validate_recipe(recipe: Recipe | str | Path, *, model: str | None = None) -> ValidationReport:
    """Check a recipe against its schema and, where possible, against the model it edits.

    Args:
        recipe: a Recipe or a recipe path.
        model: a local dir, HF-cache snapshot or Hub ref whose config and safetensors headers are read (headers
            only, by HTTP Range for a Hub ref). Without it, a size profile or a cached copy is used if there is one.

    Returns:
        ValidationReport: what it was checked against, per-edit tensor targets, and warnings.

    Raises:
        RecipeError: a schema or model-fit problem (layer or index out of range, expert on a dense layer, ...).
        ModelError: the model cannot be read.

    Example:
        >>> validate_recipe("recipes/e2b.yaml", model="google/gemma-4-E2B-it").ok  # doctest: +SKIP
        True
    """
    from patchkit.model.adapters import get_adapter
    from patchkit.model.refs import cached_model, check_revision_pin, resolve_model

    rec = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    edits = rec.expanded_edits()
    warnings: list[str] = []
    config = headers = None
    against, model_name = "schema-only", None
    if model is not None:
        ref = resolve_model(model)
        config, headers, against, model_name = ref.config, ref.headers(), "model", ref.ref
        pin_warning = check_revision_pin(rec.model, ref) if ref.repo_id else None
        if pin_warning:
            warnings.append(pin_warning)
    else:
        cached = cached_model(rec.model.repo, rec.model.revision) if rec.model.repo else None
        if cached is not None:  # the HF cache: no network; headers only when the shards are there too
            config, against, model_name = cached.config, "model", cached.ref
            headers = cached.headers() if cached.has_local_weights() else None
            pin_warning = check_revision_pin(rec.model, cached)
            if pin_warning:
                warnings.append(pin_warning)
        else:
            config = _profile_config(rec.model.repo)
            if config is not None:
                against, model_name = "profile", rec.model.repo
        if config is None:
            warnings.append("no model given and none found offline: checked the recipe schema only (pass --model)")
    architecture: str | None = rec.model.architecture
    if config is not None:
        adapter = get_adapter(config, rec.model.architecture)
        architecture = adapter.architecture
        adapter.validate(edits, headers)
        if against == "model":
            warnings.extend(_profile_mismatch(rec.model.repo, config))
    space = None
    if not rec.is_resolved:
        from patchkit.recipe.resolution import search_space

        space = search_space(rec, config=config).to_json()
    if rec.model.repo and not rec.model.pinned and not any("revision" in w for w in warnings):
        warnings.append("model.revision is not a pinned 40-hex commit sha")
    warnings.extend(_unrecorded_diff_edits(rec, edits))
    if not rec.is_resolved:
        from patchkit.recipe.resolution import how_to_resolve

        warnings.append(f"the recipe is unresolved (no edits yet): {how_to_resolve(rec)}")
    return ValidationReport(
        recipe=str(rec.path),
        name=rec.name,
        resolved=rec.is_resolved,
        against=against,
        model=model_name,
        architecture=architecture,
        edits=len(rec.edits),
        slices=len(edits),
        layers=sorted({e.layer for e in edits}),
        warnings=warnings,
        search_space=space,
        to_fill=fields_to_fill(rec),
    )


def _unrecorded_diff_edits(rec: Recipe, edits: list) -> list[str]:
    """A diff-resolved recipe records a checksum per edited unit; an edit without one was typed in by hand."""
    res = rec.resolution
    if res is None or res.status != "resolved" or res.method != "diff":
        return []
    sums = (rec.source.model_extra or {}).get("checksums") or []
    recorded = {(c.get("layer"), c.get("kind"), c.get("index")) for c in sums if isinstance(c, dict)}
    missing = [e for e in edits if (e.layer, e.kind, e.index) not in recorded]
    if not missing:
        return []
    e = missing[0]
    return [
        f"resolution.method is diff but layer {e.layer} {e.kind} {e.index} has no checksum in source.checksums "
        f"(edited by hand?); `patchkit verify {rec.path or 'RECIPE'}` re-checks the recipe against its reference"
    ]


def _profile_mismatch(repo: str | None, config: dict[str, Any]) -> list[str]:
    """Warnings when a real model's config.json disagrees with the built-in size profile of its repo."""
    if not repo:
        return []
    from patchkit.model.profiles import compare_config, find_profile

    profile = find_profile(repo)
    if profile is None:
        return []
    return [
        f"the model's geometry differs from patchkit's {profile.key} profile ({d}); please report it"
        for d in compare_config(profile, config)
    ]


STARTER = """\
# patchkit recipe (schema v1). Reference: docs/recipes.md; JSON Schema: `patchkit schema`.
patchkit: 1
name: {name}
description: >-
  What this edit fixes and why (e.g. repetition loops on long enumerations).
model:
{repo_line}
{revision_line}
  architecture: {arch}
source:
  kind: manual            # paper | diff | locate | manual
  reference: ""           # arXiv id, repo@rev, locate report, ...
# Until it has edits the recipe is unresolved: `patchkit apply` refuses it. Delete this section when done.
resolution:
  status: unresolved
  method: manual
  how_to_resolve: fill in `edits:` and delete the `resolution:` section of this recipe
edits:
  # {geometry}
  # Neuron n of layer L = column n of mlp.down_proj (its output). Ops: invert | zero | scale (with factor).
  # - {{layer: 0, neuron: 0, op: invert}}
  # - {{layer: [0, 1], neuron: [1, 2], op: scale, factor: 0.5}}  # lists expand to every (layer, neuron) pair
  # - {{layer: 0, neuron: 3, op: zero, tensor: up_proj}}         # row n of up_proj instead
{expert_hint}checks:
  loops: {{suite: enumeration, max_loop_rate: 0.10}}
  bench: {{max_kl: 0.02, max_ppl_ratio: 1.02}}
# publish: {{repo: your-org/{name}, license: apache-2.0}}
"""


#: The comment on a field `patchkit new` could not know and left empty (`patchkit validate` lists empty fields).
TO_FILL = "TO FILL"


def starter_recipe(*, model: str | None = None, arch: str | None = None, name: str | None = None) -> str:
    """Commented starter recipe text; with `model`, geometry and pin are filled in from its config.

    The Hub repo and revision are written only when `model` is a Hub repo or an HF-cache snapshot of one. From a
    local directory (or from `arch` alone) nothing says which repo or commit the base is, so both are left empty
    and marked TO FILL instead of guessed: an invented `org/name` would parse, be published in the card as the
    base model, and send `apply` to a repo that does not exist. The text always parses as an (unresolved) recipe.
    """
    from patchkit.model.adapters import get_adapter
    from patchkit.model.refs import resolve_model

    repo = revision = local_name = None
    geometry, expert_hint = "layers and widths: see config.json", ""
    if model is not None:
        ref = resolve_model(model)
        adapter = get_adapter(ref.config)
        arch = adapter.architecture
        repo, revision = ref.repo_id, ref.revision
        if repo is None:
            local_name = Path(str(model).rstrip("/\\")).name or None  # the name only: the recipe gets published
        widths = sorted({adapter.layer_info(i).intermediate_size for i in range(adapter.num_layers)})
        geometry = f"this model: {adapter.num_layers} layers (0–{adapter.num_layers - 1}), MLP widths {widths}"
        if adapter.is_moe:
            info = adapter.layer_info(0)
            expert_hint = (
                f"  # MoE: {info.num_experts} experts per layer; suppress one with\n"
                "  # - {layer: 0, expert: 0, op: suppress}\n"
            )
    if arch not in ("gemma4", "llama"):
        raise ModelError(
            f"unknown architecture {arch!r}", hint="name a model to read it from", fix=Fix("arch", "gemma4|llama")
        )
    if repo:
        repo_line = f"  repo: {repo}            # the base model on the Hub (org/name)"
    else:
        origin = f"; made from the local model {local_name!r}" if local_name else ""
        repo_line = f"  repo:                   # {TO_FILL}: the base model's Hub repo id (org/name){origin}"
    if revision:
        revision_line = f'  revision: "{revision}"    # pin the exact commit sha the edits were found on'
    else:
        revision_line = (
            f"  revision:               # {TO_FILL}: the 40-hex commit sha of that repo the edits were found on"
        )
    return STARTER.format(
        name=name or "my-loop-fix",
        repo_line=repo_line,
        revision_line=revision_line,
        arch=arch,
        geometry=geometry,
        expert_hint=expert_hint,
    )
