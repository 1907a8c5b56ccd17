"""Warehouse-native analysis: export the events as Parquet, count them on another engine.

`export_events` runs `analysis.export` on the database; `sources` picks where a report's
sufficient statistics come from: ``rollup`` (the incremental rollup in the database, default),
``sql`` (the engine-neutral statements of `analysis.sufficient_stats` in the database) or
``spark`` (the same statements on Spark over the export folder, refreshed first).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from analysis import export
from analysis.report_model import StatsSource
from analysis.sufficient_stats import SqlSource

ENGINES = ("rollup", "sql", "spark")
SourceFor = Callable[[Session], StatsSource | None]


def export_events(engine: Engine, folder: Path, since: date | None = None) -> export.ExportResult:
    """Export the events and assignments not yet in `folder` (reads only)."""
    with engine.connect() as connection:
        return export.export(connection, folder, since)


def sources(name: str, engine: Engine, folder: Path, spark_master: str) -> SourceFor:
    """A function giving the statistics source for a session. For ``spark`` this exports the
    new events to `folder` and starts Spark now (`analysis.spark.SparkUnavailable` if it
    cannot)."""
    if name == "rollup":
        return lambda session: None
    if name == "sql":
        if engine.dialect.name != "postgresql":
            raise ValueError(
                f"engine: sql needs PostgreSQL (this database is {engine.dialect.name})"
            )
        return lambda session: SqlSource(session.connection())
    if name != "spark":
        raise ValueError(f"engine: {name!r} is not one of {', '.join(ENGINES)}")
    from analysis import spark

    session = spark.spark_session(spark_master)  # before the export: fail fast without Java
    export_events(engine, folder)
    source = spark.SparkSource(session, folder)
    return lambda _: source
