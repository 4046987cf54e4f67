"""Locate's outputs: the recipe (with its evidence in `source`), a JSON report and two PNG plots."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from patchkit._io.atomic import save_figure
from patchkit._io.fs import read_json_file
from patchkit.errors import PatchkitError
from patchkit.locate.heldout import Gates

__all__ = ["write_outputs", "recipe_text", "rate"]

METHOD = (
    "per-layer MLP/expert ablation (attribution patching + exact) on teacher-forced looping transcripts; "
    "per-neuron activation x gradient (outlier-normalised, contrasted with control text) and exact "
    "teacher-forced screen; greedy generation sweep on train probes scored by loop-rate reduction minus "
    "penalties on KL, control accuracy/loops, good lists and completeness; held-out confirmation"
)

SETS_METHOD = (
    "set search: one learned factor per MLP neuron (and MoE expert) of every layer in scope, proximal Adam with an "
    "L1 penalty on |f - 1| on train-split teacher-forced data (lower loop-token log-odds inside loops, raise the "
    "next true list items in the model's own format) under a KL(base||edited) budget on control, prose and "
    "pre-loop positions (dual ascent); factors snapped to recipe ops; greedy halving pruning into nested sets "
    "S_1..S_K; greedy generation of each S_k on train probes chooses k; held-out judges the chosen k once "
    f"against the gates (loops -{Gates().min_reduction * 100:g} % relative, good lists and controls not down beyond "
    f"McNemar noise, KL <= {Gates().max_kl:g})"
)


def _set_evidence(section: dict[str, Any]) -> dict[str, Any]:
    """The set search's frontier on the train probes, compact enough for a recipe."""
    rows = []
    for d in section.get("frontier_train") or []:
        s = d["summary"]
        rows.append(
            {
                "k": d["k"],
                "loops": f"{s['loops']}/{s['n']}",
                "good_lists": f"{s['good_lists']}/{s['n']}",
                "controls": f"{s['control_correct']}/{s['n_controls']}",
                "completeness": round(s["completeness"], 4),
                "kl_control": round(d["kl"], 5),
                "score": round(d["score"], 4),
            }
        )
    return {"scope": section.get("scope"), "chosen_k": section.get("chosen_k"), "frontier_train": rows}


def rate(k: int, n: int) -> dict[str, Any]:
    """k/n with its 95% Wilson interval."""
    from patchkit.checks.stats import wilson_interval

    lo, hi = wilson_interval(k, n) if n else (0.0, 1.0)
    return {"k": k, "n": n, "value": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def _scores(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "loop_rate": rate(summary["loops"], summary["n"]),
        "good_list_rate": rate(summary["good_lists"], summary["n"]),
        "control_accuracy": rate(summary["control_correct"], summary["n_controls"]),
        "control_loop_rate": rate(summary["control_loops"], summary["n_controls"]),
        "completeness": round(summary["completeness"], 4),
        "mean_tokens": round(summary["mean_tokens"], 1),
    }


def _shown_ref(ref: str) -> str:
    """A local directory by its name (an absolute path of the machine that ran locate means nothing elsewhere)."""
    p = Path(ref)
    return p.name if p.is_absolute() and p.exists() else ref


def checkpoint_identity(ref: str) -> dict[str, Any]:
    """What the searched weights were: a Hub ref as given; a local directory by its import or apply provenance
    (a GGUF import is de-quantized, so its weights are not the original release's)."""
    p = Path(ref)
    if not p.is_dir():
        return {"ref": ref}
    for name, key in (("gguf-import.json", "gguf_import"), ("patchkit.json", "patchkit_apply")):
        f = p / name
        if f.is_file():
            try:
                data = read_json_file(f, what="provenance file", root=p)
            except (OSError, PatchkitError):
                continue
            src = data.get("source") or data.get("base") or {}
            keep = {k: src[k] for k in ("sha256", "size", "package", "ref", "repo", "revision") if k in src}
            if "path" in src:
                keep["file"] = Path(str(src["path"])).name
            return {"dir": p.name, key: {**keep, "dtype": data.get("dtype")} if "dtype" in data else keep}
    return {"dir": p.name}


def _slug(ref: str) -> str:
    name = Path(ref.rstrip("/")).name or "model"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.split("@")[0]).strip("-.") or "model"
    return f"{name}-locate"[:96]


