"""The model card (README.md) for a patched checkpoint, built with `huggingface_hub.ModelCard`/`ModelCardData`.

Front matter: base_model + base_model_relation, license inherited from the base, tags, pipeline_tag and
`model-index` entries for the loop and benchmark results. Body: what changed and why, the edits, a diff summary,
before/after numbers with n and 95% intervals, how to reproduce, and the provenance (base revision, hashes).
Everything comes from patchkit.json (written by `patchkit apply`) and the JSON reports of `patchkit loops` /
`patchkit bench`; nothing here touches the network.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit._io.fs import MAX_SIDE_FILE_BYTES, read_capped, read_json_file
from patchkit.errors import PatchkitError

# Why "finetune": the Hub allows adapter | merge | quantized | finetune. A patched checkpoint is a complete set of
# weights of the base architecture in which a few rows/columns changed value - not an adapter (no separate small
# weights loaded on top of the base), not a merge (one parent, nothing combined), not quantized (dtype and
# precision are the base's). "finetune" is the Hub's relation for "same architecture, weights modified from the
# base", which is exactly what an edit is, and it keeps the repo listed under the base model's fine-tunes tree.
BASE_MODEL_RELATION = "finetune"
DEFAULT_PIPELINE_TAG = "text-generation"
MAX_EDIT_ROWS = 40
#: loop metrics that go into model-index (the table in the body shows every metric of the report)
LOOP_HEADLINE_METRICS = ("loop_rate", "completeness", "good_list_rate", "control_accuracy", "control_loop_rate")


class CardError(PatchkitError):
    """A report or provenance file cannot be turned into a model card."""


@dataclass
class Row:
    """One measured quantity, normalised from a loops or bench report (bench's Figure has the same fields)."""

    key: str
    label: str
    n: int | None = None
    base: float | None = None
    patched: float | None = None
    delta: float | None = None
    base_ci: tuple[float, float] | None = None
    patched_ci: tuple[float, float] | None = None
    delta_ci: tuple[float, float] | None = None
    p_value: float | None = None
    unit: str = ""
    kind: str = "paired"
    base_k: int | None = None
    patched_k: int | None = None


# ---------------------------------------------------------------------------------------------------------------
# reading reports
# ---------------------------------------------------------------------------------------------------------------
def load_report(source: str | Path | dict | None, what: str) -> dict | None:
    if source is None or isinstance(source, dict):
        return source
    path = Path(source)
    try:
        data = read_json_file(path, what=f"{what} report", error=CardError)
    except FileNotFoundError as exc:
        raise CardError(
            f"{path}: {what} report not found", hint=f"write it with `patchkit {what} --json > {path.name}`"
        ) from exc
    except OSError as exc:
        raise CardError(f"{path}: cannot read the {what} report ({exc.strerror or exc})") from exc
    except CardError as exc:  # not JSON, too large, ...: say which output it should be
        raise CardError(exc.message, hint=f"use the output of `patchkit {what} --json`", data=exc.data) from None
    if not isinstance(data, dict):
        raise CardError(
            f"{path}: {what} report must be a JSON object", hint=f"use the output of `patchkit {what} --json`"
        )
    return data


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    return None


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_num(v) is not None for v in value):
        return float(value[0]), float(value[1])
    if isinstance(value, dict):
        for lo, hi in (("lo", "hi"), ("low", "high"), ("lower", "upper")):
            if _num(value.get(lo)) is not None and _num(value.get(hi)) is not None:
                return float(value[lo]), float(value[hi])
    return None


@dataclass
class _Value:
    value: float | None = None
    n: int | None = None
    ci: tuple[float, float] | None = None
    k: int | None = None  # successes, for rates given as k/n


def _metric(value: Any, siblings: dict, key: str) -> _Value:
    """A metric given as a number or as {value|rate|mean, k, n, ci|interval}; its interval may be a sibling key."""
    n = siblings.get("n") if isinstance(siblings.get("n"), int) else None
    ci = _interval(siblings.get(f"{key}_ci")) or _interval(siblings.get(f"{key}_interval"))
    if isinstance(value, dict):
        number = next(
            (_num(value.get(k)) for k in ("value", "rate", "mean", "estimate") if _num(value.get(k)) is not None), None
        )
        n = value.get("n") if isinstance(value.get("n"), int) else n
        ci = next(
            (_interval(value.get(k)) for k in ("ci", "interval", "ci95", "wilson") if _interval(value.get(k))), ci
        ) or _interval(value)
        k = value.get("k") if isinstance(value.get("k"), int) else None
        return _Value(number, n, ci, k)
    return _Value(_num(value), n, ci)


