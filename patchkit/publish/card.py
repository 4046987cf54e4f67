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
#: The PyPI distribution patchkit is published as (the import name and the command stay `patchkit`): the card's
#: install lines must name it, or `pip install` fetches some other package or nothing.
DISTRIBUTION = "patchkit-llm"
#: The one web link a card adds of its own: the project's PyPI page (it exists once the distribution is released,
#: which every published card's patchkit was installed from). Never a source-repo path (not public) or localhost.
PROJECT_URL = f"https://pypi.org/project/{DISTRIBUTION}/"
#: Repo ids that only ever mean "fill this in" (what starters and docs write): never claimed as a base model.
_PLACEHOLDER_REPO = re.compile(r"(org/name|your-org/.*|.*<.*>.*)", re.IGNORECASE)
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
    recipe was applied to a local copy of it.

    A placeholder (`org/name`, `your-org/...`) is not a repo: claiming it as `base_model` would link the card to a
    model that does not exist, so a base known by nothing else is described as a local model instead.
    """
    for repo in ((provenance.get("base") or {}).get("repo"), (_recipe(provenance).get("model") or {}).get("repo")):
        if repo and re.fullmatch(r"[\w.-]+/[\w.-]+", str(repo)) and not _PLACEHOLDER_REPO.fullmatch(str(repo)):
            return str(repo)
    return None


def architecture_of(provenance: dict) -> str | None:
    """The base's architecture: what apply read from the model (`base.architecture`), else the recipe's
    `model.architecture` (provenance written before apply recorded it)."""
    arch = (provenance.get("base") or {}).get("architecture") or (_recipe(provenance).get("model") or {}).get(
        "architecture"
    )
    return str(arch) if arch else None


def local_base_name(provenance: dict) -> str | None:
    """The name of a base that is not on the Hub: its directory's (or first source file's) last path component.

    Only the name: the full path says nothing to a reader and would leak the author's directory layout.
    None when the base is a Hub repo, or nothing names it.
    """
    if base_repo_of(provenance):
        return None
    base = provenance.get("base") or {}
    files = [f.get("name") for f in base.get("files") or [] if isinstance(f, dict) and f.get("name")]
    ref = base.get("ref") or (files[0] if files else None)
    if not ref:
        return None
    name = Path(str(ref).rstrip("/\\")).name
    return name or None


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
    """The base as Markdown: its Hub repo, else the local model's name (never its full path: that says nothing to
    readers and leaks a home dir)."""
    repo = base_repo_of(provenance)
    if repo:
        return f"`{repo}`"
    name = local_base_name(provenance)
    shown = re.sub(r"[`\s|]+", "_", name) if name else None  # stays one inline code span, one table cell
    return f"the local model `{shown}`" if shown else "a local base model"


def _base_notes(provenance: dict, architecture: str | None = None) -> str:
    """What follows the base's name in prose: its architecture and, for a local base, what identifies it."""
    notes = [f"architecture `{architecture}`"] if architecture else []
    if not base_repo_of(provenance):
        notes.append("not a Hub repo: the sha256s of its files under Provenance identify it")
    return f" ({'; '.join(notes)})" if notes else ""


def _base_line(provenance: dict) -> str:
    """The provenance bullet for the base: repo at revision, or what identifies a local base (its file hashes)."""
    arch = architecture_of(provenance) or "unknown architecture"
    if base_repo_of(provenance):
        return f"- base: {_public_ref(provenance)} at revision `{_base_revision(provenance) or 'unknown'}` ({arch})"
    return (
        f"- base: {_public_ref(provenance)} ({arch}), not a Hub repo: no revision pins it, the sha256 of each of "
        "its files below does"
    )


