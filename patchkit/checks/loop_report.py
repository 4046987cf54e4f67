"""Presenting a LoopReport: rich tables for the terminal, and a report directory (JSON, transcripts, PNG plot).

Report directory layout (`patchkit loops ... --report DIR`)::

    DIR/loops.json                       the full report (same as --json), transcripts included
    DIR/loops.png                        loop / good-list / control rates, base vs patched, Wilson 95% bars
    DIR/transcripts/<model>/<probe>@<sample>.txt   every generation with its prompt and verdict

A thinking-budget sweep (`--thinking-budget 1024,4096,16384 --report DIR`) writes::

    DIR/loops.json                       the sweep document: {"budgets": [{"budget", "base", "patched"}, ...]}
    DIR/thinking-budget.png              doom-loop and committed rates against the budget (log x), base solid,
                                         patched dashed, Wilson 95% bars
    DIR/budget-<N>/                      the ordinary report of budget N (loops.json, loops.png, transcripts/)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from patchkit._io.atomic import atomic_write_text, save_figure
from patchkit.checks.loops import LoopReport
from patchkit.checks.thinking_sweep import SWEEP_RATES, ThinkingSweep

__all__ = [
    "write_report",
    "render_tables",
    "plot_report",
    "write_sweep_report",
    "plot_thinking_sweep",
    "render_sweep_tables",
]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#@-]+", "_", name).strip("_") or "x"


def write_report(report: LoopReport, out_dir: str | Path) -> dict[str, Path]:
    """Write loops.json, every transcript, and loops.png into `out_dir`; returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    data = report.to_json()
    atomic_write_text(out / "loops.json", json.dumps(data, indent=2, ensure_ascii=False))
    written["json"] = out / "loops.json"
    for name, run in report.runs():
        folder = out / "transcripts" / name
        for r in run.results:
            v = r.verdict
            head = [
                f"model: {run.model}",
                f"probe: {r.probe.id} (sample {r.sample}, seed {r.seed}, {r.probe.split})",
                f"prompt: {r.probe.prompt}",
                f"verdict: {v.label}"
                + (
                    f" ({v.evidence.kind}, period {v.evidence.period} "
                    f"{v.evidence.unit}, starts at char {v.evidence.start})"
                    if v.evidence and v.is_loop
                    else ""
                ),
                f"tokens: {r.generation.tokens}, stop: {r.generation.stop_reason}",
            ]
            if v.completeness:
                head.append(f"completeness: {len(v.completeness.found)}/{v.completeness.n_truth}")
            if r.correct is not None:
                head.append(f"correct: {r.correct}")
            body = "\n".join(head) + "\n" + "-" * 72 + "\n"
            if r.generation.thinking is not None:
                body += "[thinking]\n" + r.generation.thinking + "\n[answer]\n"
            body += r.generation.text + "\n"
            atomic_write_text(folder / f"{_safe(r.probe.id)}@{r.sample}.txt", body)
        written[f"transcripts_{name}"] = folder
    written["plot"] = plot_report(report, out / "loops.png")
    return written


