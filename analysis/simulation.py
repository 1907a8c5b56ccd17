"""Monte-Carlo checks of the decision rules (vectorised numpy; used by tests and bench).

Each function simulates many experiments from counts (or, for the attribution window, from
per-project times), runs the same rules `analysis.stats.decide` uses, and returns a `Figure`: the
rate of some verdict with its Monte-Carlo standard error sqrt(r (1 - r) / S). The vectorised
paths call the array cores of `analysis.stats` (`mover_ratio`, `sequential_intervals`,
`attributed`, `allocation_srm`); `power_through_decide` and `ramp_through_decide` call `decide`
itself, one experiment at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis import stats

ALPHA = 0.05


@dataclass(frozen=True)
class Figure:
    """A simulated rate and its Monte-Carlo standard error."""

    name: str
    rate: float
    experiments: int

    @property
    def se(self) -> float:
        return math.sqrt(max(self.rate * (1 - self.rate), 0.0) / self.experiments)

    def __str__(self) -> str:
        return f"{self.name}: {self.rate:.4f} (MC SE {self.se:.4f}, {self.experiments} runs)"


def _figure(name: str, hits: np.ndarray | np.bool_) -> Figure:
    return Figure(name, float(np.mean(hits)), int(hits.size))


def aa_false_positive_rate(
    experiments: int, seed: int = 1, per_arm: int = 10_000, rate: float = 0.93
) -> Figure:
    """A/A, fixed horizon: the ratio interval (MOVER-R, as `decide`) excludes 1."""
    rng = np.random.default_rng(seed)
    x = rng.binomial(per_arm, rate, size=(2, experiments))
    low, high = stats.mover_ratio(x[0], per_arm, x[1], per_arm, stats.design_z(ALPHA, False))
    return _figure("A/A false-positive rate (fixed, ratio interval)", (low > 1) | (high < 1))


def _daily(
    rng: np.random.Generator, experiments: int, days: int, daily: int, rates: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    starts = rng.poisson(daily, size=(2, experiments, days))
    exports = rng.binomial(starts, np.asarray(rates)[:, None, None])
    cx, cn = np.cumsum(exports, axis=-1), np.cumsum(starts, axis=-1)
    return cx[0], cn[0], cx[1], cn[1]


def peeking_false_positive_rate(
    experiments: int, seed: int = 2, days: int = 14, daily: int = 1_000, rate: float = 0.93
) -> Figure:
    """A/A with a look every day: the always-valid ratio interval excludes 1 at ANY look."""
    rng = np.random.default_rng(seed)
    xc, nc, xt, nt = _daily(rng, experiments, days, daily, (rate, rate))
    _, _, low, high, _ = stats.sequential_intervals(xc, nc, xt, nt, days * daily, ALPHA)
    hits = ((low > 1) | (high < 1)).any(axis=-1)
    return _figure(f"A/A false-positive rate, sequential, {days} daily looks", hits)


def power_through_decide(
    experiments: int, seed: int = 3, baseline: float = 0.3, effect: float = 0.05
) -> tuple[Figure, int]:
    """Power of the sequential design at its planned size, each experiment through `decide`.

    The size comes from `stats.plan(..., sequential=True)`, the horizon is that size (fixed at
    the start), and the verdict "treatment better" is counted. Returns (figure, size per arm).
    """
    size = stats.plan(baseline, effect, sequential=True).control
    rng = np.random.default_rng(seed)
    xc = rng.binomial(size, baseline, experiments)
    xt = rng.binomial(size, baseline * (1 + effect), experiments)
    hits = np.array(
        [
            stats.decide((int(c), size), [(int(t), size)], sequential=True, horizon=size)
            .treatments["treatment"]
            .decision
            == stats.TREATMENT_BETTER
            for c, t in zip(xc, xt, strict=True)
        ]
    )
    name = f"power of the sequential design at its planned size ({size} per arm)"
    return _figure(name, hits), size


def non_inferiority_type_one(
    experiments: int, seed: int = 4, baseline: float = 0.93, margin: float = -0.02,
    sequential: bool = False,
) -> Figure:  # fmt: skip
    """The truth sits exactly on the margin (ratio 1 + margin): how often is NI declared?

    The size is the one planned for the NI design; the power gate of `decide` is left out (it can
    only turn "non-inferior" into "underpowered"), so this is the interval's own error rate.
    """
    size = stats.plan(baseline, margin, kind="non-inferiority", sequential=sequential).control
    rng = np.random.default_rng(seed)
    xc = rng.binomial(size, baseline, experiments)
    xt = rng.binomial(size, baseline * (1 + margin), experiments)
    low, _ = stats.mover_ratio(xc, size, xt, size, stats.design_z(ALPHA, sequential))
    kind = "sequential" if sequential else "fixed"
    return _figure(f"non-inferiority type-I error at the margin ({kind})", low > 1 + margin)


def delayed_export_aa(
    experiments: int, seed: int = 5, days: int = 14, daily: int = 200, rate: float = 0.3,
    window_h: float = 48.0, attribution: bool = True,
) -> Figure:  # fmt: skip
    """A/A on the eventual rate, but control exports within 30 minutes and treatment within
    2 days (uniform). Daily looks with the sequential design, up to the end of each day.

    attribution=True: the window rule (`stats.attributed`, window 48 h, young projects pending);
    False: the naive count (every started project, every export so far).
    """
    rng = np.random.default_rng(seed)
    n = days * daily
    start = rng.uniform(0, days * 24, size=(2, experiments, n))
    delay = np.stack(
        [rng.uniform(0, 0.5, size=(experiments, n)), rng.uniform(0, 48, size=(experiments, n))]
    )
    exported = rng.random(size=(2, experiments, n)) < rate
    export = np.where(exported, start + delay, np.nan)
    counts = np.zeros((4, experiments, days))
    for day in range(days):
        until = (day + 1) * 24.0
        if attribution:
            counted, done, _ = stats.attributed(start, export, until, window_h)
        else:
            counted = start < until
            with np.errstate(invalid="ignore"):
                done = counted & (export < until)
        counts[0, :, day], counts[1, :, day] = done[0].sum(-1), counted[0].sum(-1)
        counts[2, :, day], counts[3, :, day] = done[1].sum(-1), counted[1].sum(-1)
    _, _, low, high, _ = stats.sequential_intervals(
        counts[0], counts[1], counts[2], counts[3], n, ALPHA
    )
    with np.errstate(invalid="ignore"):
        hits = ((low > 1) | (high < 1)).any(axis=-1)
    rule = "with the attribution window" if attribution else "naive count"
    return _figure(f"delayed-export A/A declares a winner ({rule})", hits)


RAMP = ((0.8, 0.2), (0.5, 0.5))


def ramp_srm(experiments: int, seed: int = 6, per_period: int = 20_000) -> tuple[Figure, Figure]:
    """A/A ramp 0.8/0.2 -> 0.5/0.5: SRM flagged per allocation period, and pooled (naive)."""
    rng = np.random.default_rng(seed)
    first = rng.binomial(per_period, RAMP[0][1], experiments)
    second = rng.binomial(per_period, RAMP[1][1], experiments)
    per_period_flags, pooled_flags = [], []
    for a, b in zip(first, second, strict=True):
        starts = [[per_period - a, a], [per_period - b, b]]
        per_period_flags.append(stats.allocation_srm(starts, RAMP).flagged)
        pooled = [2 * per_period - a - b, a + b]
        pooled_flags.append(stats.sample_ratio_mismatch(pooled, RAMP[1]).flagged)
    return (
        _figure("ramp A/A flagged as SRM (per allocation period)", np.array(per_period_flags)),
        _figure("ramp A/A flagged as SRM (pooled, naive)", np.array(pooled_flags)),
    )


def ramp_through_decide(
    experiments: int, seed: int = 7, per_period: int = 10_000, rates: tuple = (0.5, 0.6)
) -> Figure:
    """A/A ramp with a rate trend (0.5 in the first period, 0.6 in the second): how often does
    `decide`, given the allocation periods, declare a winner or flag SRM?"""
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(experiments):
        periods = []
        for weights, rate in zip(RAMP, rates, strict=True):
            treated = int(rng.binomial(per_period, weights[1]))
            n = (per_period - treated, treated)
            x = rng.binomial(n, rate)
            periods.append(stats.Period(((int(x[0]), n[0]), (int(x[1]), n[1])), weights))
        control = (sum(p.counts[0][0] for p in periods), sum(p.counts[0][1] for p in periods))
        treatment = (sum(p.counts[1][0] for p in periods), sum(p.counts[1][1] for p in periods))
        verdict = stats.decide(control, [treatment], periods=periods).decisions["treatment"]
        hits.append(verdict in (stats.TREATMENT_BETTER, stats.TREATMENT_WORSE,
                                stats.SRM_DO_NOT_TRUST))  # fmt: skip
    return _figure("ramp A/A with a rate trend: winner or SRM through decide", np.array(hits))
