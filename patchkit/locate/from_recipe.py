"""`patchkit locate --from-recipe`: search only where an unresolved recipe says the edits are, and write the
indices back into that recipe (its name, checks, publish section and constraints are kept).

The recipe's `resolution.constraints` (see `patchkit.recipe.resolution`) narrow the search: `layers` become the
layers searched neuron by neuron, `ops`/`factors`/`partial_edits` the ops tried, `max_edits` (or
`exact_edits`) the largest combination, `kind` whether neurons or experts are candidates.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from patchkit.errors import PatchkitError

__all__ = ["settings_for", "resolved_recipe_data"]

_FIXED_FACTORS = {"invert": -1.0, "zero": 0.0}


def scope_for(space: Any) -> Any:
    """The set search's constraint mode for `space`:

    - "exactly N zero edits anywhere" (E4B: 3, 31B: 1,100): kind neuron, factors (0,), exact N, every layer;
    - "given layers, ops and factors" (E2B: layer 10 x-0.8, layer 12 x3.0): one edit per partial edit, in its
      layer, with its factor;
    - "experts only, exactly N" (26B-A4B: 3): kind expert (suppress), exact N.
    """
    from patchkit.locate.setsearch import GRID, SetScope

    per_layer: dict[int, list[float]] = {}
    for p in space.partial_edits:
        if p.layer is None or p.op == "suppress":
            continue
        f = p.factor if p.factor is not None else _FIXED_FACTORS.get(p.op)
        if f is not None:
            per_layer.setdefault(int(p.layer), []).append(float(f))
    factors: list[float] | None = None
    if space.kind == "neuron" and space.ops:
        factors = sorted(set(_op_factors(space, GRID))) or None
    return SetScope(
        kinds=(space.kind,),
        layers=tuple(sorted(set(space.layers))) if space.layers is not None else None,
        factors=tuple(factors) if factors is not None else None,
        per_layer={k: tuple(sorted(set(v))) for k, v in per_layer.items()},
        exact=space.exact_edits,
        max_edits=space.max_edits,
    )


def _op_factors(space: Any, scale_default: Any) -> list[float]:
    """The factors the space's ops name: invert -1, zero 0, scale its `factors` (or `scale_default`'s
    non-fixed factors when the recipe gives none)."""
    out: list[float] = []
    for op in space.ops:
        if op in _FIXED_FACTORS:
            out.append(_FIXED_FACTORS[op])
        elif op == "scale":
            out.extend(space.factors or [f for f in scale_default if f not in (-1.0, 0.0)])
    return out


def _check_layers(asked: Any, allowed: Any) -> None:
    """--layers must lie inside the recipe's constrained layers (when both are given)."""
    if asked is None or allowed is None:
        return
    outside = sorted(set(asked) - set(allowed))
    if outside:
        raise PatchkitError(
            f"layers {outside} lie outside the recipe's constrained layers {sorted(allowed)}",
            hint="search the recipe's layers, or widen resolution.constraints.layers",
        )


def settings_for(settings: Any, space: Any) -> Any:
    """`settings` narrowed to the search space `space` (a `patchkit.recipe.resolution.SearchSpace`)."""
    _check_layers(settings.layers, space.layers)
    if settings.method == "sets":
        scope = scope_for(space)
        if settings.layers is not None:
            scope = replace(scope, layers=tuple(sorted(settings.layers)))
        return replace(settings, scope=scope, kinds=scope.kinds, max_set=max(settings.max_set, scope.exact or 0))
    factors = _op_factors(space, settings.ops)
    factors.extend(
        p.factor if p.factor is not None else _FIXED_FACTORS.get(p.op, 0.0)
        for p in space.partial_edits
        if p.op != "suppress"
    )
    ops = tuple(sorted(set(factors))) if factors else tuple(settings.ops)
    layers = sorted(set(space.layers)) if space.layers is not None else settings.layers
    if settings.layers is not None and space.layers is not None:
        layers = sorted(settings.layers)
    max_edits = space.exact_edits or space.max_edits or settings.max_edits
    return replace(
        settings,
        layers=layers,
        ops=ops,
        max_edits=max_edits,
        top_layers=len(layers) if layers else settings.top_layers,
        kinds=(space.kind,),
    )


def resolved_recipe_data(base: Any, generated: dict[str, Any], *, confirmed: bool) -> dict[str, Any]:
    """The unresolved recipe `base` with locate's findings (`generated`: the data of locate's own recipe)."""
    from patchkit._version import __version__
    from patchkit.recipe.resolution import check_edits_against, constraints_of

    data = base.model_dump(mode="json", exclude_none=True)
    data.pop("edits", None)
    source = dict(generated["source"])
    source["constraints_from"] = dict(data.get("source") or {})
    data["source"] = source
    res = dict(data.get("resolution") or {})
    if confirmed:
        data["edits"] = generated["edits"]
        data["description"] = (data.get("description", "").rstrip() + "\n" + generated["description"]).strip()
        res.update(status="resolved", method="locate", resolved_by=f"patchkit locate (patchkit {__version__})")
        ways = res.get("ways") or []
        locate_ways = [i for i, w in enumerate(ways) if isinstance(w, dict) and w.get("method") == "locate"]
        if locate_ways:  # the recipe lists its ways: record that the locate one resolved it
            res["resolved_via"] = f"ways[{locate_ways[0]}]"
        res.pop("how_to_resolve", None)
        from patchkit.recipe import Recipe

        notes = check_edits_against(constraints_of(base), Recipe.model_validate(data).expanded_edits())
        if notes:
            res.setdefault("constraints", {})["departures"] = notes
    else:
        constraints = dict(res.get("constraints") or {})
        constraints["last_locate"] = generated["resolution"]["constraints"]["last_locate"]
        res["constraints"] = constraints
    data["resolution"] = res
    return data
