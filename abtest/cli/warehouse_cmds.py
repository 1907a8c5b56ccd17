"""`abtest events export`: events and assignments out of the database as Parquet;
`abtest events partitions` and `abtest events retention`: the PostgreSQL month partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from abtest.cli.common import (
    JSON_OPTION,
    LazyModule,
    console,
    engine,
    fail,
    print_json,
    print_table,
    settings,
)
from abtest.cli.reports_cmds import parse_day

warehouse: Any = LazyModule("abtest.warehouse")  # pyarrow and the statistics load on use

events_app = typer.Typer(help="The event log outside the database.")


@events_app.command("export")
def export(
    to: Path = typer.Option(..., "--to", help="Folder of the export (created if missing)."),
    since: str = typer.Option(
        None,
        "--since",
        help="Skip events that occurred before this day YYYY-MM-DD (UTC); fixed per folder.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the new events (Parquet, by experiment and day) and assignments to a folder.

    Incremental and idempotent: a manifest records what is exported; a re-run with nothing new
    writes nothing.
    """
    from analysis.export import ExportError

    day = parse_day(since, "since")
    try:
        result = warehouse.export_events(engine(), to, day)
    except ExportError as exc:
        fail(str(exc))
    summary = {
        "folder": str(result.folder),
        "rows": result.rows,
        "files": len(result.files),
        "removed_stray_files": len(result.removed),
    }
    if as_json:
        print_json(summary)
        return
    rows = ", ".join(f"{n} {name}" for name, n in result.rows.items())
    console.print(f"exported {rows} in {len(result.files)} file(s) to {result.folder}")


EXPORT_DIR_OPTION = typer.Option(
    None, "--export-dir", help="Folder of the export whose manifest counts (ABTEST_WAREHOUSE_DIR)."
)
PARTITION_COLUMNS = ["month", "name", "rows", "exported", "droppable", "why"]


def _partition_rows(export_dir: Path | None, dry_run: bool | None) -> list[dict[str, Any]]:
    """Every partition's state; with `dry_run` set, apply the retention (or only plan it)."""
    from abtest import partitions
    from abtest.errors import ServiceError
    from analysis.export import ExportError

    config = settings()
    folder = export_dir or config.warehouse_dir
    months = config.events_retention_months
    try:
        if dry_run is None:
            states = partitions.partitions(engine(), folder, months)
        else:
            states = partitions.apply_retention(engine(), folder, months, dry_run=dry_run)
    except (ServiceError, ExportError) as exc:
        fail(str(exc))
    return [state.as_dict() for state in states]


@events_app.command("partitions")
def list_partitions(export_dir: Path = EXPORT_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The month partitions of the events (PostgreSQL): rows, exported, droppable or why not."""
    rows = _partition_rows(export_dir, None)
    if as_json:
        print_json(rows)
    else:
        print_table("Event partitions", rows, PARTITION_COLUMNS)


@events_app.command("retention")
def retention(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what would be dropped; drop nothing."
    ),
    export_dir: Path = EXPORT_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Drop the month partitions older than ABTEST_EVENTS_RETENTION_MONTHS that are exported and
    rolled up (PostgreSQL); the others are kept and the reason is printed."""
    rows = _partition_rows(export_dir, dry_run)
    if as_json:
        print_json(rows)
        return
    print_table("Event retention" + (" (dry run)" if dry_run else ""), rows, PARTITION_COLUMNS)


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