def plot_report(report: LoopReport, path: str | Path) -> Path:
    """Bar chart of loop rate (and its verbatim/decay/doom split), good-list rate and control accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("loop_rate", "loop rate"),
        ("verbatim_rate", "verbatim"),
        ("decay_rate", "decay"),
        ("doom_rate", "doom"),
        ("good_list_rate", "good lists"),
        ("control_accuracy", "controls ok"),
    ]
    overall = report.overall()
    runs = list(overall)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    width = 0.8 / len(runs)
    colours = {"base": "#8c8c8c", "patched": "#2b7bba"}
    for j, name in enumerate(runs):
        xs, ys, lo, hi, counts = [], [], [], [], []
        for i, (key, _) in enumerate(metrics):
            m = overall[name][key]
            value = m["value"] if m["value"] is not None else 0.0
            xs.append(i + (j - (len(runs) - 1) / 2) * width)
            ys.append(value)
            lo.append(max(0.0, value - m["ci"][0]))
            hi.append(max(0.0, m["ci"][1] - value))
            counts.append(f"{m['k']}/{m['n']}")
        n = overall[name]["loop_rate"]["n"]
        ax.bar(
            xs,
            ys,
            width,
            yerr=[lo, hi],
            capsize=3,
            color=colours.get(name, "#444"),
            label=f"{name} (n={n} enumeration, {overall[name]['control_accuracy']['n']} controls)",
        )
        for x, y, h, text in zip(xs, ys, hi, counts, strict=True):
            ax.text(x, min(1.02, y + h + 0.01), text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("rate (Wilson 95% interval)")
    ax.set_title(
        f"patchkit loops - suite {report.suite.name}, T={report.settings.temperature}, "
        f"max {report.settings.max_new_tokens} tokens"
    )
    ax.legend(loc="upper center", fontsize=8, ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def render_tables(report: LoopReport, console: Any, *, per_probe: bool = True) -> None:
    """Rich tables: one row per probe, then the overall comparison."""
    from rich.table import Table

    names = [name for name, _ in report.runs()]
    if per_probe:
        table = Table(
            title=f"Per probe ({report.suite.name}); compl. = share of true items, ok = controls passed",
            show_lines=False,
        )
        table.add_column("probe", min_width=16, overflow="fold")
        table.add_column("split")
        for name in names:
            table.add_column(f"{name}", overflow="fold")
            table.add_column("compl./ok", justify="right")
            table.add_column("tok", justify="right")
        for row in report.per_probe():
            cells = [row["probe"], row["split"]]
            for name in names:
                e = row[name]
                labels = e["labels"]
                verdict = labels[0] if len(labels) == 1 else f"{e['loops']['k']}/{e['n']} loop"
                style = "red" if e["loops"]["k"] else ""
                cells.append(f"[{style}]{verdict}[/]" if style else verdict)
                if row["kind"] == "enumeration":
                    cells.append(f"{e['completeness']:.2f}" if e["completeness"] is not None else "-")
                else:
                    cells.append(f"{e['correct']}/{e['n']}")
                cells.append(f"{e['mean_tokens']:.0f}" if e["mean_tokens"] is not None else "-")
            table.add_row(*cells)
        console.print(table)

    overall = Table(title="Overall (rates with Wilson 95% interval and n)")
    overall.add_column("metric")
    for name in names:
        overall.add_column(name)
    rows: list[tuple[str, list[str]]] = []
    metrics = [run.metrics() for _, run in report.runs()]
    for label, key in (
        ("loop rate", None),
        ("  verbatim", "verbatim"),
        ("  decay", "decay"),
        ("  doom", "doom"),
        ("  truncated (not a loop)", "truncated"),
    ):
        rows.append((label, [(m.loop_rate if key is None else m.label_rate(key)).describe() for m in metrics]))
    rows.append(("completeness (mean share of true items)", [m.completeness.describe() for m in metrics]))
    rows.append(("good lists (no loop, >=5 true items)", [m.good_list_rate.describe() for m in metrics]))
    rows.append(("control accuracy", [m.control_accuracy.describe() for m in metrics]))
    rows.append(("mean tokens generated", [f"{_mean_tokens(run):.1f}" for _, run in report.runs()]))
    rows.append(("tokens/s", [f"{run.tokens / run.seconds:.0f}" if run.seconds else "-" for _, run in report.runs()]))
    for label, cells in rows:
        overall.add_row(label, *cells)
    console.print(overall)


def _mean_tokens(run: Any) -> float:
    return sum(r.generation.tokens for r in run.results) / len(run.results) if run.results else 0.0


# --------------------------------------------------------------------------------------------------------------
# the thinking-budget sweep
# --------------------------------------------------------------------------------------------------------------
def write_sweep_report(sweep: ThinkingSweep, out_dir: str | Path) -> dict[str, Path]:
    """Write the sweep's loops.json, thinking-budget.png and one ordinary report per budget into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "loops.json", json.dumps(sweep.to_json(), indent=2, ensure_ascii=False))
    written: dict[str, Path] = {"json": out / "loops.json"}
    for point in sweep.points:
        folder = out / f"budget-{point.budget}"
        write_report(point.report, folder)
        written[f"budget_{point.budget}"] = folder
    written["plot"] = plot_thinking_sweep(sweep, out / "thinking-budget.png")
    return written


def plot_thinking_sweep(sweep: ThinkingSweep, path: str | Path) -> Path:
    """Doom-loop and committed-answer rates against the thinking budget (log x): base solid, patched dashed.

    Why both rates on one plot: an edit can cut doom loops only by making the model stop thinking; the
    committed rate beside it shows whether answers came instead. Bars are Wilson 95% intervals; the legend
    carries n.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    colours = {"doom_rate": "#c0392b", "committed_rate": "#2b7bba"}
    styles = {"base": "-", "patched": "--"}
    budgets = sweep.budgets
    for point_name in ("base", "patched"):
        series = [p.figures().get(point_name) for p in sweep.points]
        if any(s is None for s in series):
            continue
        for key, label in SWEEP_RATES:
            figs = [s[key] for s in series if s is not None]
            ys = [f.value if f.value is not None else float("nan") for f in figs]
            lo = [max(0.0, y - f.ci[0]) if f.ci and f.value is not None else 0.0 for f, y in zip(figs, ys, strict=True)]
            hi = [max(0.0, f.ci[1] - y) if f.ci and f.value is not None else 0.0 for f, y in zip(figs, ys, strict=True)]
            shift = 1.04 if point_name == "patched" else 1 / 1.04  # side by side, so the bars do not hide
            ax.errorbar(
                [b * shift for b in budgets],
                ys,
                yerr=[lo, hi],
                marker="o",
                markerfacecolor=colours[key] if point_name == "base" else "white",
                linestyle=styles[point_name],
                color=colours[key],
                capsize=3,
                label=f"{label}, {point_name} (n={figs[0].n} per budget)",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("rate (Wilson 95% interval)")
    suite = sweep.points[0].report.suite.name if sweep.points else ""
    ax.set_title(f"patchkit loops - thinking budget, suite {suite}, T={sweep.settings.temperature}")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), handlelength=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def render_sweep_tables(sweep: ThinkingSweep, console: Any) -> None:
    """One rich table: a row per (budget, figure), a column per model, each cell "value [lo, hi] (k/n)"."""
    from rich.table import Table

    names = list(sweep.models)
    table = Table(title="Thinking-budget study (rates with Wilson 95% interval and n; means with bootstrap 95%)")
    table.add_column("budget", justify="right")
    table.add_column("figure")
    for name in names:
        table.add_column(name)
    rows = (
        ("doom_rate", "doom loops"),
        ("committed_rate", "committed to an answer"),
        ("committed_completeness", "  completeness of those answers"),
        ("budget_stop_rate", "stopped by the budget"),
        ("loop_rate", "loop rate (all kinds)"),
        ("verbatim_rate", "  verbatim"),
        ("decay_rate", "  decay"),
        ("control_accuracy", "control accuracy"),
    )
    for point in sweep.points:
        figs = point.figures()
        for i, (key, label) in enumerate(rows):
            table.add_row(str(point.budget) if i == 0 else "", label, *[figs[n][key].describe() for n in names])
        table.add_section()
    console.print(table)
