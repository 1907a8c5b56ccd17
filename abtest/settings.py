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
    report_cron: str = "0 6 * * *"
    report_engine: Literal["rollup", "sql", "spark"] = Field(
        default="rollup",
        description="Where scheduled reports count: the database's rollup, the engine-neutral "
        "SQL in the database, or Spark over the Parquet export in warehouse_dir.",
    )
    warehouse_dir: Path = Field(
        default=Path("./abtest-warehouse"),
        description="Folder of `abtest events export` (Parquet + manifest) that Spark reads.",
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
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None


def _unknown_variables(environ: dict[str, str]) -> list[str]:
    known = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
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
        raise SettingsError(
            f"unknown setting {unknown[0]} (known: {sorted(Settings.model_fields)})"
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
