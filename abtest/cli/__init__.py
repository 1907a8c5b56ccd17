"""The `abtest` command line (Typer). Commands are thin: parse, call a service, print."""

from __future__ import annotations

import typer

from abtest.cli import (
    analysis_cmds,
    core,
    distill_cmds,
    experiments,
    models_cmds,
    offline_cmds,
    reports_cmds,
    serving_cmds,
    variants,
    warehouse_cmds,
)

app = typer.Typer(
    name="abtest",
    help="A/B experimentation and online evaluation for LLM tool-chaining variants.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
core.register(app)
app.add_typer(variants.app, name="variants")
app.add_typer(experiments.app, name="experiments")
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

__all__ = ["app"]
