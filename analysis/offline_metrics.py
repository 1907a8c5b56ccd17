"""The paper's offline metrics (section 3.3), vectorised, with paired bootstrap intervals.

Per tool (adjust, selective adjust, filter):

- *selection*: precision, recall and F1 of "the tool is used" (adjust / selective adjust: a
  non-empty, not-all-zero vector; filter: a preset other than `none`);
- *quality*: adjust and selective adjust: the mean cosine similarity of the parameter vectors (in
  `ADJUST_ORDER` / `SELECTIVE_ORDER`) over rows where prediction and truth both use the tool;
  filter: the accuracy of the preset name over the same kind of rows (intensity is not scored);
- *final*: the harmonic mean of selection (F1) and quality; *overall*: the mean of the finals.

A missing or malformed prediction (`None`) counts as "no tool used" and as a parse failure.

Edge cases (decided here, tested in tests/analysis/test_offline_metrics.py):

- Zero vectors: an all-zero adjust is "not used" by definition, so rows in the quality mean
  always have non-zero vectors. The per-sample cosine of a zero vector against anything is 0.
- No row where both use the tool: if neither side ever uses the tool the tool is perfectly
  predicted (precision = recall = F1 = quality = final = 1); otherwise F1 has no true positive,
  F1 = quality = final = 0.
- Precision with no predicted positive is 1 when there is no missed positive either, else 0;
  recall with no true positive is 1 when there is no false alarm, else 0. F1 is always
  2TP / (2TP + FP + FN), which agrees with both.
- A negative mean cosine (predicted parameters pointing away from the truth) is reported as
  `mean_cosine` but the quality score is clipped at 0 so that every score stays in [0, 1].

Everything reduces to per-row sufficient statistics (TP, FP, FN and the row's quality term per
tool); a score is a pure function of their sums, so a bootstrap resample is one matrix product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.tools import (
    ADJUST_ORDER,
    FILTER_NAMES,
    NO_FILTER,
    SELECTIVE_ORDER,
    TOOLS,
    ToolConfig,
    canonical_filter,
)

SUBSET_THRESHOLDS: tuple[int, ...] = (1, 3, 5)
DEFAULT_RESAMPLES = 1000
_FILTER_CODES = {name: code for code, name in enumerate(FILTER_NAMES)}  # "none" is code 0
# Columns of the per-row statistics, per tool.
_TP, _FP, _FN, _Q = range(4)


# --- encoding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedConfigs:
    """Tool configurations stacked as arrays: one row per intent."""

    adjust: np.ndarray  # (n, 14) in ADJUST_ORDER, zeros when not used
    selective_adjust: np.ndarray  # (n, 12) in SELECTIVE_ORDER, zeros when not used
    filter: np.ndarray  # (n,) int code into FILTER_NAMES, 0 (= "none") when not used
    missing: np.ndarray  # (n,) bool: the prediction was None (malformed or missing)

    def __len__(self) -> int:
        return len(self.filter)

    def used(self) -> np.ndarray:
        """(n, 3) bool: whether each tool is used, columns in `TOOLS` order."""
        return np.column_stack(
            [
                np.any(self.adjust != 0, axis=1),
                np.any(self.selective_adjust != 0, axis=1),
                self.filter != 0,
            ]
        )


def encode(configs: Sequence[ToolConfig | None]) -> EncodedConfigs:
    """Stack configurations into arrays; `None` becomes "no tool used"."""
    no_adjust = (0.0,) * len(ADJUST_ORDER)
    no_selective = (0.0,) * len(SELECTIVE_ORDER)
    adjust, selective, filters, missing = [], [], [], []
    for config in configs:
        if config is None:
            adjust.append(no_adjust)
            selective.append(no_selective)
            filters.append(0)
            missing.append(True)
            continue
        adjust.append(config.adjust.values if config.adjust is not None else no_adjust)
        selective.append(
            config.selective_adjust.values if config.selective_adjust is not None else no_selective
        )
        filters.append(_filter_code(config.filter.name) if config.filter is not None else 0)
        missing.append(False)
    n = len(configs)
    return EncodedConfigs(
        np.array(adjust, dtype=float).reshape(n, len(ADJUST_ORDER)),
        np.array(selective, dtype=float).reshape(n, len(SELECTIVE_ORDER)),
        np.array(filters, dtype=np.int64),
        np.array(missing, dtype=bool),
    )


def _filter_code(name: str) -> int:
    code = _FILTER_CODES.get(name)
    return code if code is not None else _FILTER_CODES[canonical_filter(name)]


def _as_encoded(configs: Sequence[ToolConfig | None] | EncodedConfigs) -> EncodedConfigs:
    return configs if isinstance(configs, EncodedConfigs) else encode(configs)


# --- per-sample values --------------------------------------------------------------------------


def row_cosines(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Cosine similarity per row; 0 where either vector is all zeros."""
    dot = np.einsum("ij,ij->i", predicted, truth)
    # sqrt(|a|^2 |b|^2) rather than |a| |b|: identical vectors then give exactly 1.0
    norms = np.sqrt(
        np.einsum("ij,ij->i", predicted, predicted) * np.einsum("ij,ij->i", truth, truth)
    )
    out = np.zeros(len(dot))
    np.divide(dot, norms, out=out, where=norms > 0)
    return np.clip(out, -1.0, 1.0)


