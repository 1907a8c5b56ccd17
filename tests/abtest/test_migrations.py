"""Models and migrations agree, and the migrations round-trip, on SQLite and PostgreSQL."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from abtest import db
from abtest.tables import Base


def test_autogenerate_finds_no_difference(engine):
    with engine.connect() as connection:
        opts = {
            "compare_type": True,
            "include_object": db.autogenerate_includes(engine.dialect.name),
        }
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_downgrade_upgrade_round_trip(empty_engine):
    db.upgrade(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revision()
    db.downgrade(empty_engine, "base")
    assert db.current_revision(empty_engine) is None
    assert set(sa.inspect(empty_engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(empty_engine)
    tables = set(sa.inspect(empty_engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_unmigrated_database_is_refused_with_instructions(empty_engine):
    with pytest.raises(db.DatabaseNotMigrated, match="run `abtest db upgrade`"):
        db.ensure_migrated(empty_engine)


def test_database_behind_head_is_refused(empty_engine):
    db.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'stale'"))
    with pytest.raises(db.DatabaseNotMigrated, match="revision stale"):
        db.ensure_migrated(empty_engine)


def test_single_head():
    assert db.head_revision()


def test_stored_numeric_margins_keep_their_meaning_in_points(empty_engine):
    """Before 0007 a numeric margin was absolute; the upgrade spells it as points."""
    db.upgrade(empty_engine, "0006_gate_integrity")
    columns = ("key", "seed", "status", "coverage", "namespace_start", "namespace_end")
    experiments = sa.table(
        "experiments",
        *map(sa.column, columns),
        sa.column("settings", sa.JSON()),
        sa.column("description"),
        sa.column("created_at"),
    )
    with empty_engine.begin() as connection:
        for key, settings in (
            ("old", {"margin": -0.01, "alpha": 0.05}),
            ("text", {"margin": "-2%"}),
        ):
            connection.execute(
                experiments.insert().values(
                    key=key,
                    seed=key,
                    status="draft",
                    coverage=1.0,
                    namespace_start=0.0,
                    namespace_end=1.0,
                    settings=settings,
                    description="",
                    created_at=sa.func.now(),
                )
            )
    db.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        stored = dict(
            connection.execute(sa.select(experiments.c.key, experiments.c.settings)).all()
        )
    assert stored["old"] == {"margin": "-1pts", "alpha": 0.05}
    assert stored["text"] == {"margin": "-2%"}
