"""A recipe from a diff: what did FIXED change relative to BASE, as recipe ops? (No network: the workflow
`patchkit.workflows.resolve.extract_recipe` fetches Hub revisions and hands the DiffReport here.)

`recipe_from_diff(report, base, fixed)` is `patchkit diff` plus provenance: every changed tensor slice is classified
(inverted / zeroed / scaled by c, exact under apply's rounding) and turned into recipe edits, or the whole
extraction is refused with a one-line DiffError naming the first change a recipe cannot express (an attention
weight, an arbitrary change, an added tensor, a changed config). The recipe records
`source: {kind: diff, reference: fixed@sha, base: base@sha, checksums: [...]}` — sha256 of every edited slice
before and after, in the same form `apply` writes to patchkit.json — and `resolution: {status: resolved,
method: diff, ...}`, so `patchkit verify RECIPE` can re-check it against its reference at any time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchkit._version import __version__
from patchkit.errors import PatchkitError


@dataclass
class ExtractResult:
    recipe: Any  # patchkit.recipe.Recipe
    text: str
    base: str
    reference: str
    edits: list[dict[str, Any]]
    checksums: list[dict[str, Any]]
    downloaded_files: list[str] = field(default_factory=list)
    identical_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # where the edits depart from the recipe's constraints
    report: Any = None  # the DiffReport

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "base": self.base,
            "reference": self.reference,
            "edits": self.edits,
            "checksums": self.checksums,
            "downloaded_files": self.downloaded_files,
            "identical_files": self.identical_files,
            "notes": self.notes,
            "recipe": self.text,
            "diff": self.report.to_json() if self.report is not None else None,
        }


def _identity(directory: Path, given: str) -> str:
    """`repo@sha` for an HF-cache snapshot directory, else what the user gave (a local path)."""
    from patchkit.model.refs import _cache_snapshot_identity

    repo, sha = _cache_snapshot_identity(Path(directory).absolute())
    return f"{repo}@{sha}" if repo and sha else str(given)


def _slice_sha(directory: Path, file: str, tensor: str, axis: int, index: int) -> str:
    """sha256 of one slice's raw bytes in element order (the form apply records as before/after_sha256)."""
    from patchkit.edit.bytes import RAW_DTYPES
    from patchkit.model.safetensors_io import read_header

    header = read_header(directory / file)
    info = header.tensors[tensor]
    start, end = header.absolute(tensor)
    raw = np.memmap(directory / file, dtype=RAW_DTYPES[info.dtype], mode="r", offset=start, shape=(info.numel,))
    try:
        part = np.take(raw.reshape(info.shape), index, axis=axis)
        return hashlib.sha256(np.ascontiguousarray(part).tobytes()).hexdigest()
    finally:
        del raw


def _checksums(report: Any) -> list[dict[str, Any]]:
    out = []
    for change in report.changed:
        unit = "expert" if change.role in ("experts.down_proj", "router.per_expert_scale") else "neuron"
        for s in change.slices:
            out.append(
                {
                    "layer": change.layer,
                    "kind": unit,
                    "index": s.index,
                    "tensor": change.tensor,
                    "before_sha256": _slice_sha(report.a, change.file_a, change.tensor, change.axis, s.index),
                    "after_sha256": _slice_sha(report.b, change.file_b, change.tensor, change.axis, s.index),
                }
            )
    return sorted(out, key=lambda c: (c["layer"], c["kind"], c["index"], c["tensor"]))