_SKIP = re.compile(r"(^n$|^k$|_ci$|_interval$|^count$)")
_RATE = re.compile(r"(rate|accuracy|completeness|share|agreement)$")


def _row(prefix: str, key: str, base: _Value, patched: _Value, **extra: Any) -> Row:
    delta = None if patched.value is None or base.value is None else patched.value - base.value
    row = Row(
        key=f"{prefix}.{key}",
        label=key.replace("_", " "),
        n=patched.n or base.n,
        base=base.value,
        patched=patched.value,
        delta=delta,
        base_ci=base.ci,
        patched_ci=patched.ci,
        unit="rate" if _RATE.search(key) or patched.k is not None else "",
    )
    row.base_k, row.patched_k = base.k, patched.k
    for name, value in extra.items():
        if value is not None:
            setattr(row, name, value)
    return row


def _rows_from_overall(overall: dict, prefix: str) -> list[Row]:
    rows: list[Row] = []
    if isinstance(overall.get("base"), dict) and isinstance(overall.get("patched"), dict):
        base, patched = overall["base"], overall["patched"]
        for key in [k for k in patched if not _SKIP.search(k)]:
            pv, bv = _metric(patched[key], patched, key), _metric(base.get(key), base, key)
            if pv.value is not None or bv.value is not None:
                rows.append(_row(prefix, key, bv, pv))
        return rows
    for key, value in overall.items():
        if _SKIP.search(key):
            continue
        if isinstance(value, dict) and ("base" in value or "patched" in value):
            bv, pv = _metric(value.get("base"), value, "base"), _metric(value.get("patched"), value, "patched")
            bv.ci = bv.ci or _interval(value.get("base_ci"))
            pv.ci = pv.ci or _interval(value.get("patched_ci"))
            if isinstance(value.get("n"), int):
                pv.n = value["n"]
            rows.append(
                _row(
                    prefix,
                    key,
                    bv,
                    pv,
                    delta=_num(value.get("delta")),
                    delta_ci=_interval(value.get("delta_ci")),
                    p_value=_num(value.get("p_value")),
                )
            )
        else:
            pv = _metric(value, overall, key)
            if pv.value is not None:
                rows.append(_row(prefix, key, _Value(), pv, kind="single"))
    return rows


def report_rows(report: dict | None, prefix: str) -> list[Row]:
    """Rows of a loops or bench report: bench's `figures` list, or any report's `overall` metrics.

    A `patchkit check --json` report is accepted too: its nested `loops` / `bench` report is used.
    """
    if not report:
        return []
    nested = report.get(prefix)
    if isinstance(nested, dict) and ("figures" in nested or "overall" in nested):
        report = nested
    rows: list[Row] = []
    for fig in report.get("figures") or []:
        if not isinstance(fig, dict) or "key" not in fig:
            continue
        rows.append(
            Row(
                key=str(fig["key"]),
                label=str(fig.get("label") or fig["key"]),
                n=fig.get("n"),
                base=_num(fig.get("base")),
                patched=_num(fig.get("patched")),
                delta=_num(fig.get("delta")),
                base_ci=_interval(fig.get("base_ci")),
                patched_ci=_interval(fig.get("patched_ci")),
                delta_ci=_interval(fig.get("delta_ci")),
                p_value=_num(fig.get("p_value")),
                unit=str(fig.get("unit") or ""),
                kind=str(fig.get("kind") or "paired"),
            )
        )
    overall = report.get("overall")
    if isinstance(overall, dict):
        rows.extend(_rows_from_overall(overall, prefix))
        return rows
    for holder in (report, report.get("models"), report.get("results")):
        # per-model reports: {"base": {"overall": {...}}, "patched": {"overall": {...}}} (also under models/results)
        if (
            isinstance(holder, dict)
            and isinstance(holder.get("patched"), dict)
            and isinstance(holder["patched"].get("overall"), dict)
        ):
            base = holder.get("base")
            if not isinstance(base, dict):
                base = {}
            rows.extend(
                _rows_from_overall({"base": base.get("overall") or {}, "patched": holder["patched"]["overall"]}, prefix)
            )
            break
    return rows