def _provenance_section(provenance: dict) -> list[str]:
    recipe = provenance.get("recipe") or {}
    lines = [
        _base_line(provenance),
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
    recipe_name = Path(str(recipe.get("file") or recipe.get("path") or "recipe.yaml")).name
    lines = []
    if not base_repo_of(provenance):
        lines += [
            f"`BASE_MODEL_DIR` is your copy of the base, {_public_ref(provenance)}: check its files against the "
            "sha256s under Provenance first.",
            "",
        ]
    lines += [
        "```bash",
        f"pip install {DISTRIBUTION}",
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


def _source_line(source: dict) -> str:
    """`Source of the edit: **diff** (org/name).`, saying when the reference was inferred rather than published
    (a name that only follows the published pattern: the reader must not take it for the authors' own)."""
    ref = source.get("reference") or source.get("ref")
    status = source.get("reference_status")
    note = f"; an **{status}** reference" if status == "inferred" else (f"; {status} reference" if status else "")
    return f"Source of the edit: **{source.get('kind', 'manual')}**" + (f" ({ref}{note})" if ref else "") + "."


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
    recipe = _recipe(provenance)
    architecture = architecture_of(provenance)
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
        f"This is {_public_ref(provenance)}{_base_notes(provenance, architecture)} with a handful of weights edited by [patchkit]({PROJECT_URL}): same architecture, same tensors, "
        "a few changed values.",
        "",
        "## What changed and why",
        "",
        str(why).strip(),
    ]
    if source:
        body += ["", _source_line(source)]
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


# ---------------------------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------------------------
# Why "quantized" (and not "adapter"): the Hub knows four relations, adapter | merge | quantized | finetune, and
# infers one when the card names none. An adapter is a small set of extra weights loaded on top of the base
# (LoRA): this file is a complete model that loads alone, so "adapter" would be false. A recipe's `model.repo`
# is the full-precision model the edit was found on (google/gemma-4-E2B-it, not a -GGUF repo); against it this
# file is a llama.cpp quantization - made by whoever quantized the source GGUF - whose block scales for a few
# rows were then rescaled. Its precision, format and runtime are a quantization's, and the Hub lists it where
# people look for GGUFs of that model: under the base's quantizations. The edit itself is stated in the body and
# the tags. When the recipe's repo is itself a GGUF repo (a name ending in "gguf"), the file is the same quantized
# weights with a few values modified: that is the safetensors card's "finetune" (see BASE_MODEL_RELATION).
GGUF_BASE_MODEL_RELATION = "quantized"
GGUF_TAGS = ("gguf", "patchkit", "llama.cpp", "ollama")
_GGUF_REPO = re.compile(r"gguf$", re.IGNORECASE)
#: a quant label in a GGUF file name (what `llama-cli -hf REPO:TAG` and `ollama run hf.co/REPO:TAG` match)
_QUANT_LABEL = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8](?:_[A-Z0-9]+)*|TQ[12]_0|MXFP4(?:_MOE)?|BF16|F16|F32))(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SPLIT_SUFFIX = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,63}")


@dataclass(frozen=True)
class GGUFFile:
    """One file of a published GGUF: its upload name, size and (when known) sha256."""

    name: str
    size: int
    sha256: str | None = None


def _parsed_recipe(text: str | None) -> dict:
    """The recipe carried in a GGUF's metadata as a normalized dict (what a safetensors provenance stores as
    `recipe.normalized`); {} when it no longer parses (the card then says less, it is never refused for that)."""
    if not text:
        return {}
    from patchkit.recipe.loader import parse_recipe

    try:
        recipe = parse_recipe(text)
    except PatchkitError:
        return {}
    return recipe.model_dump(mode="json", exclude_none=True)


def quant_label(file_name: str) -> str | None:
    """The quant label in a GGUF file name (`model-Q4_K_M.gguf` -> Q4_K_M), None when it names none.

    `llama-cli -hf REPO:TAG` and `ollama run hf.co/REPO:TAG` pick the repo file whose name carries TAG, so a tag
    is only offered when the file name has one; without a tag both take the repo's (only) GGUF.
    """
    stem = _SPLIT_SUFFIX.sub("", file_name)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    found = _QUANT_LABEL.findall(stem)
    return found[-1].upper() if found else None


def _section(body: list[str], *lines: str) -> None:
    """Append `lines` to `body` after exactly one blank line."""
    while body and body[-1] == "":
        body.pop()
    body += ["", *lines]
    while body and body[-1] == "":
        body.pop()


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside `text` (a recipe note cannot close the block)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _unit(edit: dict) -> str:
    kind, index = edit.get("kind"), edit.get("index")
    return f"{kind} {index}" if kind is not None and index is not None else str(kind or index or "")


def _op(edit: dict) -> str:
    op, factor = edit.get("op"), edit.get("factor")
    if isinstance(factor, (int, float)) and not isinstance(factor, bool):
        return f"{op} (×{factor:g})"
    return str(op or "")


