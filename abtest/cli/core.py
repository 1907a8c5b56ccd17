"""Top-level commands: `abtest db ...` and `abtest demo`."""

from __future__ import annotations

import typer

from abtest import db
from abtest.cli.common import JSON_OPTION, console, engine, print_json, print_table, settings

db_app = typer.Typer(help="Database migrations.")


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head"), as_json: bool = JSON_OPTION) -> None:
    """Migrate the database to the latest (or the given) revision (creates a SQLite file)."""
    eng = engine(check_migrated=False, create=True)
    db.upgrade(eng, revision)
    _print_revision(db.current_revision(eng), as_json)


@db_app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, or 'base'."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Migrate down to a revision."""
    eng = engine(check_migrated=False)
    db.downgrade(eng, revision)
    _print_revision(db.current_revision(eng), as_json)


def _print_revision(revision: str | None, as_json: bool) -> None:
    if as_json:
        print_json({"current": revision, "head": db.head_revision()})
    else:
        typer.echo(f"database at {revision or 'base'}")


@db_app.command("current")
def current(as_json: bool = JSON_OPTION) -> None:
    """Print the current and latest revision."""
    eng = engine(check_migrated=False)
    revision, head = db.current_revision(eng), db.head_revision()
    if as_json:
        print_json({"current": revision, "head": head, "up_to_date": revision == head})
    else:
        typer.echo(f"current: {revision or 'none'}  head: {head}")


def demo(
    projects: int = typer.Option(
        3000, "--projects", min=28, help="Simulated projects to route (over 14 days)."
    ),
    database: str = typer.Option(
        "abtest-demo.db", "--database", help="SQLite file to create (replaced if it exists)."
    ),
    seed: int = typer.Option(7, "--seed", help="Random seed of the simulation."),
) -> None:
    """Run the end-to-end demo on a fresh SQLite database and print per-arm completion rates."""
    from abtest.demo import run_demo

    settings()  # fail early on bad settings
    run_demo(projects=projects, database=database, seed=seed, console=console)


def doctor(
    as_json: bool = JSON_OPTION,
    timeout_s: float = typer.Option(3.0, "--timeout", help="Seconds per network check."),
) -> None:
    """Check settings, database, migrations, Redis, the teacher endpoint and model files;
    print what is wrong and how to fix it (exit 1 when a check fails)."""
    from abtest.doctor import FAIL, run_checks

    checks = run_checks(timeout_s)
    if as_json:
        print_json([c.as_dict() for c in checks])
    else:
        print_table("abtest doctor", [c.as_dict() for c in checks], ["name", "status", "detail"])
    if any(c.status == FAIL for c in checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command("demo")(demo)
    app.command("doctor")(doctor)
