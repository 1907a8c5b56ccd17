"""GET /v1/experiments/{key}/results and GET /dashboard issue no writes (every statement the
database receives during them is counted), and still answer what the events say: from the
rollup while it is fresh, from the event scan while it is stale (only the scheduler, `reports run`
and the server's background refresher, `abtest.rollup_refresher`, refresh it)."""

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from abtest import db, report_service
from abtest.api import create_app
from abtest.tables import Event
from analysis import queries, rollup
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate

WRITE = re.compile(r"^\s*(WITH\b.*\b)?(INSERT|UPDATE|DELETE|MERGE|CREATE|DROP|ALTER|TRUNCATE)\b")
AS_OF = {"as_of": "2026-11-05"}  # every export window of the data (Nov 1-3) has closed


@pytest.fixture
def seeded(settings):
    engine = db.get_engine(settings.database_url)
    seeded = create_experiment(engine, settings={"margin": "-3%"})
    truth = simulate(engine, seeded, {"control": 0.85, "treatment": 0.8}, 40, 3, seed=5)
    return engine, seeded, truth


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def statements():
    """Every SQL statement any engine sends while the test runs."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


@pytest.fixture
def scans(monkeypatch):
    """How often the report read the events instead of the rollup."""
    calls: list[int] = []
    original = queries.project_counts

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(queries, "project_counts", counting)
    return calls


def _arms(body):
    return {a["name"]: (a["exports"], a["starts"]) for a in body["arms"]}


def _writes(statements):
    return [s for s in statements if WRITE.match(s.upper().replace("\n", " "))]


def test_results_and_dashboard_issue_no_writes(client, seeded, statements):
    engine, _, truth = seeded
    statements.clear()
    results = client.get("/v1/experiments/exp/results", params=AS_OF)
    dashboard = client.get("/dashboard")
    assert results.status_code == 200, results.text
    assert dashboard.status_code == 200, dashboard.text
    assert any(s.lstrip().upper().startswith("SELECT") for s in statements)  # it did read
    assert _writes(statements) == []
    assert _arms(results.json()) == truth  # right without a rollup
    with engine.connect() as conn:  # and nothing was refreshed behind the counter's back
        assert conn.scalar(sa.text("SELECT count(*) FROM rollup_watermarks")) == 0


def test_a_stale_rollup_is_not_read_and_a_fresh_one_is(client, seeded, statements, scans):
    engine, seeded_experiment, truth = seeded
    with db.session_scope(engine) as session:  # what the scheduler does: refreshes the rollup
        report_service.run_report(session, "exp")
    scans.clear()
    fresh = client.get("/v1/experiments/exp/results", params=AS_OF).json()
    assert _arms(fresh) == truth
    assert scans == []  # answered from the fresh rollup
    # New events after the refresh: the rollup is stale, a GET cannot refresh it, so it scans.
    at = DAY0 + timedelta(days=1, hours=3)
    insert(
        engine,
        [
            event(seeded_experiment, "start", "late-1", "control", at),
            event(seeded_experiment, "export", "late-1", "control", at + timedelta(minutes=5)),
        ],
        [assignment(seeded_experiment, "late-1", "control", at)],
    )
    statements.clear()
    stale = client.get("/v1/experiments/exp/results", params=AS_OF).json()
    exports, starts = truth["control"]
    assert _arms(stale)["control"] == (exports + 1, starts + 1)
    assert scans != []
    assert _writes(statements) == []


def test_a_late_commit_below_the_watermark_makes_the_rollup_stale(seeded):
    """An id allocated before the refresh but committed after it (a gap the refresh saw) is
    below the watermark: the rollup counts as stale, as the next refresh would re-scan it."""
    engine, seeded_experiment, _ = seeded
    experiment_id = seeded_experiment.experiment_id
    with engine.begin() as conn:
        gap = conn.scalar(sa.text("SELECT min(id) FROM events"))
        conn.execute(sa.text("DELETE FROM events WHERE id = :id"), {"id": gap})
        rollup.refresh(conn, experiment_id)
    with engine.connect() as conn:
        assert rollup.is_fresh(conn, experiment_id)
    row = event(seeded_experiment, "export", "p0-0", "control", DAY0 + timedelta(hours=1))
    with engine.begin() as conn:
        conn.execute(sa.insert(Event), [{**row, "id": gap}])
    with engine.connect() as conn:
        assert not rollup.is_fresh(conn, experiment_id)
        assert rollup.is_fresh(conn, experiment_id + 1) is False  # no watermark: stale