def _gguf_edits_section(edits: list[dict]) -> list[str]:
    if not edits:
        return ["No weight edits are recorded in the file's `patchkit.provenance` metadata."]
    lines = [
        "| # | layer | unit | op (factor) | tensor | rows | type | changed bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, e in enumerate(edits[:MAX_EDIT_ROWS], 1):
        rows = e.get("rows")
        span = (
            (f"{rows[0]}" if rows[1] - rows[0] == 1 else f"{rows[0]}–{rows[1] - 1}")
            if isinstance(rows, list) and len(rows) == 2 and all(isinstance(r, int) for r in rows)
            else ""
        )
        lines.append(
            f"| {i} | {_cell(e.get('layer', ''))} | {_cell(_unit(e))} | {_cell(_op(e))} | `{_cell(e.get('tensor', ''))}` | "
            f"{span} | {_cell(e.get('type', ''))} | {_cell(e.get('changed_bytes', ''))} |"
        )
    if len(edits) > MAX_EDIT_ROWS:
        lines.append(f"\n… and {len(edits) - MAX_EDIT_ROWS} more edits (all listed in `patchkit.provenance`).")
    return lines


def _size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _gguf_run_section(repo_id: str | None, files: list[GGUFFile]) -> list[str]:
    repo = repo_id or "ORG/NAME"
    first = files[0].name if files else "MODEL.gguf"
    tag = quant_label(first)
    ref = f"{repo}:{tag}" if tag else repo
    lines = [
        "### llama.cpp",
        "",
        "```bash",
        f"llama-cli -hf {ref}",
        f"llama-server -hf {ref}",
        "```",
        "",
    ]
    if len(files) == 1:
        lines += [
            "or name the file exactly:",
            "",
            "```bash",
            f"llama-cli --hf-repo {repo} --hf-file {first}",
            "```",
            "",
            "### Ollama",
            "",
            "```bash",
            f"ollama run hf.co/{ref}",
            "```",
            "",
        ]
    else:
        name = repo.split("/")[-1].lower()
        lines += [
            "### Ollama",
            "",
            f"This model is a split set of {len(files)} files, which Ollama does not load: merge the parts into "
            "one file (llama.cpp's `llama-gguf-split`) and import that.",
            "",
            "```bash",
            f"hf download {repo} --local-dir {name}/",
            f"llama-gguf-split --merge {name}/{first} {name}.gguf",
            f'echo "FROM ./{name}.gguf" > Modelfile',
            f"ollama create {name} -f Modelfile",
            f"ollama run {name}",
            "```",
            "",
        ]
    if not tag:
        lines += [
            "The file name carries no quant label, so the commands give no `:TAG`: the Hub then serves the repo's "
            "GGUF (of several, it picks one), so keep one model per repo, or name the file after its quant "
            "(`NAME-Q4_K_M.gguf`) and add the tag.",
            "",
        ]
    return lines


def _gguf_verify_section(provenance: dict, repo_id: str | None, files: list[GGUFFile]) -> list[str]:
    recipe = provenance.get("recipe") or {}
    recipe_name = Path(str(recipe.get("file") or recipe.get("path") or "recipe.yaml")).name
    base = provenance.get("base") or {}
    sources = [f.get("name") for f in base.get("files") or [] if isinstance(f, dict) and f.get("name")]
    source = Path(str(sources[0])).name if sources else "SOURCE.gguf"
    patched = files[0].name if files else "MODEL.gguf"
    repo = repo_id or "ORG/NAME"
    source_repo = base_repo_of(provenance)
    lines = [
        f"Get the source GGUF this was made from (`{source}`"
        + (f", a quantization of `{source_repo}`" if source_repo else "")
        + f") and save the recipe below as `{recipe_name}`, then:",
        "",
        "```bash",
        f"pip install '{DISTRIBUTION}[gguf]'",
        f"hf download {repo} --local-dir patched/",
        f"patchkit verify {recipe_name} --model {source} --patched patched/{patched}",
        f"patchkit diff {source} patched/{patched}",
        "```",
        "",
        "`verify` re-applies the recipe to the source and compares every byte (exit 0 only on an exact match); "
        "`diff` lists the changed rows and classifies each change.",
    ]
    return lines


def _gguf_provenance_section(provenance: dict, files: list[GGUFFile]) -> list[str]:
    base = provenance.get("base") or {}
    recipe = provenance.get("recipe") or {}
    lines = [
        f"- patchkit version: `{provenance.get('patchkit_version', 'unknown')}`, created "
        f"{provenance.get('created', 'unknown')}",
        f"- recipe sha256: `{recipe.get('sha256') or 'unknown'}`",
    ]
    if base_repo_of(provenance):
        revision = _base_revision(provenance)
        lines.append(f"- base model: `{base_repo_of(provenance)}`" + (f" at revision `{revision}`" if revision else ""))
    parent = provenance.get("parent")
    if isinstance(parent, dict):
        lines.append(
            f"- applied on top of an earlier patchkit GGUF: recipe `{parent.get('recipe') or 'unknown'}` "
            f"(sha256 `{parent.get('recipe_sha256') or 'unknown'}`)"
        )
    sources = [f for f in base.get("files") or [] if isinstance(f, dict)]
    digests = [d for d in provenance.get("source_sha256") or [] if isinstance(d, str)]
    lines += ["", "Source GGUF:", "", "| source file | size | sha256 |", "|---|---|---|"]
    for i, item in enumerate(sources):
        digest = digests[i] if i < len(digests) else "unknown"
        lines.append(f"| {_cell(Path(str(item.get('name', ''))).name)} | {item.get('size', '')} | `{digest}` |")
    if not sources:
        lines += [f"| (not recorded) | | `{d}` |" for d in digests]
    lines += ["", "Published files:", "", "| file | size | sha256 |", "|---|---|---|"]
    lines += [f"| {_cell(f.name)} | {f.size} | `{f.sha256 or '–'}` |" for f in files]
    return lines


def build_gguf_card(
    provenance: dict | None,
    *,
    files: list[GGUFFile],
    file_type: str | None = None,
    architecture: str | None = None,
    gguf_license: str | None = None,
    loops_report: str | Path | dict | None = None,
    bench_report: str | Path | dict | None = None,
    repo_id: str | None = None,
):
    """The ModelCard for a patched GGUF (one file or a split set), from the provenance patchkit wrote into it.

    `provenance` is `gguf_plan.provenance_of(header)` (None for a GGUF pushed with `allow_unpatched`); `files`
    the published .gguf files in order; `file_type` the dominant quant type of the MLP weights; `gguf_license`
    the file's own `general.license` (used when the recipe's `publish.license` gives none).
    """
    from huggingface_hub import ModelCard, ModelCardData

    prov = provenance or {}
    recipe_meta = prov.get("recipe") or {}
    text = recipe_meta.get("text") if isinstance(recipe_meta.get("text"), str) else None
    recipe = _parsed_recipe(text)
    # the helpers shared with the safetensors card read the recipe from `recipe.normalized`
    view = {**prov, "recipe": {**recipe_meta, "normalized": recipe}}
    loops_data = load_report(loops_report, "loops")
    bench_data = load_report(bench_report, "bench")
    loops, bench = report_rows(loops_data, "loops"), report_rows(bench_data, "bench")
    base = prov.get("base") or {}
    architecture = (
        architecture
        or base.get("gguf_architecture")
        or base.get("architecture")
        or (recipe.get("model") or {}).get("architecture")
    )
    file_type = file_type or base.get("file_type")
    name = repo_id.split("/")[-1] if repo_id else (recipe.get("name") or recipe_meta.get("name") or "patched-gguf")
    tags = list(GGUF_TAGS) + ([str(architecture)] if architecture else [])
    if provenance is not None:
        tags.append("loop-fix")
    license_meta = resolve_license(view, {})
    if not license_meta and gguf_license and _LICENSE_ID.fullmatch(gguf_license):
        license_meta = {"license": gguf_license}
    metadata: dict[str, Any] = {"pipeline_tag": DEFAULT_PIPELINE_TAG, "tags": tags, **license_meta}
    base_repo = base_repo_of(view)
    if base_repo:
        metadata["base_model"] = base_repo
        metadata["base_model_relation"] = (
            BASE_MODEL_RELATION if _GGUF_REPO.search(base_repo) else GGUF_BASE_MODEL_RELATION
        )
    results = _eval_results(name, loops, bench, loops_data, bench_data)
    if results:
        metadata["model_name"] = name
        metadata["eval_results"] = results
    data = ModelCardData(**metadata)

    edits = [e for e in prov.get("edits") or [] if isinstance(e, dict)]
    title = recipe.get("name") or recipe_meta.get("name") or name
    quant = file_type or "unknown"
    body = [f"# {title}"]
    if provenance is None:
        _section(
            body,
            "This GGUF carries no patchkit provenance (no `patchkit.*` metadata): it was published with "
            "`patchkit push --allow-unpatched`, and this card cannot say how it differs from any other file.",
        )
    else:
        _section(
            body,
            f"A GGUF of {_public_ref(view)}{_base_notes(view)} ({quant}) with {_plural(len(edits), 'edit')} from the patchkit "
            f"recipe `{recipe_meta.get('name') or recipe.get('name') or 'unknown'}`, applied by "
            f"[patchkit]({PROJECT_URL}) to the source GGUF. Only the block scale fields of the "
            "edited rows were changed; no requantization; every quant bit is the source's. Tensor names, shapes "
            "and quant types are the source's too, so it runs wherever the source runs (llama.cpp, Ollama, "
            "LM Studio, …). The recipe, the source's sha256 and the edits are also inside the file, as "
            "`patchkit.*` metadata.",
        )
        why = str(recipe.get("description") or "Fixes repetition loops with a small, auditable edit.").strip()
        _section(body, "## What changed and why", "", why)
        source = recipe.get("source") or {}
        if source:
            _section(body, _source_line(source))
        _section(body, "### Edits", "", *_gguf_edits_section(edits))
    _section(
        body,
        "## Files",
        "",
        f"Quantization: **{quant}** (the quant type of most MLP weights)"
        + (f", architecture `{architecture}`" if architecture else "")
        + f"; {_plural(len(files), 'file')}, {_size_text(sum(f.size for f in files))} in all.",
        "",
        "| file | size |",
        "|---|---|",
        *[f"| {_cell(f.name)} | {_size_text(f.size)} ({f.size} bytes) |" for f in files],
    )
    if loops or bench:
        _section(body, "## Results")
    if loops:
        _section(
            body,
            f"Loop check (`patchkit loops`, suite `{_suite(loops_data)}`): rates are looping generations / n with "
            "Wilson 95% intervals; completeness is the share of true list items produced.",
            "",
            *_results_table(loops),
        )
    if bench:
        _section(
            body,
            "Drift from the base (`patchkit bench`): deltas are patched − base (ratios patched / base), intervals "
            "are 95% (paired bootstrap / Wilson).",
            "",
            *_results_table(bench),
        )
    _section(body, "## How to run", "", *_gguf_run_section(repo_id, files))
    if provenance is not None:
        _section(body, "## How to verify", "", *_gguf_verify_section(view, repo_id, files))
        if text:
            recipe_name = Path(str(recipe_meta.get("file") or recipe_meta.get("path") or "recipe.yaml")).name
            fence = _fence(text)
            _section(body, f"The recipe (`{recipe_name}`), verbatim:", "", f"{fence}yaml", text.rstrip("\n"), fence)
        _section(body, "## Provenance", "", *_gguf_provenance_section(view, files))
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    try:
        return ModelCard(content)
    except Exception as exc:  # noqa: BLE001 - surfaced as one line
        raise CardError(
            f"the generated model card does not validate: {exc}".splitlines()[0],
            hint="check the loops/bench report fields",
        ) from exc


def card_for_gguf(
    path: str | Path,
    *,
    provenance: dict | None = None,
    hashes: dict[str, str] | None = None,
    loops_report=None,
    bench_report=None,
    repo_id: str | None = None,
):
    """The card for a patched .gguf (any part of a split set names the set): its `patchkit.*` metadata, file
    sizes and quant type. `hashes` (upload name -> sha256) fills the file table; missing ones are computed."""
    from patchkit._io.hashing import sha256_file
    from patchkit.edit.gguf_plan import provenance_of
    from patchkit.model.gguf_model import open_gguf_model

    model = open_gguf_model(path)
    first = model.parts[0]
    if provenance is None:
        provenance = provenance_of(first)
    hashes = hashes or {}
    files = [GGUFFile(p.path.name, p.size, hashes.get(p.path.name) or sha256_file(p.path)) for p in model.parts]
    license_value = first.metadata.get("general.license")
    return build_gguf_card(
        provenance,
        files=files,
        file_type=model.file_type(),
        architecture=model.gguf_architecture,
        gguf_license=license_value if isinstance(license_value, str) else None,
        loops_report=loops_report,
        bench_report=bench_report,
        repo_id=repo_id,
    )
