"""Every public function of `patchkit.checks.stats` against scipy / statsmodels, on a grid of inputs.

stats.py stays numpy-only (a report must not need scipy); these tests are where its numbers are checked against
the well-kept implementations. The bootstraps use the same generator calls as `scipy.stats.bootstrap`
(`default_rng(seed).integers(0, n, (n_boot, n))`), so with the same seed the intervals agree to rounding, not
just in distribution; the exact tests agree to rounding; the Monte Carlo sign-flip test within its own error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from patchkit.checks import stats

CHECKED = {
    "wilson_interval",
    "bootstrap_ci",
    "paired_bootstrap",
    "sign_flip_test",
    "mcnemar_exact",
    "mean_stderr",
    "resample_indices",
    "ratio_ci",
    "normal_two_sided_p",
}


def test_every_public_function_is_cross_checked():
    assert set(stats.__all__) == CHECKED  # a new function needs its reference check here


def _data(n: int, seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0.3, 1.0, n)
    if kind == "skewed":
        return rng.lognormal(0.0, 1.0, n)
    if kind == "ties":
        return rng.integers(0, 3, n).astype(float)
    raise ValueError(kind)


def _scipy_bootstrap(data, statistic, *, n_boot, seed, level, paired=False, vectorized=True):
    return st.bootstrap(
        data,
        statistic,
        n_resamples=n_boot,
        method="percentile",
        confidence_level=level,
        paired=paired,
        vectorized=vectorized,
        rng=np.random.default_rng(seed),
    )


# -- intervals for a rate -------------------------------------------------------------------------------------
@pytest.mark.parametrize("z", [1.0, 1.645, 1.96, 2.576])
@pytest.mark.parametrize("n", [1, 2, 5, 12, 50, 401])
def test_wilson_interval_matches_statsmodels_and_scipy(n, z):
    alpha = 2 * st.norm.sf(z)
    ks = range(n + 1) if n <= 50 else [0, 1, 2, 7, 100, 200, 399, 400, 401]
    for k in ks:
        lo, hi = stats.wilson_interval(k, n, z)
        sm_lo, sm_hi = proportion_confint(k, n, alpha=alpha, method="wilson")
        sp = st.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
        assert lo == pytest.approx(sm_lo, abs=1e-12) and hi == pytest.approx(sm_hi, abs=1e-12), (k, n, z)
        assert lo == pytest.approx(sp.low, abs=1e-12) and hi == pytest.approx(sp.high, abs=1e-12), (k, n, z)


# -- bootstraps -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.8, 0.95])
@pytest.mark.parametrize("seed", [0, stats.DEFAULT_SEED])
@pytest.mark.parametrize("n, kind", [(2, "normal"), (3, "ties"), (10, "skewed"), (57, "normal"), (200, "ties")])
def test_bootstrap_ci_matches_scipy_percentile_bootstrap(n, kind, seed, level):
    x = _data(n, seed + n, kind)
    for ours_stat, ref_stat, vectorized in (
        (None, np.mean, True),
        (np.median, np.median, True),
        (np.max, np.max, True),
        (np.std, np.std, True),
        (lambda row: float(np.mean(row**2)), lambda s: float(np.mean(s**2)), False),  # a per-resample callable
    ):
        ours = stats.bootstrap_ci(x, stat=ours_stat, n_boot=500, seed=seed, level=level)
        ref = _scipy_bootstrap((x,), ref_stat, n_boot=500, seed=seed, level=level, vectorized=vectorized)
        ci = ref.confidence_interval
        assert ours == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-12), (n, kind, ours_stat)


@pytest.mark.parametrize("seed", [0, stats.DEFAULT_SEED])
@pytest.mark.parametrize("n, shift", [(5, 0.0), (30, 0.1), (30, 1.0), (250, 0.05)])
def test_paired_bootstrap_matches_scipy_paired_bootstrap(n, shift, seed):
    rng = np.random.default_rng(seed + n)
    a = rng.normal(0.0, 1.0, n)
    b = a + shift + rng.normal(0.0, 0.5, n)
    ours = stats.paired_bootstrap(a, b, n_boot=800, seed=seed, level=0.9)
    ref = _scipy_bootstrap(
        (a, b), lambda x, y, axis: np.mean(y - x, axis=axis), n_boot=800, seed=seed, level=0.9, paired=True
    )
    assert ours["diff"] == pytest.approx(float(np.mean(b - a)), rel=1e-12)
    assert (ours["lo"], ours["hi"]) == pytest.approx(ref.confidence_interval, rel=1e-12, abs=1e-12)
    boot = ref.bootstrap_distribution  # the same resampled mean differences: the p-value follows from them
    below, above = (np.sum(boot <= 0) + 1) / 801, (np.sum(boot >= 0) + 1) / 801
    assert ours["p"] == pytest.approx(min(1.0, 2 * min(below, above)), rel=1e-12)
    # and it says what a paired t-test says about a clear effect or none
    t_p = st.ttest_rel(b, a).pvalue
    if t_p < 1e-4:
        assert ours["p"] < 0.01
    if t_p > 0.5:
        assert ours["p"] > 0.1


@pytest.mark.parametrize("seed", [0, stats.DEFAULT_SEED])
@pytest.mark.parametrize("n", [2, 9, 40, 300])
def test_ratio_ci_matches_scipy_paired_bootstrap(n, seed):
    rng = np.random.default_rng(seed + n)
    den = rng.integers(5, 60, n).astype(float)  # tokens per sequence
    num = den * rng.gamma(2.0, 0.05, n)  # summed per-token values
    for transform in (None, np.exp):
        ours = stats.ratio_ci(num, den, n_boot=600, seed=seed, level=0.95, transform=transform)

        def statistic(x, y, axis, transform=transform):
            ratio = np.sum(x, axis=axis) / np.sum(y, axis=axis)
            return ratio if transform is None else transform(ratio)

        ref = _scipy_bootstrap((num, den), statistic, n_boot=600, seed=seed, level=0.95, paired=True)
        assert ours == pytest.approx(tuple(ref.confidence_interval), rel=1e-12, abs=1e-12), (n, transform)


@pytest.mark.parametrize("seed", [0, stats.DEFAULT_SEED])
@pytest.mark.parametrize("n, n_boot", [(1, 5), (7, 300), (64, 1000)])
def test_resample_indices_are_the_resamples_scipy_draws(n, n_boot, seed):
    seen: list[np.ndarray] = []

    def record(x, axis):
        seen.append(np.array(x))
        return np.mean(x, axis=axis)

    if n > 1:  # scipy needs two observations
        _scipy_bootstrap((np.arange(n, dtype=float),), record, n_boot=n_boot, seed=seed, level=0.95)
        np.testing.assert_array_equal(stats.resample_indices(n, n_boot, seed), seen[0].astype(int))
    idx = stats.resample_indices(n, n_boot, seed)
    assert idx.shape == (n_boot, n) and idx.min() >= 0 and idx.max() <= n - 1
    if n > 1:  # every unit equally likely
        counts = np.bincount(idx.ravel(), minlength=n)
        assert st.chisquare(counts).pvalue > 1e-4


# -- paired tests ---------------------------------------------------------------------------------------------
def _pairs(n: int, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        a = rng.normal(0, 1, n)
        return a, a + rng.normal(0.4, 1.0, n)
    if kind == "integer":  # ties in |sum| and zero differences
        a = rng.integers(0, 3, n).astype(float)
        return a, a + rng.integers(-1, 3, n)
    if kind == "null":
        a = rng.normal(0, 1, n)
        return a, a + rng.normal(0, 1, n)
    raise ValueError(kind)


def _scipy_sign_flip(a: np.ndarray, b: np.ndarray, n_resamples: float = np.inf) -> float:
    res = st.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=n_resamples,
        vectorized=True,
        alternative="two-sided",
    )
    return float(res.pvalue)


@pytest.mark.parametrize("kind", ["continuous", "integer", "null"])
@pytest.mark.parametrize("n", [2, 3, 8, 13])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_flip_test_exact_matches_scipy_permutation_test(n, kind, seed):
    a, b = _pairs(n, seed, kind)
    if not np.any(b - a):
        assert stats.sign_flip_test(a, b) == 1.0
        return
    assert stats.sign_flip_test(a, b) == pytest.approx(_scipy_sign_flip(a, b), rel=1e-9)


@pytest.mark.parametrize("kind", ["continuous", "null"])
def test_sign_flip_test_monte_carlo_is_within_its_error_of_the_exact_p(kind):
    a, b = _pairs(17, 7, kind)  # > 16 non-zero differences: Monte Carlo; scipy enumerates all 2^17 exactly
    exact = _scipy_sign_flip(a, b)
    ours = stats.sign_flip_test(a, b, n_perm=20000)
    assert abs(ours - exact) <= 4 * math.sqrt(exact * (1 - exact) / 20000) + 2 / 20001, (ours, exact)


@pytest.mark.parametrize("n, flip", [(1, 0.5), (10, 0.3), (40, 0.1), (40, 0.5), (500, 0.02), (5000, 0.3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_mcnemar_exact_matches_statsmodels_and_scipy(n, flip, seed):
    rng = np.random.default_rng(seed + n)
    a = rng.random(n) < 0.6
    b = np.where(rng.random(n) < flip, ~a, a)
    b[: n // 20] = True  # a little asymmetry
    ours = stats.mcnemar_exact(a, b)
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    assert (ours["n01"], ours["n10"]) == (int(table[0, 1]), int(table[1, 0]))
    discordant = ours["n01"] + ours["n10"]
    if discordant == 0:
        assert ours["p"] == 1.0
        return
    sm = mcnemar(table, exact=True).pvalue
    sp = st.binomtest(min(ours["n01"], ours["n10"]), discordant, 0.5).pvalue
    assert ours["p"] == pytest.approx(sm, rel=1e-9, abs=1e-300) and ours["p"] == pytest.approx(sp, rel=1e-9, abs=1e-300)


# -- standard error and the z-test ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 10, 1000])
@pytest.mark.parametrize("kind", ["normal", "skewed", "ties"])
def test_mean_stderr_matches_scipy_sem(n, kind):
    x = _data(n, n, kind)
    assert stats.mean_stderr(x) == pytest.approx(float(st.sem(x, ddof=1)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("stderr", [1e-6, 0.01, 0.5, 3.0])
@pytest.mark.parametrize("diff", [0.0, 1e-7, -0.004, 0.02, -1.5, 7.0])
def test_normal_two_sided_p_matches_scipy_norm(diff, stderr):
    ref = 2 * st.norm.sf(abs(diff) / stderr)
    assert stats.normal_two_sided_p(diff, stderr) == pytest.approx(ref, rel=1e-9, abs=1e-300)
