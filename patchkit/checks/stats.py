"""Small, deterministic statistics for check reports: intervals for rates and means, paired significance tests.

Every function here is numpy-only and seeded, so a report computed twice on the same data is identical.
Paired tests are used because base and patched models are always scored on the *same* items: the per-item
difference removes the item difficulty that would otherwise swamp a small regression.

Why not call scipy: a report must not need it, and these few formulas are short. They are not trusted on
that account: tests/test_stats_crosscheck.py compares every function with scipy / statsmodels on a grid of
inputs (Wilson with `proportion_confint`, McNemar with statsmodels' exact test and `binomtest`, the sign-flip
test with `permutation_test`, ...). The bootstraps draw exactly the resamples `scipy.stats.bootstrap` draws
for the same seed (`default_rng(seed).integers(0, n, (n_boot, n))`), so their intervals equal scipy's
percentile intervals, not just in distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "wilson_interval",
    "bootstrap_ci",
    "paired_bootstrap",
    "sign_flip_test",
    "mcnemar_exact",
    "mean_stderr",
    "resample_indices",
    "ratio_ci",
    "normal_two_sided_p",
]

DEFAULT_SEED = 20261124


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a rate k/n (well behaved at 0/n and n/n, unlike the normal interval).

    >>> wilson_interval(0, 10)[0]
    0.0
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # exact endpoints at the boundaries (floating error would otherwise give 1e-17 instead of 0)
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return (lo, hi)


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] | None = None,
    n_boot: int = 2000,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` (default: mean) over `values`.

    `stat` must accept a 2-D array (n_boot, n) with `axis=-1` semantics when it is a numpy reduction
    (np.mean, np.median, np.max ...); any other callable is applied per resample.
    """
    arr = _as_array(values)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    fn = np.mean if stat is None else stat
    if arr.size == 1:
        v = float(fn(arr))
        return (v, v)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    samples = arr[idx]
    try:
        boot = np.asarray(fn(samples, axis=-1), dtype=np.float64)  # type: ignore[call-arg]
        if boot.shape != (n_boot,):
            raise TypeError
    except TypeError:
        boot = np.array([float(fn(row)) for row in samples])
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def mean_stderr(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of the mean (sample std / sqrt(n)); 0 for fewer than two values."""
    arr = _as_array(values)
    if arr.size < 2:
        return 0.0
    return float(arr.std(ddof=1) / math.sqrt(arr.size))


def _paired_diffs(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"paired test needs equal lengths, got {x.size} and {y.size}")
    return y - x


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict[str, float]:
    """Bootstrap of the mean per-item difference b - a (e.g. patched - base) over items.

    Returns {"diff", "lo", "hi", "p"}: p is the two-sided bootstrap p-value (twice the share of resampled
    mean differences on the other side of zero, clipped to 1). All differences zero gives p = 1.
    """
    d = _paired_diffs(a, b)
    if d.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": 1.0}
    diff = float(d.mean())
    if not np.any(d):
        return {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boot = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    below = (np.sum(boot <= 0) + 1) / (n_boot + 1)
    above = (np.sum(boot >= 0) + 1) / (n_boot + 1)
    p = min(1.0, 2 * min(below, above))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p": float(p)}


def sign_flip_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_perm: int = 5000,
    seed: int = DEFAULT_SEED,
) -> float:
    """Two-sided paired permutation test (random sign flips of per-item differences) for mean(b - a) != 0.

    Exact enumeration when there are at most 16 non-zero differences; Monte Carlo with the +1 correction
    otherwise (so p is never 0). Returns the p-value.
    """
    d = _paired_diffs(a, b)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, observed)
    if d.size <= 16:
        signs = ((np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
        sums = np.abs(signs @ d)
        return float(np.mean(sums >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = 1000
    done = 0
    while done < n_perm:
        m = min(chunk, n_perm - done)
        signs = rng.integers(0, 2, size=(m, d.size)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
        done += m
    return float((hits + 1) / (n_perm + 1))


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> dict[str, float]:
    """Exact McNemar test for paired binary outcomes (e.g. item correct under base / under patched).

    Only discordant pairs carry information: n01 = right before, wrong after; n10 = wrong before, right after.
    Under H0 they split 50/50, so p = two-sided binomial tail. Returns {"n01", "n10", "p"}.
    """
    x = np.asarray(a, dtype=bool).reshape(-1)
    y = np.asarray(b, dtype=bool).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"mcnemar_exact needs equal lengths, got {x.size} and {y.size}")
    n01 = int(np.sum(x & ~y))
    n10 = int(np.sum(~x & y))
    n = n01 + n10
    if n == 0:
        return {"n01": 0, "n10": 0, "p": 1.0}
    k = min(n01, n10)
    # P(X <= k) for X ~ Binomial(n, 1/2), computed in log space to stay exact-ish for large n
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)
    ]
    tail = math.fsum(math.exp(t) for t in log_terms)
    return {"n01": n01, "n10": n10, "p": float(min(1.0, 2 * tail))}


def resample_indices(n: int, n_boot: int = 2000, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Bootstrap index matrix (n_boot, n): resample whole units (sequences, items) for cluster bootstraps."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def ratio_ci(
    num: Sequence[float] | np.ndarray,
    den: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Cluster-bootstrap interval of sum(num) / sum(den) (e.g. token-weighted mean KL over sequences).

    `transform` is applied to the resampled ratios (e.g. np.exp for a perplexity ratio from NLL sums).
    """
    x, y = _as_array(num), _as_array(den)
    if x.shape != y.shape:
        raise ValueError(f"ratio_ci needs equal lengths, got {x.size} and {y.size}")
    if x.size == 0:
        return (float("nan"), float("nan"))
    idx = resample_indices(x.size, n_boot, seed)
    d = y[idx].sum(axis=1)
    ratios = np.divide(x[idx].sum(axis=1), d, out=np.zeros(n_boot), where=d != 0)
    if transform is not None:
        ratios = transform(ratios)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def normal_two_sided_p(diff: float, stderr: float) -> float:
    """p-value of a z-test for diff = 0 given its standard error (for figures that come with stderr only)."""
    if stderr <= 0 or not math.isfinite(stderr):
        return 1.0 if diff == 0 else 0.0
    return float(math.erfc(abs(diff) / stderr / math.sqrt(2)))