# ---------------------------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------------------------
def _base_card_meta(base_card: str | None) -> dict[str, Any]:
    if not base_card:
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard(base_card, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # noqa: BLE001 - a broken base card only means nothing is inherited from it
        return {}


def _recipe(provenance: dict) -> dict:
    recipe = provenance.get("recipe") or {}
    return recipe.get("normalized") or {}


def base_repo_of(provenance: dict) -> str | None:
    """The Hub repo of the base: provenance `base.repo`, else the repo the recipe pins (`model.repo`) when the
    recipe was applied to a local copy of it."""
    repo = (provenance.get("base") or {}).get("repo") or (_recipe(provenance).get("model") or {}).get("repo")
    return str(repo) if repo and re.fullmatch(r"[\w.-]+/[\w.-]+", str(repo)) else None


def resolve_license(provenance: dict, base_meta: dict) -> dict[str, str]:
    """license (+ license_name/link for `other`) from recipe `publish.license`, else the base model's card."""
    publish = _recipe(provenance).get("publish") or {}
    if publish.get("license"):
        out = {"license": str(publish["license"])}
        if base_meta.get("license") == out["license"]:
            out.update({k: base_meta[k] for k in ("license_name", "license_link") if base_meta.get(k)})
        return out
    if base_meta.get("license"):
        return {k: str(base_meta[k]) for k in ("license", "license_name", "license_link") if base_meta.get(k)}
    return {}


def _suite(loops_report: dict | None) -> str:
    report = loops_report or {}
    if isinstance(report.get("loops"), dict):
        report = report["loops"]
    suite = report.get("suite")
    if isinstance(suite, dict):
        suite = suite.get("name")
    return str(suite or "enumeration")


def _eval_results(
    model_name: str, loops: list[Row], bench: list[Row], loops_report: dict | None, bench_report: dict | None
):
    from huggingface_hub import EvalResult

    results = []
    suite = str(_suite(loops_report))
    headline = [r for r in loops if r.key.split(".", 1)[-1] in LOOP_HEADLINE_METRICS] or loops
    for row in headline:
        if row.patched is None:
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="loop check",
                dataset_type=f"patchkit/probes-{suite}",
                dataset_name=f"patchkit {suite} probes",
                metric_type=row.key.split(".", 1)[-1],
                metric_name=f"{row.label} (patched)",
                metric_value=round(row.patched, 6),
            )
        )
    for row in bench:
        value = row.delta if row.kind in ("comparison", "ratio") or row.patched is None else row.patched
        if value is None:
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="drift vs base",
                dataset_type="patchkit/bench",
                dataset_name="patchkit bench",
                metric_type=row.key,
                metric_name=row.label,
                metric_value=round(value, 6),
            )
        )
    return results


# ---------------------------------------------------------------------------------------------------------------
# body
# ---------------------------------------------------------------------------------------------------------------
def _fmt(value: float | None, unit: str = "", k: int | None = None, n: int | None = None) -> str:
    if value is None:
        return "–"
    if unit in ("rate", "acc"):
        return f"{value:.3f}" + (f" ({k}/{n})" if k is not None and n else "")
    return f"{value:.4g}"


