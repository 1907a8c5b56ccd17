"""Online statistics for the completion rate (exports / starts, the project being the unit).

Small pure functions over sufficient statistics, in the style of GrowthBook's gbstats. Inputs are
counts; outputs are frozen dataclasses. Facts of the data that make a number undefined (an arm
with no starts, every project exported in both arms) come back as a result whose `message` says
so and whose undefined numbers are NaN; only programming errors (negative counts, exports >
starts, alpha outside (0, 1)) raise `ValueError`.

Methods (all two-sided at level `alpha` unless said otherwise):

- Per-arm rate: Wilson score interval (good coverage near 0 and 1, never leaves [0, 1]); equal to
  `statsmodels.stats.proportion.proportion_confint(method="wilson")`.
- Difference treatment - control: Wald z with the unpooled variance
  p_t(1-p_t)/n_t + p_c(1-p_c)/n_c for both the interval and the p-value, so "p < alpha" and
  "the interval excludes 0" always agree; equal to statsmodels' `confint_proportions_2indep` /
  `test_proportions_2indep` with `method="wald", compare="diff"` (the interval is clipped to
  [-1, 1], which only matters for tiny arms).
- Ratio treatment / control (the paper's "96.1% of"): delta method on log(ratio), variance
  (1-p_t)/x_t + (1-p_c)/x_c; equal to statsmodels' `method="log", compare="ratio"`.
- Several treatments: Holm step-down adjustment of the p-values (`holm_adjust`).
- Decisions (`decide`) use intervals that behave at small counts and never go NaN at 0% or
  100%: Newcombe's hybrid score interval for the difference (`newcombe_difference`, equal to
  statsmodels' method="newcomb") and the MOVER-R interval for the ratio (`mover_ratio`, Wilson
  limits combined as in Donner & Zou 2012; statsmodels' score interval for the ratio raises or
  returns complex numbers at 0%/100%, so it is not used). The p-value shown is the pooled z
  test (`pooled_p_value`, statsmodels' proportions_ztest) or the always-valid one; the interval
  decides. `compare`, `non_inferiority` and `equivalence` keep the Wald / log-delta reference
  numbers (equal to statsmodels) for callers that want them.
- Margins (`Margin`, `parse_margin`): relative by default ("-2%" = 2% of the control rate, read
  on the ratio interval), absolute in points ("-1pts", read on the difference interval).
  Non-inferiority is one-sided at alpha/2: the displayed (1 - alpha) interval's lower bound
  clears the margin; equivalence: the interval lies inside +-|margin| (TOST).
- Power for the test that decides (`plan`, `power_check`, `sequential_z`): the sequential
  design is sized with its boundary at the horizon (3.04 standard errors at alpha 0.05) instead
  of z_{1-alpha/2}; "equivalent", "non-inferior" and "inconclusive" become "underpowered" below
  the target power, with the projects per arm still needed.
- Allocation periods (`allocation_srm`, `stratified_intervals`): SRM per period (chi-square
  statistics summed) and a Mantel-Haenszel estimate stratified by period.
- Sequential: a normal-mixture SPRT (Johari et al. 2017, "Peeking at A/B tests") on the
  difference and on the log ratio. With the per-project variance plugged in, its boundary is
  exactly the asymptotic confidence sequence of Waudby-Smith et al. (2023), the one Eppo uses:
  estimate +- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) + 2 log(1 / alpha))), where V
  is the variance of the estimate now and tau^2 the mixing variance. Tuning: tau^2 is chosen so
  the sequence is tightest at the planned horizon (`horizon` projects per arm):
  tau^2 = V_horizon * (2 log(1/alpha) + log(1 + 2 log(1/alpha))), V_horizon being V projected to
  the horizon (V * n_now / n_horizon). Intervals are intersected over looks and p-values are the
  running minimum of 1/likelihood-ratio, so the result is valid at any stopping time.
- Sample ratio mismatch: Pearson chi-square of starts per arm against the configured weights
  (`scipy.stats.chisquare`), flagged when p < 0.001 by default.
- Power: the same Wald test; projects per arm (n_c, n_t = ratio * n_c) from
  n_c = (z_{1-alpha/2} + z_{power})^2 (p_c q_c + p_t q_t / ratio) / mde^2 (the far tail ignored,
  like statsmodels' `normal_sample_size_one_tail`); power reached counts both tails. For a
  non-inferiority design, mde is replaced by (expected difference - margin).
- Decisions (`decide`): one string from `DECISIONS`; the vocabulary is listed above `DECISIONS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as sps

FloatArray = NDArray[np.float64]

DEFAULT_ALPHA = 0.05
DEFAULT_SRM_THRESHOLD = 0.001

TREATMENT_BETTER = "treatment better"
TREATMENT_WORSE = "treatment worse"
NON_INFERIOR = "non-inferior"
EQUIVALENT = "equivalent"
INCONCLUSIVE = "inconclusive"
INSUFFICIENT_DATA = "insufficient data"
SRM_DO_NOT_TRUST = "srm — do not trust"

NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _check_counts(exports: ArrayLike, starts: ArrayLike, what: str = "arm") -> None:
    if isinstance(exports, int | float | np.number) and isinstance(starts, int | float | np.number):
        if not (math.isfinite(exports) and math.isfinite(starts)):
            raise ValueError(f"{what}: counts must be finite numbers")
        if exports < 0 or starts < 0:
            raise ValueError(f"{what}: counts must not be negative")
        if exports > starts:
            raise ValueError(f"{what}: exports cannot exceed starts")
        return
    x = np.asarray(exports, dtype=float)
    n = np.asarray(starts, dtype=float)
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(n)):
        raise ValueError(f"{what}: counts must be finite numbers")
    if np.any(x < 0) or np.any(n < 0):
        raise ValueError(f"{what}: counts must not be negative")
    if np.any(x > n):
        raise ValueError(f"{what}: exports cannot exceed starts")


@functools.lru_cache(maxsize=64)
def _z(alpha: float) -> float:
    """The two-sided critical value z_{1 - alpha/2} (scipy's norm.isf, without its overhead)."""
    return float(-special.ndtri(alpha / 2))


def _float(value: ArrayLike) -> float:
    return float(np.asarray(value, dtype=float))


# --------------------------------------------------------------------------------------------
# Vectorised cores (numpy arrays of counts in, arrays out; used by the simulations)
# --------------------------------------------------------------------------------------------


def wilson_interval(
    successes: ArrayLike, trials: ArrayLike, alpha: float = DEFAULT_ALPHA
) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval for successes / trials, elementwise; NaN where trials == 0."""
    _check_alpha(alpha)
    x = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z = _z(alpha)
    z2 = z * z
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        denom = 1 + z2 / n
        center = (p + z2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
        low = np.clip(center - half, 0.0, 1.0)
        high = np.clip(center + half, 0.0, 1.0)
    low = np.where(x == 0, 0.0, low)
    high = np.where(x == n, 1.0, high)
    low = np.where(n > 0, low, np.nan)
    high = np.where(n > 0, high, np.nan)
    return low, high


def difference_stats(
    control_exports: ArrayLike,
    control_starts: ArrayLike,
    treatment_exports: ArrayLike,
    treatment_starts: ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """Difference p_t - p_c and its unpooled (Wald) variance, elementwise."""
    xc, nc = np.asarray(control_exports, float), np.asarray(control_starts, float)
    xt, nt = np.asarray(treatment_exports, float), np.asarray(treatment_starts, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, pt = xc / nc, xt / nt
        variance = pc * (1 - pc) / nc + pt * (1 - pt) / nt
    return pt - pc, variance


def log_ratio_stats(
    control_exports: ArrayLike,
    control_starts: ArrayLike,
    treatment_exports: ArrayLike,
    treatment_starts: ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """log(p_t / p_c) and its delta-method variance (1-p_t)/x_t + (1-p_c)/x_c, elementwise."""
    xc, nc = np.asarray(control_exports, float), np.asarray(control_starts, float)
    xt, nt = np.asarray(treatment_exports, float), np.asarray(treatment_starts, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(xt / nt) - np.log(xc / nc)
        variance = 1 / xt - 1 / nt + 1 / xc - 1 / nc
    return log_ratio, variance


def z_test_p_value(estimate: ArrayLike, variance: ArrayLike, null: float = 0.0) -> FloatArray:
    """Two-sided p-value of a Wald z test of estimate == null; NaN where the variance is 0."""
    est = np.asarray(estimate, float)
    var = np.asarray(variance, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (est - null) / np.sqrt(var)
        p = 2 * special.ndtr(-np.abs(z))
    return np.where(var > 0, p, np.nan)


def fixed_horizon_significant(
    control_exports: ArrayLike,
    control_starts: ArrayLike,
    treatment_exports: ArrayLike,
    treatment_starts: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
) -> NDArray[np.bool_]:
    """Whether the fixed-horizon Wald test rejects "no difference", elementwise."""
    diff, var = difference_stats(
        control_exports, control_starts, treatment_exports, treatment_starts
    )
    with np.errstate(invalid="ignore"):
        return np.asarray(z_test_p_value(diff, var) < alpha)


def mixture_tau2(
    variance: ArrayLike, starts_now: ArrayLike, horizon: ArrayLike, alpha: float
) -> FloatArray:
    """Mixing variance tau^2 that makes the confidence sequence tightest at `horizon`.

    `starts_now` and `horizon` must be on the same scale (e.g. projects per arm).
    """
    log_inv_alpha = math.log(1 / alpha)
    factor = 2 * log_inv_alpha + math.log(1 + 2 * log_inv_alpha)
    var = np.asarray(variance, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return var * np.asarray(starts_now, float) / np.asarray(horizon, float) * factor


def mixture_half_width(variance: ArrayLike, tau2: ArrayLike, alpha: float) -> FloatArray:
    """Half-width of the normal-mixture SPRT confidence sequence at one look."""
    v = np.asarray(variance, float)
    t2 = np.asarray(tau2, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius2 = v * (v + t2) / t2 * (np.log((v + t2) / v) + 2 * math.log(1 / alpha))
    return np.sqrt(radius2)


def mixture_p_value(
    estimate: ArrayLike, variance: ArrayLike, tau2: ArrayLike, null: float = 0.0
) -> FloatArray:
    """1 / (mixture likelihood ratio) at one look, capped at 1 (before the running minimum)."""
    est = np.asarray(estimate, float)
    v = np.asarray(variance, float)
    t2 = np.asarray(tau2, float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * (est - null) ** 2 / (2 * v * (v + t2))
        p = np.minimum(1.0, np.exp(-log_lr))
    return np.where(v > 0, p, np.nan)


def _running(values: FloatArray, how: str) -> FloatArray:
    """Running min/max along the last axis, ignoring NaN (NaN until the first number)."""
    missing = np.isnan(values)
    seen = np.logical_or.accumulate(~missing, axis=-1)
    if how == "min":
        out = np.fmin.accumulate(values, axis=-1)
    else:
        out = np.fmax.accumulate(values, axis=-1)
    return np.where(seen, out, np.nan)


def sequential_bounds(
    estimate: ArrayLike,
    variance: ArrayLike,
    starts_now: ArrayLike,
    horizon: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    null: float = 0.0,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Always-valid (low, high, p-value) over looks along the last axis.

    Each look's confidence-sequence interval is intersected with the earlier ones and the
    p-value is the running minimum, so any look may be the last.
    """
    _check_alpha(alpha)
    est = np.asarray(estimate, float)
    var = np.asarray(variance, float)
    tau2 = mixture_tau2(var, starts_now, horizon, alpha)
    half = mixture_half_width(var, tau2, alpha)
    valid = var > 0
    low = np.where(valid, est - half, np.nan)
    high = np.where(valid, est + half, np.nan)
    p = mixture_p_value(est, var, tau2, null)
    return _running(low, "max"), _running(high, "min"), _running(p, "min")


def holm_adjust(p_values: ArrayLike) -> FloatArray:
    """Holm step-down adjusted p-values along the last axis (as statsmodels' multipletests)."""
    p = np.asarray(p_values, dtype=float)
    if p.shape == () or p.shape[-1] == 0:
        return p.copy()
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    scaled = np.minimum(1.0, (m - np.arange(m)) * sorted_p)
    adjusted_sorted = np.maximum.accumulate(scaled, axis=-1)
    adjusted = np.empty_like(adjusted_sorted)
    np.put_along_axis(adjusted, order, adjusted_sorted, axis=-1)
    return adjusted


# --------------------------------------------------------------------------------------------
# Per-arm rate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateEstimate:
    """Completion rate exports / starts of one arm with its Wilson interval."""

    exports: int
    starts: int
    rate: float
    ci_low: float
    ci_high: float
    alpha: float
    method: str = "wilson"
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.message is None


def completion_rate(exports: int, starts: int, alpha: float = DEFAULT_ALPHA) -> RateEstimate:
    """Completion rate with a Wilson interval; an arm with no starts has NaN and a message."""
    _check_alpha(alpha)
    _check_counts(exports, starts)
    if starts == 0:
        return RateEstimate(
            exports=int(exports), starts=0, rate=NAN, ci_low=NAN, ci_high=NAN, alpha=alpha,
            message="no projects started in this arm",
        )  # fmt: skip
    low, high = wilson_interval(exports, starts, alpha)
    return RateEstimate(
        int(exports), int(starts), exports / starts, _float(low), _float(high), alpha
    )


def rate_with_ci(count: int, total: int, alpha: float = DEFAULT_ALPHA) -> RateEstimate:
    """Any rate count / total (fallback, error, cache hit) with a Wilson interval."""
    return completion_rate(count, total, alpha)


# --------------------------------------------------------------------------------------------
# Treatment versus control
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Treatment versus control at a fixed horizon.

    `difference` = p_t - p_c with a Wald interval and two-sided p-value; `ratio` = p_t / p_c with
    a log-delta interval (`ratio_p_value` tests ratio == 1); `relative_lift` = ratio - 1.
    """

    control: RateEstimate
    treatment: RateEstimate
    difference: float
    difference_ci_low: float
    difference_ci_high: float
    difference_se: float
    p_value: float
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float
    ratio_p_value: float
    alpha: float
    method: str = "wald-unpooled; log-ratio delta"
    message: str | None = None

    @property
    def relative_lift(self) -> float:
        return self.ratio - 1

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)


def _comparison_message(control: RateEstimate, treatment: RateEstimate) -> str | None:
    if control.starts == 0 and treatment.starts == 0:
        return "no projects started in either arm"
    if control.starts == 0:
        return "no projects started in the control arm"
    if treatment.starts == 0:
        return "no projects started in the treatment arm"
    return None


def compare(
    control_exports: int,
    control_starts: int,
    treatment_exports: int,
    treatment_starts: int,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Absolute difference and relative ratio, each with a (1 - alpha) interval and a p-value."""
    _check_alpha(alpha)
    _check_counts(control_exports, control_starts, "control")
    _check_counts(treatment_exports, treatment_starts, "treatment")
    control = completion_rate(control_exports, control_starts, alpha)
    treatment = completion_rate(treatment_exports, treatment_starts, alpha)
    message = _comparison_message(control, treatment)
    if message is not None:
        return Comparison(
            control=control, treatment=treatment, difference=NAN, difference_ci_low=NAN,
            difference_ci_high=NAN, difference_se=NAN, p_value=NAN, ratio=NAN, ratio_ci_low=NAN,
            ratio_ci_high=NAN, ratio_p_value=NAN, alpha=alpha, message=message,
        )  # fmt: skip
    z = _z(alpha)
    notes = []
    diff, var = (
        _float(v)
        for v in difference_stats(
            control_exports, control_starts, treatment_exports, treatment_starts
        )
    )
    se = math.sqrt(var)
    if var > 0:
        diff_low, diff_high = max(-1.0, diff - z * se), min(1.0, diff + z * se)
        p_value = _float(z_test_p_value(diff, var))
    else:
        diff_low = diff_high = p_value = NAN
        notes.append(
            "every rate is 0 or 1, so the difference has no sampling variance to test against"
        )
    if control_exports == 0:
        ratio = ratio_low = ratio_high = ratio_p = NAN
        notes.append("the control arm has no exports, so the ratio is undefined")
    elif treatment_exports == 0:
        ratio, ratio_low, ratio_high, ratio_p = 0.0, NAN, NAN, NAN
        notes.append("the treatment arm has no exports, so the ratio has no interval")
    else:
        log_ratio, log_var = (
            _float(v)
            for v in log_ratio_stats(
                control_exports, control_starts, treatment_exports, treatment_starts
            )
        )
        ratio = math.exp(log_ratio)
        if log_var > 0:
            log_se = math.sqrt(log_var)
            ratio_low = math.exp(log_ratio - z * log_se)
            ratio_high = math.exp(log_ratio + z * log_se)
            ratio_p = _float(z_test_p_value(log_ratio, log_var))
        else:
            ratio_low = ratio_high = ratio_p = NAN
    return Comparison(
        control,
        treatment,
        diff,
        diff_low,
        diff_high,
        se,
        p_value,
        ratio,
        ratio_low,
        ratio_high,
        ratio_p,
        alpha,
        message="; ".join(notes) or None,
    )


# --------------------------------------------------------------------------------------------
# Non-inferiority and equivalence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NonInferiorityResult:
    """H0: p_t - p_c <= margin (margin < 0). Non-inferior when ci_low > margin.

    `p_value` is one-sided; the test runs at alpha/2 so it agrees with the two-sided
    (1 - alpha) interval shown next to it.
    """

    margin: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    non_inferior: bool
    alpha: float
    message: str | None = None


def non_inferiority(
    control_exports: int,
    control_starts: int,
    treatment_exports: int,
    treatment_starts: int,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
) -> NonInferiorityResult:
    """Non-inferiority of the treatment on the absolute difference, margin <= 0."""
    if not math.isfinite(margin) or margin > 0:
        raise ValueError(f"the non-inferiority margin must be <= 0 (how much worse), got {margin}")
    cmp = compare(control_exports, control_starts, treatment_exports, treatment_starts, alpha)
    if math.isnan(cmp.difference_ci_low):
        return NonInferiorityResult(
            margin=margin, difference=cmp.difference, ci_low=NAN, ci_high=NAN, p_value=NAN,
            non_inferior=False, alpha=alpha, message=cmp.message or "no interval",
        )  # fmt: skip
    p_value = float(special.ndtr(-(cmp.difference - margin) / cmp.difference_se))
    return NonInferiorityResult(
        margin,
        cmp.difference,
        cmp.difference_ci_low,
        cmp.difference_ci_high,
        p_value,
        bool(cmp.difference_ci_low > margin),
        alpha,
        cmp.message,
    )


@dataclass(frozen=True)
class EquivalenceResult:
    """Two one-sided tests: H0 diff <= low or diff >= high. Equivalent when both reject at alpha/2.

    `p_value` = max(p_lower, p_upper); equivalent exactly when the (1 - alpha) interval lies
    inside (low, high).
    """

    low: float
    high: float
    difference: float
    ci_low: float
    ci_high: float
    p_lower: float
    p_upper: float
    p_value: float
    equivalent: bool
    alpha: float
    message: str | None = None


def equivalence(
    control_exports: int,
    control_starts: int,
    treatment_exports: int,
    treatment_starts: int,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
) -> EquivalenceResult:
    """TOST equivalence on the absolute difference within (-|margin|, +|margin|)."""
    if not math.isfinite(margin) or margin == 0:
        raise ValueError(f"the equivalence margin must be a non-zero number, got {margin}")
    low, high = -abs(margin), abs(margin)
    cmp = compare(control_exports, control_starts, treatment_exports, treatment_starts, alpha)
    if math.isnan(cmp.difference_ci_low):
        return EquivalenceResult(
            low=low, high=high, difference=cmp.difference, ci_low=NAN, ci_high=NAN, p_lower=NAN,
            p_upper=NAN, p_value=NAN, equivalent=False, alpha=alpha,
            message=cmp.message or "no interval",
        )  # fmt: skip
    p_lower = float(special.ndtr(-(cmp.difference - low) / cmp.difference_se))
    p_upper = float(special.ndtr((cmp.difference - high) / cmp.difference_se))
    return EquivalenceResult(
        low,
        high,
        cmp.difference,
        cmp.difference_ci_low,
        cmp.difference_ci_high,
        p_lower,
        p_upper,
        max(p_lower, p_upper),
        bool(cmp.difference_ci_low > low and cmp.difference_ci_high < high),
        alpha,
        cmp.message,
    )


# --------------------------------------------------------------------------------------------
# Sequential testing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialPath:
    """Always-valid results at each look (one element per day, cumulative data).

    All arrays have one entry per look. Intervals are intersected over looks, p-values are
    running minima: read any element as "what we know now", valid however often you peek.
    """

    control_exports: tuple[int, ...]
    control_starts: tuple[int, ...]
    treatment_exports: tuple[int, ...]
    treatment_starts: tuple[int, ...]
    difference: tuple[float, ...]
    difference_ci_low: tuple[float, ...]
    difference_ci_high: tuple[float, ...]
    p_value: tuple[float, ...]
    ratio: tuple[float, ...]
    ratio_ci_low: tuple[float, ...]
    ratio_ci_high: tuple[float, ...]
    horizon: float
    alpha: float
    method: str = "normal-mixture SPRT / asymptotic confidence sequence"
    message: str | None = None

    @property
    def final(self) -> SequentialResult:
        return SequentialResult(
            difference=self.difference[-1],
            difference_ci_low=self.difference_ci_low[-1],
            difference_ci_high=self.difference_ci_high[-1],
            p_value=self.p_value[-1],
            ratio=self.ratio[-1],
            ratio_ci_low=self.ratio_ci_low[-1],
            ratio_ci_high=self.ratio_ci_high[-1],
            horizon=self.horizon,
            looks=len(self.difference),
            alpha=self.alpha,
            message=self.message,
        )


@dataclass(frozen=True)
class SequentialResult:
    """Always-valid interval and p-value after the latest look."""

    difference: float
    difference_ci_low: float
    difference_ci_high: float
    p_value: float
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float
    horizon: float
    looks: int
    alpha: float
    method: str = "normal-mixture SPRT / asymptotic confidence sequence"
    message: str | None = None

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)


