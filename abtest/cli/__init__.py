"""The `abtest` command line (Typer). Commands are thin: parse, call a service, print."""

from __future__ import annotations

import typer

from abtest.cli import (
    analysis_cmds,
    core,
    distill_cmds,
    experiments,
    jobs_cmds,
    models_cmds,
    offline_cmds,
    reports_cmds,
    serving_cmds,
    variants,
    warehouse_cmds,
)
from abtest.settings import get_settings

app = typer.Typer(
    name="abtest",
    help="A/B experimentation and online evaluation for LLM tool-chaining variants.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _read_settings_afresh() -> None:
    """Each invocation reads its own environment (an in-process caller may have changed it)."""
    get_settings.cache_clear()


core.register(app)
app.add_typer(variants.app, name="variants")
app.add_typer(experiments.app, name="experiments")
app.add_typer(jobs_cmds.app, name="jobs")
for module in (
    analysis_cmds,
    reports_cmds,
    offline_cmds,
    serving_cmds,
    models_cmds,
    distill_cmds,
    warehouse_cmds,
):
    module.register(app)


def main() -> None:
    """The `abtest` console script: the Typer app, with a database or settings failure that
    escapes a command shown as one line naming the variable (never a traceback)."""
    import sys

    from sqlalchemy.exc import DBAPIError

    from abtest import db
    from abtest.settings import SettingsError, get_settings

    try:
        app(prog_name="abtest")
    except SettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except DBAPIError as exc:
        sys.stderr.write(f"error: {db.connection_problem(get_settings().database_url, exc)}\n")
        sys.exit(2)


__all__ = ["app", "main"]
