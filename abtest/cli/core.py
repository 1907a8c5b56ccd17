"""Top-level commands: `abtest db ...` and `abtest demo`."""

from __future__ import annotations

import typer

from abtest import db
from abtest.cli.common import console, engine, settings

db_app = typer.Typer(help="Database migrations.")


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the database to the latest (or the given) revision."""
    eng = engine(check_migrated=False)
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


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command("demo")(demo)
