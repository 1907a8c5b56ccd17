"""Reports assembled from known counts (no database): the golden JSON in `golden/` was written
by the dict-building code before the typed models, so comparing against it proves the models
keep every JSON name and value."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from analysis import queries

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 5, 12, 30, 15, 123456, tzinfo=UTC)
DAY0 = date(2026, 11, 1)
CONTROL, FAST, SLOW = (
    queries.ArmInfo(1, "control", 0.5, True),
    queries.ArmInfo(2, "fast", 0.25, False),
    queries.ArmInfo(3, "slow", 0.25, False),
)


def _info(arms: tuple[queries.ArmInfo, ...], settings: dict[str, Any], **extra: Any) -> Any:
    return queries.ExperimentInfo(
        id=7, key="exp", status="running", settings=settings,
        started_at=datetime(2026, 11, 1, 9, 0), stopped_at=None, arms=arms, **extra,
    )  # fmt: skip


def _days(arm_id: int, per_day: list[tuple[int, int]]) -> list[queries.ArmDay]:
    return [
        queries.ArmDay(arm_id, DAY0 + timedelta(days=i), starts, exports)
        for i, (starts, exports) in enumerate(per_day)
    ]


def three_arms() -> dict[str, Any]:
    """Margin, two treatments, segments, pending, two allocation periods, a previous report."""
    info = _info((CONTROL, FAST, SLOW), {"margin": "-2%", "export_window_h": 24, "mde": 0.05})
    daily = (
        _days(1, [(200, 170), (210, 185), (190, 166)])
        + _days(2, [(100, 88), (105, 95), (98, 90)])
        + _days(3, [(99, 70), (101, 72), (97, 69)])
    )
    guardrails = [
        queries.ArmGuardrails(1, 1200, 1200, 410.0, 980.5, 12, 3, 400, 1.25),
        queries.ArmGuardrails(2, 610, 600, 120.0, 300.0, 4, 1, 10, 0.02),
    ]  # "slow" has no guardrail row: its latencies are None
    segments = {
        "platform": [
            queries.SegmentCounts(1, "web", 400, 340),
            queries.SegmentCounts(2, "web", 200, 180),
            queries.SegmentCounts(3, "web", 190, 130),
            queries.SegmentCounts(1, "ios", 200, 181),
            queries.SegmentCounts(2, "ios", 103, 93),
        ]
    }
    periods = [
        queries.PeriodCounts(
            datetime(2026, 11, 1, tzinfo=UTC), {1: 0.5, 2: 0.25, 3: 0.25},
            {1: (300, 350), 2: (150, 170), 3: (120, 170)},
        ),
        queries.PeriodCounts(
            datetime(2026, 11, 2, 12, tzinfo=UTC), {1: 0.5, 2: 0.25, 3: 0.25},
            {1: (221, 250), 2: (123, 133), 3: (91, 127)},
        ),
    ]  # fmt: skip
    previous = {
        "period_end": "2026-11-03T00:00:00+00:00",
        "as_of": "2026-11-02",
        "srm": {"flagged": True},
        "comparisons": [{"arm": "fast", "decision": "inconclusive"}],
    }
    return {
        "info": info, "daily": daily, "guardrails": guardrails, "segments": segments,
        "period_end": datetime(2026, 11, 4, tzinfo=UTC), "previous": previous, "now": NOW,
        "pending": {2: 3}, "periods": periods,
    }  # fmt: skip


def no_data() -> dict[str, Any]:
    """No projects: no power, an empty timeline, fixed horizon, no margin."""
    info = _info((CONTROL, FAST), {"sequential": False})
    return {
        "info": info, "daily": [], "guardrails": [], "segments": {"country": []},
        "period_end": datetime(2026, 11, 6, tzinfo=UTC), "previous": None, "now": NOW,
        "pending": None, "periods": None,
    }  # fmt: skip


def srm_flagged() -> dict[str, Any]:
    """A sample ratio mismatch new since the previous report; a zero margin; shipped arm."""
    info = _info(
        (CONTROL, queries.ArmInfo(2, "fast", 0.5, False)),
        {"margin": 0, "horizon": 5000, "alpha": 0.1},
        shipped_arm="fast",
    )
    daily = _days(1, [(500, 400), (520, 410)]) + _days(2, [(300, 250), (310, 255)])
    previous = {
        "period_end": "2026-11-02T00:00:00+00:00",
        "srm": {"flagged": False},
        "comparisons": [{"arm": "fast", "decision": "treatment better"}],
    }
    return {
        "info": info, "daily": daily, "guardrails": [], "segments": {},
        "period_end": datetime(2026, 11, 3, tzinfo=UTC), "previous": previous, "now": NOW,
        "pending": {}, "periods": None,
    }  # fmt: skip


SCENARIOS = {"three_arms": three_arms, "no_data": no_data, "srm_flagged": srm_flagged}


def golden_text(filename: str) -> str:
    return (GOLDEN / filename).read_text(encoding="utf-8")