def recipe_text(
    report: dict[str, Any],
    best: Any,
    heldout: dict[str, Any] | None,
    settings: Any,
    *,
    ref: str,
    spec: dict[str, Any],
    base_recipe: Any = None,
) -> str:
    """Recipe YAML: resolved with the winner's edits when held-out confirms it, otherwise unresolved.
    With `base_recipe` (--from-recipe) that recipe is written back with the findings."""
    from patchkit._version import __version__
    from patchkit.recipe import Recipe, parse_recipe, recipe_to_yaml

    confirmed = bool(report.get("confirmed"))
    source: dict[str, Any] = {
        "kind": "locate",
        "reference": f"patchkit locate {_shown_ref(ref)} --suite {settings.suite}",
        "checkpoint": checkpoint_identity(ref),
        "method": SETS_METHOD if report.get("method") == "sets" else METHOD,
        "patchkit_version": __version__,
        "probes": {
            "suite": settings.suite,
            "selection": "train split",
            "confirmation": "heldout split",
            "n_train": report["base_train"]["n"],
            "n_train_controls": report["base_train"]["n_controls"],
            "n_heldout": heldout["base"]["n"] if heldout else 0,
            "decoding": f"greedy, max_new_tokens={settings.max_new_tokens}",
        },
        "scores": {"train": {"base": _scores(report["base_train"])}},
        "confirmed_on_heldout": confirmed,
    }
    if best is not None:
        judged_on = report.get("sweep_base")
        if judged_on and judged_on.get("n") == best.summary.get("n"):
            # the candidate was generated on a subset of the train probes: compare it with the base on the same
            source["scores"]["train"]["base"] = _scores(judged_on)
            source["probes"]["n_train_judged"] = judged_on["n"]
        source["scores"]["train"]["edited"] = _scores(best.summary)
        source["scores"]["train"]["score"] = round(best.score, 4)
        source["scores"]["train"]["kl_control"] = round(best.kl, 5)
        source["candidate"] = best.candidate.short_label
    if report.get("sets"):
        source["set_search"] = _set_evidence(report["sets"])
    if heldout is not None:
        if "gates" in heldout:
            source["gates_heldout"] = heldout["gates"]
        source["scores"]["heldout"] = {
            "base": _scores(heldout["base"]),
            "edited": _scores(heldout["edited"]),
            "kl_prose_nats_per_token": round(heldout["kl_prose"], 5),
            "score": round(heldout["score"], 4),
        }
    data: dict[str, Any] = {"patchkit": 1, "name": _slug(ref), "model": spec, "source": source}
    if confirmed and best is not None:
        if heldout is None:
            raise PatchkitError("locate report says the edit was confirmed, but there are no held-out scores")
        data["description"] = (
            f"Found by patchkit locate: {best.candidate.short_label}; held-out loop rate "
            f"{heldout['base']['loops']}/{heldout['base']['n']} -> "
            f"{heldout['edited']['loops']}/{heldout['edited']['n']}."
        )
        data["edits"] = best.candidate.recipe_edits()
    else:
        why = report.get("reason") or "the best train candidate did not hold up on the held-out probes"
        data["description"] = f"patchkit locate found no edit that holds up: {why}."
        data["resolution"] = {
            "status": "unresolved",
            "method": "locate",
            "how_to_resolve": "no edit was confirmed; rerun `patchkit locate` with other --layers/--ops "
            "or a larger --budget-minutes, or write edits by hand",
            "constraints": {
                "last_locate": {
                    "best_candidate": best.candidate.short_label if best else None,
                    "candidate_edits": best.candidate.recipe_edits() if best else [],
                    "patchkit_version": __version__,
                }
            },
        }
    if base_recipe is not None:
        from patchkit.locate.from_recipe import resolved_recipe_data

        data = resolved_recipe_data(base_recipe, data, confirmed=confirmed and best is not None)
    text = recipe_to_yaml(Recipe.model_validate(data))
    parse_recipe(text, "<locate recipe>")  # the written file must load
    return text


