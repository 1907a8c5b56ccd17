"""Shared fixtures: a migrated database per backend (SQLite and PostgreSQL), Redis, settings.

PostgreSQL and Redis come from ABTEST_TEST_POSTGRES_URL / ABTEST_TEST_REDIS_URL (defaults: the
machine's servers on 127.0.0.1). Each test gets its own fresh PostgreSQL database and its own Redis
key prefix, so parallel runs never see each other's data. With CI=true an unreachable server fails
the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from abtest import db
from abtest.settings import Settings

POSTGRES_URL = os.environ.get(
    "ABTEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ABTEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgresql"]


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own ABTEST_* settings or OpenAI key."""
    for key in list(os.environ):
        if key.startswith("ABTEST_") and not key.startswith(("ABTEST_TEST_", "ABTEST_BENCH_")):
            monkeypatch.delenv(key)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    from abtest.settings import get_settings

    get_settings.cache_clear()


def _postgres_admin_engine() -> Engine:
    _ensure_admin_database()
    return sa.create_engine(db.normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")


@functools.cache
def _ensure_admin_database() -> None:
    """Create the database of ABTEST_TEST_POSTGRES_URL (default `test`) when the server is up
    but it does not exist yet: a fresh server needs nothing created by hand. Every test then
    creates and drops its own database from there."""
    url = sa.make_url(db.normalize_url(POSTGRES_URL))
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            return
    except sa.exc.OperationalError as exc:
        if "does not exist" not in str(exc):
            return  # server down: the test using it skips (or fails under CI) with the reason
    finally:
        engine.dispose()
    server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    except sa.exc.DBAPIError:
        pass  # created meanwhile by a parallel run, or not allowed: the tests report it
    finally:
        server.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a brand-new, empty PostgreSQL database, dropped after the test."""
    admin = _postgres_admin_engine()
    name = f"abtest_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        db.get_engine.cache_clear()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'abtest.db'}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend; the test runs once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def empty_engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """A database migrated to head, on each backend."""
    db.upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    """Settings for a migrated database on each backend (no Redis: in-process fallback)."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    engine.dispose()
    return Settings(database_url=database_url, spool_dir=tmp_path / "spool")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis; keys the test writes must use the `redis_prefix` fixture."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    yield REDIS_URL
    client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    import redis

    prefix = f"abtest-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session (one JVM) for every Spark test of the run.

    pyspark is in the dev extra and Java on every CI machine: a missing one fails, never skips.
    """
    from analysis.spark import spark_session

    session = spark_session("local[2]", "abtest-tests", shuffle_partitions=2)
    yield session
    session.stop()
