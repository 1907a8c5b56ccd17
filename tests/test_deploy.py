"""deploy/compose.yaml describes a deployment that can start: real images, commands, settings,
health checks and start order (parsed and checked, not run: no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from abtest.settings import Settings

try:  # typer >= 0.16 vendors its own click
    from typer._click.core import Context
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import Context, UsageError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
ABTEST_SERVICES = ("migrate", "api", "scheduler")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def substitute(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults; ${VAR:?message} with a placeholder."""

    def one(match: re.Match) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        return rest if operator == ":-" else f"{name.lower()}-placeholder"

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", one, value)


def resolve(args: list[str]) -> None:
    """Parse an `abtest` command line with the real CLI (without running it)."""
    from abtest.cli import app

    command = typer.main.get_command(app)
    context = Context(command, info_name="abtest")
    rest = list(args)
    while hasattr(command, "get_command"):  # a group
        name, *rest = rest
        command = command.get_command(context, name)
        assert command is not None, f"`abtest {' '.join(args)}`: no command {name!r}"
        context = Context(command, info_name=name, parent=context)
    command.make_context(context.info_name, rest, parent=context.parent)


def test_services_and_images(compose):
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "scheduler", "student"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
    assert services["student"]["profiles"] == ["student"]  # optional
    assert (ROOT / services["api"]["build"]["dockerfile"]).exists()
    dockerfile = (ROOT / services["api"]["build"]["dockerfile"]).read_text()
    assert 'ENTRYPOINT ["abtest"]' in dockerfile and ".[warehouse]" in dockerfile


def test_commands_are_real_cli_commands(compose):
    for name in ABTEST_SERVICES:
        resolve(compose["services"][name]["command"])
    with pytest.raises(UsageError):  # the check itself can fail
        resolve(["serve", "--replicas", "2"])


def test_environment_is_valid_settings(compose, monkeypatch):
    for name in ABTEST_SERVICES:
        environment = {
            k: substitute(str(v)) for k, v in compose["services"][name]["environment"].items()
        }
        unknown = [
            k
            for k in environment
            if k.startswith("ABTEST_")
            and k.removeprefix("ABTEST_").lower() not in Settings.model_fields
        ]
        assert unknown == [], f"{name}: not settings: {unknown}"
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # validates every value (URLs, engine, cron, ...)
        assert settings.database_url.startswith("postgresql://")
        assert settings.redis_url == "redis://redis:6379/0"
        if name == "scheduler":
            assert settings.report_engine == "rollup" and settings.spark_master == "local[2]"
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(settings.report_cron)
        for key in environment:
            monkeypatch.delenv(key)
    postgres = compose["services"]["postgres"]["environment"]
    url = compose["x-abtest"]["environment"]["ABTEST_DATABASE_URL"]
    assert f"//{postgres['POSTGRES_USER']}:" in url and url.endswith(f"/{postgres['POSTGRES_DB']}")


def test_health_checks_and_start_order(compose):
    from abtest.api import health

    services = compose["services"]
    for name in ("postgres", "redis", "api", "student"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    probe = " ".join(services["api"]["healthcheck"]["test"])
    path = re.search(r"127\.0\.0\.1:8000(/\w+)", probe).group(1)
    routes = {route.path for route in health.router.routes}
    assert path in routes and path == "/readyz"
    port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert f":{port}/" in probe
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency]["restart"] == "no"
    assert "migrate" in services["api"]["depends_on"]


def test_student_serves_the_model_name_the_variant_uses(compose):
    student = compose["services"]["student"]
    command = student["command"]
    name = command[command.index("--served-model-name") + 1]
    port = command[command.index("--port") + 1]
    readme = (ROOT / "README.md").read_text()
    assert f'"model": "{name}"' in readme
    assert f"http://student:{port}/v1" in COMPOSE.read_text()