def _plot_layers(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(report["layers"], key=lambda d: (d["layer"], d["unit"]))
    if not layers:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 3.5))
    xs = range(len(layers))
    ax.bar(xs, [d["score"] for d in layers], color=["tab:red" if d["exact"] else "tab:gray" for d in layers])
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{d['layer']}{'e' if d['unit'] == 'experts' else ''}" for d in layers], fontsize=7)
    ax.set_xlabel("layer (e = MoE experts)")
    ax.set_ylabel("loop-selective drop (nats)")
    ax.set_title("Layer ablation: control drop minus loop drop (red = measured exactly)")
    ax.axhline(0, color="black", linewidth=0.5)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _plot_sweep(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    if not sweep:
        return
    base = report.get("sweep_base") or report["base_train"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for d in sweep:
        s = d["summary"]
        ax.scatter(
            s["loop_rate"],
            s["good_list_rate"],
            c="tab:blue" if d["score"] > 0 else "tab:gray",
            s=20 + 200 * max(0.0, s["control_accuracy"]),
        )
        ax.annotate(d["candidate"]["label"][:28], (s["loop_rate"], s["good_list_rate"]), fontsize=6)
    ax.scatter([base["loop_rate"]], [base["good_list_rate"]], marker="*", s=200, c="tab:red", label="base")
    ax.set_xlabel("train loop rate (lower is better)")
    ax.set_ylabel("train good-list rate (higher is better)")
    ax.set_title("Sweep (marker size = control accuracy; blue = positive score)")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _plot_frontier(report: dict[str, Any], path: Path) -> None:
    """Set search: loop rate, good-list rate and control accuracy against set size k (log axis), train and (when
    measured) held-out, with 95 % intervals; dashed lines are the base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report.get("sets") or {}
    train = sets.get("frontier_train") or []
    held = (sets.get("frontier_heldout") or {}).get("k") or {}
    if not train:
        return
    names = (("loop_rate", "loop rate"), ("good_list_rate", "good-list rate"), ("control_accuracy", "control accuracy"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    series = [
        ("train", "tab:blue", [(d["k"], d["summary"].get("figures") or {}) for d in train], report.get("sweep_base"))
    ]
    if held:
        hb = (sets.get("frontier_heldout") or {}).get("base") or {}
        series.append(
            (
                "held-out",
                "tab:red",
                [
                    (int(k), v["edited"].get("metrics") or {})
                    for k, v in sorted(held.items(), key=lambda kv: int(kv[0]))
                ],
                hb,
            )
        )
    for ax, (key, title) in zip(axes, names, strict=True):
        for label, color, points, base in series:
            pts = [(k, f[key]) for k, f in points if key in f and f[key].get("value") is not None]
            if not pts:
                continue
            ks = [k for k, _ in pts]
            vals = [f["value"] for _, f in pts]
            lo = [f["value"] - f["ci"][0] for _, f in pts]
            hi = [f["ci"][1] - f["value"] for _, f in pts]
            ax.errorbar(ks, vals, yerr=[lo, hi], marker="o", color=color, capsize=3, label=label)
            b = (base or {}).get(key)
            if isinstance(b, (int, float)):
                ax.axhline(b, color=color, linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("units edited (k)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8, title="dashed = base", title_fontsize=7)
    fig.suptitle("Set search frontier (95 % Wilson intervals)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def write_outputs(
    report: dict[str, Any],
    best: Any,
    heldout: dict[str, Any] | None,
    settings: Any,
    *,
    ref: str,
    spec: dict[str, Any],
    out: Path | None,
    report_dir: Path | None,
    base_recipe: Any = None,
) -> tuple[Path | None, Path | None]:
    """Write recipe (atomically), report JSON and plots; returns (recipe path, report directory)."""
    from patchkit._io.atomic import atomic_write_text

    recipe_path = None
    if out is not None:
        text = recipe_text(report, best, heldout, settings, ref=ref, spec=spec, base_recipe=base_recipe)
        header = (
            "# Written by `patchkit locate`; the evidence is under `source:` (train = selection, heldout = judge).\n"
        )
        recipe_path = atomic_write_text(out, header + text)
        report["recipe"] = str(recipe_path)
        if report_dir is None:
            report_dir = out.parent / f"{out.stem}.locate"
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report_dir / "locate-report.json", json.dumps(report, indent=1, default=str))
        _plot_layers(report, report_dir / "layers.png")
        _plot_sweep(report, report_dir / "sweep.png")
        _plot_frontier(report, report_dir / "frontier.png")
    return recipe_path, report_dir
