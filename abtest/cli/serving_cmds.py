"""`abtest serve`, `abtest keys ...` and `abtest spool ...`."""

from __future__ import annotations

import os
import secrets
from typing import Any

import typer

from abtest.cli import common

keys_app = typer.Typer(help="API keys (stored hashed; roles app, engineer, analyst).")
spool_app = typer.Typer(help="The local event spool used while the database is down.")


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
    auth: bool | None = typer.Option(
        None,
        "--auth/--no-auth",
        help="Require API keys. Default: on, unless ABTEST_AUTH_ENABLED=false is set.",
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Start the API (routing, events, admin, results) with uvicorn."""
    import uvicorn

    from abtest.api import create_app

    base = common.settings()
    enabled = (
        auth
        if auth is not None
        else (base.auth_enabled if "ABTEST_AUTH_ENABLED" in os.environ else True)
    )
    settings = base.model_copy(update={"auth_enabled": enabled})
    try:
        _check_keys(settings, enabled)
    except Exception as exc:
        from routing.eventlog import is_unavailable

        if not is_unavailable(exc):
            raise
        from abtest import db

        problem = db.connection_problem(settings.database_url, exc)
        if not _remembers_a_database(settings):
            # nothing to serve from: a first start against an unreachable database is a
            # configuration error, not an outage to ride out
            common.fail(problem, 2)
        common.err_console.print(
            f"[yellow]warning:[/] {problem}; starting degraded from what this server last saw "
            "(events are spooled, API keys checked against Redis and the last known keys)",
            soft_wrap=True,
        )
    _ensure_partitions(settings)
    if not enabled:
        common.err_console.print("[yellow]warning:[/] auth is OFF: every endpoint is open")
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
    else:  # each worker builds its own app from the environment
        os.environ["ABTEST_AUTH_ENABLED"] = "true" if enabled else "false"
        # one cookie-signing secret for every worker, so a sign-in holds on any of them
        os.environ.setdefault("ABTEST_SESSION_SECRET", secrets.token_urlsafe(32))
        uvicorn.run(
            "abtest.api:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
        )


def _ensure_partitions(settings: Any) -> None:
    """Create the event month partitions ahead (PostgreSQL). Never fatal: while the database is
    unreachable or busy the default partition takes the rows, and the scheduler retries."""
    from sqlalchemy.exc import DBAPIError

    from abtest import db, partitions

    try:
        created = partitions.ensure_partitions(db.get_engine(settings.database_url))
    except DBAPIError as exc:
        common.err_console.print(
            f"[yellow]warning:[/] event partitions not checked: {exc.orig}", soft_wrap=True
        )
        return
    if created:
        common.err_console.print(f"created event partitions {', '.join(created)}")


def _remembers_a_database(settings: Any) -> bool:
    """Whether an earlier run left experiments or API keys to serve from (spool folder)."""
    from pathlib import Path

    spool = Path(settings.spool_dir)
    return (spool / "experiments.json").exists() or (spool / "roles.json").exists()


def _check_keys(settings: Any, enabled: bool) -> None:
    """Create the bootstrap key if configured; warn when auth is on and no key exists."""
    from abtest import auth as keys
    from abtest import db

    engine = db.get_engine(
        settings.database_url, settings.db_connect_timeout_s, settings.db_statement_timeout_s
    )
    try:
        db.ensure_migrated(engine)
    except db.DatabaseNotMigrated as exc:
        common.fail(str(exc), 2)
    if settings.bootstrap_api_key is not None:
        with db.session_scope(engine) as session:
            if keys.ensure_bootstrap_key(session, settings.bootstrap_api_key.get_secret_value()):
                common.console.print(
                    "created the bootstrap engineer key from ABTEST_BOOTSTRAP_API_KEY"
                )
    if enabled:
        with db.session_scope(engine) as session:
            if not keys.list_keys(session):
                common.err_console.print(
                    "[yellow]warning:[/] auth is on and no API key exists: create one with "
                    "`abtest keys create NAME --role app`"
                )


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="A name for the key (who or what uses it)."),
    role: str = typer.Option(..., "--role", "-r", help="app, engineer or analyst."),
    as_json: bool = common.JSON_OPTION,
) -> None:
    """Create a key; it is printed once (the last line) and only its SHA-256 hash is stored."""
    from abtest import auth

    with common.session() as session:
        row, plaintext = auth.create_key(session, name, role)
        summary = auth.key_summary(row)
    if as_json:
        common.print_json({**summary, "key": plaintext})
        return
    common.console.print(
        f"created {row.role} key {row.name!r}; store it now, it is not shown again:"
    )
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list(as_json: bool = common.JSON_OPTION) -> None:
    """List keys (names, roles, dates; never the keys themselves)."""
    from abtest import auth

    with common.session() as session:
        rows = [auth.key_summary(k) for k in auth.list_keys(session)]
    if as_json:
        common.print_json(rows)
    else:
        common.print_table("API keys", rows, ["name", "role", "created_at", "revoked_at"])


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(..., help="The key's name."), as_json: bool = common.JSON_OPTION
) -> None:
    """Revoke a key (running servers stop accepting it within seconds)."""
    from abtest import auth

    with common.session() as session:
        summary = auth.key_summary(auth.revoke_key(session, name))
    if as_json:
        common.print_json(summary)
    else:
        common.console.print(f"revoked API key {name!r}")


@spool_app.command("replay")
def spool_replay(
    reconcile: bool = typer.Option(
        True, help="Afterwards give orphan exports the arm of their project's assignment."
    ),
    as_json: bool = common.JSON_OPTION,
) -> None:
    """Move events spooled while the database was down into the database (idempotent)."""
    from abtest.runtime import TABLES
    from routing.eventlog import EventSpool, is_unavailable, open_event_store, replay_spool

    settings = common.settings()
    engine = common.engine()
    spool = EventSpool(settings.spool_dir)
    writer = open_event_store(engine, TABLES, spool)
    before, dead_before = spool.depth, spool.dead_letters
    try:
        replayed = replay_spool(writer, spool)
        fixed = writer.reconcile_all() if reconcile else 0
    except Exception as exc:
        if is_unavailable(exc):
            common.fail(f"the database is unreachable; {spool.depth} entries stay spooled")
        raise
    finally:
        spool.close()
    buried = spool.dead_letters - dead_before
    if as_json:
        common.print_json(
            {
                "replayed": replayed - buried,
                "dead_lettered": buried,
                "spooled_before": before,
                "reconciled": fixed,
            }
        )
        return
    common.console.print(
        f"replayed {replayed - buried} of {before} spooled entries into the database; "
        f"reconciled {fixed} orphan events"
    )
    if buried:
        common.err_console.print(
            f"[yellow]warning:[/] the database refused {buried} entries: moved to the dead "
            "letters (`abtest spool dead-letters`)"
        )


@spool_app.command("status")
def spool_status(as_json: bool = common.JSON_OPTION) -> None:
    """How many entries wait in the spool, and how many the database refused (dead letters)."""
    from routing.eventlog import EventSpool

    spool = EventSpool(common.settings().spool_dir)
    status = {"path": str(spool.path), "depth": spool.depth, "dead_letters": spool.dead_letters}
    spool.close()
    if as_json:
        common.print_json(status)
        return
    common.console.print(
        f"{status['depth']} entries in {status['path']}; {status['dead_letters']} dead letters"
    )


@spool_app.command("dead-letters")
def spool_dead_letters(
    limit: int = typer.Option(100, min=1, help="At most this many, oldest first."),
    as_json: bool = common.JSON_OPTION,
) -> None:
    """Spooled entries the database refused at replay, with its error (kept, never lost)."""
    from routing.eventlog import EventSpool

    spool = EventSpool(common.settings().spool_dir)
    letters = spool.dead_letter_entries(limit)
    spool.close()
    if as_json:
        common.print_json(letters)
    else:
        common.print_table("dead letters", letters, ["id", "kind", "failed_at", "error"])


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
    app.add_typer(spool_app, name="spool")
