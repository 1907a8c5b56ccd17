"""`abtest report`, `abtest reports ...` and `abtest scheduler`: significance reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from abtest.cli.common import (
    JSON_OPTION,
    LazyModule,
    console,
    engine,
    err_console,
    fail,
    print_json,
    print_table,
    session,
)
from abtest.cli.common import settings as load_settings
from abtest.errors import ServiceError

if TYPE_CHECKING:
    from apscheduler.schedulers.blocking import BlockingScheduler

report_service: Any = LazyModule("abtest.report_service")
report_render: Any = LazyModule("analysis.report_render")
warehouse_service: Any = LazyModule("abtest.warehouse")

reports_app = typer.Typer(help="Run and list stored significance reports.")

AS_OF_OPTION = typer.Option(
    None, "--as-of", help="Report day YYYY-MM-DD (UTC); events up to the end of that day."
)
ENGINE_OPTION = typer.Option(
    None,
    "--engine",
    help="Where to count: rollup (default; ABTEST_REPORT_ENGINE), sql (the engine-neutral "
    "queries in the database) or spark (the same queries on Spark over the Parquet export).",
)
WAREHOUSE_OPTION = typer.Option(
    None, "--warehouse", help="Export folder Spark reads (default: ABTEST_WAREHOUSE_DIR)."
)


def source_for(engine_name: str | None, warehouse: Path | None) -> warehouse_service.SourceFor:
    """The statistics source of --engine (for spark: export the new events, start Spark)."""
    config = load_settings()
    name = engine_name or config.report_engine
    if name not in warehouse_service.ENGINES:
        fail(f"engine: {name!r} is not one of {', '.join(warehouse_service.ENGINES)}")
    folder = warehouse or config.warehouse_dir
    try:
        return warehouse_service.sources(name, engine(), folder, config.spark_master)
    except Exception as exc:
        from analysis.spark import SparkUnavailable

        if isinstance(exc, SparkUnavailable | ValueError):  # ExportError is a ValueError
            fail(str(exc))
        raise


def parse_day(text: str | None, option: str = "as-of") -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"{option}: {text!r} is not a date (YYYY-MM-DD)")


def report(
    experiment: str = typer.Argument(..., help="Experiment key."),
    fmt: str = typer.Option("md", "--format", "-f", help="md, html or json."),
    out: Path = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
    as_of: str = AS_OF_OPTION,
    engine_name: str = ENGINE_OPTION,
    warehouse: Path = WAREHOUSE_OPTION,
) -> None:
    """Build, store and print the significance report of one experiment."""
    if fmt not in report_service.FORMATS:
        fail(f"format: {fmt!r} is not one of {', '.join(report_service.FORMATS)}")
    if out is not None and not out.parent.is_dir():
        fail(f"out: the folder {str(out.parent)!r} does not exist")
    day = parse_day(as_of)
    source = source_for(engine_name, warehouse)
    with session() as s:
        body, stored = report_service.run_report(s, experiment, day, source=source(s))
    text = report_render.render(body, fmt)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text, encoding="utf-8")
    action = "stored" if stored.created else "updated"
    console.print(
        f"{action} report {experiment} as of {body.as_of}: {stored.decision}; wrote {out}"
    )


@reports_app.command("run")
def run(
    experiments: list[str] = typer.Argument(None, help="Experiment keys (or --all)."),
    all_: bool = typer.Option(False, "--all", help="Every running or stopped experiment."),
    as_of: str = AS_OF_OPTION,
    as_json: bool = JSON_OPTION,
    engine_name: str = ENGINE_OPTION,
    warehouse: Path = WAREHOUSE_OPTION,
) -> None:
    """Store reports (the cron entry point: `abtest reports run --all`)."""
    if bool(experiments) == all_:
        fail("experiments: name experiment keys or pass --all (not both)")
    day = parse_day(as_of)
    source = source_for(engine_name, warehouse)
    if all_:
        stored = run_all_reports(day, source)
    else:
        stored = []
        for key in experiments:
            with session() as s:
                stored.append(report_service.run_report(s, key, day, source=source(s))[1])
    rows = [
        {
            "experiment": r.key,
            "period_end": r.period_end.isoformat(),
            "decision": r.decision,
            "srm": r.srm,
            "stored": "new" if r.created else "updated",
        }
        for r in stored
    ]
    if as_json:
        print_json(rows)
    else:
        print_table("Reports", rows, ["experiment", "period_end", "decision", "srm", "stored"])


def run_all_reports(
    day: date | None = None, source: warehouse_service.SourceFor | None = None
) -> list[report_service.StoredReport]:
    try:
        return report_service.run_all(engine(), day, source_for=source)
    except ServiceError as exc:
        fail(str(exc))


@reports_app.command("list")
def list_reports(
    experiment: str = typer.Argument(..., help="Experiment key."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Stored reports of one experiment, oldest first."""
    with session() as s:
        rows = [r.model_dump(mode="json") for r in report_service.stored_summaries(s, experiment)]
    if as_json:
        print_json(rows)
    else:
        print_table(
            f"Reports of {experiment}", rows, ["period_end", "decision", "srm", "created_at"]
        )