@dataclass(frozen=True)
class SampleMetrics:
    """Per-row values behind the quality scores (NaN / False where they do not apply).

    `*_cosine` is defined on rows where prediction or truth uses the tool (0 when only one does);
    `both` marks the rows that enter the quality mean.
    """

    adjust_cosine: np.ndarray
    selective_adjust_cosine: np.ndarray
    filter_correct: np.ndarray  # float: 1 / 0 where either uses the filter, NaN elsewhere
    pred_used: np.ndarray  # (n, 3)
    true_used: np.ndarray  # (n, 3)

    @property
    def both(self) -> np.ndarray:
        return self.pred_used & self.true_used


def sample_metrics(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
) -> SampleMetrics:
    pred, true = _aligned(predictions, truth)
    pred_used, true_used = pred.used(), true.used()
    either = pred_used | true_used
    adjust = np.where(either[:, 0], row_cosines(pred.adjust, true.adjust), np.nan)
    selective = np.where(
        either[:, 1], row_cosines(pred.selective_adjust, true.selective_adjust), np.nan
    )
    correct = np.where(either[:, 2], (pred.filter == true.filter).astype(float), np.nan)
    return SampleMetrics(adjust, selective, correct, pred_used, true_used)


def mistakes(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
    mean_cosines: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Rows the student got wrong, per tool, as the paper's augmentation step defines them.

    Adjust / selective adjust: the row's cosine is below the tool's mean cosine (pass the means
    measured *without* augmentation as `mean_cosines`; by default the means of this run). A row
    where only one side uses the tool has cosine 0, so it is a mistake. Filter: the preset name
    differs (including `none` against a preset). Rows where neither side uses a tool are never
    mistakes. Returns bool arrays keyed by tool plus `"any"`.
    """
    samples = sample_metrics(predictions, truth)
    both = samples.both
    out: dict[str, np.ndarray] = {}
    for column, tool in enumerate(TOOLS[:2]):
        cosines = samples.adjust_cosine if column == 0 else samples.selective_adjust_cosine
        if mean_cosines is not None and tool in mean_cosines:
            threshold = float(mean_cosines[tool])
        else:
            threshold = float(cosines[both[:, column]].mean()) if both[:, column].any() else 1.0
        out[tool] = np.nan_to_num(cosines, nan=np.inf) < threshold
    out["filter"] = np.nan_to_num(samples.filter_correct, nan=1.0) < 1.0
    out["any"] = out["adjust"] | out["selective_adjust"] | out["filter"]
    return out


# --- sufficient statistics and scores -----------------------------------------------------------


def _aligned(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
) -> tuple[EncodedConfigs, EncodedConfigs]:
    pred, true = _as_encoded(predictions), _as_encoded(truth)
    if len(pred) != len(true):
        raise ValueError(f"predictions: {len(pred)} rows but truth has {len(true)}")
    if true.missing.any():
        raise ValueError("truth: every ground-truth row needs a tool configuration")
    return pred, true


def row_statistics(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
) -> np.ndarray:
    """(n, 3, 4) per row and tool: TP, FP, FN indicators and the quality term (TP rows only)."""
    pred, true = _aligned(predictions, truth)
    p, t = pred.used(), true.used()
    stats = np.zeros((len(pred), len(TOOLS), 4))
    stats[:, :, _TP] = p & t
    stats[:, :, _FP] = p & ~t
    stats[:, :, _FN] = ~p & t
    quality = np.column_stack(
        [
            row_cosines(pred.adjust, true.adjust),
            row_cosines(pred.selective_adjust, true.selective_adjust),
            (pred.filter == true.filter).astype(float),
        ]
    )
    stats[:, :, _Q] = np.where(p & t, quality, 0.0)
    return stats


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray, empty: np.ndarray) -> np.ndarray:
    out = np.array(empty, dtype=float, copy=True)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def scores_from_totals(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from summed statistics of shape (..., 3, 4); every output has shape (..., 3).

    Works on one total (shape (3, 4)) or a stack of bootstrap totals (shape (B, 3, 4)).
    """
    tp, fp, fn, q = (totals[..., k] for k in range(4))
    nothing = (tp + fp + fn) == 0  # the tool is used nowhere, by either side
    precision = _safe_ratio(tp, tp + fp, (fn == 0).astype(float))
    recall = _safe_ratio(tp, tp + fn, (fp == 0).astype(float))
    selection = _safe_ratio(2 * tp, 2 * tp + fp + fn, np.ones_like(tp))
    mean_cosine = _safe_ratio(q, tp, nothing.astype(float))
    quality = np.clip(mean_cosine, 0.0, 1.0)
    final = _safe_ratio(2 * selection * quality, selection + quality, np.zeros_like(tp))
    return {
        "precision": precision,
        "recall": recall,
        "selection": selection,
        "mean_cosine": mean_cosine,
        "quality": quality,
        "final": final,
        "overall": final.mean(axis=-1),
    }


@dataclass(frozen=True)
class ToolScores:
    precision: float
    recall: float
    selection: float  # F1 of "the tool is used"
    quality: float  # mean cosine (adjust tools) or name accuracy (filter), clipped to [0, 1]
    final: float  # harmonic mean of selection and quality
    mean_cosine: float  # unclipped quality mean (can be negative for the adjust tools)
    true_used: int  # rows where the truth uses the tool
    predicted_used: int
    both_used: int  # rows in the quality mean


@dataclass(frozen=True)
class OfflineScores:
    """The paper's metrics for one set of predictions."""

    tools: dict[str, ToolScores]
    overall: float
    n: int
    parse_failure_rate: float
    parse_failures: int = 0

    @property
    def finals(self) -> dict[str, float]:
        return {tool: s.final for tool, s in self.tools.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "overall": self.overall,
            "parse_failure_rate": self.parse_failure_rate,
            "parse_failures": self.parse_failures,
            "tools": {tool: asdict(s) for tool, s in self.tools.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OfflineScores:
        return cls(
            tools={t: ToolScores(**s) for t, s in data["tools"].items()},
            overall=float(data["overall"]),
            n=int(data["n"]),
            parse_failure_rate=float(data["parse_failure_rate"]),
            parse_failures=int(data.get("parse_failures", 0)),
        )


def _failure_mask(pred: EncodedConfigs, parse_failures: Sequence[Any] | None) -> np.ndarray:
    failed = pred.missing.copy()
    if parse_failures is not None:
        if len(parse_failures) != len(pred):
            raise ValueError(
                f"parse_failures: {len(parse_failures)} entries but {len(pred)} predictions"
            )
        failed |= np.array([bool(f) for f in parse_failures], dtype=bool)
    return failed


def _scores_from_stats(stats: np.ndarray, failed: np.ndarray) -> OfflineScores:
    totals = stats.sum(axis=0)
    values = scores_from_totals(totals)
    tools = {
        tool: ToolScores(
            precision=float(values["precision"][k]),
            recall=float(values["recall"][k]),
            selection=float(values["selection"][k]),
            quality=float(values["quality"][k]),
            final=float(values["final"][k]),
            mean_cosine=float(values["mean_cosine"][k]),
            true_used=int(totals[k, _TP] + totals[k, _FN]),
            predicted_used=int(totals[k, _TP] + totals[k, _FP]),
            both_used=int(totals[k, _TP]),
        )
        for k, tool in enumerate(TOOLS)
    }
    n = len(stats)
    return OfflineScores(
        tools=tools,
        overall=float(values["overall"]),
        n=n,
        parse_failure_rate=float(failed.mean()) if n else 0.0,
        parse_failures=int(failed.sum()),
    )


def score(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
    calls: Sequence[int] | None = None,
    parse_failures: Sequence[Any] | None = None,
    min_calls: int = 1,
) -> OfflineScores:
    """Score predictions against the truth, row by row (same order, same length).

    `parse_failures[i]` truthy marks row i as a parse failure (e.g. `Prediction.parse_failures`);
    `None` predictions always are. With `calls` and `min_calls`, only rows with
    `calls >= min_calls` are scored (the paper's r_i subsets).
    """
    pred, true = _aligned(predictions, truth)
    stats = row_statistics(pred, true)
    failed = _failure_mask(pred, parse_failures)
    if calls is not None:
        keep = _subset_mask(calls, len(pred), min_calls)
        stats, failed = stats[keep], failed[keep]
    elif min_calls > 1:
        raise ValueError("calls: needed to score an r_i subset (min_calls > 1)")
    return _scores_from_stats(stats, failed)


def _subset_mask(calls: Sequence[int], n: int, min_calls: int) -> np.ndarray:
    counts = np.asarray(calls)
    if counts.shape != (n,):
        raise ValueError(f"calls: {counts.shape[0] if counts.ndim else 0} entries but {n} rows")
    return counts >= min_calls


def subset_name(min_calls: int) -> str:
    return "all" if min_calls <= 1 else f"r{min_calls}"


def score_subsets(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
    calls: Sequence[int],
    parse_failures: Sequence[Any] | None = None,
    thresholds: Sequence[int] = SUBSET_THRESHOLDS,
) -> dict[str, OfflineScores]:
    """Scores on the paper's subsets: `all`, `r3` (calls >= 3), `r5`, ... (Table 2)."""
    pred, true = _aligned(predictions, truth)
    stats = row_statistics(pred, true)
    failed = _failure_mask(pred, parse_failures)
    out = {}
    for threshold in thresholds:
        keep = _subset_mask(calls, len(pred), threshold)
        out[subset_name(threshold)] = _scores_from_stats(stats[keep], failed[keep])
    return out


def overall_score(predictions: Sequence[ToolConfig | None], truth: Sequence[ToolConfig]) -> float:
    """The overall score alone: a plain callable for training loops and checkpoint selection."""
    totals = row_statistics(predictions, truth).sum(axis=0)
    return float(scores_from_totals(totals)["overall"])


# --- bootstrap ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile intervals for each tool's final score and the overall score."""

    finals: dict[str, Interval]
    overall: Interval
    confidence: float
    resamples: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "finals": {tool: i.as_dict() for tool, i in self.finals.items()},
            "overall": self.overall.as_dict(),
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
        }


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts: how often each row is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((resamples, 0))
    # Draw row indices, then count them per resample with one bincount (offset per resample).
    drawn = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)


def bootstrap_totals(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, 3, 4) resampled totals of per-row statistics (n, 3, 4): one matrix product."""
    n = stats.shape[0]
    return (weights @ stats.reshape(n, -1)).reshape(weights.shape[0], *stats.shape[1:])


def _interval(estimate: float | np.ndarray, draws: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def _bootstrap_from_stats(
    stats: np.ndarray, weights: np.ndarray, confidence: float, seed: int
) -> BootstrapResult:
    point = scores_from_totals(stats.sum(axis=0))
    draws = scores_from_totals(bootstrap_totals(stats, weights))
    finals = {
        tool: _interval(point["final"][k], draws["final"][:, k], confidence)
        for k, tool in enumerate(TOOLS)
    }
    return BootstrapResult(
        finals=finals,
        overall=_interval(point["overall"], draws["overall"], confidence),
        confidence=confidence,
        resamples=weights.shape[0],
        seed=seed,
    )


def _check_confidence(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: {confidence} is not between 0 and 1")
    if resamples < 1:
        raise ValueError(f"resamples: {resamples} must be at least 1")


def bootstrap(
    predictions: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Seeded percentile bootstrap over rows (intents) for each final and the overall score."""
    _check_confidence(confidence, resamples)
    stats = row_statistics(predictions, truth)
    weights = resample_weights(len(stats), resamples, seed)
    return _bootstrap_from_stats(stats, weights, confidence, seed)


@dataclass(frozen=True)
class Comparison:
    """Candidate against champion on the same rows, with paired bootstrap intervals."""

    candidate: OfflineScores
    champion: OfflineScores
    candidate_ci: BootstrapResult
    champion_ci: BootstrapResult
    difference: Interval  # overall, candidate minus champion
    final_differences: dict[str, Interval] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.as_dict(),
            "champion": self.champion.as_dict(),
            "candidate_ci": self.candidate_ci.as_dict(),
            "champion_ci": self.champion_ci.as_dict(),
            "difference": self.difference.as_dict(),
            "final_differences": {t: i.as_dict() for t, i in self.final_differences.items()},
        }


