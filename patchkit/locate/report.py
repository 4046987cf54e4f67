"""PNG plots of a locate run: layer ranking by loop selectivity, and the sweep's loop rate vs control cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    best: dict[int, float] = {}
    for row in report.get("ablation", []):
        best[row["layer"]] = max(best.get(row["layer"], float("-inf")), row["selectivity"])
    layers = sorted(best)
    ax1.bar(layers, [best[layer] for layer in layers], color=["tab:red" if layer in report.get("top_layers", []) else "tab:gray" for layer in layers])
    ax1.set_xlabel("layer")
    ax1.set_ylabel("loop-selective log-prob drop (nats)")
    ax1.set_title("per-layer MLP ablation")
    base = report.get("base_train", {})
    sweep = report.get("sweep", [])
    if sweep:
        ax2.scatter([r["control_failures"] for r in sweep], [r["loop_rate"] for r in sweep], c=[r["good_rate"] for r in sweep], cmap="viridis")
        for r in sweep[:6]:
            ax2.annotate(r["label"], (r["control_failures"], r["loop_rate"]), fontsize=7)
    if base:
        ax2.scatter([base["control_failures"]], [base["loop_rate"]], marker="x", color="red", label="base")
        ax2.legend()
    ax2.set_xlabel("control failures (train)")
    ax2.set_ylabel("loop rate (train)")
    ax2.set_title("generation sweep (colour: good-list rate)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
