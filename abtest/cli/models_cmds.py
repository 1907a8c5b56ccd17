"""CLI commands for the LLM arms: `abtest serve-recorded`."""

from __future__ import annotations

import typer

from abtest.cli.common import console


def serve_recorded(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(8100, "--port", min=1, max=65535, help="TCP port."),
    latency_ms: float = typer.Option(
        0.0, "--latency-ms", min=0.0, help="Delay added to every answer, in milliseconds."
    ),
    model: str = typer.Option(
        "recorded-teacher", "--model", help="Model name listed by /v1/models."
    ),
) -> None:
    """Serve the recorded teacher outputs as an OpenAI-compatible API (/v1/chat/completions).

    Teacher prompts get teacher-format answers (TOOL/JSON), student prompts "Parameters:"
    answers, from the bundled dataset (both splits). Point a "teacher" or "openai_student"
    variant at http://HOST:PORT/v1.
    """
    import uvicorn

    from models.recorded_server import create_app

    app = create_app(latency_ms=latency_ms, model=model)
    console.print(
        f"recorded teacher on [bold]http://{host}:{port}/v1[/] (latency {latency_ms:g} ms)",
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("serve-recorded")(serve_recorded)
