"""Validity of analysis.stats by simulation (vectorised; fixed seeds; a few seconds in all).

Monte-Carlo error: with S experiments a rate r has standard error sqrt(r (1 - r) / S). The
issue's 2,000 A/A experiments give 0.0049 around 0.05 (the band [0.04, 0.06] is +-2 SE), so we
also run 40,000 (SE 0.0011) and hold that run to a tighter band. The bounds below are several
standard errors away from the expected values.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stats import (
    difference_stats,
    fixed_horizon_significant,
    log_ratio_stats,
    non_inferiority_sample_size,
    sample_size,
    sequential_bounds,
    sequential_intervals,
    wilson_interval,
    z_test_p_value,
)

ALPHA = 0.05
BASELINE = 0.93  # the paper's teacher completion rate is in this region
PER_ARM = 10_000
DAYS = 14
DAILY_PER_ARM = 1_000


def aa_false_positive_rate(experiments: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    exports = rng.binomial(PER_ARM, BASELINE, size=(experiments, 2))
    significant = fixed_horizon_significant(exports[:, 0], PER_ARM, exports[:, 1], PER_ARM, ALPHA)
    return float(significant.mean())


def daily_experiments(experiments: int, seed: int, control: float, treatment: float):
    """Cumulative (exports, starts) per arm after each of DAYS days, shape (experiments, DAYS)."""
    rng = np.random.default_rng(seed)
    starts = rng.poisson(DAILY_PER_ARM, size=(2, experiments, DAYS))
    rates = np.array([control, treatment])[:, None, None]
    exports = rng.binomial(starts, rates)
    cum_x, cum_n = np.cumsum(exports, axis=-1), np.cumsum(starts, axis=-1)
    return cum_x[0], cum_n[0], cum_x[1], cum_n[1]


def peeking_rates(experiments: int, seed: int) -> tuple[float, float]:
    """(naive repeated fixed test, sequential) false-positive rates with a look every day."""
    xc, nc, xt, nt = daily_experiments(experiments, seed, BASELINE, BASELINE)
    naive_any = fixed_horizon_significant(xc, nc, xt, nt, ALPHA).any(axis=-1)
    diff, var = difference_stats(xc, nc, xt, nt)
    horizon = DAYS * DAILY_PER_ARM
    _, _, p = sequential_bounds(diff, var, np.minimum(nc, nt), horizon, ALPHA)
    sequential_any = (p < ALPHA).any(axis=-1)
    return float(naive_any.mean()), float(sequential_any.mean())


def test_aa_false_positive_rate_2000_experiments():
    rate = aa_false_positive_rate(2_000, seed=20240501)
    print(f"A/A fixed-horizon false-positive rate (2,000 experiments): {rate:.4f}")
    assert 0.04 <= rate <= 0.06


def test_aa_false_positive_rate_40000_experiments():
    rate = aa_false_positive_rate(40_000, seed=7)
    print(f"A/A fixed-horizon false-positive rate (40,000 experiments): {rate:.4f}")
    assert 0.045 <= rate <= 0.055


def test_daily_peeking_sequential_stays_valid_naive_does_not():
    naive, sequential = peeking_rates(20_000, seed=11)
    print(f"14 daily peeks, A/A: naive {naive:.4f}, sequential {sequential:.4f}")
    assert sequential <= ALPHA
    assert naive >= 0.08  # repeated fixed-horizon testing inflates the error (~0.2 expected)
    # the size, too
    naive_small, sequential_small = peeking_rates(2_000, seed=12)
    assert sequential_small <= ALPHA and naive_small >= 0.08


def test_confidence_sequence_covers_the_true_difference_at_every_look():
    xc, nc, xt, nt = daily_experiments(10_000, 13, BASELINE, BASELINE + 0.01)
    diff, var = difference_stats(xc, nc, xt, nt)
    low, high, _ = sequential_bounds(diff, var, np.minimum(nc, nt), DAYS * DAILY_PER_ARM, ALPHA)
    # the running intersection at the last look covers the truth iff every look did
    covered = (low[:, -1] <= 0.01) & (high[:, -1] >= 0.01)
    print(f"always-valid coverage over 14 looks: {covered.mean():.4f}")
    assert covered.mean() >= 1 - ALPHA
    # the ratio's sequence too
    log_ratio, log_var = log_ratio_stats(xc, nc, xt, nt)
    r_low, r_high, _ = sequential_bounds(
        log_ratio, log_var, np.minimum(nc, nt), DAYS * DAILY_PER_ARM, ALPHA
    )
    true_log_ratio = np.log((BASELINE + 0.01) / BASELINE)
    assert ((r_low[:, -1] <= true_log_ratio) & (true_log_ratio <= r_high[:, -1])).mean() >= 0.95


@pytest.mark.parametrize("baseline,mde,ratio", [(0.93, 0.01, 1.0), (0.5, -0.04, 2.0)])
def test_power_at_the_calculated_sample_size(baseline, mde, ratio):
    plan = sample_size(baseline, mde, ALPHA, power=0.8, ratio=ratio)
    rng = np.random.default_rng(17)
    experiments = 10_000  # SE of the power ~0.004
    xc = rng.binomial(plan.control, baseline, experiments)
    xt = rng.binomial(plan.treatment, baseline + mde, experiments)
    power = fixed_horizon_significant(xc, plan.control, xt, plan.treatment, ALPHA).mean()
    print(f"power at n_c={plan.control}, n_t={plan.treatment}: {power:.4f}")
    assert 0.76 <= power <= 0.84


def test_wilson_and_wald_coverage():
    rng = np.random.default_rng(19)
    n = 2_000
    x = rng.binomial(n, BASELINE, 20_000)
    low, high = wilson_interval(x, n, ALPHA)
    coverage = ((low <= BASELINE) & (high >= BASELINE)).mean()
    assert 0.94 <= coverage <= 0.96
    y = rng.binomial(n, BASELINE, 20_000)
    diff, var = difference_stats(x, n, y, n)
    p = z_test_p_value(diff, var)
    assert 0.04 <= (p < ALPHA).mean() <= 0.06


def test_sequential_test_still_finds_real_effects():
    xc, nc, xt, nt = daily_experiments(5_000, 23, BASELINE, BASELINE + 0.01)
    diff, var = difference_stats(xc, nc, xt, nt)
    _, _, p = sequential_bounds(diff, var, np.minimum(nc, nt), DAYS * DAILY_PER_ARM, ALPHA)
    found = (p[:, -1] < ALPHA).mean()
    fixed = fixed_horizon_significant(xc[:, -1], nc[:, -1], xt[:, -1], nt[:, -1], ALPHA).mean()
    print(f"true +1pp over 14 days: sequential power {found:.4f}, fixed-horizon power {fixed:.4f}")
    # the price of peeking freely is some power, not all of it
    assert 0.5 <= found < fixed


def non_inferior_rate(experiments, seed, n_c, n_t, control, treatment, margin):
    """Share of experiments where the (1 - alpha) interval's lower bound clears the margin."""
    rng = np.random.default_rng(seed)
    xc = rng.binomial(n_c, control, experiments)
    xt = rng.binomial(n_t, treatment, experiments)
    diff, var = difference_stats(xc, n_c, xt, n_t)
    return float((diff - 1.959963984540054 * np.sqrt(var) > margin).mean())


