"""The demo end to end (small), and its simulated-user model."""

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from abtest import demo
from models.dataset import load_split
from models.tools import ToolConfig


@pytest.fixture(scope="module")
def record():
    return next(r for r in load_split("test") if r.teacher.adjust and r.teacher.filter)


def test_agreement_is_one_for_the_reference_and_lower_otherwise(record):
    assert demo.agreement(record.teacher, record.teacher) == pytest.approx(1.0)
    assert demo.agreement(ToolConfig(), record.teacher) < 0.5
    assert demo.agreement(ToolConfig(), ToolConfig()) == 1.0


def test_export_probability_rises_with_quality_and_falls_with_latency():
    assert demo.export_probability(1.0, 0.1) > demo.export_probability(0.5, 0.1)
    assert demo.export_probability(1.0, 0.1) > demo.export_probability(1.0, 5.0)
    assert 0 < demo.export_probability(0.0, 1000.0) < demo.export_probability(1.0, 0.0) < 1


def test_projects_are_drawn_by_popularity():
    records = load_split("test")
    projects = demo.draw_projects(records, 5000, np.random.default_rng(0))
    popular = max(records, key=lambda r: r.calls)
    share = sum(p.record.intent == popular.intent for p in projects) / len(projects)
    assert share > 2 * popular.calls / sum(r.calls for r in records) * 0.4
    assert len({p.project_id for p in projects}) == 5000


def test_projects_are_spread_evenly_over_the_days():
    days = [demo.day_of(i, 140) for i in range(140)]
    assert days == sorted(days) and set(days) == set(range(demo.DAYS))
    assert all(days.count(d) == 10 for d in range(demo.DAYS))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, monkeypatch):
    import sqlalchemy as sa

    from abtest import db, report_service

    console = Console(record=True, width=120)
    database = tmp_path / "demo.db"
    rows = demo.run_demo(280, str(database), seed=3, console=console)
    assert [r["arm"] for r in rows] == ["control", "student"]
    assert sum(r["starts"] for r in rows) == 280
    assert all(0 < r["exports"] <= r["starts"] for r in rows)
    assert all((r["fallbacks"] or 0) == 0 for r in rows)
    output = console.export_text()
    assert "offline gate" in output and "completion rate" in output
    assert f"export ABTEST_DATABASE_URL=sqlite:///{database}" in output
    assert (tmp_path / "demo.html").read_text().startswith("<!")

    engine = db.make_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        days = connection.execute(
            sa.text("SELECT DISTINCT date(occurred_at) FROM events WHERE type = 'start'")
        ).all()
        late = connection.execute(
            sa.text(
                "SELECT COUNT(*) FROM events s JOIN events x ON x.project_id = s.project_id "
                "WHERE s.type = 'start' AND x.type = 'export' AND x.occurred_at <= s.occurred_at"
            )
        ).scalar()
    assert len(days) == demo.DAYS  # one group of starts per simulated day
    assert late == 0  # every export comes after its start
    with db.session_scope(engine) as session:
        report = report_service.build(session, demo.EXPERIMENT_KEY).model_dump(mode="json")
    engine.dispose()
    timeline = report["timeline"]
    assert len(timeline) == demo.DAYS
    widths = [p["relative"]["student"]["ci_high"] - p["relative"]["student"]["ci_low"]
              for p in timeline]  # fmt: skip
    assert widths[-1] < widths[len(widths) // 2] < widths[1]  # the interval narrows
    assert report["sequential"] and report["comparisons"][0]["sequential"] is not None
    assert "relative difference after each day (always-valid)" in output


def test_the_last_simulated_day_is_one_whose_projects_can_be_counted():
    """Just after midnight UTC today's projects would all be inside their attribution window
    (pending), and the demo's timeline a day short: the simulation ends yesterday then."""
    from datetime import UTC, datetime, timedelta

    def last_day(now: datetime) -> datetime:
        return demo.first_day(now=now) + timedelta(days=demo.DAYS - 1)

    midnight = datetime(2026, 12, 7, tzinfo=UTC)
    assert last_day(midnight + timedelta(minutes=25)) == midnight - timedelta(days=1)
    assert last_day(midnight + timedelta(hours=14)) == midnight
    ready = midnight + demo.LAST_DAY_NEEDS
    assert last_day(ready) == midnight
    assert ready - timedelta(hours=demo.EXPORT_WINDOW_H) > midnight + timedelta(minutes=31)
