"""What the API's handlers and the serving runtime share: the app's state (engines, settings,
per-process extras such as the router) and its Redis client factory.

Both `abtest.api.deps` and `abtest.runtime` import this module and neither imports the other
(tests/test_layering.py checks the import graph has no cycle)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from abtest import db
from abtest.settings import Settings
from routing.eventlog import is_unavailable

log = logging.getLogger(__name__)


def redis_client(url: str) -> Any:
    """An asyncio Redis client with short timeouts (a slow cache must not slow answers)."""
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
    )


@dataclass
class AppState:
    """One app's engines, settings and per-process objects (`extras`: router, role cache)."""

    settings: Settings
    engine: Engine  # admin and results requests
    sessions: sessionmaker[Session]
    extras: dict[str, Any] = field(default_factory=dict)
    serving_engine: Engine | None = None  # routing, events, auth, readiness: tighter bounds

    @classmethod
    def build(cls, settings: Settings, *, check_migrated: bool = True) -> AppState:
        """The app's engines (bounded: a down or hung PostgreSQL fails fast, see
        `db.make_engine`). The migration check needs the database: when it is unreachable
        the app starts anyway, degraded (events are spooled), and says so in the log."""
        url = settings.database_url
        engine = db.get_engine(
            url, settings.db_connect_timeout_s, settings.db_admin_statement_timeout_s
        )
        serving = db.get_engine(url, settings.db_connect_timeout_s, settings.db_statement_timeout_s)
        if check_migrated:
            try:
                db.ensure_migrated(serving)
            except db.DatabaseNotMigrated:
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("database unreachable at start (%s): serving degraded", exc)
        return cls(settings, engine, db.session_factory(engine), serving_engine=serving)

    @property
    def read_engine(self) -> Engine:
        """The admin engine for GET requests: its connections carry `analysis.rollup.READ_ONLY`,
        so a report read there never refreshes the rollup (reads do not write)."""
        cached = self.extras.get("read_engine")
        if cached is None or cached[0] is not self.engine:
            from analysis.rollup import READ_ONLY  # lazily: the CLI imports this module

            cached = (self.engine, self.engine.execution_options(**{READ_ONLY: True}))
            self.extras["read_engine"] = cached
        return cached[1]

    @property
    def fast_engine(self) -> Engine:
        """The serving path's engine."""
        return self.serving_engine or self.engine
