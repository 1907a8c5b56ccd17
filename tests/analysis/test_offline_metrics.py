"""The paper's offline metrics: hand-computed examples, edge cases and properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import offline_metrics
from analysis.offline_io import match_files, parse_prediction
from analysis.offline_reference import reference_scores
from models.dataset import DatasetError
from models.tools import (
    ADJUST_ORDER,
    FILTER_NAMES,
    SELECTIVE_ORDER,
    Adjust,
    Filter,
    SelectiveAdjust,
    ToolConfig,
)


def adjust(**values: float) -> Adjust:
    return Adjust(tuple(float(values.get(p, 0)) for p in ADJUST_ORDER))


def selective(**values: float) -> SelectiveAdjust:
    """`selective(red_saturation=10)`."""
    return SelectiveAdjust(tuple(float(values.get(f"{c}_{p}", 0)) for c, p in SELECTIVE_ORDER))


def config(a=None, s=None, f: str | None = None) -> ToolConfig:
    return ToolConfig(a, s, Filter(f, 50) if f else None)


# --- hand-computed examples -----------------------------------------------------------------------

TRUTH = [
    config(adjust(exposure=10), None, "vivid"),
    config(adjust(exposure=10), None, "vivid"),
    config(adjust(contrast=20), None, None),
    config(None, None, "winter"),
]
PRED = [
    config(adjust(exposure=10), None, "vivid"),  # adjust cos 1, filter right
    config(adjust(contrast=10), None, "action"),  # adjust cos 0, filter wrong name
    config(None, None, "winter"),  # adjust missed (FN), filter false alarm (FP)
    config(adjust(exposure=5), None, None),  # adjust false alarm (FP), filter missed (FN)
]


def test_hand_computed_example_every_metric():
    scores = offline_metrics.score(PRED, TRUTH)
    a, s, f = (scores.tools[t] for t in ("adjust", "selective_adjust", "filter"))
    # adjust: TP=2 (rows 0, 1), FP=1 (row 3), FN=1 (row 2)
    assert a.precision == pytest.approx(2 / 3)
    assert a.recall == pytest.approx(2 / 3)
    assert a.selection == pytest.approx(2 / 3)
    assert a.quality == pytest.approx((1 + 0) / 2)
    assert a.final == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # = 4/7
    assert (a.true_used, a.predicted_used, a.both_used) == (3, 3, 2)
    # selective adjust used by nobody: perfectly predicted
    assert (s.precision, s.recall, s.selection, s.quality, s.final) == (1, 1, 1, 1, 1)
    # filter: TP=2 (rows 0, 1), FP=1 (row 2), FN=1 (row 3); names right on 1 of 2 TP rows
    assert f.selection == pytest.approx(2 / 3)
    assert f.quality == pytest.approx(0.5)
    assert f.final == pytest.approx(4 / 7)
    assert scores.overall == pytest.approx((4 / 7 + 1 + 4 / 7) / 3)
    assert scores.n == 4
    assert scores.parse_failure_rate == 0


def test_cosine_is_computed_on_the_canonical_vectors():
    truth = [config(adjust(exposure=3, contrast=4))]
    pred = [config(adjust(exposure=4, contrast=3))]
    scores = offline_metrics.score(pred, truth)
    assert scores.tools["adjust"].quality == pytest.approx(24 / 25)
    assert scores.tools["adjust"].final == pytest.approx(2 * 0.96 / 1.96)


def test_selective_adjust_cosine_and_scale_invariance():
    truth = [config(None, selective(red_saturation=20, blue_luminance=-10))]
    pred = [config(None, selective(red_saturation=40, blue_luminance=-20))]
    assert offline_metrics.score(pred, truth).tools["selective_adjust"].quality == pytest.approx(
        1.0
    )
    pred = [config(None, selective(red_saturation=20))]
    expected = 400 / (math.sqrt(500) * 20)
    assert offline_metrics.score(pred, truth).tools["selective_adjust"].quality == pytest.approx(
        expected
    )


def test_precision_and_recall_differ_when_errors_are_one_sided():
    truth = [config(adjust(exposure=1)), config(adjust(exposure=1)), config()]
    pred = [config(adjust(exposure=1)), config(), config()]
    scores = offline_metrics.score(pred, truth).tools["adjust"]
    assert scores.precision == 1.0  # TP=1, FP=0
    assert scores.recall == 0.5  # TP=1, FN=1
    assert scores.selection == pytest.approx(2 / 3)


def test_negative_mean_cosine_is_reported_but_quality_clipped_at_zero():
    truth = [config(adjust(temperature=50))]
    pred = [config(adjust(temperature=-50))]
    tool = offline_metrics.score(pred, truth).tools["adjust"]
    assert tool.mean_cosine == pytest.approx(-1.0)
    assert tool.quality == 0.0
    assert tool.final == 0.0


def test_no_row_where_both_use_the_tool_scores_zero():
    truth = [config(None, None, "vivid"), config()]
    pred = [config(), config(None, None, "action")]
    tool = offline_metrics.score(pred, truth).tools["filter"]
    assert tool.both_used == 0
    assert (tool.precision, tool.recall, tool.selection) == (0.0, 0.0, 0.0)
    assert (tool.quality, tool.final) == (0.0, 0.0)


def test_tool_missed_everywhere_has_precision_zero_and_never_used_is_perfect():
    truth = [config(adjust(exposure=1))]
    tool = offline_metrics.score([config()], truth).tools["adjust"]
    assert (tool.precision, tool.recall, tool.final) == (0.0, 0.0, 0.0)
    tool = offline_metrics.score([config()], [config()]).tools["filter"]
    assert (tool.precision, tool.recall, tool.selection, tool.quality) == (1, 1, 1, 1)


def test_filter_quality_ignores_intensity():
    truth = [ToolConfig(filter=Filter("vivid", 80))]
    pred = [ToolConfig(filter=Filter("vivid", 10))]
    assert offline_metrics.score(pred, truth).tools["filter"].final == 1.0


def test_missing_predictions_count_as_not_used_and_as_parse_failures():
    scores = offline_metrics.score([None, PRED[1], PRED[2], PRED[3]], TRUTH)
    reference = offline_metrics.score([config(), PRED[1], PRED[2], PRED[3]], TRUTH)
    assert scores.tools == reference.tools
    assert scores.parse_failure_rate == 0.25
    assert scores.parse_failures == 1
    flagged = offline_metrics.score(PRED, TRUTH, parse_failures=[(), ("filter",), (), ()])
    assert flagged.parse_failure_rate == 0.25


def test_r_i_subsets_keep_intents_with_at_least_i_calls():
    calls = [1, 3, 5, 7]
    subsets = offline_metrics.score_subsets(PRED, TRUTH, calls)
    assert list(subsets) == ["all", "r3", "r5"]
    assert [s.n for s in subsets.values()] == [4, 3, 2]
    assert subsets["all"] == offline_metrics.score(PRED, TRUTH)
    assert subsets["r5"] == offline_metrics.score(PRED[2:], TRUTH[2:])
    assert offline_metrics.score(PRED, TRUTH, calls=calls, min_calls=3) == subsets["r3"]


def test_overall_score_callable_matches_score():
    assert offline_metrics.overall_score(PRED, TRUTH) == pytest.approx(
        offline_metrics.score(PRED, TRUTH).overall
    )


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="predictions: 3 rows but truth has 4"):
        offline_metrics.score(PRED[:3], TRUTH)
    with pytest.raises(ValueError, match="truth"):
        offline_metrics.score(PRED, [None, *TRUTH[1:]])
    with pytest.raises(ValueError, match="calls"):
        offline_metrics.score_subsets(PRED, TRUTH, calls=[1, 2])
    with pytest.raises(ValueError, match="parse_failures"):
        offline_metrics.score(PRED, TRUTH, parse_failures=[False])
    with pytest.raises(ValueError, match="calls: needed"):
        offline_metrics.score(PRED, TRUTH, min_calls=3)
    with pytest.raises(ValueError, match="confidence"):
        offline_metrics.bootstrap(PRED, TRUTH, confidence=1.5)


def test_as_dict_round_trips_and_is_json():
    scores = offline_metrics.score(PRED, TRUTH)
    data = json.loads(json.dumps(scores.as_dict()))
    assert offline_metrics.OfflineScores.from_dict(data) == scores
    assert set(data["tools"]) == {"adjust", "selective_adjust", "filter"}


# --- per-sample values and mistakes (augmentation) ------------------------------------------------


def test_sample_metrics_per_row():
    samples = offline_metrics.sample_metrics(PRED, TRUTH)
    np.testing.assert_allclose(samples.adjust_cosine, [1.0, 0.0, 0.0, 0.0])
    assert np.isnan(samples.selective_adjust_cosine).all()
    np.testing.assert_array_equal(samples.filter_correct, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(samples.both[:, 0], [True, True, False, False])


def test_mistakes_follow_the_paper_definition():
    truth = [config(adjust(exposure=3, contrast=4), None, "vivid")] * 3 + [config()]
    pred = [
        config(adjust(exposure=3, contrast=4), None, "vivid"),  # cos 1
        config(adjust(exposure=4, contrast=3), None, "action"),  # cos .96, wrong filter
        config(adjust(exposure=1), None, None),  # cos .6, filter missed
        config(),  # nothing used anywhere: never a mistake
    ]
    marks = offline_metrics.mistakes(pred, truth)
    # mean cosine = (1 + .96 + .6) / 3 = .8533: rows below it are mistakes
    np.testing.assert_array_equal(marks["adjust"], [False, False, True, False])
    np.testing.assert_array_equal(marks["filter"], [False, True, True, False])
    np.testing.assert_array_equal(marks["any"], [False, True, True, False])
    marks = offline_metrics.mistakes(pred, truth, mean_cosines={"adjust": 0.97})
    np.testing.assert_array_equal(marks["adjust"], [False, True, True, False])


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    truth, pred = random_rows(rng, 300)
    first = offline_metrics.bootstrap(pred, truth, resamples=500, seed=3)
    again = offline_metrics.bootstrap(pred, truth, resamples=500, seed=3)
    other = offline_metrics.bootstrap(pred, truth, resamples=500, seed=4)
    assert first == again
    assert first != other
    assert first.overall.low < first.overall.estimate < first.overall.high
    assert first.overall.estimate == pytest.approx(offline_metrics.score(pred, truth).overall)
    for interval in first.finals.values():
        assert 0 <= interval.low <= interval.high <= 1


def test_bootstrap_totals_equal_explicit_resampling():
    rng = np.random.default_rng(2)
    truth, pred = random_rows(rng, 40)
    stats = offline_metrics.row_statistics(pred, truth)
    weights = offline_metrics.resample_weights(40, 5, seed=9)
    totals = offline_metrics.bootstrap_totals(stats, weights)
    for b in range(5):
        indices = np.repeat(np.arange(40), weights[b].astype(int))
        expected = offline_metrics.score([pred[i] for i in indices], [truth[i] for i in indices])
        got = offline_metrics.scores_from_totals(totals[b])
        assert got["overall"] == pytest.approx(expected.overall)


def test_bootstrap_of_perfect_predictions_is_degenerate_at_one():
    result = offline_metrics.bootstrap(TRUTH, TRUTH, resamples=200)
    assert (result.overall.low, result.overall.high) == (1.0, 1.0)


def test_compare_is_paired():
    rng = np.random.default_rng(5)
    truth, pred = random_rows(rng, 200)
    same = offline_metrics.compare(pred, pred, truth, resamples=300)
    assert (same.difference.low, same.difference.estimate, same.difference.high) == (0, 0, 0)
    better = offline_metrics.compare(truth, pred, truth, resamples=300)
    assert better.difference.estimate == pytest.approx(
        1 - offline_metrics.score(pred, truth).overall
    )
    assert better.difference.low > 0
    assert better.candidate.overall == 1.0
    assert set(better.final_differences) == {"adjust", "selective_adjust", "filter"}
    json.dumps(better.as_dict())


# --- properties -------------------------------------------------------------------------------


def random_config(rng: np.random.Generator) -> ToolConfig:
    a = s = f = None
    if rng.random() < 0.8:
        a = Adjust(tuple(float(v) for v in rng.integers(-3, 4, len(ADJUST_ORDER)) * 10))
        a = a if any(a.values) else None
    if rng.random() < 0.4:
        s = SelectiveAdjust(tuple(float(v) for v in rng.integers(-2, 3, len(SELECTIVE_ORDER))))
        s = s if any(s.values) else None
    if rng.random() < 0.6:
        f = Filter(str(rng.choice(FILTER_NAMES[1:6])), 50)
    return ToolConfig(a, s, f)


def random_rows(rng: np.random.Generator, n: int) -> tuple[list[ToolConfig], list[ToolConfig]]:
    truth = [random_config(rng) for _ in range(n)]
    pred = [t if rng.random() < 0.3 else random_config(rng) for t in truth]
    return truth, pred


values = st.sampled_from([-40.0, -10.0, 0.0, 0.0, 5.0, 30.0])
adjusts = st.none() | st.tuples(*[values] * len(ADJUST_ORDER)).map(
    lambda v: Adjust(v) if any(v) else None
)
selectives = st.none() | st.tuples(*[values] * len(SELECTIVE_ORDER)).map(
    lambda v: SelectiveAdjust(v) if any(v) else None
)
filters = st.none() | st.sampled_from(FILTER_NAMES[1:5]).map(lambda n: Filter(n, 50))
configs = st.builds(ToolConfig, adjusts, selectives, filters)
pairs = st.lists(st.tuples(configs, st.none() | configs), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(st.lists(configs, min_size=1, max_size=25))
def test_perfect_predictions_score_one(truth):
    scores = offline_metrics.score(truth, truth)
    assert scores.overall == 1.0
    assert all(t.final == 1.0 for t in scores.tools.values())


@settings(max_examples=80, deadline=None)
@given(pairs)
def test_scores_stay_in_unit_interval_and_match_the_row_loop(rows):
    truth = [t for t, _ in rows]
    pred = [p for _, p in rows]
    scores = offline_metrics.score(pred, truth)
    reference = reference_scores(pred, truth)
    for tool, s in scores.tools.items():
        for name in ("precision", "recall", "selection", "quality", "final"):
            value = getattr(s, name)
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(reference[tool][name], abs=1e-12)
    assert 0.0 <= scores.overall <= 1.0
    assert scores.overall == pytest.approx(reference["overall"]["final"], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(pairs, st.randoms(use_true_random=False))
def test_row_order_does_not_matter(rows, random):
    shuffled = list(rows)
    random.shuffle(shuffled)
    before = offline_metrics.score([p for _, p in rows], [t for t, _ in rows])
    after = offline_metrics.score([p for _, p in shuffled], [t for t, _ in shuffled])
    assert after.overall == pytest.approx(before.overall, abs=1e-12)
    for tool in before.tools:
        assert after.tools[tool].final == pytest.approx(before.tools[tool].final, abs=1e-12)
    assert after.parse_failure_rate == before.parse_failure_rate


# --- files matched by intent ------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def record(intent: str, calls: int, cfg: ToolConfig) -> dict:
    return {"intent": intent, "calls": calls, **cfg.to_record()}


def test_files_are_matched_by_normalized_intent(tmp_path):
    truth = write_jsonl(
        tmp_path / "truth.jsonl",
        [record(f"intent {i}", i + 1, TRUTH[i]) for i in range(4)],
    )
    preds = [record(f"  INTENT {i} ", 1, PRED[i]) for i in reversed(range(4))]
    matched = match_files(write_jsonl(tmp_path / "pred.jsonl", preds), truth)
    assert matched.calls == [1, 2, 3, 4]
    assert offline_metrics.score(
        matched.predictions, [r.teacher for r in matched.truth]
    ) == offline_metrics.score(PRED, TRUTH)


def test_broken_prediction_rows_count_as_parse_failures(tmp_path):
    truth = write_jsonl(
        tmp_path / "truth.jsonl", [record(f"intent {i}", 1, TRUTH[i]) for i in range(4)]
    )
    bad_filter = record("intent 1", 1, PRED[1])
    bad_filter["filter"] = {"name": "no-such-preset", "intensity": 50}
    rows = [
        record("intent 0", 1, PRED[0]),
        bad_filter,
        "{not json",
        record("intent 0", 1, PRED[3]),  # duplicate: the first one counts
        record("somewhere else", 1, PRED[0]),  # not in the truth
    ]
    matched = match_files(write_jsonl(tmp_path / "pred.jsonl", rows), truth)
    assert matched.parse_failures == [False, True, True, True]
    assert matched.predictions[1] == ToolConfig(adjust=PRED[1].adjust)  # filter dropped
    assert matched.predictions[2] is None and matched.predictions[3] is None
    assert matched.summary() == {
        "rows": 4,
        "missing_predictions": 2,
        "unreadable_lines": 1,
        "unmatched_predictions": 1,
        "duplicate_predictions": 1,
        "repaired_rows": 0,
        "repair_rate": 0.0,
    }


def test_parse_prediction_clamps_and_counts_repairs():
    parsed = parse_prediction({"adjust": {"exposure": 500}, "filter": {"name": "vivid"}})
    assert parsed.failed_tools == ()
    assert parsed.config.adjust.as_dict()["exposure"] == 100
    assert parsed.config.filter == Filter("vivid", 0)
    assert len(parsed.repairs) == 1 and "clamped exposure" in parsed.repairs[0]


def test_parse_prediction_refuses_an_unknown_filter_but_keeps_the_valid_tools():
    parsed = parse_prediction({"adjust": {"exposure": 20}, "filter": {"name": "sepia_magic"}})
    assert parsed.failed_tools == ("filter",)
    assert parsed.config.filter is None and parsed.config.adjust.as_dict()["exposure"] == 20


def test_bad_truth_file_is_an_error_naming_the_line(tmp_path):
    truth = write_jsonl(tmp_path / "truth.jsonl", [record("a", 1, TRUTH[0]), {"intent": ""}])
    with pytest.raises(DatasetError, match="truth.jsonl:2"):
        match_files(truth, truth)
    dup = write_jsonl(tmp_path / "dup.jsonl", [record("a", 1, TRUTH[0]), record("A ", 1, TRUTH[1])])
    with pytest.raises(DatasetError, match="duplicate intent"):
        match_files(dup, dup)
    with pytest.raises(DatasetError, match="no such file"):
        match_files(dup, tmp_path / "missing.jsonl")
