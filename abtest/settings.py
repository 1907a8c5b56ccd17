"""Settings from the environment (prefix `ABTEST_`), validated once at start."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ABTEST_"
# Variables under these prefixes belong to the test suite and benchmarks, not the app.
_FOREIGN_PREFIXES = ("ABTEST_TEST_", "ABTEST_BENCH_")


class SettingsError(RuntimeError):
    """Raised at start for an unknown or invalid setting; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", populate_by_name=True)

    database_url: str = Field(
        default="sqlite:///./abtest.db",
        description="SQLAlchemy URL; the default is an embedded SQLite file in the working dir.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for sticky assignment and caches; unset: in-process."
    )
    redis_prefix: str = Field(default="abtest:", description="Prefix of every Redis key.")
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ABTEST_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ABTEST_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    teacher_model: str = "gpt-3.5-turbo"
    arm_timeout_s: float = Field(default=10.0, gt=0)
    auth_enabled: bool = False
    bootstrap_api_key: SecretStr | None = Field(
        default=None, description="Created as an engineer key on `abtest serve` if no key exists."
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs dashboard session cookies; unset: random per process "
        "(sign-ins end on restart).",
    )
    spool_dir: Path = Path("./abtest-spool")
    cache_ttl_s: int = Field(default=24 * 3600, gt=0)
    commit_batch_size: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Most requests whose assignments and start events share one commit.",
    )
    commit_in_flight: int = Field(
        default=3, ge=1, le=64, description="Group commits on their way to PostgreSQL at once."
    )
    commit_eager_batch: int = Field(
        default=24,
        ge=0,
        le=10_000,
        description="Waiting requests whose group commit starts at once when a slot is free, "
        "before the event loop has handled the rest of a burst (0: never).",
    )
    model_dir: str | None = Field(
        default=None,
        description="Directories (separated by the OS path separator) that variant model paths "
        "must lie under; relative paths resolve against the first. Default: the bundled "
        "models/data directory.",
    )
    gate_policy_minimum: str = Field(
        default="gate-v2",
        description="The named gate policy (gate-v2, baseline-v2, demo-v2) that every gate run's "
        "policy must be at least as strict as: a looser policy is refused before it runs.",
    )
    arm_base_url_allowlist: str = Field(
        default="127.0.0.1,localhost,::1",
        description="Comma-separated hosts (or http(s) URL prefixes) that a variant's base_url "
        "may point at; '*' allows any.",
    )
    db_connect_timeout_s: int = Field(
        default=2, ge=2, le=60, description="PostgreSQL connect timeout of the server's engines."
    )
    db_statement_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Statement timeout on the serving path (routing, events, auth, readiness); "
        "past it (plus 1 s for a hung server) events are spooled.",
    )
    db_admin_statement_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Statement timeout of the API's other requests (admin, results).",
    )
    request_deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="One deadline for an arm call and its fallback; unset: 1.5 x arm_timeout_s.",
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest request body (413 past it), but batches."
    )
    max_batch_body_bytes: int = Field(
        default=16 << 20, ge=1024, description="Largest body of POST /v1/events:batch."
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without an API key (it names experiments and variants).",
    )
    docs_public: bool | None = Field(
        default=None,
        description="Serve /docs, /redoc and /openapi.json; unset: only while auth is off.",
    )
    report_cron: str = "0 6 * * *"
    rollup_refresh_s: float = Field(
        default=60.0,
        ge=0,
        description="How often `abtest serve` brings running experiments' report rollup up to "
        "date (seconds; 0 turns it off), so results reads stay on the rollup; reads never write.",
    )
    report_engine: Literal["rollup", "sql", "spark"] = Field(
        default="rollup",
        description="Where scheduled reports count: the database's rollup, the engine-neutral "
        "SQL in the database, or Spark over the Parquet export in warehouse_dir.",
    )
    warehouse_dir: Path = Field(
        default=Path("./abtest-warehouse"),
        description="Folder of `abtest events export` (Parquet + manifest) that Spark reads.",
    )
    events_retention_months: int | None = Field(
        default=None,
        ge=1,
        description="PostgreSQL: drop event month partitions older than this many months once "
        "exported to warehouse_dir and rolled up (`abtest events retention`); unset: keep all.",
    )
    spark_master: str = Field(
        default="local[2]", description="Spark master URL (local[N], spark://host:7077, ...)."
    )
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise ValueError(f"not a valid database URL ({exc})") from None
        return value

    @field_validator("gate_policy_minimum")
    @classmethod
    def _named_policy(cls, value: str) -> str:
        from analysis.gate_policy import NAMED_POLICIES  # a light import: no statistics stack

        if value not in NAMED_POLICIES:
            raise ValueError(f"must name a gate policy: {', '.join(sorted(NAMED_POLICIES))}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None


def model_dirs(settings: Settings) -> list[Path]:
    """The allowed model directories, resolved (the first is the base of relative paths)."""
    if not settings.model_dir:
        from models.dataset import bundled_path

        return [bundled_path("train").parent.resolve()]
    return [Path(p).expanduser().resolve() for p in settings.model_dir.split(os.pathsep) if p]


def base_url_allowlist(settings: Settings) -> list[str]:
    return [item.strip() for item in settings.arm_base_url_allowlist.split(",") if item.strip()]


def variable_names() -> list[str]:
    """Every environment variable the settings read, as a user would type it."""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        else:
            names.add(f"{ENV_PREFIX}{name}".upper())
    return sorted(names)


def _unknown_variables(environ: dict[str, str]) -> list[str]:
    known = set(variable_names())
    return sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and not key.startswith(_FOREIGN_PREFIXES)
        and key.upper() not in known
    )


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; raise `SettingsError` naming the variable at fault."""
    unknown = _unknown_variables(dict(os.environ))
    if unknown:
        known = ", ".join(n for n in variable_names() if n.startswith(ENV_PREFIX))
        raise SettingsError(
            f"unknown setting {unknown[0]}: unset it or fix its name (known: {known})"
        )
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = str(first["loc"][0]) if first["loc"] else "?"
        variable = loc if loc.upper().startswith(("ABTEST_", "OPENAI_")) else ENV_PREFIX + loc
        raise SettingsError(f"invalid setting {variable.upper()}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