def compare(
    candidate: Sequence[ToolConfig | None] | EncodedConfigs,
    champion: Sequence[ToolConfig | None] | EncodedConfigs,
    truth: Sequence[ToolConfig] | EncodedConfigs,
    candidate_parse_failures: Sequence[Any] | None = None,
    champion_parse_failures: Sequence[Any] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Paired bootstrap: both sets of predictions are resampled with the same row draws."""
    _check_confidence(confidence, resamples)
    true = _as_encoded(truth)
    cand, champ = _as_encoded(candidate), _as_encoded(champion)
    cand_stats, champ_stats = row_statistics(cand, true), row_statistics(champ, true)
    weights = resample_weights(len(true), resamples, seed)
    cand_draws = scores_from_totals(bootstrap_totals(cand_stats, weights))
    champ_draws = scores_from_totals(bootstrap_totals(champ_stats, weights))
    cand_scores = _scores_from_stats(cand_stats, _failure_mask(cand, candidate_parse_failures))
    champ_scores = _scores_from_stats(champ_stats, _failure_mask(champ, champion_parse_failures))
    difference = _interval(
        cand_scores.overall - champ_scores.overall,
        cand_draws["overall"] - champ_draws["overall"],
        confidence,
    )
    final_differences = {
        tool: _interval(
            cand_scores.tools[tool].final - champ_scores.tools[tool].final,
            cand_draws["final"][:, k] - champ_draws["final"][:, k],
            confidence,
        )
        for k, tool in enumerate(TOOLS)
    }
    return Comparison(
        candidate=cand_scores,
        champion=champ_scores,
        candidate_ci=_bootstrap_from_stats(cand_stats, weights, confidence, seed),
        champion_ci=_bootstrap_from_stats(champ_stats, weights, confidence, seed),
        difference=difference,
        final_differences=final_differences,
    )


__all__ = [
    "NO_FILTER",
    "BootstrapResult",
    "Comparison",
    "EncodedConfigs",
    "Interval",
    "OfflineScores",
    "SampleMetrics",
    "ToolScores",
    "bootstrap",
    "compare",
    "encode",
    "mistakes",
    "overall_score",
    "row_statistics",
    "sample_metrics",
    "score",
    "score_subsets",
    "scores_from_totals",
]
