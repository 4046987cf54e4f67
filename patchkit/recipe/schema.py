"""Recipe format v1: the pydantic schema (strict types), typed resolution constraints, expanded edits.

A recipe is the unit users review; `patchkit.recipe.loader` reads YAML into these models with file:line:column
errors. Every model here is strict (no `"2"` for 2, no `true` for 1: see `patchkit.recipe.fields`) and forbids
unknown keys, so a typo is an error, not a silently ignored field. The bounds live in `patchkit.recipe.limits`.

Factor rules (checked in `patchkit.recipe.loader`): `op: scale` needs a finite factor; a factor of 0 or -0.0 is
refused with "write `op: zero`" (scaling by 0 leaves -0.0 wherever a weight was negative, and -0.0 would set
the sign bit of every zeroed weight: `zero` writes exact +0), a factor of 1 is refused as a no-op, and
`invert` / `zero` take no factor. Whether a factor fits the tensor's dtype (overflow, underflow) is checked when
the edit is planned against the model (`patchkit.edit`), not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from patchkit.errors import RecipeError
from patchkit.recipe._text import show
from patchkit.recipe.fields import (
    Factor,
    Index,
    IndexList,
    Indices,
    OptFactor,
    check_name,
    check_repo_id,
    check_revision,
    fail,
)
from patchkit.recipe.gates import Checks
from patchkit.recipe.limits import MAX_EXPANDED_EDITS, MAX_NAME_CHARS

SCHEMA_VERSION = 1
NeuronOp = Literal["invert", "scale", "zero"]
SourceKind = Literal["paper", "diff", "locate", "manual"]


# --- positions (file:line:column for error messages) ---

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def dotted(loc: tuple) -> str:
    """`edits[0].neuron`; a key that is long or unusual (a hostile one) is shown quoted and cut short."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
            continue
        name = str(part) if isinstance(part, str) and _PLAIN_KEY.fullmatch(part) else show(part, 40)
        text += f".{name}" if text else name
    return text


def where_in(filename: str, positions: dict, loc: tuple) -> str:
    loc = tuple(loc)
    while loc and loc not in positions:
        loc = loc[:-1]
    line, col = positions.get(loc, (1, 1))
    return f"{filename}:{line}:{col}"


# --- schema ----------------------------------------------------------------------------------------------


_STRICT = ConfigDict(extra="forbid", strict=True)


class ModelSpec(BaseModel):
    """Which checkpoint the recipe edits. `revision` should be a 40-hex commit sha (a pin)."""

    model_config = _STRICT

    repo: str | None = Field(None, description="Hub repo id (org/name) of the base model; never a local path")
    revision: str | None = Field(None, description="pinned commit sha of the base model (or a branch / tag name)")
    architecture: Literal["gemma4", "llama"] | None = Field(None, description="adapter name")

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, value: str | None) -> str | None:
        return None if value is None else check_repo_id(value, field="model.repo")

    @field_validator("revision")
    @classmethod
    def _revision_shape(cls, value: str | None) -> str | None:
        return None if value is None else check_revision(value)

    @property
    def pinned(self) -> bool:
        rev = self.revision or ""
        return len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