def test_non_inferiority_power_and_error_at_the_planned_size():
    margin = -0.01
    plan = non_inferiority_sample_size(BASELINE, margin)
    power = non_inferior_rate(10_000, 29, plan.control, plan.treatment, BASELINE, BASELINE, margin)
    # an arm exactly one margin worse is declared non-inferior at most alpha/2 of the time
    error = non_inferior_rate(
        40_000, 31, plan.control, plan.treatment, BASELINE, BASELINE + margin, margin
    )
    print(f"non-inferiority at n={plan.control}/arm: power {power:.4f}, error {error:.4f}")
    assert 0.76 <= power <= 0.84
    assert error <= ALPHA / 2 + 0.004  # SE of the error rate ~0.0008


def test_vectorised_core_is_what_the_public_api_computes():
    """The simulations above use the array cores; the reports use `sequential_path`/`compare`."""
    from analysis.stats import compare, sequential_path

    rng = np.random.default_rng(37)
    starts = rng.poisson(DAILY_PER_ARM, size=(2, 40, DAYS))
    exports = rng.binomial(starts, BASELINE)
    xc, nc, xt, nt = (np.cumsum(a, axis=-1) for a in (exports[0], starts[0], exports[1], starts[1]))
    low, high, _, _, p = sequential_intervals(xc, nc, xt, nt, DAYS * DAILY_PER_ARM, ALPHA)
    naive = fixed_horizon_significant(xc, nc, xt, nt, ALPHA)
    for i in range(40):
        path = sequential_path(exports[0, i], starts[0, i], exports[1, i], starts[1, i],
                               ALPHA, horizon=DAYS * DAILY_PER_ARM)  # fmt: skip
        np.testing.assert_allclose(path.p_value, p[i], rtol=1e-12)
        np.testing.assert_allclose(path.difference_ci_low, low[i], rtol=1e-12)
        np.testing.assert_allclose(path.difference_ci_high, high[i], rtol=1e-12)
        day = int(rng.integers(DAYS))
        cmp = compare(int(xc[i, day]), int(nc[i, day]), int(xt[i, day]), int(nt[i, day]), ALPHA)
        assert (cmp.p_value < ALPHA) == naive[i, day]
