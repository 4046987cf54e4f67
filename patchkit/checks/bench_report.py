"""Show a BenchReport: a rich table for people, JSON + a PNG chart for reviewers and model cards."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from patchkit.checks.bench import BenchReport, Figure

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


def _delta(fig: Figure) -> str:
    if fig.delta is None:
        return "—"
    if fig.kind == "ratio":
        return f"×{fmt(fig.delta)}{_ci(fig.delta_ci)}"
    if fig.kind == "paired":
        return f"{fig.delta:+.4g}{_ci(fig.delta_ci)}"
    return f"{fmt(fig.delta)}{_ci(fig.delta_ci)}"


def _p(fig: Figure) -> str:
    if fig.p_value is None:
        return "—"
    mark = " *" if fig.p_value < 0.05 else ""
    return f"{fig.p_value:.3g}{mark}"


def _short_test(test: str) -> str:
    for key, short in (("McNemar", "McNemar"), ("sign-flip", "sign-flip"), ("z-test", "z-test"), ("bootstrap", "bootstrap")):
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
    for fig in report.figures:
        unit = f" ({fig.unit})" if fig.unit in ("nats", "ppl") else ""
        base = "—" if fig.base is None else fmt(fig.base) + _ci(fig.base_ci)
        patched = "—" if fig.patched is None else fmt(fig.patched) + _ci(fig.patched_ci)
        table.add_row(fig.label + unit, str(fig.n), base, patched, _delta(fig), _p(fig) + (f"\n{_short_test(fig.test)}" if fig.test and fig.p_value is not None else ""))
    for name, why in report.skipped.items():
        table.add_row(name, "", "", "", f"skipped: {why}", "")
    return table


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(report: BenchReport, path: Path) -> Path:
    _atomic_write(path, json.dumps(report.to_json(), indent=2, default=str).encode("utf-8"))
    return path


def _err(value: float, ci: tuple[float, float] | None) -> list[float]:
    if ci is None:
        return [0.0, 0.0]
    return [max(0.0, value - ci[0]), max(0.0, ci[1] - value)]


def write_chart(report: BenchReport, path: Path) -> Path:
    """PNG with up to three panels: accuracies (base vs patched), KL measures, perplexity (base vs patched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accs = [f for f in report.figures if f.is_accuracy and f.base is not None]
    kls = [f for f in report.figures if f.key in ("kl.mean", "kl.first_token", "kl.p99")]
    ppl = report.figure("ppl.ratio")
    panels = [p for p in (("acc", accs), ("kl", kls), ("ppl", [ppl] if ppl else [])) if p[1]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, (kind, figs) in zip(axes[0], panels):
        if kind == "kl":
            vals = [f.delta or 0.0 for f in figs]
            errs = list(zip(*[_err(v, f.delta_ci) for v, f in zip(vals, figs)]))
            ax.bar(range(len(figs)), vals, yerr=errs, color="#c0504d", capsize=3)
            ax.set_xticks(range(len(figs)), [f.label for f in figs], rotation=20,
                          ha="right", fontsize=8)
            ax.set_ylabel("nats")
            ax.set_title("distribution shift (KL base‖patched)", fontsize=9)
            continue
        width = 0.38
        xs = range(len(figs))
        for off, attr, color, name in ((-width / 2, "base", "#4f81bd", "base"), (width / 2, "patched", "#f79646", "patched")):
            vals = [getattr(f, attr) for f in figs]
            errs = list(zip(*[_err(v, getattr(f, f"{attr}_ci")) for v, f in zip(vals, figs)]))
            ax.bar([x + off for x in xs], vals, width, yerr=errs, color=color, capsize=3, label=name)
        labels = [f.label if kind == "acc" else f"perplexity (×{fmt(f.delta)})" for f in figs]
        ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title("task accuracy" if kind == "acc" else "perplexity on the same texts", fontsize=9)
        if kind == "acc":
            ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    verdict = "no thresholds" if report.gates is None else ("PASS" if report.passed else "FAIL: " + "; ".join(report.failures)[:120])
    fig.suptitle(f"{Path(str(report.patched)).name} vs {Path(str(report.base)).name} — {verdict}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def write_report(report: BenchReport, directory: str | Path) -> dict[str, Path]:
    """Write `bench.json` and `bench.png` into `directory` (created if missing)."""
    out = Path(directory)
    return {"json": write_json(report, out / "bench.json"), "png": write_chart(report, out / "bench.png")}