def build_scheduler(cron: str, job: Callable[[], object]) -> BlockingScheduler:
    """A BlockingScheduler that runs `job` on the crontab expression `cron` (UTC)."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(cron, timezone="UTC")
    except ValueError as exc:
        fail(f"ABTEST_REPORT_CRON: {cron!r} is not a crontab expression ({exc})")
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(job, trigger, id="reports", max_instances=1, coalesce=True)
    return scheduler


def maintain_events(stage: str) -> None:
    """The scheduler's event-log upkeep (PostgreSQL; nothing on SQLite): at "start", create the
    month partitions ahead; with ABTEST_EVENTS_RETENTION_MONTHS set, "export" the new events to
    ABTEST_WAREHOUSE_DIR before the reports (which refresh the rollup) and apply the "retention"
    after them. A failure is printed, never fatal: the default partition takes rows meanwhile."""
    from sqlalchemy.exc import DBAPIError

    from abtest import partitions
    from analysis.export import ExportError

    config = load_settings()
    if stage != "start" and config.events_retention_months is None:
        return
    database = engine()
    try:
        if stage == "start":
            created = partitions.ensure_partitions(database)
            if created:
                console.print(f"created event partitions {', '.join(created)}")
        elif stage == "export" and database.dialect.name == "postgresql":
            warehouse_service.export_events(database, config.warehouse_dir)
        elif stage == "retention" and database.dialect.name == "postgresql":
            states = partitions.apply_retention(
                database, config.warehouse_dir, config.events_retention_months
            )
            for state in states:
                if state.why.startswith("dropped"):
                    console.print(f"retention: {state.name} {state.why}")
    except (DBAPIError, ExportError, ServiceError) as exc:
        err_console.print(f"[yellow]warning:[/] events {stage}: {exc}", soft_wrap=True)


def scheduler(
    once: bool = typer.Option(False, "--once", help="Run the reports once now and exit."),
) -> None:
    """Run `abtest reports run --all` on the schedule in ABTEST_REPORT_CRON (UTC), counting
    with ABTEST_REPORT_ENGINE (spark: the new events are exported to ABTEST_WAREHOUSE_DIR first).
    On PostgreSQL each run also creates the event month partitions ahead and, with
    ABTEST_EVENTS_RETENTION_MONTHS set, exports the events and then drops the expired months.
    """
    cron = load_settings().report_cron

    def job() -> None:
        maintain_events("start")
        maintain_events("export")
        stored = run_all_reports(source=source_for(None, None))
        console.print(f"stored {len(stored)} report(s)")
        maintain_events("retention")

    sched = build_scheduler(cron, job)
    if once:
        job()
        return
    maintain_events("start")
    console.print(f"scheduler: reports on {cron!r} (UTC); Ctrl-C stops")
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        sched.shutdown(wait=False)


def register(app: typer.Typer) -> None:
    """Add `report`, `reports` and `scheduler` to the top-level app."""
    app.command("report")(report)
    app.add_typer(reports_app, name="reports")
    app.command("scheduler")(scheduler)
