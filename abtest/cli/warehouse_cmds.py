"""`abtest events export`: events and assignments out of the database as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from abtest.cli.common import JSON_OPTION, LazyModule, console, engine, fail, print_json
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


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
