"""The serving process keeps the report rollup fresh, so results reads stay on the rollup
without writing: the refresher merges new events, skips drafts, survives a failing experiment
and a failing round, and several refreshers at once count each event once."""

import asyncio
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from abtest import db, rollup_refresher
from abtest.api import create_app
from abtest.rollup_refresher import refresh_experiments
from analysis import rollup
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate


@pytest.fixture
def seeded(engine):
    seeded = create_experiment(engine)
    truth = simulate(engine, seeded, {"control": 0.8, "treatment": 0.7}, 30, 2, seed=3)
    create_experiment(engine, key="draft", start=False)
    return seeded, truth


def _fresh(engine, experiment_id: int) -> bool:
    with engine.connect() as connection:
        return rollup.is_fresh(connection, experiment_id)


def _rollup_starts(engine, experiment_id: int) -> int:
    with engine.connect() as connection:
        return int(
            connection.scalar(
                sa.text("SELECT coalesce(sum(projects), 0) FROM outcome_counts "
                        "WHERE experiment_id = :e"), {"e": experiment_id},
            )
        )  # fmt: skip


def test_refresh_merges_new_events_of_running_experiments_only(engine, seeded):
    seeded_experiment, truth = seeded
    done = refresh_experiments(engine)
    assert done.refreshed == ["exp"] and done.failed == {}  # the draft is left alone
    assert _fresh(engine, seeded_experiment.experiment_id)
    starts = sum(s for _, s in truth.values())
    assert _rollup_starts(engine, seeded_experiment.experiment_id) == starts
    at = DAY0 + timedelta(hours=5)
    insert(engine, [event(seeded_experiment, "start", "new-1", "control", at)],
           [assignment(seeded_experiment, "new-1", "control", at)])  # fmt: skip
    assert not _fresh(engine, seeded_experiment.experiment_id)
    refresh_experiments(engine)
    assert _fresh(engine, seeded_experiment.experiment_id)
    assert _rollup_starts(engine, seeded_experiment.experiment_id) == starts + 1


def test_one_failing_experiment_does_not_stop_the_others(engine, seeded, monkeypatch):
    seeded_experiment, _ = seeded
    other = create_experiment(engine, key="other")
    real = rollup.refresh

    def failing(connection, experiment_id, **kwargs):
        if experiment_id == seeded_experiment.experiment_id:
            raise RuntimeError("boom")
        return real(connection, experiment_id, **kwargs)

    monkeypatch.setattr(rollup, "refresh", failing)
    done = refresh_experiments(engine)
    assert done.refreshed == ["other"] and "boom" in done.failed["exp"]
    assert _fresh(engine, other.experiment_id)


def test_concurrent_refreshers_count_each_event_once(engine, seeded):
    seeded_experiment, truth = seeded
    errors: list[BaseException] = []

    def run() -> None:
        try:
            refresh_experiments(engine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    starts = sum(s for _, s in truth.values())
    assert _rollup_starts(engine, seeded_experiment.experiment_id) == starts


def test_a_failing_round_is_retried_next_round(engine, monkeypatch):
    calls: list[int] = []

    def flaky(engine_arg):
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("database is down"))
        raise asyncio.CancelledError

    monkeypatch.setattr(rollup_refresher, "refresh_experiments", flaky)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(rollup_refresher.refresh_forever(engine, 0.01))
    assert len(calls) == 2  # the down database did not end the loop


def test_the_server_keeps_the_rollup_fresh(settings, seeded):
    seeded_experiment, _ = seeded
    engine = db.get_engine(settings.database_url)
    fast = settings.model_copy(update={"rollup_refresh_s": 0.2})
    with TestClient(create_app(fast)):
        deadline = time.monotonic() + 20
        while not _fresh(engine, seeded_experiment.experiment_id):
            assert time.monotonic() < deadline, "the server never refreshed the rollup"
            time.sleep(0.1)
    off = settings.model_copy(update={"rollup_refresh_s": 0})
    insert(engine, [event(seeded_experiment, "start", "new-2", "control", DAY0)],
           [assignment(seeded_experiment, "new-2", "control", DAY0)])  # fmt: skip
    with TestClient(create_app(off)):
        time.sleep(0.5)
    assert not _fresh(engine, seeded_experiment.experiment_id)  # 0 turns it off
