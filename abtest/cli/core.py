"""Top-level commands: `abtest db ...` and `abtest demo`."""

from __future__ import annotations

import typer

from abtest import db
from abtest.cli.common import JSON_OPTION, console, engine, print_json, print_table, settings

db_app = typer.Typer(help="Database migrations.")


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the database to the latest (or the given) revision (creates a SQLite file)."""
    eng = engine(check_migrated=False, create=True)
    db.upgrade(eng, revision)
    typer.echo(f"database at {db.current_revision(eng)}")


@db_app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="Target revision, or 'base'.")) -> None:
    """Migrate down to a revision."""
    eng = engine(check_migrated=False)
    db.downgrade(eng, revision)
    typer.echo(f"database at {db.current_revision(eng) or 'base'}")


@db_app.command("current")
def current() -> None:
    """Print the current and latest revision."""
    eng = engine(check_migrated=False)
    typer.echo(f"current: {db.current_revision(eng) or 'none'}  head: {db.head_revision()}")


def demo(
    projects: int = typer.Option(3000, "--projects", min=10, help="Simulated projects to route."),
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
