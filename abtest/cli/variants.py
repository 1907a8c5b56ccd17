"""`abtest variants ...`: register and list model variants."""

from __future__ import annotations

import json

import typer

from abtest import services
from abtest.cli.common import JSON_OPTION, fail, print_json, print_table, session

app = typer.Typer(help="Register and list model variants (the teacher and students).")


@app.command("register")
def register_variant(
    name: str = typer.Argument(..., help="Unique variant name, e.g. flan-t5-small-v2."),
    kind: str = typer.Option(..., "--kind", help="teacher, openai_student, local_student, ..."),
    config: str = typer.Option("{}", "--config", help="JSON object with the arm's settings."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a new variant. Students start as `registered` and need a passing gate."""
    try:
        parsed = json.loads(config)
    except json.JSONDecodeError as exc:
        fail(f"config: not valid JSON ({exc.msg})")
    with session() as s:
        variant = services.register_variant(s, name, kind, parsed, description, actor="cli")
        summary = services.variant_summary(variant)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"registered variant {summary['name']} ({summary['kind']}, {summary['status']})")


@app.command("list")
def list_variants(as_json: bool = JSON_OPTION) -> None:
    """List variants with their kind and status."""
    with session() as s:
        rows = [services.variant_summary(v) for v in services.list_variants(s)]
    if as_json:
        print_json(rows)
    else:
        print_table("variants", rows, ["name", "kind", "status", "version", "created_at"])


@app.command("show")
def show_variant(name: str, as_json: bool = JSON_OPTION) -> None:
    """Show one variant with its configuration."""
    with session() as s:
        summary = services.variant_summary(services.get_variant(s, name))
    if as_json:
        print_json(summary)
    else:
        for key, value in summary.items():
            typer.echo(f"{key}: {value}")


@app.command("promote")
def promote_variant(
    name: str,
    actor: str = typer.Option("cli", "--actor", help="Who promotes (recorded)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Approve a variant for traffic; refused unless its latest gate run on the current test
    set passed (`abtest gate NAME`)."""
    from abtest import gating

    with session() as s:
        summary = gating.promotion_summary(gating.promote(s, name, actor))
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"variant {name} is approved for traffic ({summary['reason']})")
