"""The sufficient statistics on Apache Spark, over the Parquet files of `analysis.export`.

`SparkSource` registers the files the export manifest lists as the views ``events`` and
``assignments`` and runs the statements of `analysis.sufficient_stats` compiled to Spark SQL:
the same definition PostgreSQL runs. `spark_session` starts (or reuses) a session on a master
URL (``local[2]``, ``spark://host:7077``, ...) with the UTC session time zone the day
arithmetic needs; a missing pyspark or Java runtime is a `SparkUnavailable` with one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from analysis import export, sufficient_stats
from analysis.queries import ArmGuardrails, ProjectCounts

SPARK_TYPES = {
    "int64": "BIGINT",
    "int32": "INT",
    "string": "STRING",
    "json": "STRING",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP",
}
PARTITION_TYPES = {"experiment_id": "INT", "day": "DATE"}


class SparkUnavailable(RuntimeError):
    """Spark cannot run here (no pyspark, no Java, or the JVM did not start)."""


def java_command() -> str | None:
    """The java executable Spark would use: $JAVA_HOME/bin/java, else java on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home, "bin", "java")
        return str(candidate) if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def spark_session(
    master: str = "local[2]", app_name: str = "abtest", shuffle_partitions: int = 8
) -> Any:
    """A SparkSession on `master` (reused when one is running), session time zone UTC."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable(
            "spark: pyspark is not installed (pip install 'abtest[warehouse]')"
        ) from exc
    if java_command() is None:
        raise SparkUnavailable(
            "spark: no Java runtime found (install Java 17+ or set JAVA_HOME); "
            "use --engine rollup instead"
        )
    try:
        session = (
            SparkSession.builder.master(master)
            .appName(app_name)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
            .getOrCreate()
        )
    except Exception as exc:  # py4j/JVM start-up failures have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SparkUnavailable(f"spark: could not start on {master!r}: {first}") from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


def schema_ddl(source: export.Source) -> str:
    partitions = export.PARTITION_COLUMNS[source.name]
    data = [f"`{n}` {SPARK_TYPES[k]}" for n, _, k in source.columns if n not in partitions]
    parts = [f"`{n}` {PARTITION_TYPES[n]}" for n in partitions]
    return ", ".join(data + parts)


def register_views(session: Any, folder: Path) -> dict[str, int]:
    """Temp views ``events`` and ``assignments`` over the files the manifest lists; returns
    the number of files per view."""
    folder = Path(folder)
    counts = {}
    for source in export.SOURCES:
        files = [str(p) for p in export.manifest_files(folder, source.name)]
        ddl = schema_ddl(source)
        if files:
            frame = (
                session.read.schema(ddl)
                .option("basePath", str(folder / source.name))
                .parquet(*files)
            )
        else:
            frame = session.createDataFrame([], ddl)
        frame.createOrReplaceTempView(source.name)
        counts[source.name] = len(files)
    return counts


class SparkSource:
    """Sufficient statistics computed by Spark over an export folder."""

    def __init__(self, session: Any, folder: Path) -> None:
        if not (Path(folder) / export.MANIFEST).exists():
            raise export.ExportError(f"{folder}: no export here (run `abtest events export`)")
        self.session = session
        self.files = register_views(session, Path(folder))

    def run(self, statement: sa.Executable, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        text, args = sufficient_stats.compile_for_spark(statement, params)
        return [tuple(row) for row in self.session.sql(text, args=args).collect()]

    def project_counts(
        self, scope: sufficient_stats.Scope, attributes: tuple[str, ...], popularity: bool
    ) -> ProjectCounts:
        return sufficient_stats.project_counts(self.run, scope, attributes, popularity)

    def guardrail_stats(self, scope: sufficient_stats.Scope) -> list[ArmGuardrails]:
        return sufficient_stats.guardrail_stats(self.run, scope)