def _as_1d(values: ArrayLike | int, name: str) -> NDArray[np.float64]:
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a number or a 1-D sequence of daily counts")
    return arr


def sequential_intervals(
    control_exports: ArrayLike, control_starts: ArrayLike,
    treatment_exports: ArrayLike, treatment_starts: ArrayLike,
    horizon: ArrayLike, alpha: float = DEFAULT_ALPHA,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:  # fmt: skip
    """Always-valid (difference low, high, ratio low, high, p) from CUMULATIVE counts per look
    (last axis): Newcombe and MOVER-R intervals at the confidence sequence's critical value
    (`sequential_z`), intersected over looks; p the mixture SPRT's running minimum (the pooled
    variance where the unpooled one is 0; 1.0 when both arms are all 0% or all 100%)."""
    xc, nc = np.asarray(control_exports, float), np.asarray(control_starts, float)
    xt, nt = np.asarray(treatment_exports, float), np.asarray(treatment_starts, float)
    per_arm = np.minimum(nc, nt)
    diff, var = difference_stats(xc, nc, xt, nt)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (xc + xt) / (nc + nt)
        null_var = pooled * (1 - pooled) * (1 / nc + 1 / nt)
        fraction = per_arm / np.asarray(horizon, dtype=float)
    _, _, p = sequential_bounds(diff, np.where(var > 0, var, null_var), per_arm, horizon, alpha)
    p = np.where(np.isnan(p) & (per_arm > 0), 1.0, p)
    z = sequential_z(fraction, alpha)
    d_low, d_high = newcombe_difference(xc, nc, xt, nt, z)
    r_low, r_high = mover_ratio(xc, nc, xt, nt, z)
    return (
        _running(d_low, "max"), _running(d_high, "min"),
        _running(r_low, "max"), _running(r_high, "min"), p,
    )  # fmt: skip


def sequential_path(
    control_daily_exports: ArrayLike,
    control_daily_starts: ArrayLike,
    treatment_daily_exports: ArrayLike,
    treatment_daily_starts: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    horizon: float | None = None,
) -> SequentialPath:
    """Always-valid difference and ratio after each day, from DAILY (not cumulative) counts.

    A day may have more exports than starts (exports counted on the day they happen); the
    running totals may not.

    `horizon` is the planned number of projects per arm (e.g. `sample_size(...).control`); the
    confidence sequence is tightest there. Without it, the latest per-arm count is used (right
    for reading one final result; for daily reading, fix the horizon before the experiment).
    """
    _check_alpha(alpha)
    arrays = [
        _as_1d(v, n)
        for v, n in (
            (control_daily_exports, "control exports"),
            (control_daily_starts, "control starts"),
            (treatment_daily_exports, "treatment exports"),
            (treatment_daily_starts, "treatment starts"),
        )
    ]
    if len({a.shape[0] for a in arrays}) != 1:
        raise ValueError("every daily series must have the same number of days")
    if arrays[0].shape[0] == 0:
        raise ValueError("at least one day of counts is needed")
    if any(np.any(a < 0) for a in arrays):
        raise ValueError("daily counts must not be negative")
    xc, nc, xt, nt = (np.cumsum(a) for a in arrays)
    # Exports may be counted on the day they happen, so one day can have more exports than
    # starts; only the cumulative counts must be consistent.
    _check_counts(xc, nc, "control (cumulative)")
    _check_counts(xt, nt, "treatment (cumulative)")
    per_arm = np.minimum(nc, nt)
    if horizon is None:
        horizon = float(max(per_arm[-1], 1.0))
    if not horizon > 0:
        raise ValueError(f"horizon must be a positive number of projects per arm, got {horizon}")
    d_low, d_high, r_low, r_high, p = sequential_intervals(xc, nc, xt, nt, horizon, alpha)
    diff, _ = difference_stats(xc, nc, xt, nt)
    log_ratio, _ = log_ratio_stats(xc, nc, xt, nt)
    message = None
    if np.isnan(p[-1]):
        message = "not enough data for a sequential test (an arm with no starts, or no variance)"

    def tup(a: ArrayLike) -> tuple[float, ...]:
        return tuple(float(v) for v in np.asarray(a, dtype=float))

    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(log_ratio)
    return SequentialPath(
        tuple(int(v) for v in xc),
        tuple(int(v) for v in nc),
        tuple(int(v) for v in xt),
        tuple(int(v) for v in nt),
        tup(diff),
        tup(d_low),
        tup(d_high),
        tup(p),
        tup(ratio),
        tup(r_low),
        tup(r_high),
        float(horizon),
        alpha,
        message=message,
    )


def sequential_test(
    control_exports: int,
    control_starts: int,
    treatment_exports: int,
    treatment_starts: int,
    alpha: float = DEFAULT_ALPHA,
    horizon: float | None = None,
) -> SequentialResult:
    """Always-valid result from one look at cumulative counts (see `sequential_path`)."""
    return sequential_path(
        [control_exports], [control_starts], [treatment_exports], [treatment_starts], alpha, horizon
    ).final


# --------------------------------------------------------------------------------------------
# Sample ratio mismatch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrmResult:
    """Chi-square goodness of fit of starts per arm to the configured weights."""

    starts: tuple[int, ...]
    weights: tuple[float, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    threshold: float
    flagged: bool
    message: str | None = None


def sample_ratio_mismatch(
    starts: Sequence[int],
    weights: Sequence[float],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SrmResult:
    """Pearson chi-square of `starts` against `weights` (normalised); flagged when p < threshold.

    Starts in an arm whose weight is 0 are an SRM by definition (p = 0).
    """
    _check_alpha(threshold)
    observed = np.asarray(starts, dtype=float)
    w = np.asarray(weights, dtype=float)
    if observed.ndim != 1 or observed.shape != w.shape:
        raise ValueError("starts and weights need one entry per arm")
    if observed.shape[0] < 2:
        raise ValueError("an SRM check needs at least two arms")
    if np.any(observed < 0) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("starts and weights must not be negative")
    if w.sum() <= 0:
        raise ValueError("at least one weight must be positive")
    shares = w / w.sum()
    total = observed.sum()
    expected = shares * total
    base = (tuple(int(s) for s in observed), tuple(float(s) for s in shares))
    if total == 0:
        return SrmResult(
            starts=base[0], weights=base[1], expected=tuple(0.0 for _ in shares),
            statistic=NAN, p_value=NAN, threshold=threshold, flagged=False,
            message="no projects started yet",
        )  # fmt: skip
    if np.any((expected == 0) & (observed > 0)):
        return SrmResult(
            *base, tuple(float(e) for e in expected), math.inf, 0.0, threshold, True,
            message="projects were assigned to an arm whose weight is 0",
        )  # fmt: skip
    keep = expected > 0
    statistic, p_value = sps.chisquare(observed[keep], expected[keep])
    flagged = bool(p_value < threshold)
    message = None
    if flagged:
        message = (
            f"sample ratio mismatch: starts per arm {base[0]} do not match the weights "
            f"(chi-square p = {p_value:.2g} < {threshold}); assignment or logging is broken"
        )
    return SrmResult(
        *base, tuple(float(e) for e in expected), float(statistic), float(p_value), threshold,
        flagged, message,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Power and sample size
# --------------------------------------------------------------------------------------------


def _check_power_inputs(baseline: float, mde: float, alpha: float, ratio: float) -> float:
    _check_alpha(alpha)
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be a rate in (0, 1), got {baseline}")
    if mde == 0 or not math.isfinite(mde):
        raise ValueError(f"mde must be a non-zero absolute difference, got {mde}")
    treatment_rate = baseline + mde
    if not 0 < treatment_rate < 1:
        raise ValueError(f"baseline + mde must stay in (0, 1), got {treatment_rate}")
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"ratio (treatment size / control size) must be positive, got {ratio}")
    return treatment_rate


def _unit_variance(baseline: float, treatment_rate: float, ratio: float) -> float:
    """Variance of the difference times n_control (n_treatment = ratio * n_control)."""
    return baseline * (1 - baseline) + treatment_rate * (1 - treatment_rate) / ratio


@dataclass(frozen=True)
class SampleSize:
    """Projects needed per arm for the Wald test to detect `mde` with `power`."""

    baseline: float
    mde: float
    treatment_rate: float
    alpha: float
    power: float
    ratio: float
    control_exact: float
    control: int
    treatment: int
    total: int
    days_needed: int | None = None
    daily_projects: float | None = None


def _sized(
    baseline: float,
    effect: float,
    treatment_rate: float,
    alpha: float,
    power: float,
    ratio: float,
    exact: float,
    daily_projects: float | None,
) -> SampleSize:
    """A plan from the exact control size: whole projects per arm, and the days they take."""
    control = math.ceil(exact - 1e-9)
    treatment = math.ceil(control * ratio - 1e-9)
    days = None
    if daily_projects is not None:
        if not daily_projects > 0:
            raise ValueError(f"daily projects must be positive, got {daily_projects}")
        days = math.ceil((control + treatment) / daily_projects)
    return SampleSize(
        baseline, effect, treatment_rate, alpha, power, ratio, exact, control, treatment,
        control + treatment, days, daily_projects,
    )  # fmt: skip


def sample_size(
    baseline: float,
    mde: float,
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
    ratio: float = 1.0,
    daily_projects: float | None = None,
) -> SampleSize:
    """Projects per arm: n_c = (z_{1-a/2} + z_power)^2 (p_c q_c + p_t q_t / ratio) / mde^2.

    `mde` is absolute (0.01 = one percentage point), `ratio` = treatment size / control size,
    `daily_projects` (all arms together) gives the days the experiment needs.
    """
    treatment_rate = _check_power_inputs(baseline, mde, alpha, ratio)
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    z_sum = _z(alpha) + float(sps.norm.ppf(power))
    exact = z_sum**2 * _unit_variance(baseline, treatment_rate, ratio) / mde**2
    return _sized(baseline, mde, treatment_rate, alpha, power, ratio, exact, daily_projects)


def non_inferiority_sample_size(
    baseline: float,
    margin: float,
    expected_difference: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
    ratio: float = 1.0,
    daily_projects: float | None = None,
) -> SampleSize:
    """Projects per arm to show non-inferiority at `margin` (< 0) when the true difference is
    `expected_difference` (default 0: "the cheaper arm is as good").

    Same test as `non_inferiority` (one-sided at alpha/2, i.e. the lower bound of the (1 - alpha)
    interval must clear the margin): n_c = (z_{1-alpha/2} + z_power)^2 (p_c q_c + p_t q_t / ratio)
    / (expected_difference - margin)^2. The result's `mde` holds expected_difference - margin.
    """
    if not math.isfinite(margin) or margin >= 0:
        raise ValueError(f"the non-inferiority margin must be < 0, got {margin}")
    if not expected_difference > margin:
        raise ValueError(
            f"expected difference {expected_difference} must be above the margin {margin}"
        )
    treatment_rate = baseline + expected_difference
    _check_power_inputs(baseline, expected_difference - margin, alpha, ratio)
    if not 0 < treatment_rate < 1:
        raise ValueError(
            f"baseline + expected difference must stay in (0, 1), got {treatment_rate}"
        )
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    distance = expected_difference - margin
    z_sum = _z(alpha) + float(sps.norm.ppf(power))
    exact = z_sum**2 * _unit_variance(baseline, treatment_rate, ratio) / distance**2
    return _sized(baseline, distance, treatment_rate, alpha, power, ratio, exact, daily_projects)


def power_at(
    baseline: ArrayLike,
    mde: ArrayLike,
    control_starts: ArrayLike,
    treatment_starts: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
) -> FloatArray:
    """Power of the two-sided Wald test for a true difference `mde` (both tails), elementwise."""
    _check_alpha(alpha)
    pc = np.asarray(baseline, float)
    pt = pc + np.asarray(mde, float)
    nc = np.asarray(control_starts, float)
    nt = np.asarray(treatment_starts, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)
        shift = np.abs(pt - pc) / se
    z = _z(alpha)
    out = special.ndtr(shift - z) + special.ndtr(-shift - z)
    return np.where((nc > 0) & (nt > 0), out, 0.0)


@dataclass(frozen=True)
class PowerProgress:
    """Where a running experiment stands against its planned power."""

    baseline: float
    mde: float
    alpha: float
    target_power: float
    power_reached: float
    required_per_arm: int
    control_starts: int
    treatment_starts: int
    days_elapsed: float
    daily_projects: float
    days_remaining: float
    message: str | None = None


def power_progress(
    baseline: float,
    mde: float,
    control_starts: int,
    treatment_starts: int,
    days_elapsed: float,
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
) -> PowerProgress:
    """Power reached so far, and days still needed at the traffic seen so far.

    The ratio of arm sizes is taken from the starts so far (1 when there are none). Days remaining
    is 0 once both arms reached their size, and infinite when nothing has started yet.
    """
    _check_counts(0, control_starts, "control")
    _check_counts(0, treatment_starts, "treatment")
    if days_elapsed < 0:
        raise ValueError(f"days elapsed must not be negative, got {days_elapsed}")
    ratio = treatment_starts / control_starts if control_starts and treatment_starts else 1.0
    need = sample_size(baseline, mde, alpha, power, ratio)
    reached = _float(power_at(baseline, mde, control_starts, treatment_starts, alpha))
    total_now = control_starts + treatment_starts
    daily = total_now / days_elapsed if days_elapsed > 0 else 0.0
    remaining_projects = max(0, need.control - control_starts) + max(
        0, need.treatment - treatment_starts
    )
    message = None
    if remaining_projects == 0:
        days_remaining = 0.0
    elif daily > 0:
        # Traffic splits by the weights, so the slower arm sets the pace.
        share_c = control_starts / total_now
        share_t = treatment_starts / total_now
        days_c = max(0, need.control - control_starts) / (daily * share_c) if share_c else math.inf
        days_t = (
            max(0, need.treatment - treatment_starts) / (daily * share_t) if share_t else math.inf
        )
        slowest = max(days_c, days_t)
        days_remaining = math.inf if math.isinf(slowest) else float(math.ceil(slowest - 1e-9))
    else:
        days_remaining = math.inf
        message = "no traffic yet, so the days still needed are unknown"
    return PowerProgress(
        baseline, mde, alpha, power, reached, need.control, int(control_starts),
        int(treatment_starts), float(days_elapsed), daily, days_remaining, message,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Guardrails
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles (same unit as the input, e.g. ms)."""

    count: int
    p50: float
    p95: float
    method: str
    message: str | None = None


def latency_percentiles(values: ArrayLike) -> LatencySummary:
    """p50 and p95 of raw latency values (linear interpolation, numpy's default)."""
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return LatencySummary(
            count=0, p50=NAN, p95=NAN, method="values", message="no latencies recorded"
        )
    if np.any(arr < 0):
        raise ValueError("latencies must not be negative")
    p50, p95 = np.quantile(arr, [0.5, 0.95])
    return LatencySummary(int(arr.size), float(p50), float(p95), "values")


def histogram_quantile(q: float, upper_bounds: ArrayLike, counts: ArrayLike) -> float:
    """Quantile q from a histogram of NON-cumulative counts per bucket (lower bound of the first
    bucket is 0), interpolating linearly inside the bucket like Prometheus' histogram_quantile.
    A quantile falling in an infinite last bucket returns the last finite bound."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    bounds = np.asarray(upper_bounds, dtype=float)
    c = np.asarray(counts, dtype=float)
    if bounds.ndim != 1 or bounds.shape != c.shape or bounds.size == 0:
        raise ValueError("a histogram needs one count per bucket bound")
    if np.any(np.diff(bounds) <= 0) or bounds[0] < 0:
        raise ValueError("bucket bounds must be non-negative and increasing")
    if np.any(c < 0):
        raise ValueError("bucket counts must not be negative")
    total = c.sum()
    if total == 0:
        return NAN
    cum = np.cumsum(c)
    rank = q * total
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, bounds.size - 1)
    if not math.isfinite(bounds[i]):
        finite = bounds[np.isfinite(bounds)]
        return float(finite[-1]) if finite.size else NAN
    lower = bounds[i - 1] if i > 0 else 0.0
    below = cum[i - 1] if i > 0 else 0.0
    in_bucket = c[i]
    if in_bucket == 0:
        return float(bounds[i])
    return float(lower + (bounds[i] - lower) * (rank - below) / in_bucket)


def latency_from_histogram(upper_bounds: ArrayLike, counts: ArrayLike) -> LatencySummary:
    """p50 and p95 from a histogram SQL can return (bucket upper bounds, counts per bucket)."""
    total = int(np.asarray(counts, dtype=float).sum())
    p50 = histogram_quantile(0.5, upper_bounds, counts)
    p95 = histogram_quantile(0.95, upper_bounds, counts)
    message = "no latencies recorded" if total == 0 else None
    return LatencySummary(total, p50, p95, "histogram", message)


@dataclass(frozen=True)
class MeanEstimate:
    """A mean per unit (e.g. cost per project) with a normal interval when the spread is known."""

    total: float
    count: int
    mean: float
    ci_low: float
    ci_high: float
    alpha: float
    message: str | None = None


def cost_per_project(
    total_cost: float,
    projects: int,
    sum_of_squares: float | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> MeanEstimate:
    """Cost per project = SUM(cost) / COUNT(project); with SUM(cost^2) per project, a CLT interval.

    The interval uses the sample variance (n - 1) and needs at least two projects.
    """
    _check_alpha(alpha)
    if projects < 0 or total_cost < 0 or not math.isfinite(total_cost):
        raise ValueError("cost and project count must be non-negative")
    if projects == 0:
        return MeanEstimate(
            total=float(total_cost), count=0, mean=NAN, ci_low=NAN, ci_high=NAN, alpha=alpha,
            message="no projects to divide the cost by",
        )  # fmt: skip
    mean = total_cost / projects
    if sum_of_squares is None or projects < 2:
        note = None if sum_of_squares is None else "an interval needs at least two projects"
        return MeanEstimate(float(total_cost), int(projects), mean, NAN, NAN, alpha, note)
    variance = max(0.0, (sum_of_squares - projects * mean * mean) / (projects - 1))
    half = _z(alpha) * math.sqrt(variance / projects)
    return MeanEstimate(float(total_cost), int(projects), mean, mean - half, mean + half, alpha)


# --------------------------------------------------------------------------------------------
# Margins (relative by default) and intervals that behave at small counts, 0% and 100%
# --------------------------------------------------------------------------------------------

RELATIVE = "relative"
ABSOLUTE = "absolute"
DEFAULT_POWER = 0.8
#: Without a margin, power is judged for this relative change of the completion rate.
DEFAULT_MDE = 0.02


@dataclass(frozen=True)
class Margin:
    """How much worse the treatment may be: `value` <= 0, on a `scale`.

    relative (default): a fraction of the control rate, read on the ratio p_t / p_c
    (-0.02 = "at most 2% worse", non-inferior when the ratio's lower bound is above 0.98,
    equivalent when its interval lies inside (0.98, 1.02)); absolute: a difference in rate
    (-0.01 = one percentage point), read on p_t - p_c.
    """

    value: float
    scale: str = RELATIVE

    def __post_init__(self) -> None:
        if self.scale not in (RELATIVE, ABSOLUTE):
            raise ValueError(f"margin scale must be {RELATIVE!r} or {ABSOLUTE!r}")
        if not math.isfinite(self.value) or not -1 < self.value <= 0:
            raise ValueError(f"the margin must be in (-1, 0] (how much worse), got {self.value}")

    @property
    def label(self) -> str:
        if self.scale == RELATIVE:
            return f"{100 * self.value:+.4g}% relative"
        return f"{100 * self.value:+.4g} pts"

    @property
    def null(self) -> float:
        """ "No difference" on this scale."""
        return 1.0 if self.scale == RELATIVE else 0.0

    @property
    def bound(self) -> float:
        """The non-inferiority bound on this scale."""
        return self.null + self.value

    @property
    def equivalence_bounds(self) -> tuple[float, float]:
        return self.null - abs(self.value), self.null + abs(self.value)


def parse_margin(text: str | float | Margin) -> Margin:
    """ "-2%" (relative), "-1pts" / "-1 pts" (absolute points) or a number (relative fraction)."""
    if isinstance(text, Margin):
        return text
    if isinstance(text, int | float):
        return Margin(float(text), RELATIVE)
    raw = str(text).strip().lower().replace(" ", "")
    scale, number, divide = RELATIVE, raw, 1.0
    if raw.endswith("%"):
        number, divide = raw[:-1], 100.0
    elif raw.endswith(("pts", "pt")):
        scale, number, divide = ABSOLUTE, raw.removesuffix("pts").removesuffix("pt"), 100.0
    try:
        value = float(number) / divide
    except ValueError:
        raise ValueError(
            f"margin {text!r} is not a number, 'N%' (relative) or 'N pts' (absolute)"
        ) from None
    return Margin(value, scale)


def wilson_at(
    successes: ArrayLike, trials: ArrayLike, z: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval at critical value `z` (elementwise); NaN where trials == 0."""
    x = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z2 = np.asarray(z, dtype=float) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        denom = 1 + z2 / n
        center = (p + z2 / (2 * n)) / denom
        half = np.sqrt(z2 * np.maximum(p * (1 - p) / n + z2 / (4 * n * n), 0)) / denom
        low = np.where(x == 0, 0.0, np.clip(center - half, 0.0, 1.0))
        high = np.where(x == n, 1.0, np.clip(center + half, 0.0, 1.0))
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


def newcombe_difference(
    control_exports: ArrayLike, control_starts: ArrayLike,
    treatment_exports: ArrayLike, treatment_starts: ArrayLike, z: ArrayLike,
) -> tuple[FloatArray, FloatArray]:  # fmt: skip
    """Newcombe's hybrid score interval for p_t - p_c (MOVER-D with Wilson limits).

    Equal to statsmodels' `confint_proportions_2indep(compare="diff", method="newcomb")`.
    Finite whenever both arms have starts, including 0% and 100%.
    """
    xc, nc = np.asarray(control_exports, float), np.asarray(control_starts, float)
    xt, nt = np.asarray(treatment_exports, float), np.asarray(treatment_starts, float)
    lc, uc = wilson_at(xc, nc, z)
    lt, ut = wilson_at(xt, nt, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, pt = xc / nc, xt / nt
    d = pt - pc
    low = d - np.sqrt((pt - lt) ** 2 + (uc - pc) ** 2)
    high = d + np.sqrt((ut - pt) ** 2 + (pc - lc) ** 2)
    return low, high


def mover_ratio(
    control_exports: ArrayLike, control_starts: ArrayLike,
    treatment_exports: ArrayLike, treatment_starts: ArrayLike, z: ArrayLike,
) -> tuple[FloatArray, FloatArray]:  # fmt: skip
    """MOVER-R interval for p_t / p_c from Wilson limits (Donner & Zou 2012, Newcombe's family).

    Closed form, so it vectorises; coverage close to nominal at small counts (unlike the
    log-delta interval). Never NaN when both arms have starts: a control with no exports gives
    an upper limit of +inf, a treatment with none a lower limit of 0.
    """
    xc, nc = np.asarray(control_exports, float), np.asarray(control_starts, float)
    xt, nt = np.asarray(treatment_exports, float), np.asarray(treatment_starts, float)
    l2, u2 = wilson_at(xc, nc, z)  # control: the denominator
    l1, u1 = wilson_at(xt, nt, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        p2, p1 = xc / nc, xt / nt
        prod = p1 * p2
        low_root = np.sqrt(np.maximum(prod**2 - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2), 0))
        high_root = np.sqrt(np.maximum(prod**2 - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2), 0))
        low = (prod - low_root) / (u2 * (2 * p2 - u2))
        high = (prod + high_root) / (l2 * (2 * p2 - l2))
    low = np.where(xt == 0, 0.0, np.maximum(low, 0.0))
    high = np.where(xc == 0, np.inf, high)
    valid = (nc > 0) & (nt > 0)
    return np.where(valid, low, np.nan), np.where(valid, high, np.nan)


def pooled_p_value(
    control_exports: ArrayLike, control_starts: ArrayLike,
    treatment_exports: ArrayLike, treatment_starts: ArrayLike,
) -> FloatArray:  # fmt: skip
    """Two-sided pooled (score) z test of p_t == p_c, as statsmodels' `proportions_ztest`.

    Defined whenever both arms have starts; 1.0 when both arms are all 0% or all 100%.
    """
    xc, nc = np.asarray(control_exports, float), np.asarray(control_starts, float)
    xt, nt = np.asarray(treatment_exports, float), np.asarray(treatment_starts, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (xc + xt) / (nc + nt)
        var = pooled * (1 - pooled) * (1 / nc + 1 / nt)
        p = 2 * special.ndtr(-np.abs(xt / nt - xc / nc) / np.sqrt(var))
    p = np.where(var > 0, p, 1.0)
    return np.where((nc > 0) & (nt > 0), p, np.nan)


# --------------------------------------------------------------------------------------------
# The sequential design's critical value, and power for the test that decides
# --------------------------------------------------------------------------------------------


def sequential_z(fraction: ArrayLike, alpha: float = DEFAULT_ALPHA) -> FloatArray:
    """The confidence sequence's half-width in standard errors after `fraction` of the horizon.

    The mixture boundary of `mixture_half_width` divided by sqrt(V): with tau^2 tuned to the
    horizon it depends only on n_now / horizon and alpha (3.04 at the horizon for alpha 0.05,
    against 1.96 for a fixed-horizon test). Intervals of the sequential design are the robust
    intervals above at this critical value.
    """
    _check_alpha(alpha)
    log_inv_alpha = math.log(1 / alpha)
    factor = 2 * log_inv_alpha + math.log(1 + 2 * log_inv_alpha)
    r = np.asarray(fraction, dtype=float) * factor
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = (1 + r) / r * (np.log1p(r) + 2 * log_inv_alpha)
    return np.where(r > 0, np.sqrt(z2), np.inf)


def design_z(alpha: float, sequential: bool, fraction: float = 1.0) -> float:
    """Critical value of the test that decides: z_{1-alpha/2}, or the sequential boundary."""
    return _float(sequential_z(fraction, alpha)) if sequential else _z(alpha)


def _design(
    baseline: float, effect: float, scale: str, kind: str, ratio: float
) -> tuple[float, float]:
    """(variance of the estimate times n_control, distance to detect) on the decision scale.

    superiority: the truth is a change of `effect` (relative: log ratio; absolute: difference),
    variances at the two rates; non-inferiority: the truth is no difference and the margin
    `effect` must be excluded.
    """
    if kind == "non-inferiority":
        per_arm = (1 - baseline) / baseline if scale == RELATIVE else baseline * (1 - baseline)
        distance = -math.log1p(effect) if scale == RELATIVE else -effect
        return per_arm * (1 + 1 / ratio), distance
    treatment = baseline * (1 + effect) if scale == RELATIVE else baseline + effect
    if not 0 < treatment < 1:  # impossible from this baseline: the other side is what can happen
        mirrored = baseline * (1 - effect) if scale == RELATIVE else baseline - effect
        treatment = mirrored if 0 < mirrored < 1 else treatment
    treatment = min(max(treatment, 1e-6), 1 - 1e-6)
    if scale == RELATIVE:
        unit = (1 - baseline) / baseline + (1 - treatment) / treatment / ratio
        return unit, abs(math.log(treatment / baseline))
    return _unit_variance(baseline, treatment, ratio), abs(effect)


@dataclass(frozen=True)
class PowerCheck:
    """Power of the deciding test for the effect that matters, now and the size it needs.

    kind "non-inferiority": power to show the margin when the truth is no difference; kind
    "superiority": power to detect a change of `effect` (two-sided). `required_per_arm` is sized
    for the design's critical value at its horizon (sequential) or z_{1-alpha/2} (fixed).
    """

    kind: str
    effect: float
    scale: str
    target: float
    power: float
    required_per_arm: int
    more_per_arm: int
    days_more: float | None

    @property
    def enough(self) -> bool:
        return self.power >= self.target

    @property
    def effect_label(self) -> str:
        if self.scale == RELATIVE:
            return f"{100 * self.effect:+.4g}% relative"
        return f"{100 * self.effect:+.4g} pts"


def planning_rate(exports: int, starts: int) -> float:
    """The control rate a power figure is computed at: the observed rate, pulled off 0% and 100%
    (the Jeffreys posterior mean there), where the plug-in variance is zero and any size would
    look like enough."""
    if 0 < exports < starts:
        return exports / starts
    return (exports + 0.5) / (starts + 1)


def power_check(
    baseline: float,
    control_starts: int,
    treatment_starts: int,
    *,
    effect: float,
    scale: str = RELATIVE,
    kind: str = "superiority",
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = False,
    horizon: float | None = None,
    target: float = DEFAULT_POWER,
    days_elapsed: float | None = None,
) -> PowerCheck:
    """Power reached with the current starts for `effect`, and the projects still needed."""
    baseline = min(max(baseline, 1e-4), 1 - 1e-4)
    n = min(control_starts, treatment_starts)
    ratio = treatment_starts / control_starts if control_starts and treatment_starts else 1.0
    unit, distance = _design(baseline, effect, scale, kind, ratio)
    z_pow = float(special.ndtri(target))
    if n > 0:
        fraction = n / horizon if (sequential and horizon) else 1.0
        z_now = design_z(alpha, sequential, fraction)
        power = float(special.ndtr(distance / math.sqrt(unit / control_starts) - z_now))
    else:
        power = 0.0
    z_ref = design_z(alpha, sequential)
    required = math.ceil((z_ref + z_pow) ** 2 * unit / distance**2 - 1e-9)
    more = max(0, required - n) if power < target else 0
    days = None
    if days_elapsed and days_elapsed > 0 and n > 0:
        days = math.ceil(more / (n / days_elapsed)) if more else 0.0
    return PowerCheck(kind, effect, scale, target, power, required, more, days)


def plan(
    baseline: float,
    effect: float,
    *,
    scale: str = RELATIVE,
    kind: str = "superiority",
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    ratio: float = 1.0,
    sequential: bool = False,
    daily_projects: float | None = None,
) -> SampleSize:
    """Projects per arm for the test that will decide: fixed or sequential, relative or absolute.

    superiority: detect a change `effect` (relative: fraction of the baseline); the sequential
    design uses its boundary at the horizon (`sequential_z(1)`) instead of z_{1-alpha/2}, so a
    look at the planned size has the wanted power. non-inferiority: show the margin `effect`
    (< 0) when the truth is no difference. Relative designs are planned on the log ratio.
    """
    _check_alpha(alpha)
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be a rate in (0, 1), got {baseline}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"ratio (treatment size / control size) must be positive, got {ratio}")
    if effect == 0 or not math.isfinite(effect):
        raise ValueError(f"the effect must be a non-zero number, got {effect}")
    if kind == "non-inferiority" and not -1 < effect < 0:
        raise ValueError(f"a non-inferiority margin must be in (-1, 0), got {effect}")
    absolute = effect if scale == ABSOLUTE else baseline * effect
    treatment_rate = baseline + (absolute if kind == "superiority" else 0.0)
    if not 0 < treatment_rate < 1:
        raise ValueError(f"baseline + effect must stay in (0, 1), got {treatment_rate}")
    z_sum = design_z(alpha, sequential) + float(special.ndtri(power))
    unit, distance = _design(baseline, effect, scale, kind, ratio)
    exact = z_sum**2 * unit / distance**2
    return _sized(baseline, effect, treatment_rate, alpha, power, ratio, exact, daily_projects)


def plan_power(
    baseline: float,
    effect: float,
    control_n: ArrayLike,
    *,
    scale: str = RELATIVE,
    kind: str = "superiority",
    alpha: float = DEFAULT_ALPHA,
    ratio: float = 1.0,
    sequential: bool = False,
) -> FloatArray:
    """Power of the design that `plan` sizes, at `control_n` projects in the control arm
    (elementwise): its inverse, so the power at `plan(...).control_exact` is `power`."""
    unit, distance = _design(baseline, effect, scale, kind, ratio)
    n = np.asarray(control_n, dtype=float)
    return np.asarray(special.ndtr(np.sqrt(n / unit) * distance - design_z(alpha, sequential)))


# --------------------------------------------------------------------------------------------
# Allocation periods: SRM per period, effect stratified by period
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationSrm:
    """Pearson chi-square per allocation period, summed (independent periods add up)."""

    periods: tuple[SrmResult, ...]
    statistic: float
    df: int
    p_value: float
    threshold: float
    flagged: bool
    message: str | None = None


def allocation_srm(
    starts: Sequence[Sequence[int]],
    weights: Sequence[Sequence[float]],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> AllocationSrm:
    """SRM over allocation periods: each period's starts against that period's weights.

    A ramp (0.8/0.2 then 0.5/0.5) is healthy when each period matches its own weights; the
    pooled starts matched against today's weights would not. The statistics of the periods with
    starts are summed and compared with chi-square on the summed degrees of freedom.
    """
    if len(starts) != len(weights) or not starts:
        raise ValueError("one list of weights per allocation period is needed")
    results = tuple(
        sample_ratio_mismatch(s, w, threshold) for s, w in zip(starts, weights, strict=True)
    )
    if any(r.flagged and math.isinf(r.statistic) for r in results):
        bad = next(r for r in results if math.isinf(r.statistic))
        return AllocationSrm(results, math.inf, 0, 0.0, threshold, True, bad.message)
    used = [r for r in results if math.isfinite(r.statistic)]
    if not used:
        return AllocationSrm(
            periods=results, statistic=NAN, df=0, p_value=NAN, threshold=threshold,
            flagged=False, message="no projects started yet",
        )  # fmt: skip
    statistic = float(sum(r.statistic for r in used))
    df = int(sum(sum(1 for e in r.expected if e > 0) - 1 for r in used))
    p_value = float(sps.chi2.sf(statistic, df)) if df > 0 else 1.0
    flagged = p_value < threshold
    message = None
    if flagged:
        message = (
            f"sample ratio mismatch within allocation periods (chi-square p = {p_value:.2g} "
            f"< {threshold}, {len(used)} period(s)); assignment or logging is broken"
        )
    return AllocationSrm(results, statistic, df, p_value, threshold, flagged, message)


def stratified_intervals(
    control: Sequence[tuple[int, int]], treatment: Sequence[tuple[int, int]], z: float
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mantel-Haenszel difference and ratio over strata (allocation periods), with intervals.

    Returns ((difference, low, high), (ratio, low, high)). Difference: weights n_c n_t / N with
    the strata's unpooled variances; ratio: Mantel-Haenszel risk ratio with the Greenland-Robins
    variance of its log. A stratum with an empty arm carries no weight. Used instead of pooling
    when weights changed: pooled counts mix periods with different splits (Simpson's paradox).
    """
    xc, nc = (np.asarray([c[i] for c in control], float) for i in (0, 1))
    xt, nt = (np.asarray([t[i] for t in treatment], float) for i in (0, 1))
    keep = (nc > 0) & (nt > 0)
    xc, nc, xt, nt = xc[keep], nc[keep], xt[keep], nt[keep]
    if xc.size == 0:
        return (NAN, NAN, NAN), (NAN, NAN, NAN)
    big_n = nc + nt
    w = nc * nt / big_n
    pc, pt = xc / nc, xt / nt
    diff = float(np.sum(w * (pt - pc)) / w.sum())
    var = float(np.sum(w**2 * (pc * (1 - pc) / nc + pt * (1 - pt) / nt)) / w.sum() ** 2)
    if var <= 0:  # every stratum 0% or 100%: fall back to the pooled null variance
        pooled = (xc.sum() + xt.sum()) / big_n.sum()
        var = pooled * (1 - pooled) * float(np.sum(w**2 * (1 / nc + 1 / nt))) / w.sum() ** 2
    half = z * math.sqrt(var)
    top, bottom = float(np.sum(xt * nc / big_n)), float(np.sum(xc * nt / big_n))
    if top == 0 or bottom == 0:
        ratio = (0.0 if top == 0 else math.inf, 0.0, math.inf)
    else:
        ratio_est = top / bottom
        gr = float(np.sum((nc * nt * (xt + xc) - xt * xc * big_n) / big_n**2)) / (top * bottom)
        log_half = z * math.sqrt(max(gr, 0.0))
        ratio = (ratio_est, ratio_est * math.exp(-log_half), ratio_est * math.exp(log_half))
    return (diff, max(-1.0, diff - half), min(1.0, diff + half)), ratio


# --------------------------------------------------------------------------------------------
# Attribution window (a rule over project times, used to validate the SQL and the simulations)
# --------------------------------------------------------------------------------------------


def attributed(
    first_start: ArrayLike,
    first_export: ArrayLike,
    until: float,
    window: float,
    stopped_at: float | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """(counted, exported, pending) per project, times in one unit (e.g. hours; NaN = never).

    A project counts when it started before `until` and before `stopped_at`, and its window
    [start, start + window] has closed by `until`; it is exported when its first export is before
    start + window (and before `until`). Projects whose window is still open are pending: left
    out of the rate until it closes, so an arm whose users export later is not favoured.
    """
    start = np.asarray(first_start, dtype=float)
    export = np.asarray(first_export, dtype=float)
    started = start < until
    if stopped_at is not None:
        started &= start < stopped_at
    closed = start + window <= until
    counted = started & closed
    with np.errstate(invalid="ignore"):
        exported = counted & (export <= start + window) & (export < until)
    return counted, exported, started & ~closed


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------

UNDERPOWERED = "underpowered"

# Decision vocabulary (stable: other code, e.g. shipping checks, compares these strings):
#   "srm — do not trust"  starts do not match the weights (per allocation period): nothing holds
#   "insufficient data"   an arm has no (mature) projects
#   "treatment better"    the deciding interval lies above "no difference" (1 or 0)
#   "treatment worse"     the deciding interval lies below "no difference"
#   "equivalent"          the interval lies inside the margin both ways AND the power reached
#                         for the margin is at least the target
#   "non-inferior"        the interval's lower bound clears the margin AND enough power
#   "underpowered"        none of the above could be claimed, or only with less power than the
#                         target: more projects are needed (the notes say how many)
#   "inconclusive"        enough power, and still nothing excluded
DECISIONS: tuple[str, ...] = (
    SRM_DO_NOT_TRUST,
    INSUFFICIENT_DATA,
    TREATMENT_BETTER,
    TREATMENT_WORSE,
    EQUIVALENT,
    NON_INFERIOR,
    UNDERPOWERED,
    INCONCLUSIVE,
)
#: Decisions that support shipping the treatment (it is not shown to be worse by the margin).
SHIPPABLE: tuple[str, ...] = (TREATMENT_BETTER, EQUIVALENT, NON_INFERIOR)


@dataclass(frozen=True)
class TreatmentDecision:
    """The verdict for one treatment against control, with the numbers behind it.

    `decision` is one of `DECISIONS`. `interval` is the interval the verdict was read from, on
    `scale` (relative: the ratio p_t / p_c; absolute: p_t - p_c), at level alpha/k with k
    treatments, always-valid when sequential. `difference_interval` (Newcombe) and
    `ratio_interval` (MOVER-R) are both at that level. `p_value` is the Holm-adjusted two-sided
    p-value: the pooled z test (fixed) or the always-valid mixture p (sequential); the interval,
    not the p-value, decides.
    """

    arm: str
    decision: str
    comparison: Comparison
    p_value: float
    interval: tuple[float, float]
    sequential: SequentialResult | None = None
    notes: tuple[str, ...] = ()
    scale: str = RELATIVE
    difference_interval: tuple[float, float] = (NAN, NAN)
    ratio_interval: tuple[float, float] = (NAN, NAN)
    power: PowerCheck | None = None
    level: float = DEFAULT_ALPHA

    @property
    def interval_label(self) -> str:
        what = "ratio treatment/control" if self.scale == RELATIVE else "difference (pts)"
        kind = "always-valid" if self.sequential is not None else "fixed-horizon"
        return f"{kind} {100 * (1 - self.level):.4g}% interval of the {what}"


@dataclass(frozen=True)
class ExperimentDecision:
    """Verdicts for every treatment plus the SRM check that can override them all."""

    control: RateEstimate
    treatments: dict[str, TreatmentDecision]
    srm: SrmResult | None
    margin: Margin | None
    alpha: float
    sequential: bool
    notes: tuple[str, ...] = field(default_factory=tuple)
    allocation_srm: AllocationSrm | None = None

    @property
    def decisions(self) -> dict[str, str]:
        return {arm: d.decision for arm, d in self.treatments.items()}


CountsLike = tuple[int, int] | tuple[ArrayLike, ArrayLike]


@dataclass(frozen=True)
class Period:
    """Counts of one allocation period: (exports, starts) per arm (control first), its weights."""

    counts: tuple[tuple[int, int], ...]
    weights: tuple[float, ...]


def _total(value: ArrayLike) -> int:
    return int(np.asarray(value, dtype=float).sum())


def _verdict(low: float, high: float, null: float, margin: Margin | None) -> tuple[str, list[str]]:
    """Read the deciding interval: superiority, then equivalence, non-inferiority, inferiority."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE, ["no interval could be computed"]
    if low > null:
        return TREATMENT_BETTER, []
    if margin is not None:
        lower_note = "significantly lower than control, but within the margin"
        eq_low, eq_high = margin.equivalence_bounds
        if margin.value != 0 and eq_low < low and high < eq_high:
            return EQUIVALENT, [lower_note] if high < null else []
        if low > margin.bound:
            return NON_INFERIOR, [lower_note] if high < null else []
    if high < null:
        notes = ["the interval does not clear the non-inferiority margin"] if margin else []
        return TREATMENT_WORSE, notes
    return INCONCLUSIVE, []


def _power_gate(verdict: str, check: PowerCheck, margin: Margin | None) -> tuple[str, list[str]]:
    """ "equivalent", "non-inferior" and "inconclusive" need the target power, else underpowered."""
    if verdict not in (EQUIVALENT, NON_INFERIOR, INCONCLUSIVE) or check.enough:
        return verdict, []
    what = f"at margin {margin.label}" if margin else f"a change of {check.effect_label}"
    days = f" (about {check.days_more:.0f} days)" if check.days_more is not None else ""
    notes = [
        f"power {100 * check.power:.1f}% < {100 * check.target:.0f}% {what}: "
        f"{check.more_per_arm} more projects per arm{days} needed to decide"
    ]
    if verdict != INCONCLUSIVE:
        notes.append(f"the interval alone would read {verdict!r}")
    return UNDERPOWERED, notes


def decide(
    control: CountsLike,
    treatments: Mapping[str, CountsLike] | Sequence[CountsLike],
    *,
    margin: Margin | float | str | None = None,
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = False,
    horizon: float | None = None,
    weights: Sequence[float] | None = None,
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    mde: float = DEFAULT_MDE,
    power: float = DEFAULT_POWER,
    days_elapsed: float | None = None,
    periods: Sequence[Period] | None = None,
) -> ExperimentDecision:
    """Decide every treatment against control.

    `control` and each treatment are (exports, starts): totals, or daily arrays (NOT
    cumulative) for a sequential decision. `margin` (a `Margin`, "-2%", "-1pts", or a number:
    a RELATIVE fraction) enables "non-inferior" and "equivalent"; its scale is the scale of the
    deciding interval (relative without a margin). `weights` (control first) turns on the SRM
    check; `periods` (allocation periods, control first in each) check SRM per period and, with
    more than one, estimate the effect stratified by period (Mantel-Haenszel). With k treatments
    intervals are at level alpha/k (Bonferroni) and p-values Holm-adjusted.

    Rules, in order: SRM flagged -> "srm — do not trust"; an arm with no starts ->
    "insufficient data"; interval above no-difference -> "treatment better"; inside the margin
    both ways -> "equivalent"; lower bound above the margin -> "non-inferior"; below
    no-difference -> "treatment worse"; else "inconclusive". Then "equivalent", "non-inferior"
    and "inconclusive" become "underpowered" when the power reached (for the margin, else for a
    change of `mde` relative) is below `power`; the notes give the projects still needed.
    """
    _check_alpha(alpha)
    margin = None if margin is None else parse_margin(margin)
    if isinstance(treatments, Mapping):
        named = dict(treatments)
    else:
        named = {
            ("treatment" if i == 0 else f"treatment {i + 1}"): t for i, t in enumerate(treatments)
        }
    if not named:
        raise ValueError("at least one treatment is needed")
    k = len(named)
    level = alpha / k
    scale = margin.scale if margin else RELATIVE
    xc_total, nc_total = _total(control[0]), _total(control[1])
    control_rate = completion_rate(xc_total, nc_total, alpha)
    notes: list[str] = []
    srm, by_period = _srm(nc_total, named, weights, periods, srm_threshold, notes)
    stratified = periods is not None and sum(1 for p in periods if sum(c[1] for c in p.counts)) > 1
    if stratified:
        notes.append("weights changed: effect estimated stratified by allocation period")
    if k > 1:
        notes.append(f"{k} treatments: intervals at level alpha/{k}, p-values Holm-adjusted")

    rows: dict[str, dict[str, Any]] = {}
    for index, (arm, (xt, nt)) in enumerate(named.items()):
        counts = (xc_total, nc_total, _total(xt), _total(nt))
        cmp = compare(*counts, alpha)
        row: dict[str, Any] = {"cmp": cmp, "seq": None}
        if sequential and nc_total > 0 and counts[3] > 0:
            path = sequential_path(control[0], control[1], xt, nt, level, horizon)
            seq = path.final
            row["seq"] = seq
            row["p"] = seq.p_value
            row["diff"] = (seq.difference_ci_low, seq.difference_ci_high)
            row["ratio"] = (seq.ratio_ci_low, seq.ratio_ci_high)
            fraction = min(counts[1], counts[3]) / path.horizon
            z = _float(sequential_z(fraction, level))
        else:
            z = _z(level)
            row["p"] = _float(pooled_p_value(*counts))
            row["diff"] = tuple(_float(v) for v in newcombe_difference(*counts, z))
            row["ratio"] = tuple(_float(v) for v in mover_ratio(*counts, z))
        if stratified and periods is not None:
            pc = [p.counts[0] for p in periods]
            pt = [p.counts[1 + index] for p in periods]
            (_, *d), (_, *r) = stratified_intervals(pc, pt, z)
            row["diff"], row["ratio"] = tuple(d), tuple(r)
        rows[arm] = row
    raw = np.asarray([row["p"] for row in rows.values()], dtype=float)
    adjusted = np.where(np.isnan(raw), np.nan, holm_adjust(np.where(np.isnan(raw), 1.0, raw)))

    results: dict[str, TreatmentDecision] = {}
    for i, (arm, row) in enumerate(rows.items()):
        cmp = row["cmp"]
        interval = row["ratio"] if scale == RELATIVE else row["diff"]
        check = None
        arm_notes: list[str] = []
        if cmp.control.starts == 0 or cmp.treatment.starts == 0:
            verdict = INSUFFICIENT_DATA
            arm_notes.append(cmp.message or "an arm has no starts")
        else:
            low, high = interval
            verdict, extra = _verdict(low, high, 1.0 if scale == RELATIVE else 0.0, margin)
            arm_notes.extend(extra)
            has_margin = margin is not None and margin.value != 0
            check = power_check(
                planning_rate(xc_total, nc_total),
                cmp.control.starts,
                cmp.treatment.starts,
                effect=margin.value if margin is not None and has_margin else mde,
                scale=scale if has_margin else RELATIVE,
                kind="non-inferiority" if has_margin else "superiority",
                alpha=level,
                sequential=sequential,
                horizon=row["seq"].horizon if row["seq"] else None,
                target=power,
                days_elapsed=days_elapsed,
            )
            verdict, extra = _power_gate(verdict, check, margin)
            arm_notes.extend(extra)
        if srm is not None and srm.flagged:
            arm_notes.insert(0, f"without the SRM this would read: {verdict}")
            verdict = SRM_DO_NOT_TRUST
        results[arm] = TreatmentDecision(
            arm, verdict, cmp, float(adjusted[i]), tuple(interval), row["seq"], tuple(arm_notes),
            scale, tuple(row["diff"]), tuple(row["ratio"]), check, level,
        )  # fmt: skip
    return ExperimentDecision(
        control_rate, results, srm, margin, alpha, sequential, tuple(notes), by_period
    )


def _srm(
    control_starts: int,
    named: Mapping[str, CountsLike],
    weights: Sequence[float] | None,
    periods: Sequence[Period] | None,
    threshold: float,
    notes: list[str],
) -> tuple[SrmResult | None, AllocationSrm | None]:
    """The SRM check on totals (one allocation) or per allocation period."""
    if periods:
        by_period = allocation_srm(
            [[c[1] for c in p.counts] for p in periods], [p.weights for p in periods], threshold
        )
        starts = [sum(p.counts[i][1] for p in periods) for i in range(len(periods[0].counts))]
        last = periods[-1].weights
        plain = sample_ratio_mismatch(starts, last, threshold)
        srm = SrmResult(
            plain.starts, plain.weights, plain.expected, by_period.statistic, by_period.p_value,
            threshold, by_period.flagged, by_period.message,
        )  # fmt: skip
        if srm.flagged:
            notes.append(srm.message or "sample ratio mismatch")
        return srm, by_period
    if weights is None:
        return None, None
    starts = [control_starts] + [_total(t[1]) for t in named.values()]
    srm = sample_ratio_mismatch(starts, weights, threshold)
    if srm.flagged:
        notes.append(srm.message or "sample ratio mismatch")
    return srm, None
