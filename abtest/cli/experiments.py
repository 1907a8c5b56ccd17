"""`abtest experiments ...`: create, start, stop and list experiments."""

from __future__ import annotations

import json

import typer

from abtest import services
from abtest.cli.common import JSON_OPTION, fail, print_json, print_table, session

app = typer.Typer(help="Create, start, stop and list experiments.")


def parse_arm(text: str) -> services.ArmSpec:
    """`name=variant:weight`, with a trailing `*` on the control arm (`control=teacher:0.5*`)."""
    control = text.endswith("*")
    body = text.rstrip("*")
    try:
        name, rest = body.split("=", 1)
        variant, weight = rest.rsplit(":", 1)
        return services.ArmSpec(name.strip(), variant.strip(), float(weight), control)
    except ValueError:
        fail(f"arms: {text!r} is not NAME=VARIANT:WEIGHT (add * to mark the control arm)")


@app.command("create")
def create(
    key: str = typer.Argument(..., help="Unique experiment key."),
    arm: list[str] = typer.Option(
        ..., "--arm", help="NAME=VARIANT:WEIGHT, repeat per arm; end the control arm with '*'."
    ),
    seed: str = typer.Option(None, "--seed", help="Hashing seed (default: the key)."),
    coverage: float = typer.Option(1.0, "--coverage", help="Share of projects that enter."),
    namespace: str = typer.Option(None, "--namespace", help="Mutually exclusive namespace."),
    namespace_range: tuple[float, float] = typer.Option((0.0, 1.0), "--namespace-range"),
    settings: str = typer.Option("{}", "--settings", help="JSON test settings (alpha, margin…)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create an experiment in `draft`."""
    try:
        parsed = json.loads(settings)
    except json.JSONDecodeError as exc:
        fail(f"settings: not valid JSON ({exc.msg})")
    if not isinstance(parsed, dict):
        fail("settings: must be a JSON object")
    spec = services.ExperimentSpec(
        key=key,
        arms=[parse_arm(a) for a in arm],
        seed=seed,
        coverage=coverage,
        namespace=namespace,
        namespace_range=namespace_range,
        settings=parsed,
    )
    with session() as s:
        summary = services.experiment_summary(services.create_experiment(s, spec))
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"created experiment {key} with arms {[a['name'] for a in summary['arms']]}")


@app.command("start")
def start(key: str, as_json: bool = JSON_OPTION) -> None:
    """Start sending traffic (every arm must have passed the offline gate)."""
    with session() as s:
        summary = services.experiment_summary(services.start_experiment(s, key))
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"experiment {key} is running")


@app.command("stop")
def stop(key: str, as_json: bool = JSON_OPTION) -> None:
    """Stop assigning new projects."""
    with session() as s:
        summary = services.experiment_summary(services.stop_experiment(s, key))
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"experiment {key} is stopped")


@app.command("list")
def list_(
    status: str = typer.Option(None, "--status", help="Only experiments with this status."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List experiments."""
    with session() as s:
        rows = [services.experiment_summary(e) for e in services.list_experiments(s, status)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["arms"] = ", ".join(f"{a['name']}={a['variant']}:{a['weight']}" for a in row["arms"])
    print_table("experiments", rows, ["key", "status", "coverage", "arms", "started_at"])


@app.command("show")
def show(key: str, as_json: bool = JSON_OPTION) -> None:
    """Show one experiment with its arms and settings."""
    with session() as s:
        summary = services.experiment_summary(services.get_experiment(s, key))
    if as_json:
        print_json(summary)
    else:
        for name, value in summary.items():
            typer.echo(f"{name}: {value}")


@app.command("conclude")
def conclude(
    key: str,
    ship: str = typer.Option(..., "--ship", help="The arm that won; its variant becomes champion."),
    actor: str = typer.Option("cli", "--actor", help="Who decides (recorded)."),
    override: bool = typer.Option(
        False, "--override", help="Ship although the decision does not support it (recorded)."
    ),
    reason: str = typer.Option(None, "--reason", help="Why (required with --override)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Conclude an experiment and make the shipped arm's variant the champion; refused unless
    the experiment's decision supports the shipped arm (or --override --reason)."""
    from abtest import promotion

    with session() as s:
        experiment = promotion.conclude_experiment(
            s, key, ship, actor, override=override, reason=reason
        )
        summary = services.experiment_summary(experiment)
        champion = next(a.variant.name for a in experiment.arms if a.name == ship)
    if as_json:
        print_json({**summary, "champion": champion})
    else:
        typer.echo(f"experiment {key} is concluded; shipped {ship}: {champion} is the champion")
