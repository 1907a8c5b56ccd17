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
    reference: bool = typer.Option(
        False,
        "--reference",
        help="Confirm that this teacher/recorded variant is THE reference (serves without a "
        "gate; recorded). Students never take it.",
    ),
    actor: str = typer.Option("cli", "--actor", help="Who registers (recorded)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a new variant; the config is checked for its kind (nothing is stored when it is
    wrong). Students start as `registered` and need a passing gate."""
    parsed = _json_object(config)
    with session() as s:
        variant = services.register_variant(
            s, name, kind, parsed, description, actor=actor, reference=reference
        )
        summary = services.variant_summary(variant)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"registered variant {summary['name']} ({summary['kind']}, {summary['status']})")


def _json_object(text: str) -> dict:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"config: not valid JSON ({exc.msg})")
    if not isinstance(parsed, dict):
        fail("config: must be a JSON object")
    return parsed


@app.command("set-config")
def set_config(
    name: str,
    config: str = typer.Option(..., "--config", help="The new JSON config (replaces the old)."),
    actor: str = typer.Option("cli", "--actor", help="Who changes it (recorded)."),
) -> None:
    """Replace a student's config: its version goes up and it needs a new passing gate."""
    with session() as s:
        variant = services.update_variant_config(s, name, _json_object(config), actor)
        summary = services.variant_summary(variant)
    typer.echo(f"variant {name} is now version {summary['version']} ({summary['status']})")


@app.command("archive")
def archive(
    name: str, actor: str = typer.Option("cli", "--actor", help="Who archives (recorded).")
) -> None:
    """Take a variant out of service (refused for the champion or a running experiment's arm)."""
    with session() as s:
        services.archive_variant(s, name, actor)
    typer.echo(f"variant {name} is archived")


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
    from abtest import promotion

    with session() as s:
        summary = promotion.promotion_summary(promotion.promote(s, name, actor))
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"variant {name} is approved for traffic ({summary['reason']})")
