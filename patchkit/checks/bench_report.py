"""Show a BenchReport: a rich table for people, JSON + a PNG chart for reviewers and model cards."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from patchkit._io.atomic import atomic_write_text, save_figure
from patchkit.checks.bench import BenchReport
from patchkit.checks.figure import Comparison, Figure

__all__ = ["fmt", "bench_table", "write_report", "write_json", "write_chart"]


def fmt(value: float | None, digits: int = 4) -> str:
    """Compact number: 4 significant digits, '—' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"\n[{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]"


def _value(fig: Figure | None) -> str:
    return "—" if fig is None or fig.value is None else fmt(fig.value) + _ci(fig.ci)


def _delta(row: Comparison) -> str:
    d = row.delta
    if d.value is None:
        return "—"
    if row.kind == "ratio":
        return f"×{fmt(d.value)}{_ci(d.ci)}"
    if row.kind == "paired":
        return f"{d.value:+.4g}{_ci(d.ci)}"
    return f"{fmt(d.value)}{_ci(d.ci)}"


def _p(row: Comparison) -> str:
    if row.p_value is None:
        return "—"
    mark = " *" if row.p_value < 0.05 else ""
    return f"{row.p_value:.3g}{mark}"


def _short_test(test: str) -> str:
    for key, short in (
        ("McNemar", "McNemar"),
        ("sign-flip", "sign-flip"),
        ("z-test", "z-test"),
        ("bootstrap", "bootstrap"),
    ):
        if key in test:
            return short
    return test


def bench_table(report: BenchReport) -> Any:
    """Rich table: measure, n, base, patched, delta (or the comparison value) with 95% CI, paired p-value."""
    from rich.table import Table

    table = Table(title=f"patchkit bench: {report.patched} vs {report.base}", title_justify="left")
    table.add_column("measure")
    table.add_column("n", justify="right")
    table.add_column("base\n[95% CI]", justify="right")
    table.add_column("patched\n[95% CI]", justify="right")
    table.add_column("Δ or value\n[95% CI]", justify="right")
    table.add_column("paired p\n(test)", justify="right")
    for row in report.comparisons:
        unit = f" ({row.unit})" if row.unit in ("nats", "ppl") else ""
        test = f"\n{_short_test(row.test)}" if row.test and row.p_value is not None else ""
        table.add_row(row.label + unit, str(row.n), _value(row.base), _value(row.patched), _delta(row), _p(row) + test)
    for name, why in report.skipped.items():
        table.add_row(name, "", "", "", f"skipped: {why}", "")
    return table


def write_json(report: BenchReport, path: Path) -> Path:
    """`report.to_json()` to `path`, atomically (a reader never sees half a file)."""
    return atomic_write_text(path, json.dumps(report.to_json(), indent=2, default=str))


def _err(value: float, ci: tuple[float, float] | None) -> list[float]:
    if ci is None:
        return [0.0, 0.0]
    return [max(0.0, value - ci[0]), max(0.0, ci[1] - value)]


def write_chart(report: BenchReport, path: Path) -> Path:
    """PNG with up to three panels: accuracies (base vs patched), KL measures, perplexity (base vs patched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accs = [c for c in report.comparisons if c.is_accuracy and c.base is not None and c.patched is not None]
    kls = [c for c in report.comparisons if c.key in ("kl.mean", "kl.first_token", "kl.p99")]
    ppl = report.comparison("ppl.ratio")
    panels = [p for p in (("acc", accs), ("kl", kls), ("ppl", [ppl] if ppl else [])) if p[1]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    # strict=False: with no panels there is still one (empty) axis
    for ax, (kind, figs) in zip(axes[0], panels, strict=False):
        if kind == "kl":
            vals = [f.delta.value or 0.0 for f in figs]
            errs = list(zip(*[_err(v, f.delta.ci) for v, f in zip(vals, figs, strict=True)], strict=True))
            ax.bar(range(len(figs)), vals, yerr=errs, color="#c0504d", capsize=3)
            ax.set_xticks(range(len(figs)), [f.label for f in figs], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("nats")
            ax.set_title("distribution shift (KL base‖patched)", fontsize=9)
            continue
        width = 0.38
        xs = range(len(figs))
        for off, attr, color, name in (
            (-width / 2, "base", "#4f81bd", "base"),
            (width / 2, "patched", "#f79646", "patched"),
        ):
            sides = [getattr(f, attr) for f in figs]
            vals = [side.value if side.value is not None else 0.0 for side in sides]
            errs = list(zip(*[_err(v, side.ci) for v, side in zip(vals, sides, strict=True)], strict=True))
            ax.bar([x + off for x in xs], vals, width, yerr=errs, color=color, capsize=3, label=name)
        labels = [f.label if kind == "acc" else f"perplexity (×{fmt(f.delta.value)})" for f in figs]
        ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title("task accuracy" if kind == "acc" else "perplexity on the same texts", fontsize=9)
        if kind == "acc":
            ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    verdict = (
        "no thresholds"
        if report.gates is None
        else ("PASS" if report.passed else "FAIL: " + "; ".join(report.failures)[:120])
    )
    fig.suptitle(f"{Path(str(report.patched)).name} vs {Path(str(report.base)).name} — {verdict}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_report(report: BenchReport, directory: str | Path) -> dict[str, Path]:
    """Write `bench.json` and `bench.png` into `directory` (created if missing)."""
    out = Path(directory)
    return {"json": write_json(report, out / "bench.json"), "png": write_chart(report, out / "bench.png")}
