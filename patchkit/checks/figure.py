"""One measured number with its uncertainty (`Figure`), and one bench row comparing two models (`Comparison`).

Every check reports its measures through these two types, so a loop rate, a completeness, a KL divergence and
an accuracy all carry the same things: the value, how many observations it rests on (`n`), the count behind a
rate (`k`) and a 95% interval where one is known. Both `patchkit.checks.bench` and `patchkit.checks.lmeval`
build `Comparison` rows from here, which is why these types live in their own module (no import cycle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from patchkit.checks.stats import wilson_interval

__all__ = ["Figure", "Comparison", "ComparisonKind"]

#: "paired": base and patched measured on the same items, delta = patched - base; "ratio": delta = patched / base;
#: "comparison": one value that compares both models (KL, top-1 agreement), in `delta`.
ComparisonKind = Literal["paired", "ratio", "comparison"]


@dataclass(frozen=True, kw_only=True)
class Figure:
    """A measured value with its sample size and, where known, a 95% interval.

    Why one type: a number without its n (and, for rates, its interval) invites over-reading a 1/2 as 50%;
    carrying them together means no report, table or gate can drop them by accident.

    Attributes:
        value: the point estimate; None when nothing was measured (n == 0).
        n: observations the value rests on (probes, tokens, questions, texts).
        k: for a rate, the count of hits (value = k / n); None for means and other statistics.
        ci: 95% interval (low, high), or None when the measure has none.
        unit: what the value counts ("share", "nats", "acc", "ppl", "tokens", ...); display only.
        name: a short identifier (e.g. "loop_rate", "kl.mean"); display only.
    """

    value: float | None
    n: int
    k: int | None = None
    ci: tuple[float, float] | None = None
    unit: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        # numpy scalars in, plain Python numbers out: reports are JSON and must not carry numpy types
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "n", int(self.n))
        if self.k is not None:
            object.__setattr__(self, "k", int(self.k))
        if self.ci is not None:
            lo, hi = self.ci
            object.__setattr__(self, "ci", (float(lo), float(hi)))

    @classmethod
    def rate(cls, k: int, n: int, *, name: str = "", unit: str = "share") -> Figure:
        """k hits out of n, with a Wilson 95% interval.

        Args:
            k: hits (loops, good lists, correct controls, ...).
            n: trials.
            name: short identifier for tables.
            unit: display unit.

        Returns:
            A Figure with value k / n (None when n == 0, with the uninformative interval (0, 1)).
        """
        lo, hi = wilson_interval(k, n) if n else (0.0, 1.0)
        return cls(value=(k / n) if n else None, n=n, k=k, ci=(lo, hi), name=name, unit=unit)

    @classmethod
    def mean(cls, values: Sequence[float], *, name: str = "", unit: str = "") -> Figure:
        """The arithmetic mean of `values` (no interval: the loop report never gave one for means).

        Args:
            values: the observations.
            name: short identifier for tables.
            unit: display unit.

        Returns:
            A Figure with n = len(values) and value None when there are none.
        """
        vals = [float(v) for v in values]
        return cls(value=(sum(vals) / len(vals)) if vals else None, n=len(vals), name=name, unit=unit)

    def to_json(self, *, ci_digits: int | None = 4) -> dict[str, Any]:
        """The report shape: {"value", "k"?, "n", "ci"?} ("k" only for rates, "ci" only when known).

        Args:
            ci_digits: round the interval bounds to this many decimals (None: exact).

        Returns:
            A JSON-ready dict; keys in the order value, k, n, ci.
        """
        out: dict[str, Any] = {"value": self.value}
        if self.k is not None:
            out["k"] = self.k
        out["n"] = self.n
        if self.ci is not None:
            out["ci"] = [round(b, ci_digits) if ci_digits is not None else b for b in self.ci]
        return out

    def describe(self, digits: int = 2) -> str:
        """Human form: "0.42 [0.30, 0.55] (20/48)" for a rate, "0.420 (n=24)" for a mean, "n/a" for nothing."""
        if self.value is None:
            return "n/a"
        if self.k is not None and self.ci is not None:
            lo, hi = self.ci
            return f"{self.value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] ({self.k}/{self.n})"
        if self.ci is not None:
            lo, hi = self.ci
            return f"{self.value:.{digits + 1}f} [{lo:.{digits + 1}f}, {hi:.{digits + 1}f}] (n={self.n})"
        return f"{self.value:.{digits + 1}f} (n={self.n})"


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: report them as null (e.g. an interval over zero texts)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (tuple, list)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """One row of a bench report: a measure of the patched model against its base, each side a `Figure`.

    Why a row type of its own: gates, tables, charts and model cards all need the same triple (base, patched,
    the difference) with intervals and the paired test behind the difference.

    Attributes:
        key: stable identifier ("kl.mean", "ppl.ratio", "qa.acc", "lmeval.<task>.<metric>").
        label: human label for tables and charts.
        kind: see `ComparisonKind`.
        delta: patched - base ("paired"), patched / base ("ratio") or the single compared value ("comparison").
        base: the base model's own value ("paired", "ratio"), else None.
        patched: the patched model's own value ("paired", "ratio"), else None.
        unit: display unit of the row.
        p_value: two-sided p-value of the test in `test` (None when no test applies).
        test: the test behind `p_value` (e.g. "McNemar exact").
        higher_is_better: direction of improvement, None when neither.
        is_accuracy: an accuracy (gated by `max_accuracy_drop`).
    """

    key: str
    label: str
    kind: ComparisonKind
    delta: Figure
    base: Figure | None = None
    patched: Figure | None = None
    unit: str = ""
    p_value: float | None = None
    test: str | None = None
    higher_is_better: bool | None = None
    is_accuracy: bool = False

    @property
    def n(self) -> int:
        """Observations behind the row (the delta's n)."""
        return self.delta.n

    def significant(self, alpha: float = 0.05) -> bool | None:
        """Whether the paired test rejects "no difference" at `alpha`; None when there is no test."""
        return None if self.p_value is None else self.p_value < alpha

    def to_json(self) -> dict[str, Any]:
        """The flat report shape bench.json has always had (base/patched/delta values, their `_ci`s, p, test).

        Returns:
            A JSON-ready dict; NaN and infinities are written as null.
        """

        def value(fig: Figure | None) -> Any:
            return None if fig is None else _finite(fig.value)

        def ci(fig: Figure | None) -> Any:
            return None if fig is None or fig.ci is None else _finite(fig.ci)

        return {
            "key": self.key,
            "label": self.label,
            "kind": self.kind,
            "n": self.n,
            "unit": self.unit,
            "base": value(self.base),
            "patched": value(self.patched),
            "delta": value(self.delta),
            "base_ci": ci(self.base),
            "patched_ci": ci(self.patched),
            "delta_ci": ci(self.delta),
            "p_value": _finite(self.p_value),
            "test": self.test,
            "higher_is_better": self.higher_is_better,
            "is_accuracy": self.is_accuracy,
            "significant": self.significant(),
        }
