"""Alembic environment: uses the engine handed over by `abtest.db.alembic_config`."""

from alembic import context
from sqlalchemy import create_engine

from abtest.db import autogenerate_includes
from abtest.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from abtest.db import normalize_url
        from abtest.settings import get_settings

        engine = create_engine(normalize_url(get_settings().database_url))
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            # pysqlite opens a transaction only before DML, so a migration's DDL would commit on
            # its own and a failed upgrade would leave half a revision behind: begin here, so
            # that a whole upgrade rolls back together, as on PostgreSQL.
            connection.exec_driver_sql("BEGIN")
            # Batch migrations rebuild a table and rename it into place; without this, SQLite
            # re-checks every view during the rename and fails while the old table is gone.
            connection.exec_driver_sql("PRAGMA legacy_alter_table=ON")
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            include_object=autogenerate_includes(connection.dialect.name),
        )
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA legacy_alter_table=OFF")


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