def recipe_from_diff(
    report: Any,
    base: str | os.PathLike[str],
    fixed: str | os.PathLike[str],
    *,
    template: Any = None,
    name: str | None = None,
) -> ExtractResult:
    """A resolved recipe reproducing FIXED from BASE, given their DiffReport (DiffError if any change is not
    expressible as recipe ops). `base`/`fixed` are what the user named (recorded when they are local paths).

    `template`: an (unresolved) Recipe whose name, description, model, checks, publish and constraints are kept.
    """
    from io import StringIO

    from ruamel.yaml import YAML

    from patchkit.edit.diff import DiffError, _architecture, _read_config, recipe_edits
    from patchkit.recipe import parse_recipe
    from patchkit.recipe.resolution import check_edits_against, parse_constraints

    edits = recipe_edits(report)  # DiffError naming the first inexpressible change
    base_id, fixed_id = _identity(report.a, str(base)), _identity(report.b, str(fixed))
    checksums = _checksums(report)
    architecture = _architecture(_read_config(report.a))
    repo = rev = None
    if "@" in base_id and not Path(str(base)).exists():
        repo, _, rev = base_id.partition("@")
    t_model = getattr(template, "model", None)
    if template is not None and t_model is not None and t_model.repo:
        if repo and repo.lower() != t_model.repo.lower():
            raise DiffError(f"the recipe is for {t_model.repo} but BASE is {repo}; extract against the recipe's model")
        repo = t_model.repo
        architecture = t_model.architecture or architecture
    model = {k: v for k, v in {"repo": repo, "revision": rev, "architecture": architecture}.items() if v}
    source: dict[str, Any] = {
        "kind": "diff",
        "reference": fixed_id,
        "base": base_id,
        "extracted_by": f"patchkit {__version__} recipe extract",
    }
    t_source = getattr(template, "source", None)
    if t_source is not None and t_source.kind != "diff":
        source["cites"] = t_source.reference
        claims = (t_source.model_extra or {}).get("claims")
        if claims:
            source["claims"] = claims
    source["checksums"] = checksums
    resolution: dict[str, Any] = {
        "status": "resolved",
        "method": "diff",
        "reference": fixed_id,
        "resolved_by": f"patchkit {__version__} recipe extract {base_id} {fixed_id}",
    }
    t_res = getattr(template, "resolution", None)
    if t_res is not None and t_res.constraints.to_yaml_data():
        resolution["constraints"] = t_res.constraints.to_yaml_data()
    rec_name = name or getattr(template, "name", None) or _slug(f"{Path(str(fixed)).name}-from-diff")
    doc: dict[str, Any] = {"patchkit": 1, "name": rec_name}
    description = getattr(template, "description", None) or f"Reproduces {fixed_id} from {base_id}."
    doc["description"] = description
    doc["model"] = model
    doc["source"] = source
    doc["resolution"] = resolution
    doc["edits"] = edits
    for key in ("checks", "publish"):
        value = getattr(template, key, None)
        if value is not None:
            doc[key] = value.model_dump(mode="json", exclude_none=True)
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.width = 4096
    buf = StringIO()
    buf.write(
        f"# Generated by `patchkit recipe extract` from {base_id} -> {fixed_id}. Do not edit the edits by hand:\n"
        "# `patchkit verify THIS_FILE` re-extracts them from the reference and compares.\n"
    )
    yaml.dump(doc, buf)
    text = buf.getvalue()
    try:
        recipe = parse_recipe(text, "<recipe extract>")
    except PatchkitError as exc:
        raise DiffError(f"the recipe derived from the diff does not validate: {exc}") from None
    notes: list[str] = []
    if t_res is not None:
        notes = check_edits_against(parse_constraints(t_res.constraints), recipe.expanded_edits())
    from_hub = "@" in fixed_id and not Path(str(fixed)).exists()
    downloaded = (
        sorted(f for f in _weight_files(report.b) if f not in report.identical_files and (Path(report.b) / f).exists())
        if from_hub
        else []
    )
    return ExtractResult(
        recipe=recipe,
        text=text,
        base=base_id,
        reference=fixed_id,
        edits=edits,
        checksums=checksums,
        downloaded_files=downloaded,
        identical_files=list(report.identical_files),
        notes=notes,
        report=report,
    )


def _weight_files(directory: Path) -> list[str]:
    from patchkit.edit.diff import weight_files

    try:
        return weight_files(Path(directory))
    except PatchkitError:
        return []


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "recipe-from-diff"


# --- re-checking a diff-resolved recipe -------------------------------------------------------------------


@dataclass
class ReferenceCheck:
    ok: bool
    recipe: str
    reference: str
    base: str
    missing: list[str] = field(default_factory=list)  # in the reference, not in the recipe
    extra: list[str] = field(default_factory=list)  # in the recipe, not in the reference
    checksum_mismatches: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.ok:
            return f"{self.recipe}: its edits and slice checksums match {self.reference} against {self.base}"
        first = (
            (self.missing and f"the reference also changes {self.missing[0]}")
            or (self.extra and f"the recipe edits {self.extra[0]} which the reference does not change")
            or (self.checksum_mismatches and f"checksum differs: {self.checksum_mismatches[0]}")
        )
        return f"{self.recipe} does not match its reference {self.reference}: {first}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "recipe": self.recipe,
            "reference": self.reference,
            "base": self.base,
            "missing": self.missing,
            "extra": self.extra,
            "checksum_mismatches": self.checksum_mismatches,
            "message": self.message,
        }


def _edit_keys(recipe: Any) -> dict[tuple, str]:
    return {
        (e.layer, e.kind, e.index, e.op, round(e.factor, 9), e.tensor): f"layer {e.layer} {e.kind} {e.index} {e.op}"
        + (f" x{e.factor:g}" if e.op == "scale" else "")
        for e in recipe.expanded_edits()
    }


def compare_with_reference(rec: Any, fresh: ExtractResult) -> ReferenceCheck:
    """Compare a diff-resolved recipe with a fresh extraction from its reference: edits and slice checksums."""
    mine, theirs = _edit_keys(rec), _edit_keys(fresh.recipe)
    check = ReferenceCheck(ok=True, recipe=str(rec.path or rec.name), reference=fresh.reference, base=fresh.base)
    check.missing = [theirs[k] for k in sorted(set(theirs) - set(mine), key=str)]
    check.extra = [mine[k] for k in sorted(set(mine) - set(theirs), key=str)]
    recorded = {
        (c["layer"], c["kind"], c["index"], c["tensor"]): c
        for c in (rec.source.model_extra or {}).get("checksums") or []
    }
    for c in fresh.checksums:
        key = (c["layer"], c["kind"], c["index"], c["tensor"])
        have = recorded.get(key)
        label = f"layer {c['layer']} {c['kind']} {c['index']} ({c['tensor']})"
        if have is None:
            check.checksum_mismatches.append(f"{label}: not recorded in source.checksums")
        elif (have.get("before_sha256"), have.get("after_sha256")) != (c["before_sha256"], c["after_sha256"]):
            check.checksum_mismatches.append(
                f"{label}: recorded {str(have.get('after_sha256'))[:12]}…, reference {c['after_sha256'][:12]}…"
            )
    check.ok = not (check.missing or check.extra or check.checksum_mismatches)
    return check
