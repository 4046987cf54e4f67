"""Statistics used by every check report: intervals and paired tests, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from patchkit.checks.stats import (
    bootstrap_ci,
    mcnemar_exact,
    mean_stderr,
    paired_bootstrap,
    sign_flip_test,
    wilson_interval,
)


def test_wilson_matches_closed_form():
    # k=8, n=12: centre and half-width computed by hand from the Wilson formula
    z = 1.96
    p, n = 8 / 12, 12
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = wilson_interval(8, 12)
    assert lo == pytest.approx(centre - half)
    assert hi == pytest.approx(centre + half)
    assert 0.39 < lo < 0.40 and 0.86 < hi < 0.87


def test_wilson_boundaries_and_errors():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[1] > 0.2
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_bootstrap_ci_is_deterministic_and_covers_mean():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, size=200)
    a = bootstrap_ci(values, n_boot=500, seed=3)
    b = bootstrap_ci(values, n_boot=500, seed=3)
    assert a == b
    assert a[0] < values.mean() < a[1]
    # width close to 2 * 1.96 * sem
    assert (a[1] - a[0]) == pytest.approx(2 * 1.96 * mean_stderr(values), rel=0.2)
    lo, hi = bootstrap_ci(values, stat=np.median, n_boot=300)
    assert lo < np.median(values) < hi
    lo, hi = bootstrap_ci(values, stat=lambda x: float(np.percentile(x, 90)), n_boot=100)
    assert lo <= hi
    assert bootstrap_ci([5.0]) == (5.0, 5.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_paired_tests_detect_shift_and_ignore_identity():
    rng = np.random.default_rng(7)
    base = rng.normal(0.0, 1.0, size=100)
    shifted = base + 0.3 + rng.normal(0, 0.1, size=100)
    res = paired_bootstrap(base, shifted, n_boot=1000)
    assert res["lo"] > 0 and res["p"] < 0.01
    assert res["diff"] == pytest.approx(float(np.mean(shifted - base)))
    assert sign_flip_test(base, shifted, n_perm=2000) < 0.01
    same = paired_bootstrap(base, base)
    assert same["p"] == 1.0 and same["diff"] == 0.0
    assert sign_flip_test(base, base) == 1.0
    noise = base + rng.normal(0, 0.1, size=100)
    assert sign_flip_test(base, noise) > 0.01 or paired_bootstrap(base, noise)["p"] > 0.01
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_sign_flip_exact_small_sample():
    # 4 positive diffs of 1: only the all-plus and all-minus assignments reach |sum| = 4 -> p = 2/16
    assert sign_flip_test([0, 0, 0, 0], [1, 1, 1, 1]) == pytest.approx(2 / 16)


def test_mcnemar_exact_values():
    base = [True] * 10 + [False] * 5
    patched = [False] * 10 + [False] * 5  # 10 right->wrong, 0 wrong->right
    res = mcnemar_exact(base, patched)
    assert res["n01"] == 10 and res["n10"] == 0
    assert res["p"] == pytest.approx(2 * 0.5**10)
    res = mcnemar_exact([True, False, True], [True, False, True])
    assert res["p"] == 1.0
    res = mcnemar_exact([True, False], [False, True])  # 1 vs 1 discordant: p = 1
    assert res["p"] == 1.0
