"""The BI views (migration 0002_bi_views) follow the counting rules of analysis.queries."""

import shutil
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from abtest import db, report_service
from analysis import queries
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate


def view_rows(engine, view, key="exp"):
    with engine.connect() as connection:
        return (
            connection.execute(
                sa.text(f"SELECT * FROM {view} WHERE experiment_key = :key"), {"key": key}
            )
            .mappings()
            .all()
        )


def test_arm_daily_view_equals_the_query(engine):
    seeded = create_experiment(engine)
    simulate(engine, seeded, {"control": 0.7, "treatment": 0.6}, 25, 3)
    other = create_experiment(engine, key="other")
    d1, d2 = DAY0, DAY0 + timedelta(days=1)
    insert(
        engine,
        [
            event(seeded, "export", "late", None, d2, labelled=False),  # unlabelled, out of order
            event(seeded, "start", "late", "treatment", d1),
            event(seeded, "start", "late", "treatment", d1),  # duplicate
            event(other, "start", "o1", "control", d1),
        ],
        [assignment(seeded, "late", "treatment"), assignment(other, "o1", "control")],
    )
    with engine.connect() as connection:
        expected = {
            (r.arm_id, r.day.isoformat(), r.starts, r.exports)
            for r in queries.arm_daily_counts(connection, seeded.experiment_id)
        }
    got = {
        (r["arm_id"], str(r["day"])[:10], int(r["starts"]), int(r["exports"]))
        for r in view_rows(engine, "abtest_arm_daily")
    }
    assert got == expected
    assert {r["arm"] for r in view_rows(engine, "abtest_arm_daily", "other")} == {"control"}


def test_results_view_has_totals_and_the_latest_decision(engine):
    seeded = create_experiment(engine)
    truth = simulate(engine, seeded, {"control": 0.7, "treatment": 0.6}, 25, 2)
    before = {r["arm"]: r for r in view_rows(engine, "abtest_results")}
    assert before["control"]["latest_decision"] is None
    with db.session_scope(engine) as session:
        _, stored = report_service.run_report(session, "exp", (DAY0 + timedelta(days=1)).date())
    rows = {r["arm"]: r for r in view_rows(engine, "abtest_results")}
    for arm, (exports, starts) in truth.items():
        assert (int(rows[arm]["starts"]), int(rows[arm]["exports"])) == (starts, exports)
        assert rows[arm]["completion_rate"] == pytest.approx(exports / starts)
        assert rows[arm]["latest_decision"] == stored.decision


BATCH_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "9999_test_batch"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("events", recreate="always") as batch:
        batch.add_column(sa.Column("extra", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("events", recreate="always") as batch:
        batch.drop_column("extra")
"""


def test_a_later_sqlite_batch_migration_keeps_the_views_working(sqlite_url, tmp_path):
    scripts = tmp_path / "migrations"
    shutil.copytree(db.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_test_batch.py").write_text(
        BATCH_MIGRATION.format(head=db.head_revision())
    )
    engine = db.make_engine(sqlite_url)
    config = db.alembic_config(engine)
    config.set_main_option("script_location", str(scripts))
    command.upgrade(config, "head")  # rebuilds `events` under the views
    with engine.connect() as connection:
        assert "extra" in {c["name"] for c in sa.inspect(connection).get_columns("events")}
        assert connection.execute(sa.text("SELECT COUNT(*) FROM abtest_results")).scalar() == 0
        legacy = connection.exec_driver_sql("PRAGMA legacy_alter_table").scalar()
    assert legacy == 0  # the pragma is switched back off for the application
    command.downgrade(config, "base")
    engine.dispose()
