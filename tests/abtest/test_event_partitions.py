"""PostgreSQL events partitioned by month (migration 0009): every row survives the migration,
an event id is stored once whichever route, batch, process or month it comes through, months
are created ahead, and retention drops only what is exported and rolled up."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from abtest import db, partitions, warehouse
from abtest.cli import app
from abtest.runtime import TABLES
from analysis import rollup
from routing.eventlog import PostgresEventStore, SqlEventStore, open_event_store
from routing.eventlog.postgres import batch_statement
from routing.eventlog.schema import EventRecord, rows_json
from tests.online_data import assignment, create_experiment, event, insert

OLD = datetime(2025, 1, 10, tzinfo=UTC)


@pytest.fixture
def pg(postgres_url):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def rows(n: int, received_at: datetime | None = None, prefix: str = "") -> list[dict]:
    at = received_at or datetime.now(UTC)
    return [
        EventRecord(
            client_event_id=f"{prefix}{i}", type="export", project_id=f"p{i}", received_at=at
        ).to_row()
        for i in range(n)
    ]


def stored(engine, where: str = "true") -> list[tuple]:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(f"SELECT client_event_id, tableoid::regclass::text FROM events WHERE {where}")
        ).all()


def key_count(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM event_keys")).scalar_one()


# --- the migration ------------------------------------------------------------------------------


def test_upgrade_keeps_every_row_and_id_and_downgrade_restores_the_plain_table(postgres_url):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine, "0007_decisions")
    seeded = create_experiment(engine)
    old = [event(seeded, "start", f"p{i}", "control", OLD + timedelta(days=i)) for i in range(3)]
    now = [event(seeded, "export", f"p{i}", None, datetime.now(UTC)) for i in range(2)]
    insert(engine, old + now)
    query = sa.text("SELECT id, client_event_id, received_at, arm_id FROM events ORDER BY id")
    with engine.connect() as connection:
        before = connection.execute(query).all()
    db.upgrade(engine)
    with engine.connect() as connection:
        assert connection.execute(query).all() == before
        assert connection.execute(sa.text("SELECT count(*) FROM event_keys")).scalar() == 5
        assert "events_2025_01" in partitions.month_partitions(connection).values()
        kind = "SELECT relkind FROM pg_class WHERE relname = 'events'"
        assert connection.execute(sa.text(kind)).scalar() == "p"
        views = connection.execute(sa.text("SELECT count(*) FROM abtest_arm_daily")).scalar()
    assert views >= 1  # the BI views read the new table
    store = open_event_store(engine, TABLES, None)
    store.write_events(rows(1, prefix="after-"))
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT max(id) FROM events")).scalar() > before[-1].id
    db.downgrade(engine, "0007_decisions")
    with engine.connect() as connection:
        assert connection.execute(query).all()[:5] == before
        assert connection.execute(sa.text(kind)).scalar() == "r"
        assert not sa.inspect(connection).has_table("event_keys")
    with pytest.raises(sa.exc.IntegrityError):  # the unique constraint is back
        insert(engine, [{**event(seeded, "export", "x", None, OLD), "client_event_id": "after-0"}])
    engine.dispose()


# --- one event per id, attacked ---------------------------------------------------------------


def _store(pg, route: str, copy_from: int) -> SqlEventStore:
    """The store behind one PostgreSQL write route: the jsonb batch, COPY from `copy_from`
    rows, or the portable SQLAlchemy store."""
    if route == "portable":
        return SqlEventStore(pg, TABLES, None)
    store = PostgresEventStore(pg, TABLES, None)
    if route == "copy":
        store.copy_threshold = copy_from
    return store


@pytest.mark.parametrize("route", ["jsonb", "copy", "portable"])
def test_an_id_is_stored_once_in_a_batch_across_batches_and_across_months(pg, route):
    store = _store(pg, route, copy_from=3)
    november = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    december = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    first = rows(4, november)
    twice_in_one = first + [{**first[0], "project_id": "second copy"}]
    assert store.write_events(twice_in_one).new_ids == {"0", "1", "2", "3"}
    retry = rows(4, december) + rows(2, december, prefix="new")  # the next month
    assert store.write_events(retry).new_ids == {"new0", "new1"}
    found = stored(pg)
    assert sorted(i for i, _ in found) == ["0", "1", "2", "3", "new0", "new1"]
    assert ("0", "events_default") in found  # November 2026 has no partition: the default took it
    assert {p for i, p in found if i.startswith("new")} == {"events_2026_12"}
    assert key_count(pg) == 6
    assert stored(pg, "project_id = 'second copy'") == []  # the first of a repeated id wins


def test_the_group_commit_statement_stores_an_id_once(pg):
    raw = pg.raw_connection()
    try:
        cursor = raw.cursor()
        batch = rows(3) + rows(1)  # id "0" twice in one batch
        statement = batch_statement("assignments", "events")
        for _ in range(2):  # and the batch again
            cursor.execute(statement, {"a": "[]", "r": rows_json(batch)})
        raw.commit()
    finally:
        raw.close()
    assert sorted(i for i, _ in stored(pg)) == ["0", "1", "2"]
    assert key_count(pg) == 3


def test_a_spool_replayed_twice_stores_each_id_once(pg, tmp_path):
    from routing.eventlog import EventSpool

    spool = EventSpool(tmp_path)
    store = PostgresEventStore(pg, TABLES, spool)
    store.write_events(rows(2))  # "0" and "1" stored before the outage
    spool.append("event", rows(3) + rows(3, datetime(2027, 1, 2, tzinfo=UTC)))
    spool.append("event", rows(3))  # the same again: a client retry during the outage
    assert store.replay() == 9
    assert store.replay() == 0
    assert sorted(i for i, _ in stored(pg)) == ["0", "1", "2"]
    assert key_count(pg) == 3


def _write_in_process(url: str, start: int) -> int:
    engine = db.make_engine(url)
    store = open_event_store(engine, TABLES, None)
    ids = [f"shared-{(start + i) % 300}" for i in range(300)]
    new = 0
    for chunk in range(0, 300, 50):
        batch = [
            EventRecord(client_event_id=cid, type="export", project_id=cid).to_row()
            for cid in ids[chunk : chunk + 50]
        ]
        new += len(store.write_events(batch).new_ids)
    engine.dispose()
    return new


def test_two_processes_writing_the_same_ids_store_each_once(pg, postgres_url):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        news = pool.starmap(_write_in_process, [(postgres_url, 0), (postgres_url, 150)])
    assert sum(news) == 300  # every id acknowledged as new exactly once
    with pg.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM events")).scalar() == 300
        distinct = "SELECT count(DISTINCT client_event_id) FROM events"
        assert connection.execute(sa.text(distinct)).scalar() == 300
    assert key_count(pg) == 300


# --- months ahead -----------------------------------------------------------------------------


def test_ensure_creates_months_ahead_and_moves_rows_out_of_the_default(pg):
    later = datetime(2027, 9, 15, tzinfo=UTC)
    PostgresEventStore(pg, TABLES, None).write_events(rows(3, later))
    assert {p for _, p in stored(pg)} == {"events_default"}
    with pg.connect() as connection:
        ids = connection.execute(sa.text("SELECT id FROM events ORDER BY id")).scalars().all()
    created = partitions.ensure_partitions(pg, months_ahead=10)
    assert "events_2027_09" in created
    assert {p for _, p in stored(pg)} == {"events_2027_09"}
    with pg.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT id FROM events ORDER BY id")).scalars().all() == ids
        )
    assert partitions.ensure_partitions(pg, months_ahead=10) == []  # idempotent


def test_partitions_are_postgresql_only(sqlite_url, monkeypatch):
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    assert partitions.ensure_partitions(engine) == []
    monkeypatch.setenv("ABTEST_DATABASE_URL", sqlite_url)
    for command in (["events", "partitions"], ["events", "retention", "--dry-run"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1
        assert "event partitions need PostgreSQL" in result.output
        assert len(result.output.strip().splitlines()) == 1


# --- retention --------------------------------------------------------------------------------


def _old_month_with_a_rollup(pg):
    seeded = create_experiment(pg)
    with pg.begin() as connection:
        partitions.lock_events(connection)
        partitions.create_month(connection, date(2025, 1, 1))
    store = open_event_store(pg, TABLES, None)
    arms = {f"p{i}": "control" if i % 2 else "treatment" for i in range(6)}
    old = [event(seeded, "start", project, arm, OLD) for project, arm in arms.items()]
    old += [event(seeded, "export", f"p{i}", None, OLD + timedelta(hours=1)) for i in range(3)]
    insert(pg, [], [assignment(seeded, project, arm, OLD) for project, arm in arms.items()])
    store.write_events(old)
    with pg.begin() as connection:  # enough later ids that the old month is past the rescan
        connection.execute(sa.text(f"SELECT setval('events_id_seq', {rollup.RESCAN_IDS + 1000})"))
    store.write_events([event(seeded, "start", "now", "control", datetime.now(UTC))])
    return seeded


def _counts(pg, seeded):
    with pg.connect() as connection:
        got = rollup.project_counts(connection, seeded.experiment_id, None, ("platform",))
        return got.daily, got.segments, rollup.is_fresh(connection, seeded.experiment_id)


def _by_name(states):
    return {state.name: state for state in states}


def test_retention_drops_only_exported_rolled_up_old_months(pg, tmp_path):
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    # not exported, not rolled up: kept, and said why
    kept = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert not kept.droppable and not kept.exported and "not in the export" in kept.why
    warehouse.export_events(pg, folder)
    kept = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert kept.exported and not kept.droppable and "rollup has not merged it" in kept.why
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    before = _counts(pg, seeded)
    assert before[2]  # fresh
    no_retention = _by_name(partitions.apply_retention(pg, folder, None))
    assert "no retention" in no_retention["events_2025_01"].why
    planned = _by_name(partitions.apply_retention(pg, folder, 1, dry_run=True))
    assert (
        planned["events_2025_01"].droppable and len(stored(pg, "received_at < '2025-02-01'")) == 9
    )
    this_month = f"events_{datetime.now(UTC):%Y_%m}"
    assert not planned[this_month].droppable and "within the retention" in planned[this_month].why
    assert not planned["events_default"].droppable
    keys = key_count(pg)
    done = _by_name(partitions.apply_retention(pg, folder, 1))
    assert done["events_2025_01"].why == "dropped 9 row(s)"
    assert stored(pg, "received_at < '2025-02-01'") == []
    assert key_count(pg) == keys - 9  # the keys went with their partition
    assert _counts(pg, seeded) == before  # reports from the rollup are unchanged, still fresh


def test_a_row_that_is_not_exported_keeps_its_month(pg, tmp_path):
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    # an old row arrives after the export (a spool replayed late): its month is not exported
    late = event(seeded, "export", "p1", None, OLD + timedelta(days=2))
    open_event_store(pg, TABLES, None).write_events([late])
    state = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert not state.droppable and "1 row(s) not in the export" in state.why
    assert len(stored(pg, "received_at < '2025-02-01'")) == 10


def test_a_row_arriving_between_the_check_and_the_drop_keeps_the_month(pg, tmp_path):
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    planned = _by_name(partitions.apply_retention(pg, folder, 1, dry_run=True))["events_2025_01"]
    assert planned.droppable
    late = event(seeded, "export", "p2", None, OLD + timedelta(days=3))
    open_event_store(pg, TABLES, None).write_events([late])
    kept = partitions._drop(pg, planned, folder, partitions._cutoff(1, None))
    assert not kept.droppable and "not in the export" in kept.why
    assert len(stored(pg, "received_at < '2025-02-01'")) == 10


def test_the_scheduler_creates_months_exports_reports_and_drops(pg, tmp_path, monkeypatch):
    seeded = _old_month_with_a_rollup(pg)
    ahead = f"events_{partitions.add_months(partitions.month_of(datetime.now(UTC)), 2):%Y_%m}"
    with pg.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {ahead}"))  # (empty) not made ahead yet
        rollup.refresh(connection, seeded.experiment_id)
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_WAREHOUSE_DIR", str(tmp_path / "warehouse"))
    monkeypatch.setenv("ABTEST_EVENTS_RETENTION_MONTHS", "1")
    result = CliRunner().invoke(app, ["scheduler", "--once"])
    assert result.exit_code == 0, result.output
    assert f"created event partitions {ahead}" in result.output
    assert "retention: events_2025_01 dropped 9 row(s)" in result.output
    assert stored(pg, "received_at < '2025-02-01'") == []
    assert (tmp_path / "warehouse" / "manifest.json").exists()


def test_an_unreadable_manifest_keeps_every_month_and_says_why(pg, tmp_path):
    seeded = _old_month_with_a_rollup(pg)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    folder = tmp_path / "warehouse"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    state = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert not state.droppable and not state.exported
    assert "not a readable export manifest" in state.why
    assert len(stored(pg, "received_at < '2025-02-01'")) == 9


def test_event_upkeep_failures_are_warnings_not_fatal(pg, tmp_path, monkeypatch, capsys):
    from abtest.cli import serving_cmds
    from abtest.settings import load_settings

    _old_month_with_a_rollup(pg)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_WAREHOUSE_DIR", str(blocker))
    monkeypatch.setenv("ABTEST_EVENTS_RETENTION_MONTHS", "1")
    result = CliRunner().invoke(app, ["scheduler", "--once"])
    assert result.exit_code == 0, result.output
    assert "warning: events export" in result.output
    assert len(stored(pg, "received_at < '2025-02-01'")) == 9  # nothing exported: kept
    down = load_settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    capsys.readouterr()
    serving_cmds._ensure_partitions(down)  # an unreachable database: a warning, no exception
    assert "event partitions not checked" in capsys.readouterr().err


def test_cli_lists_partitions_and_applies_retention(pg, tmp_path, monkeypatch):
    _old_month_with_a_rollup(pg)
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_WAREHOUSE_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("ABTEST_EVENTS_RETENTION_MONTHS", "1")
    runner = CliRunner()
    result = runner.invoke(app, ["events", "partitions", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert listed["events_2025_01"]["rows"] == 9 and listed["events_2025_01"]["exported"] is False
    result = runner.invoke(app, ["events", "retention", "--json"])
    assert result.exit_code == 0, result.output
    assert not {p["name"]: p for p in json.loads(result.output)}["events_2025_01"]["droppable"]
    assert len(stored(pg, "received_at < '2025-02-01'")) == 9
    monkeypatch.setenv("ABTEST_EVENTS_RETENTION_MONTHS", "0")
    result = runner.invoke(app, ["events", "partitions"])
    assert result.exit_code != 0 and "EVENTS_RETENTION_MONTHS" in result.output.upper()


@pytest.mark.parametrize("damage", ["deleted", "garbage", "entry"])
def test_a_manifest_whose_files_are_gone_or_damaged_keeps_every_month_and_says_why(
    pg, tmp_path, monkeypatch, damage
):
    """The manifest reads, but a file it lists was deleted or overwritten (or an entry lacks
    its ids): retention keeps the month and says why; `events partitions` and the scheduler's
    retention print one line instead of a traceback."""
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    manifest = json.loads((folder / "manifest.json").read_text())
    entries = manifest["tables"]["events"]["files"]
    if damage == "entry":
        del entries[0]["min_id"]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    for entry in entries:
        if damage == "deleted":
            (folder / entry["path"]).unlink()
        elif damage == "garbage":
            (folder / entry["path"]).write_bytes(b"not parquet")
    state = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert not state.droppable and not state.exported, state
    assert str(folder) in state.why
    assert len(stored(pg, "received_at < '2025-02-01'")) == 9
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_EVENTS_RETENTION_MONTHS", "1")
    listed = CliRunner().invoke(app, ["events", "partitions", "--export-dir", str(folder)])
    assert listed.exit_code == 0, listed.output
    assert "Traceback" not in listed.output


def test_an_id_reused_after_a_restore_is_not_taken_for_the_exported_row(pg, tmp_path):
    """A database restored from a backup, beside the warehouse kept: the sequence hands out ids
    the export already holds, for other events. Retention must not take those rows for the
    exported ones (same id, another row) and drop rows that were never exported."""
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
        ids = connection.execute(sa.text("SELECT id FROM events_2025_01 ORDER BY id")).scalars()
        reused = list(ids)[:2]
        # the restore lost these two rows; two other events of the month got their ids
        connection.execute(
            sa.text("UPDATE events SET received_at = received_at + interval '1 day', "
                    "client_event_id = 'restored-' || id WHERE id = ANY(:ids)"),
            {"ids": reused},
        )  # fmt: skip
    state = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert not state.droppable and "2 row(s) not in the export" in state.why, state
    assert len(stored(pg, "received_at < '2025-02-01'")) == 9


@pytest.mark.parametrize("route", ["jsonb", "copy", "portable"])
def test_a_retry_of_a_dropped_event_is_stored_again_once_as_documented(pg, tmp_path, route):
    """The README: "a retry of an event older than the retention is stored again, as new";
    and a second retry of it is a duplicate again (its key came back with it)."""
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
        old = connection.execute(
            sa.text("SELECT client_event_id FROM events_2025_01 WHERE type = 'export' LIMIT 1")
        ).scalar_one()
    assert _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"].why.startswith(
        "dropped"
    )
    store = _store(pg, route, copy_from=1)
    retry = {
        **event(seeded, "export", "p0", None, OLD + timedelta(hours=1)),
        "client_event_id": old,
    }
    retry["received_at"] = datetime.now(UTC)
    assert store.write_events([retry]).new_ids == {old}
    assert store.write_events([retry]).new_ids == set()
    assert len(stored(pg, f"client_event_id = '{old}'")) == 1


def test_a_retention_longer_than_the_calendar_keeps_every_month_without_a_traceback(
    pg, tmp_path, monkeypatch
):
    """ABTEST_EVENTS_RETENTION_MONTHS=30000 reaches before year 1: `date` raised ValueError
    out of `events partitions`, `events retention` and the scheduler's upkeep."""
    _old_month_with_a_rollup(pg)
    states = _by_name(partitions.apply_retention(pg, tmp_path / "warehouse", 30_000))
    assert not states["events_2025_01"].droppable
    assert "within the retention" in states["events_2025_01"].why
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_EVENTS_RETENTION_MONTHS", "30000")
    for command in (["events", "partitions"], ["events", "retention"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
    assert len(stored(pg, "received_at < '2025-02-01'")) == 9


def test_read_only_results_of_a_stale_rollup_keep_the_dropped_months(pg, tmp_path):
    """After a drop, one new event makes the rollup stale and read-only results (`/results`,
    `/dashboard`) fell back to scanning the events left: the dropped month's starts and exports
    vanished from the report until the next refresh (for ever without one)."""
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)

    def read_only_days():
        with pg.connect() as connection:
            reader = connection.execution_options(**{rollup.READ_ONLY: True})
            return rollup.project_counts(reader, seeded.experiment_id, None, ()).daily

    before = read_only_days()
    assert any(day.day.year == 2025 for day in before)
    done = _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"]
    assert done.why.startswith("dropped")
    late = event(seeded, "start", "new", "control", datetime.now(UTC))
    open_event_store(pg, TABLES, None).write_events([late])
    with pg.connect() as connection:
        assert not rollup.is_fresh(connection, seeded.experiment_id)
    assert read_only_days() == before  # the rollup as of its last refresh, not a partial scan
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    after = read_only_days()
    assert [d for d in after if d.day.year == 2025] == [d for d in before if d.day.year == 2025]


def test_a_drop_records_every_rollup_that_merged_its_id_range(pg, tmp_path):
    """An export logged without experiment counts for the experiment of its project's
    assignment: that experiment's rollup holds the dropped row although no row names it."""
    seeded = _old_month_with_a_rollup(pg)
    other = create_experiment(pg, key="other")
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        for experiment in (seeded, other):
            rollup.refresh(connection, experiment.experiment_id)
    assert _by_name(partitions.apply_retention(pg, folder, 1))["events_2025_01"].droppable
    with pg.connect() as connection:
        recorded = connection.execute(
            sa.text("SELECT experiment_id, partition FROM event_drops ORDER BY 1")
        ).all()
    assert recorded == [
        (seeded.experiment_id, "events_2025_01"),
        (other.experiment_id, "events_2025_01"),
    ]


def test_a_second_retention_finding_the_month_gone_says_so(pg, tmp_path):
    """Two retentions at once (two schedulers, or the CLI beside one): the second one's plan
    names a month the first dropped; it read the missing table and failed with a database
    error."""
    seeded = _old_month_with_a_rollup(pg)
    folder = tmp_path / "warehouse"
    warehouse.export_events(pg, folder)
    with pg.begin() as connection:
        rollup.refresh(connection, seeded.experiment_id)
    planned = _by_name(partitions.apply_retention(pg, folder, 1, dry_run=True))["events_2025_01"]
    assert partitions.apply_retention(pg, folder, 1)  # the first one drops it
    again = partitions._drop(pg, planned, folder, partitions._cutoff(1, None))
    assert again.name == "events_2025_01" and "already dropped" in again.why
