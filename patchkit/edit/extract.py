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
    warnings: list[str] = field(default_factory=list)  # anything else the caller should be told

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
            "warnings": self.warnings,
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
    via: int | None = None,
) -> ExtractResult:
    """A resolved recipe reproducing FIXED from BASE, given their DiffReport (DiffError if any change is not
    expressible as recipe ops). `base`/`fixed` are what the user named (recorded when they are local paths).

    `template`: an (unresolved) Recipe whose name, description, model, checks, publish and constraints are kept.
    `via`: the index of the template's `resolution.ways` entry FIXED came from (`patchkit recipe resolve`): the
    ways are kept, `resolution.resolved_via` names the winner and `source.reference_status` says whether the
    reference was published or only inferred (so no later reader mistakes an inferred reference for a cited one).
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
        "extracted_by": f"patchkit {__version__} {'recipe resolve' if via is not None else 'recipe extract'}",
    }
    t_source = getattr(template, "source", None)
    if t_source is not None and t_source.kind != "diff" and t_source.reference:
        source["cites"] = t_source.reference
        claims = (t_source.model_extra or {}).get("claims")
        if claims:
            source["claims"] = claims
    t_res = getattr(template, "resolution", None)
    way = None
    if via is not None and t_res is not None:
        ways = t_res.effective_ways()
        way = ways[via] if 0 <= via < len(ways) else None
    if way is not None and way.status:
        source["reference_status"] = way.status
        if way.cited_in:
            source["reference_cited_in"] = way.cited_in
    source["checksums"] = checksums
    command = "recipe resolve" if via is not None else "recipe extract"  # which command wrote it
    resolution: dict[str, Any] = {
        "status": "resolved",
        "method": "diff",
        "reference": fixed_id,
        "resolved_by": f"patchkit {__version__} {command} {base_id} {fixed_id}",
    }
    if way is not None and t_res is not None and t_res.ways is not None:
        resolution["ways"] = [w.model_dump(mode="json", exclude_none=True) for w in t_res.ways]
        resolution["resolved_via"] = f"ways[{via}]"
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
    warnings: list[str] = []
    template_text = getattr(template, "source_text", None)
    if template_text:
        kept = _into_template(template_text, doc)
        if kept is not None and _same_recipe(kept, recipe):
            text, recipe = kept, parse_recipe(kept, "<recipe extract>")
        else:
            warnings.append(
                f"the comments and layout of {getattr(template, 'path', None) or 'the recipe to resolve'} could not "
                "be kept; it was rewritten whole"
            )
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
        warnings=warnings,
    )


# --- writing into an existing recipe (`extract --into`): keep its comments -----------------------------------
#: the top-level keys extraction decides; every other key (checks, publish, ...) keeps the author's own text
_EXTRACTED_KEYS = ("model", "source", "resolution", "edits")


def _into_template(template_text: str, doc: dict[str, Any]) -> str | None:
    """`template_text` with the extracted fields written into it by a ruamel round trip: its comments, key order,
    quoting and the sections extraction does not decide (checks, publish) are kept as the author wrote them.

    Why not re-dump the recipe: `extract --into` resolves a recipe the author wrote and commented (often a
    `patchkit new` starter); a rewrite would silently drop every comment. The caller checks that the result is
    the same recipe as the plain dump (`_same_recipe`), so this can only lose layout, never change content.
    Returns None when the template is not a mapping (the caller then writes the plain dump).
    """
    from io import StringIO

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    try:
        data = yaml.load(template_text)
    except Exception:  # noqa: BLE001 - the template parsed as a recipe already; any surprise means "rewrite it"
        return None
    if not isinstance(data, CommentedMap):
        return None
    if data.get("name") != doc["name"]:
        data["name"] = doc["name"]
    if not data.get("description"):
        data["description"] = doc["description"]
    for key in _EXTRACTED_KEYS:
        value = _commented(doc[key])
        if key in data:
            trailing = _pop_trailing(data, key)  # the comments before the next key stay before it
            if (
                isinstance(data[key], CommentedMap)
                and isinstance(value, CommentedMap)
                and not data[key].fa.flow_style()
            ):
                _update(data[key], value)
            else:
                data[key] = value
            _push_trailing(data, key, trailing)
        else:
            data[key] = value
    buf = StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def _same_recipe(text: str, recipe: Any) -> bool:
    """Whether `text` parses to exactly `recipe` (field by field)."""
    from patchkit.recipe import parse_recipe

    try:
        kept = parse_recipe(text, "<recipe extract>")
    except PatchkitError:
        return False
    return bool(kept.model_dump(mode="json") == recipe.model_dump(mode="json"))


def _commented(value: Any) -> Any:
    """`value` as ruamel nodes laid out like the plain dump (`default_flow_style=None`): a mapping or list of
    scalars on one line (`{layer: 1, neuron: 2, op: invert}`), anything holding a collection in block style.

    Why nodes and not plain dicts: comments can only be hung on ruamel nodes, and `_last_slot` must find the
    last entry of a new block value to keep the comments that follow it in place."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        node: Any = CommentedMap((k, _commented(v)) for k, v in value.items())
        children = list(value.values())
    elif isinstance(value, list):
        node = CommentedSeq(_commented(v) for v in value)
        children = list(value)
    else:
        return value
    if children and not any(isinstance(c, (dict, list)) for c in children):
        node.fa.set_flow_style()
    else:
        node.fa.set_block_style()
    return node


