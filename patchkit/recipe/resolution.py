"""Unresolved recipes: the machine-readable search space in `resolution.constraints`, and how to resolve them.

An unresolved recipe carries no edits, only what is known about them (from a paper, a summary, a published
fixed checkpoint). `constraints` is validated here with file:line errors; unknown keys are kept (tools may
record their own notes), known keys are typed:

```yaml
resolution:
  status: unresolved
  ways:                           # tried in order by `patchkit recipe resolve` (or one `method` + `reference`)
    - {method: diff, reference: org/name-noloop, status: inferred}   # published | inferred
    - {method: locate}
  constraints:
    kind: neuron                  # neuron | expert: what an edit targets
    layers: [10, 12]              # where to search (omitted: every layer)
    max_edits: 2                  # at most this many (layer, neuron|expert) units
    exact_edits: 2                # the source states exactly this many (optional)
    ops: [scale, invert]          # ops the source reports
    factors: [-0.8, 3.0]          # scale factors the source reports
    partial_edits:                # edits known except for their index
      - {layer: 10, op: scale, factor: -0.8}
    units_total: 337920           # the source's count of candidate units (cross-checked with the model geometry)
    evidence: "secondary summary of the paper, not verified against its text"
```

`check_edits_against` lists where resolved edits depart from the constraints (warnings: a reference is
authoritative); `unresolved_error` is apply's one-line refusal naming `patchkit recipe resolve`.
`search_space(recipe, config=...)` turns that into a `SearchSpace` (layers expanded and range-checked against
the model's geometry when a config or size profile is available); `patchkit locate --from-recipe` searches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from patchkit.errors import RecipeError
from patchkit.recipe.schema import Constraints, PartialEdit

Op = Literal["invert", "scale", "zero", "suppress"]


@dataclass(frozen=True)
class SearchSpace:
    """What `patchkit locate --from-recipe` searches, from an unresolved recipe (and the model geometry)."""

    recipe: str
    model_repo: str | None
    revision: str | None
    method: str | None
    reference: str | None
    kind: Literal["neuron", "expert"]
    layers: tuple[int, ...] | None  # None: every layer (geometry unknown)
    max_edits: int | None
    exact_edits: int | None
    ops: tuple[str, ...]
    factors: tuple[float, ...]
    partial_edits: tuple[PartialEdit, ...]
    units_in_scope: int | None  # candidate (layer, index) units in `layers`, when the geometry is known
    units_total: int | None  # the source's stated total
    units_in_model: int | None  # the geometry's total (all layers)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "model": self.model_repo,
            "revision": self.revision,
            "method": self.method,
            "reference": self.reference,
            "kind": self.kind,
            "layers": list(self.layers) if self.layers is not None else None,
            "max_edits": self.max_edits,
            "exact_edits": self.exact_edits,
            "ops": list(self.ops),
            "factors": list(self.factors),
            "partial_edits": [p.model_dump(exclude_none=True) for p in self.partial_edits],
            "units_in_scope": self.units_in_scope,
            "units_total": self.units_total,
            "units_in_model": self.units_in_model,
            "extra": self.extra,
        }


def parse_constraints(
    raw: Any, *, where: str = "resolution.constraints", positions: dict | None = None, filename: str | None = None
) -> Constraints:
    """Validate a constraints mapping (RecipeError naming file:line when positions are given)."""
    if raw is None:
        return Constraints()
    if isinstance(raw, Constraints):
        return raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: must be a mapping like {{kind: neuron, layers: [10, 12], max_edits: 2}}")
    try:
        cons = Constraints.model_validate(raw)
    except ValidationError as exc:
        if positions is not None and filename is not None:
            from patchkit.recipe.loader import validation_error

            raise validation_error(exc, positions, filename, ("resolution", "constraints")) from None
        err = exc.errors()[0]
        loc = "".join(f".{p}" for p in err["loc"])
        raise RecipeError(f"{where}{loc}: {err['msg'].removeprefix('Value error, ')}") from None
    return cons


def constraints_of(recipe: Any) -> Constraints:
    res = getattr(recipe, "resolution", None)
    raw = getattr(res, "constraints", None) if res is not None else None
    return parse_constraints(raw or {})


def search_space(recipe: Any, *, config: dict[str, Any] | None = None) -> SearchSpace:
    """The search space of an unresolved recipe; with `config` (or a size profile of the recipe's repo) the
    layers are expanded and every constraint is checked against the geometry (RecipeError otherwise)."""
    from patchkit.model.adapters import get_adapter

    res = getattr(recipe, "resolution", None)
    ways = res.effective_ways() if res is not None else []
    cons = constraints_of(recipe)
    spec = getattr(recipe, "model", None)
    repo = getattr(spec, "repo", None)
    if config is None and repo:
        from patchkit.model.profiles import get_profile

        config = get_profile(repo)
    ops = tuple(cons.ops or ())
    kind = cons.kind or ("expert" if "suppress" in ops else "neuron")
    layers = tuple(cons.layers) if cons.layers is not None else None
    in_scope = in_model = None
    where = (
        f"{recipe.where('resolution')}: resolution.constraints"
        if hasattr(recipe, "where")
        else "resolution.constraints"
    )
    if config is not None:
        adapter = get_adapter(config, getattr(spec, "architecture", None))
        n = adapter.num_layers
        bad = [layer for layer in (layers or ()) if layer >= n]
        if bad:
            raise RecipeError(f"{where}.layers: layer {bad[0]} is out of range: this model has {n} layers (0–{n - 1})")
        all_layers = tuple(range(n))

        def units(layer: int) -> int:
            info = adapter.layer_info(layer)
            return (info.num_experts if info.is_moe else 0) if kind == "expert" else info.intermediate_size

        if kind == "expert" and not adapter.is_moe:
            raise RecipeError(
                f"{where}.kind: expert, but {repo or 'the model'} is dense (no experts)", hint="use kind: neuron"
            )
        scope = layers if layers is not None else all_layers
        dense = [layer for layer in scope if units(layer) == 0]
        if dense:
            raise RecipeError(f"{where}.layers: layer {dense[0]} has no experts")
        in_scope = sum(units(layer) for layer in scope)
        in_model = sum(units(layer) for layer in all_layers)
        if cons.units_total is not None and cons.units_total != in_model:
            raise RecipeError(
                f"{where}.units_total: the source counts {cons.units_total} {kind} units but this model has {in_model}",
                hint="is the recipe for this model size?",
            )
        if cons.max_edits is not None and cons.max_edits > in_scope:
            raise RecipeError(f"{where}.max_edits: {cons.max_edits} exceeds the {in_scope} candidate units in scope")
    extra = {k: v for k, v in (cons.model_extra or {}).items()}
    return SearchSpace(
        recipe=getattr(recipe, "name", "?"),
        model_repo=repo,
        revision=getattr(spec, "revision", None),
        method=getattr(res, "method", None) or (ways[0].method if ways else None),
        reference=getattr(res, "reference", None) or next((w.ref for w in ways if w.method == "diff"), None),
        kind=kind,
        layers=layers,
        max_edits=cons.max_edits,
        exact_edits=cons.exact_edits,
        ops=ops,
        factors=tuple(cons.factors or ()),
        partial_edits=tuple(cons.partial_edits),
        units_in_scope=in_scope,
        units_total=cons.units_total,
        units_in_model=in_model,
        extra=extra,
    )


def check_edits_against(recipe_constraints: Constraints, edits: list[Any]) -> list[str]:
    """Where resolved edits (ResolvedEdit list) depart from the constraints: a list of one-line notes.

    Why notes and not errors: constraints come from secondary summaries of a source; edits read from a reference
    checkpoint are authoritative, so a departure is something to tell the user about, never a reason to refuse."""
    notes = []
    c = recipe_constraints
    if c.kind and any(e.kind != c.kind for e in edits):
        notes.append(f"constraints say kind {c.kind}, the edits include other kinds")
    if c.layers is not None:
        outside = sorted({e.layer for e in edits if e.layer not in c.layers})
        if outside:
            notes.append(f"edits in layers {outside} outside the constrained layers {c.layers}")
    if c.max_edits is not None and len(edits) > c.max_edits:
        notes.append(f"{len(edits)} edited units, more than max_edits {c.max_edits}")
    if c.exact_edits is not None and len(edits) != c.exact_edits:
        notes.append(f"{len(edits)} edited units, the source states exactly {c.exact_edits}")
    if c.ops and any(e.op not in c.ops for e in edits):
        notes.append(f"ops {sorted({e.op for e in edits} - set(c.ops))} not among the constrained ops {c.ops}")
    if c.factors:
        odd = sorted({e.factor for e in edits if e.op == "scale" and not any(_close(e.factor, f) for f in c.factors)})
        if odd:
            notes.append(f"scale factors {[f'{f:g}' for f in odd]} not among the constrained factors {c.factors}")
    for i, p in enumerate(c.partial_edits):
        if not any(_matches(p, e) for e in edits):
            what = f"{p.op}" + (f" x{p.factor:g}" if p.factor is not None else "")
            notes.append(f"partial_edits[{i}] (layer {p.layer} {what}) has no matching edit")
    return notes


def _close(a: float, b: float) -> bool:
    """Factors as read back from bf16 weights differ from the stated ones by rounding (e.g. -0.8 -> -0.80078125)."""
    return abs(a - b) <= 1e-2 * max(1.0, abs(b))


def _matches(partial: PartialEdit, edit: Any) -> bool:
    if edit.layer != partial.layer or edit.op != partial.op:
        return False
    return partial.factor is None or _close(edit.factor, partial.factor)


# --- what to run ------------------------------------------------------------------------------------------


def how_to_resolve(recipe: Any) -> str:
    """The command that resolves an unresolved recipe (one clause, for one-line errors)."""
    return recipe._default_how_to_resolve()


def unresolved_error(recipe: Any, name: str | None = None) -> RecipeError:
    """The one-line refusal for applying an unresolved recipe: it names `patchkit recipe resolve NAME`.

    Why apply never resolves by itself: resolving reaches the Hub, may download shards and may pick an
    inferred (unpublished) reference; the user runs that step knowingly, reviews the warnings, then applies.
    `name` is the RECIPE as the user gave it (a shipped short name stays short)."""
    res = recipe.resolution
    arg = name or recipe.path or "RECIPE"
    ways = res.effective_ways() if res is not None else []
    tried = "; it tries " + ", then ".join(w.describe() for w in ways) if ways else ""
    return RecipeError(
        f"{recipe.where('resolution')}: recipe {recipe.name!r} is unresolved (it carries no edits yet): run "
        f"`patchkit recipe resolve {arg}` first{tried} (apply never resolves a recipe on its own)",
        data={"recipe": str(arg), "ways": [w.describe() for w in ways]},
    )