class SliceChecksum(BaseModel):
    """One entry of `source.checksums` (written by `patchkit recipe extract`; read by `verify`)."""

    model_config = _STRICT

    layer: Index
    kind: Literal["neuron", "expert"]
    index: Index
    tensor: str = Field(min_length=1, max_length=512)
    before_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    after_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Source(BaseModel):
    """Where the edits come from; evidence fields (scores, probes, method) are kept as given.

    Two extra fields other stages read are typed: `checksums` (a list of SliceChecksum) and `base` (text)."""

    model_config = ConfigDict(extra="allow", strict=True)

    kind: SourceKind
    reference: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_extras(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        base = data.get("base")
        if base is not None and not isinstance(base, str):
            raise fail(f"must be text (the base model's org/name@sha), got {show(base)}", loc=("base",))
        sums = data.get("checksums")
        if sums is not None:
            hint = "regenerate it with `patchkit recipe extract`"
            if not isinstance(sums, list):
                raise fail(
                    f"must be a list of {{layer, kind, index, tensor, before_sha256, after_sha256}}, got {show(sums)}",
                    hint=hint,
                    loc=("checksums",),
                )
            for i, entry in enumerate(sums):
                try:
                    SliceChecksum.model_validate(entry)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    ctx = err.get("ctx") or {}
                    msg = ctx.get("message") or err["msg"]
                    if err["type"] == "string_pattern_mismatch":
                        msg = f"must be a sha256 (64 lowercase hex digits), got {show(err.get('input'))}"
                    if err["type"] == "model_type":
                        msg = f"must be a mapping {{layer, kind, index, tensor, before_sha256, after_sha256}}, got {show(entry)}"
                    raise fail(msg, hint=hint, loc=("checksums", i, *err["loc"], *ctx.get("loc", ()))) from None
        return data


Op = Literal["invert", "scale", "zero", "suppress"]


class PartialEdit(BaseModel):
    """An edit known except for its neuron/expert index."""

    model_config = _STRICT

    layer: Index
    op: Op
    factor: OptFactor = None
    note: str | None = None


class Constraints(BaseModel):
    """Typed view of `resolution.constraints` (extra keys are allowed and kept)."""

    model_config = ConfigDict(extra="allow", strict=True)

    kind: Literal["neuron", "expert"] | None = None
    layers: IndexList | None = None
    max_edits: int | None = Field(None, ge=1, le=MAX_EXPANDED_EDITS)
    exact_edits: int | None = Field(None, ge=1, le=MAX_EXPANDED_EDITS)
    ops: list[Op] | None = None
    factors: list[Factor] | None = None
    partial_edits: list[PartialEdit] = Field(default_factory=list)
    units_total: int | None = Field(None, ge=1, le=2**53)
    evidence: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Constraints:
        """Cross-field rules, so a typed Constraints is always a coherent search space."""
        if self.max_edits is not None and self.exact_edits is not None and self.exact_edits > self.max_edits:
            raise ValueError(f"exact_edits ({self.exact_edits}) exceeds max_edits ({self.max_edits})")
        if self.layers is not None:
            allowed = set(self.layers)
            stray = [p.layer for p in self.partial_edits if p.layer not in allowed]
            if stray:
                raise ValueError(f"partial_edits: layer {stray[0]} is not in `layers` {show(self.layers, 80)}")
        for i, p in enumerate(self.partial_edits):
            if p.op == "scale" and p.factor is None:
                raise ValueError(f"partial_edits[{i}]: op scale needs a factor")
            if p.op == "scale" and p.factor in (0.0, 1.0):
                raise ValueError(
                    f"partial_edits[{i}]: scaling by {p.factor:g} is not a scale edit; "
                    + ("write op: zero" if p.factor == 0.0 else "remove it (it changes nothing)")
                )
            if p.op != "scale" and p.factor is not None:
                raise ValueError(f"partial_edits[{i}]: op {p.op} takes no factor")
            if self.kind == "expert" and p.op != "suppress" or self.kind == "neuron" and p.op == "suppress":
                raise ValueError(f"partial_edits[{i}]: op {p.op} does not fit kind {self.kind}")
        if self.kind == "expert" and self.ops and set(self.ops) - {"suppress"}:
            raise ValueError("ops: experts support only `suppress`")
        return self

    def to_yaml_data(self) -> dict[str, Any]:
        """The constraints as plain data (what a recipe file holds), extra keys included."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)

    def get(self, key: str, default: Any = None) -> Any:
        """Read a known or extra key by name (tools record their own notes, e.g. `last_locate`)."""
        value = getattr(self, key, None) if key in type(self).model_fields else (self.model_extra or {}).get(key)
        return default if value is None else value


ReferenceStatus = Literal["published", "inferred"]


def _hub_reference(value: str, *, loc: tuple) -> tuple[str, str | None]:
    """`org/name[@revision]` split and checked: a diff reference names a Hub repo, never a local path chosen by
    whoever wrote the recipe (resolving it downloads from there)."""
    repo, at, revision = value.partition("@")
    try:
        check_repo_id(repo, field="resolution.reference")
        if at:
            check_revision(revision)
    except PydanticCustomError as exc:
        raise fail(
            f"must be a Hub reference org/name[@revision]: {(exc.context or {}).get('message', '')}",
            hint="a diff way names the published (or inferred) fixed model on the Hub; to extract from a local "
            "directory run `patchkit recipe extract BASE DIR --into RECIPE`",
            loc=loc,
        ) from None
    return repo, (revision if at else None)


class ResolutionWay(BaseModel):
    """One way to resolve a recipe, tried in order by `patchkit recipe resolve`.

    `diff`: extract the edits from a fixed checkpoint on the Hub (`reference`, optionally at `revision`), marked
    `published` (its name appears in a cited source, `cited_in`) or `inferred` (a name that only follows the
    published pattern: it may not exist, and is never presented as published). `locate`: search the recipe's
    `resolution.constraints` with `patchkit locate --from-recipe` (needs the model and a GPU, so `recipe resolve`
    only says to run it)."""

    model_config = _STRICT

    method: Literal["diff", "locate"]
    reference: str | None = Field(None, description="diff: the fixed checkpoint's Hub repo id (org/name)")
    revision: str | None = Field(None, description="diff: a commit sha, branch or tag of the reference")
    status: ReferenceStatus | None = Field(
        None, description="diff: `published` (named in a cited source) or `inferred` (follows the published pattern)"
    )
    cited_in: str | None = Field(None, description="the source that names the reference (or the method)")
    note: str | None = None

    @model_validator(mode="after")
    def _fits_the_method(self) -> ResolutionWay:
        if self.method == "diff":
            if self.reference is None:
                raise fail("a diff way needs the fixed checkpoint's Hub repo", hint="add `reference: org/name`", loc=())
            if "@" in self.reference:
                raise fail(
                    f"{show(self.reference)}: give the revision separately",
                    hint="write `reference: org/name` and `revision: SHA`",
                    loc=("reference",),
                )
            _hub_reference(self.reference, loc=("reference",))
            if self.revision is not None:
                try:
                    check_revision(self.revision)
                except PydanticCustomError as exc:
                    raise fail((exc.context or {}).get("message", "bad revision"), loc=("revision",)) from None
            if self.status is None:
                raise fail(
                    "a diff way must say whether its reference is `published` (named in a cited source) or "
                    "`inferred` (a name that follows the published pattern)",
                    hint="add `status: published` or `status: inferred`",
                    loc=(),
                )
        else:
            for key in ("reference", "revision", "status"):
                if getattr(self, key) is not None:
                    raise fail(
                        f"a locate way takes no {key} (it searches resolution.constraints)",
                        hint=f"remove `{key}`",
                        loc=(key,),
                    )
        return self

    @property
    def ref(self) -> str | None:
        """`org/name[@revision]` of a diff way (None for locate)."""
        if self.reference is None:
            return None
        return f"{self.reference}@{self.revision}" if self.revision else self.reference

    def describe(self) -> str:
        """`diff edgerunner-ai/x (inferred)` / `locate`: how the way is named in messages."""
        if self.method == "locate":
            return "locate --from-recipe"
        return f"diff {self.ref} ({self.status or 'unmarked'})"


class Resolution(BaseModel):
    """Whether the edits are known. Unresolved recipes carry constraints and say how to resolve them.

    The ways to resolve are either listed in order in `ways` (`patchkit recipe resolve` tries them one by one and
    records the winner in `resolved_via`) or given as one `method` + `reference` (the older single-way form, read as
    one way: see `effective_ways`)."""

    model_config = _STRICT

    status: Literal["resolved", "unresolved"] = "resolved"
    method: str | None = Field(
        None, description="how the edits are (to be) found: paper-citation | diff | locate | manual"
    )
    reference: str | None = None
    ways: list[ResolutionWay] | None = Field(
        None,
        description="ways to resolve, in order: {method: diff, reference, revision, status, cited_in} | "
        "{method: locate}; the first that works wins",
    )
    resolved_via: str | None = Field(None, description="which of `ways` resolved the recipe, e.g. ways[1]")
    resolved_by: str | None = Field(None, description="command and patchkit version that wrote the edits")
    constraints: Constraints = Field(
        default_factory=lambda: Constraints(),
        description="search space of an unresolved recipe: kind, layers, max_edits, exact_edits, ops, factors, "
        "partial_edits, units_total, evidence (see patchkit.recipe.resolution.Constraints); other keys are kept",
    )
    how_to_resolve: str | None = None

    @model_validator(mode="after")
    def _consistent_ways(self) -> Resolution:
        """An unresolved diff `reference` must be a Hub ref (resolving downloads from it); `ways` and the single
        `method`/`reference` form are exclusive while unresolved (which one would be tried?); `resolved_via` must
        point into `ways`."""
        if self.status == "unresolved" and self.method == "diff" and self.reference is not None:
            _hub_reference(self.reference, loc=("reference",))
        if self.ways is not None:
            if not self.ways:
                raise fail("must list at least one way", hint="remove `ways:` or add {method: locate}", loc=("ways",))
            if self.status == "unresolved" and (self.method is not None or self.reference is not None):
                key = "method" if self.method is not None else "reference"
                raise fail(
                    f"`{key}` and `ways` both say how to resolve",
                    hint=f"remove `{key}` (list every way under `ways`)",
                    loc=(key,),
                )
        if self.resolved_via is not None:
            m = re.fullmatch(r"ways\[(\d+)\]", self.resolved_via)
            if m is None or self.ways is None or int(m.group(1)) >= len(self.ways):
                raise fail(
                    f"{show(self.resolved_via)} does not name one of `ways`",
                    hint="write ways[N] (N from 0), as `patchkit recipe resolve` does",
                    loc=("resolved_via",),
                )
        return self

    def effective_ways(self) -> list[ResolutionWay]:
        """The ways to try, in order: `ways`, else the single `method`/`reference` read as one way (a diff reference
        of that older form is `unmarked`: it was never said to be published). Empty when neither says diff or
        locate (a paper citation or manual edits: nothing patchkit can run)."""
        if self.ways is not None:
            return list(self.ways)
        if self.method == "diff" and self.reference:
            repo, _, revision = self.reference.partition("@")
            return [ResolutionWay.model_construct(method="diff", reference=repo, revision=revision or None)]
        if self.method == "locate":
            return [ResolutionWay(method="locate", cited_in=self.reference)]
        return []

    @property
    def via(self) -> ResolutionWay | None:
        """The way that resolved the recipe (from `resolved_via`), if recorded."""
        if self.resolved_via is None or self.ways is None:
            return None
        return self.ways[int(self.resolved_via[5:-1])]


_LICENSE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")


class Publish(BaseModel):
    """Where `patchkit push` publishes the patched model (a Hub repo id, never a path)."""

    model_config = _STRICT

    repo: str | None = None
    license: str | None = None
    private: bool = False

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, value: str | None) -> str | None:
        return None if value is None else check_repo_id(value, field="publish.repo")

    @field_validator("license")
    @classmethod
    def _license_shape(cls, value: str | None) -> str | None:
        if value is not None and not _LICENSE_RE.fullmatch(value):
            raise fail(
                f"{show(value)} is not a license id", hint="use a Hub license id such as apache-2.0, mit or other"
            )
        return value


class NeuronEdit(BaseModel):
    """Scale MLP neuron(s): column n of down_proj (default) or row n of up_proj."""

    model_config = _STRICT

    layer: Indices
    neuron: Indices
    op: NeuronOp
    factor: OptFactor = None
    tensor: Literal["down_proj", "up_proj"] = "down_proj"
    note: str | None = None


class ExpertEdit(BaseModel):
    """Suppress routed expert(s) of an MoE layer."""

    model_config = _STRICT

    layer: Indices
    expert: Indices
    op: Literal["suppress"]
    tensor: Literal["down_proj"] | None = None
    note: str | None = None


def _count(value: int | list[int]) -> int:
    return len(value) if isinstance(value, list) else 1


class Recipe(BaseModel):
    """A patchkit recipe (schema v1)."""

    model_config = _STRICT

    patchkit: Literal[1] = Field(1, description="recipe schema version")
    name: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, description="slug (letters, digits, . _ -); names the apply output dir"
    )
    description: str | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    source: Source
    resolution: Resolution | None = None
    edits: list[NeuronEdit | ExpertEdit] = Field(default_factory=list)
    checks: Checks | None = None
    publish: Publish | None = None

    @field_validator("patchkit", mode="before")
    @classmethod
    def _version_is_an_integer(cls, value: Any) -> Any:
        if type(value) is not int:  # Literal[1] would accept true and 1.0
            raise fail(
                f"schema version must be the integer {SCHEMA_VERSION}, got {show(value)}",
                hint=f"write `patchkit: {SCHEMA_VERSION}`",
            )
        return value

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, value: str) -> str:
        return check_name(value)

    _path: str | None = PrivateAttr(None)
    _text: str | None = PrivateAttr(None)
    _positions: dict[tuple, tuple[int, int]] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def source_text(self) -> str | None:
        return self._text

    @property
    def is_resolved(self) -> bool:
        return self.resolution is None or self.resolution.status == "resolved"

    def where(self, *loc: Any) -> str:
        """`file:line:column` of a field path (best effort), for error messages."""
        return where_in(self._path or "<recipe>", self._positions, tuple(loc))

    def require_resolved(self) -> None:
        """Refuse to apply an unresolved recipe, saying what to run instead."""
        if self.is_resolved:
            return
        res = self.resolution
        how = (res.how_to_resolve if res else None) or self._default_how_to_resolve()
        if len(how) > 300:  # the recipe's own text: never let it flood the one-line message
            how = how[:299] + "…"
        raise RecipeError(
            f"{self.where('resolution')}: recipe {self.name!r} is unresolved (it carries no edits yet): {how}"
        )

    def _default_how_to_resolve(self) -> str:
        """The command that resolves this recipe (one clause, for one-line errors)."""
        res = self.resolution
        if res is not None and res.how_to_resolve:
            return res.how_to_resolve
        path = self.path or "RECIPE"
        base = self.model.repo or "BASE"
        if self.model.revision:
            base = f"{base}@{self.model.revision}"
        if res is not None and getattr(res, "ways", None):
            return f"run `patchkit recipe resolve {path}` (it tries the recipe's ways in order)"
        method = res.method if res is not None else None
        if method == "diff":
            fixed = (res.reference if res is not None else None) or "FIXED"
            return f"run `patchkit recipe extract {base} {fixed} --into {path}` where the Hub is reachable"
        if method == "locate":
            return f"run `patchkit locate {base} --from-recipe {path}` on a machine with the model and a GPU"
        return "fill in `edits:` and delete the `resolution:` section (or find them with `patchkit locate`)"

    def slice_count(self) -> int:
        """How many (layer, neuron|expert) slices the edits expand to, computed from the list lengths."""
        return sum(_count(e.layer) * _count(e.neuron if isinstance(e, NeuronEdit) else e.expert) for e in self.edits)

    def expanded_edits(self) -> list[ResolvedEdit]:
        """One ResolvedEdit per (layer, neuron|expert), lists expanded, in file order (at most
        `MAX_EXPANDED_EDITS`: RecipeError beyond, before anything is expanded)."""
        total = self.slice_count()
        if total > MAX_EXPANDED_EDITS:
            raise RecipeError(
                f"{self.where('edits')}: edits: the recipe expands to {total:,} (layer, index) slices, "
                f"more than the limit of {MAX_EXPANDED_EDITS:,}",
                hint="split it into several recipes",
            )
        out: list[ResolvedEdit] = []
        for i, edit in enumerate(self.edits):
            layers = edit.layer if isinstance(edit.layer, list) else [edit.layer]
            kind: Literal["neuron", "expert"]
            factor: float
            if isinstance(edit, NeuronEdit):
                kind, indices = "neuron", edit.neuron
                factor = {"invert": -1.0, "zero": 0.0}.get(edit.op, edit.factor if edit.factor is not None else 1.0)
                tensor: str | None = edit.tensor
            else:
                kind, indices, factor, tensor = "expert", edit.expert, 0.0, edit.tensor
            indices = indices if isinstance(indices, list) else [indices]
            where = self.where("edits", i)
            for layer in layers:
                for index in indices:
                    out.append(
                        ResolvedEdit(layer, kind, index, edit.op, float(factor), tensor, where=f"{where}: edits[{i}]")
                    )
        return out


@dataclass(frozen=True)
class ResolvedEdit:
    """One edited slice: neuron `index` (or expert `index`) of `layer`, multiplied by `factor`."""

    layer: int
    kind: Literal["neuron", "expert"]
    index: int
    op: str
    factor: float
    tensor: str | None = "down_proj"
    where: str = field(default="", compare=False)

    @property
    def key(self) -> tuple:
        """Identity of the edited unit: one neuron or expert of one layer, whichever tensor carries the edit."""
        return (self.layer, self.kind, self.index)
