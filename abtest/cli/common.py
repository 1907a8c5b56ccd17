"""Shared CLI plumbing: settings, database access, error display and --json output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from abtest import db
from abtest.errors import ServiceError
from abtest.settings import Settings, SettingsError, get_settings

console = Console(soft_wrap=True)  # long lines are not cut at 80 columns when piped
err_console = Console(stderr=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


class LazyModule:
    """A module imported on first attribute access: `abtest --help` and the database commands
    do not pay for scipy, statsmodels and pandas (seconds per command)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self._name), attribute)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        fail(str(exc), 2)


def engine(check_migrated: bool = True, create: bool = False) -> Engine:
    """The database engine after checking it opens (one-line error otherwise); a missing SQLite
    file is created only when `create` (`abtest db upgrade`)."""
    url = settings().database_url
    try:
        db.check_can_open(url, create=create)
    except db.DatabaseUnavailable as exc:
        fail(str(exc), 2)
    eng = db.get_engine(url)
    if check_migrated:
        try:
            db.ensure_migrated(eng)
        except db.DatabaseNotMigrated as exc:
            fail(str(exc), 2)
    return eng


@contextmanager
def session() -> Iterator[Session]:
    """A committed-on-success session; a `ServiceError` becomes a clear message and exit 1."""
    try:
        with db.session_scope(engine()) as s:
            yield s
    except ServiceError as exc:
        fail(str(exc))


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A table sized to the terminal (cells wrap, names are never cut); when the output is not
    a terminal (piped, redirected), one `column: value` line per field and a blank line between
    rows, so nothing wraps or is truncated."""
    if not console.is_terminal:
        typer.echo(vertical_text(title, rows, columns))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)


def vertical_text(title: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as `column: value` lines (the layout for pipes), values never shortened."""
    width = max((len(c) for c in columns), default=0)
    blocks = ["\n".join(f"{c.ljust(width)}: {row.get(c, '')}" for c in columns) for row in rows]
    return f"# {title} ({len(rows)})\n" + "\n\n".join(blocks)
