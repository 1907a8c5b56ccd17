"""Database engine, sessions and migration state. Alembic scripts live in `migrations/`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker


class DatabaseNotMigrated(RuntimeError):
    """The database is not at the latest migration; the message says how to fix it."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be opened; the message is one line naming ABTEST_DATABASE_URL."""


URL_VARIABLE = "ABTEST_DATABASE_URL"
_HINTS = (
    ("does not exist", "create it (`createdb NAME`) or fix the database name in"),
    ("password authentication", "fix the user or password in"),
    ("no password supplied", "add the password to"),
    ("refused", "start the server or fix the host and port in"),
    ("could not translate host", "fix the host name in"),
    ("timeout", "start the server or fix the host and port in"),
    ("unable to open database file", "create the directory or fix the path in"),
)


def shown_url(url: str) -> str:
    """The URL with its password hidden (or as given when it does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def connection_problem(url: str, exc: BaseException) -> str:
    """One line saying why `url` could not be opened and what to do, naming the variable."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    reason = lines[0] if lines else type(original).__name__
    for line in lines[1:]:
        if "FATAL" in line or "does not exist" in line:
            reason = line.replace("FATAL:", "").strip()
    hint = next((h for needle, h in _HINTS if needle in str(original).lower()), "check")
    return (
        f"cannot open the database {URL_VARIABLE}={shown_url(url)}: {reason}; {hint} {URL_VARIABLE}"
    )


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other backends and in-memory databases)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_can_open(url: str, *, create: bool) -> None:
    """Raise `DatabaseUnavailable` unless `url` can be opened, without creating anything
    unless `create`: a SQLite file must already exist (its directory, when `create`), and a
    server must answer."""
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            demo = Path("abtest-demo.db")
            hint = (
                f" (`abtest demo` wrote {demo}: export {URL_VARIABLE}=sqlite:///{demo.resolve()})"
                if demo.exists() and path.resolve() != demo.resolve()
                else ""
            )
            raise DatabaseUnavailable(
                f"the database file {path} does not exist ({URL_VARIABLE}={url}): "
                f"run `abtest db upgrade` to create it, or point {URL_VARIABLE} at your database"
                + hint
            )
        if create and not path.parent.exists():
            raise DatabaseUnavailable(
                f"the directory {path.parent} does not exist ({URL_VARIABLE}={url}): "
                f"create it or fix the path in {URL_VARIABLE}"
            )
    try:
        with get_engine(url).connect():
            pass
    except (DBAPIError, ArgumentError, ValueError) as exc:
        raise DatabaseUnavailable(connection_problem(url, exc)) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_engine(
    url: str,
    *,
    connect_timeout_s: int | None = None,
    statement_timeout_s: float | None = None,
    **kwargs: object,
) -> Engine:
    """An engine; on PostgreSQL optionally bounded (`bounded_postgres`): a server that does
    not accept connections in `connect_timeout_s` or does not answer a statement in
    `statement_timeout_s` (plus one second, client side, for a hung server) raises an
    OperationalError (`routing.eventlog.is_unavailable`) instead of blocking the caller."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    if connect_timeout_s is None and statement_timeout_s is None:
        return create_engine(url, **kwargs)
    if connect_timeout_s is not None:
        kwargs.setdefault("pool_timeout", connect_timeout_s)  # a pool held by a hung server
    engine = create_engine(url, **kwargs)
    bounded = bounded_postgres(connect_timeout_s, statement_timeout_s)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams.update(bounded.params)
        return bounded.connection_class.connect(*cargs, **cparams)

    return engine


def get_engine(
    url: str, connect_timeout_s: int | None = None, statement_timeout_s: float | None = None
) -> Engine:
    """One shared engine per database and bounds (a relative SQLite path is resolved against
    the current directory first, so a changed directory never reuses another file's engine)."""
    path = sqlite_path(url)
    if path is not None and not path.is_absolute():
        url = make_url(url).set(database=str(path.resolve())).render_as_string(False)
    return _cached_engine(url, connect_timeout_s, statement_timeout_s)


@lru_cache(maxsize=8)
def _cached_engine(
    url: str, connect_timeout_s: int | None, statement_timeout_s: float | None
) -> Engine:
    return make_engine(
        url, connect_timeout_s=connect_timeout_s, statement_timeout_s=statement_timeout_s
    )


class BoundedPostgres:
    """psycopg connection classes and libpq parameters for bounded waits (see make_engine)."""

    def __init__(self, connect_timeout_s: int | None, statement_timeout_s: float | None) -> None:
        import psycopg

        self.params: dict[str, Any] = {}
        if connect_timeout_s is not None:
            self.params["connect_timeout"] = max(2, int(connect_timeout_s))  # libpq: >= 2
        answer_s = None
        if statement_timeout_s is not None:
            self.params["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
            answer_s = statement_timeout_s + 1.0  # the server's own timeout fires first
        self.answer_timeout_s = answer_s
        wait_timeout = getattr(psycopg.errors, "_WaitTimeout", psycopg.OperationalError)

        def no_answer(connection: Any, exc: BaseException) -> psycopg.OperationalError:
            connection.pgconn.finish()  # mid-statement: the connection cannot be reused
            return psycopg.OperationalError(
                f"PostgreSQL did not answer within {answer_s:g}s (hung or unreachable)"
            )

        class Connection(psycopg.Connection):
            def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
                try:
                    return super().wait(gen, interval, timeout if timeout else answer_s)
                except wait_timeout as exc:
                    raise no_answer(self, exc) from exc

        class AsyncConnection(psycopg.AsyncConnection):
            async def wait(
                self, gen: Any, interval: float = 0.1, timeout: float | None = None
            ) -> Any:
                try:
                    return await super().wait(gen, interval, timeout if timeout else answer_s)
                except wait_timeout as exc:
                    raise no_answer(self, exc) from exc

        self.connection_class = Connection
        self.async_connection_class = AsyncConnection


@lru_cache(maxsize=16)
def bounded_postgres(
    connect_timeout_s: int | None, statement_timeout_s: float | None
) -> BoundedPostgres:
    return BoundedPostgres(connect_timeout_s, statement_timeout_s)


get_engine.cache_clear = _cached_engine.cache_clear  # type: ignore[attr-defined]


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with session_factory(engine)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# Not ORM tables, so autogenerate must leave them alone: the BI views (migration 0002) and, on
# PostgreSQL, what partitioning the events (migration 0009) changes from `tables.Event` (the
# plain table SQLite keeps): its month partitions, the key table, the client_event_id
# uniqueness that moved there.
VIEWS = frozenset({"abtest_arm_daily", "abtest_results"})
PARTITION_NAME = re.compile(r"events_(\d{4}_\d{2}|default)")
POSTGRES_ONLY = frozenset({"event_keys"})


def autogenerate_includes(dialect: str) -> Callable[..., bool]:
    """Alembic's `include_object` for a database of `dialect`: what autogenerate compares."""
    postgres = dialect == "postgresql"

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            if name in VIEWS:
                return False
            if postgres and (name in POSTGRES_ONLY or PARTITION_NAME.fullmatch(name or "")):
                return False
        return not (postgres and name == "uq_events_client_event_id")

    return include


def migrations_dir() -> Path:
    return Path(str(resources.files("migrations")))


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config(create_engine("sqlite://")))
    heads = script.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {heads}; merge them")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)


def ensure_migrated(engine: Engine) -> None:
    """Stop with a clear message unless the database is at the latest migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = "is empty" if current is None else f"is at revision {current}"
        raise DatabaseNotMigrated(
            f"the database {engine.url.render_as_string(hide_password=True)} {where}, "
            f"not at the latest migration {head}: run `abtest db upgrade`"
        )