def _update(node: Any, new: dict[str, Any]) -> None:
    """Make mapping `node` equal `new` in place: kept keys keep their comments; a `TO FILL` comment goes once filled."""
    from ruamel.yaml.comments import CommentedMap

    for key in [k for k in node if k not in new and node[k] is not None]:  # an empty TO FILL key stays
        trailing = _pop_trailing(node, key)
        del node[key]
        if len(node):
            _push_trailing(node, list(node)[-1], trailing)
    for key, value in new.items():
        if key in node and node[key] == value:
            continue
        if key in node:
            trailing = _pop_trailing(node, key)
            if (
                isinstance(node[key], CommentedMap)
                and isinstance(value, CommentedMap)
                and not node[key].fa.flow_style()
            ):
                _update(node[key], value)
            else:
                node[key] = value
                _drop_to_fill(node, key)
            _push_trailing(node, key, trailing)
        else:
            trailing = _pop_trailing(node, list(node)[-1]) if len(node) else None
            node[key] = value
            _push_trailing(node, key, trailing)


def _last_slot(parent: Any, key: Any) -> tuple[Any, Any, int]:
    """Where ruamel keeps the comment that follows `parent[key]`: on the deepest last entry of a block value."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    value = parent[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
        return _last_slot(value, list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
    return parent, key, 2 if isinstance(parent, CommentedMap) else 0


def _pop_trailing(parent: Any, key: Any) -> str | None:
    """Detach the whole-line comments after `parent[key]` (ruamel hangs them on the entry before them)."""
    container, slot, pos = _last_slot(parent, key)
    entry = container.ca.items.get(slot)
    token = entry[pos] if entry and len(entry) > pos else None
    if token is None:
        return None
    first, _, rest = token.value.partition("\n")
    if not rest.strip():
        return None
    token.value = first + "\n"
    if not first.strip():
        entry[pos] = None
    return rest


def _push_trailing(parent: Any, key: Any, rest: str | None) -> None:
    """Hang whole-line comments (from `_pop_trailing`) after `parent[key]` again."""
    if not rest:
        return
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    container, slot, pos = _last_slot(parent, key)
    entry = container.ca.items.setdefault(slot, [None, None, None, None])
    if entry[pos] is None:
        entry[pos] = CommentToken("\n" + rest, CommentMark(0), None)
    else:
        entry[pos].value = entry[pos].value.rstrip("\n") + "\n" + rest


def _drop_to_fill(node: Any, key: Any) -> None:
    """Remove the end-of-line `# TO FILL: ...` comment of a key that now has a value (the lines after it stay)."""
    entry = node.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return
    first, nl, rest = token.value.partition("\n")
    if "TO FILL" in first:
        if rest.strip():
            token.value = "\n" + rest
        else:
            entry[2] = None


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