def _ci(ci: tuple[float, float] | None, unit: str = "") -> str:
    if ci is None:
        return "–"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if unit in ("rate", "acc") else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _cell(text: Any) -> str:
    """Table-safe text: a `|` inside a cell (as in "KL(base||patched)") would split the Markdown row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _results_table(rows: list[Row]) -> list[str]:
    lines = [
        "| metric | base | patched | delta | n | 95% interval (base / patched / delta) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        intervals = " / ".join(_ci(c, r.unit) for c in (r.base_ci, r.patched_ci, r.delta_ci))
        lines.append(
            f"| {_cell(r.label)} | {_fmt(r.base, r.unit, r.base_k, r.n)} | {_fmt(r.patched, r.unit, r.patched_k, r.n)} | "
            f"{_fmt(r.delta, r.unit)} | "
            f"{r.n if r.n is not None else '–'} | {intervals} |"
        )
    return lines


def _edits_section(edits: list[dict]) -> list[str]:
    if not edits:
        return ["No weight edits are recorded in patchkit.json."]
    lines = ["| # | layer | kind | index | op | factor | tensor | file |", "|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(edits[:MAX_EDIT_ROWS], 1):
        lines.append(
            f"| {i} | {e.get('layer', '')} | {e.get('kind', '')} | {e.get('index', '')} | {e.get('op', '')} | "
            f"{e.get('factor', '')} | `{e.get('tensor', '')}` | {e.get('file', '')} |"
        )
    if len(edits) > MAX_EDIT_ROWS:
        lines.append(f"\n… and {len(edits) - MAX_EDIT_ROWS} more edits (all listed in `patchkit.json`).")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _diff_summary(provenance: dict) -> list[str]:
    edits = provenance.get("edits") or []
    outputs = provenance.get("output_files") or {}
    rewritten = sorted(n for n, i in outputs.items() if i.get("rewritten"))
    weights = sorted(n for n in outputs if n.endswith(".safetensors"))
    tensors = sorted({e.get("tensor") for e in edits if e.get("tensor")})
    layers = sorted({e.get("layer") for e in edits if isinstance(e.get("layer"), int)})
    ops: dict[str, int] = {}
    for e in edits:
        ops[str(e.get("op"))] = ops.get(str(e.get("op")), 0) + 1
    op_text = ", ".join(f"{n} × {op}" for op, n in sorted(ops.items())) or "none"
    return [
        f"- {_plural(len(edits), 'edit')} ({op_text}) in {_plural(len(tensors), 'tensor')} across "
        f"{_plural(len(layers), 'layer')}"
        + (f" ({', '.join(map(str, layers[:12]))}{'…' if len(layers) > 12 else ''})" if layers else ""),
        f"- {len(rewritten)} of {len(weights)} weight files rewritten; every other file is byte-identical to the base",
        "- tensor names, shapes and dtypes are unchanged: the checkpoint loads wherever the base loads",
    ]


def _base_revision(provenance: dict) -> str | None:
    return (provenance.get("base") or {}).get("revision") or (_recipe(provenance).get("model") or {}).get("revision")


def _public_ref(provenance: dict) -> str:
    """The base as a Hub reference; a local path is never printed (it says nothing to readers, leaks a home dir)."""
    return base_repo_of(provenance) or "a local copy of the base model"


def _provenance_section(provenance: dict) -> list[str]:
    base = provenance.get("base") or {}
    recipe = provenance.get("recipe") or {}
    lines = [
        f"- base: `{_public_ref(provenance)}` at revision `{_base_revision(provenance) or 'unknown'}`"
        f" ({base.get('architecture') or 'unknown architecture'})",
        f"- recipe sha256: `{recipe.get('sha256', 'unknown')}`",
        f"- patchkit version: `{provenance.get('patchkit_version', 'unknown')}`, created {provenance.get('created', 'unknown')}",
        "",
        "| file | size | sha256 | rewritten |",
        "|---|---|---|---|",
    ]
    for name, info in sorted((provenance.get("output_files") or {}).items()):
        if name == "README.md":
            continue  # the base card that apply copied; this card replaces it
        lines.append(
            f"| {name} | {info.get('size', '')} | `{info.get('sha256', '')}` | {'yes' if info.get('rewritten') else 'no'} |"
        )
    sources = provenance.get("source_files") or {}
    if sources:
        lines += ["", "Base shards this was built from:", "", "| base file | sha256 |", "|---|---|"]
        lines += [f"| {n} | `{i.get('sha256', '')}` |" for n, i in sorted(sources.items())]
    return lines


def _reproduce(provenance: dict, repo_id: str | None) -> list[str]:
    recipe = provenance.get("recipe") or {}
    model = base_repo_of(provenance) or "BASE_MODEL_DIR"
    revision = _base_revision(provenance)
    if revision and base_repo_of(provenance):
        model = f"{model}@{revision}"
    recipe_name = Path(str(recipe.get("path") or "recipe.yaml")).name
    lines = [
        "```bash",
        "pip install patchkit",
        f"patchkit apply {recipe_name} --model {model} --out patched/",
        f"patchkit verify {recipe_name} --model {model} --patched patched/",
    ]
    if repo_id:
        lines += [
            f"patchkit pull {repo_id} --local-dir pulled/   # or compare with this repo",
            f"patchkit diff {model} {repo_id}",
        ]
    lines.append("```")
    if recipe.get("text"):
        lines += [
            "",
            f"<details><summary>{recipe_name}</summary>",
            "",
            "```yaml",
            str(recipe["text"]).rstrip(),
            "```",
            "",
            "</details>",
        ]
    return lines


def build_card(
    provenance: dict | None,
    *,
    loops_report: str | Path | dict | None = None,
    bench_report: str | Path | dict | None = None,
    base_card: str | None = None,
    repo_id: str | None = None,
):
    """Build and validate the ModelCard (raises CardError if huggingface_hub rejects its metadata)."""
    from huggingface_hub import ModelCard, ModelCardData

    provenance = provenance or {}
    loops_data = load_report(loops_report, "loops")
    bench_data = load_report(bench_report, "bench")
    loops, bench = report_rows(loops_data, "loops"), report_rows(bench_data, "bench")
    base_meta = _base_card_meta(base_card)
    base = provenance.get("base") or {}
    recipe = _recipe(provenance)
    architecture = base.get("architecture") or (recipe.get("model") or {}).get("architecture")
    name = repo_id.split("/")[-1] if repo_id else (recipe.get("name") or "patched-model")
    tags = ["patchkit", "loop-fix"] + ([str(architecture)] if architecture else [])
    tags += [t for t in base_meta.get("tags") or [] if isinstance(t, str) and t not in tags]
    metadata: dict[str, Any] = {
        "library_name": base_meta.get("library_name") or "transformers",
        "pipeline_tag": base_meta.get("pipeline_tag") or DEFAULT_PIPELINE_TAG,
        "tags": tags,
        **resolve_license(provenance, base_meta),
    }
    base_repo = base_repo_of(provenance)
    if base_repo:
        metadata["base_model"] = base_repo
        metadata["base_model_relation"] = BASE_MODEL_RELATION
    results = _eval_results(name, loops, bench, loops_data, bench_data)
    if results:
        metadata["model_name"] = name
        metadata["eval_results"] = results
    data = ModelCardData(**metadata)

    title = recipe.get("name") or name
    why = recipe.get("description") or "Fixes repetition loops of the base model with a small, auditable weight edit."
    source = recipe.get("source") or {}
    body = [
        f"# {title}",
        "",
        f"This is `{_public_ref(provenance)}` with a handful of weights edited by "
        "[patchkit](https://pypi.org/project/patchkit/): same architecture, same tensors, a few changed values.",
        "",
        "## What changed and why",
        "",
        str(why).strip(),
    ]
    if source:
        ref = source.get("reference") or source.get("ref")
        body += ["", f"Source of the edit: **{source.get('kind', 'manual')}**" + (f" ({ref})" if ref else "") + "."]
    body += [
        "",
        "### Edits",
        "",
        *_edits_section(provenance.get("edits") or []),
        "",
        "### Diff summary",
        "",
        *_diff_summary(provenance),
    ]
    body += ["", "## Results", ""]
    if loops:
        suite = _suite(loops_data)
        body += [
            f"Loop check (`patchkit loops`, suite `{suite}`): rates are looping generations / n with Wilson 95% "
            "intervals; completeness is the share of true list items produced.",
            "",
            *_results_table(loops),
            "",
        ]
    if bench:
        body += [
            "Drift from the base (`patchkit bench`): deltas are patched − base (ratios patched / base), intervals "
            "are 95% (paired bootstrap / Wilson).",
            "",
            *_results_table(bench),
            "",
        ]
    if not loops and not bench:
        body += [
            "No check reports were attached when this card was written: run `patchkit loops` and `patchkit bench` "
            "and regenerate it with `patchkit card`.",
            "",
        ]
    body += [
        "## How to reproduce",
        "",
        *_reproduce(provenance, repo_id),
        "",
        "## Provenance",
        "",
        *_provenance_section(provenance),
        "",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    try:
        card = ModelCard(content)
    except Exception as exc:  # noqa: BLE001 - surfaced as one line
        raise CardError(
            f"the generated model card does not validate: {exc}".splitlines()[0],
            hint="check the loops/bench report fields",
        ) from exc
    return card


def card_for_dir(
    directory: str | Path,
    *,
    provenance: dict | None = None,
    loops_report=None,
    bench_report=None,
    repo_id: str | None = None,
):
    """The card for an apply output directory: its patchkit.json, plus the base card it may carry as README.md."""
    directory = Path(directory)
    if provenance is None:
        path = directory / "patchkit.json"
        if path.is_file():
            provenance = read_json_file(path, what="provenance file", root=directory, error=CardError)
    readme = directory / "README.md"
    base_card = (
        read_capped(readme, MAX_SIDE_FILE_BYTES, what="model card", root=directory, error=CardError).decode(
            "utf-8", errors="replace"
        )
        if readme.is_file()
        else None
    )
    if base_card is not None and "patchkit" in (_base_card_meta(base_card).get("tags") or []):
        base_card = None  # a card patchkit wrote earlier is not the base model's card
    return build_card(
        provenance, loops_report=loops_report, bench_report=bench_report, base_card=base_card, repo_id=repo_id
    )


def card_metadata(card_text: str) -> dict[str, Any]:
    """Front matter of a card as a plain dict (model-index included), parsed back by huggingface_hub."""
    from huggingface_hub import ModelCard

    return ModelCard(card_text).data.to_dict()
