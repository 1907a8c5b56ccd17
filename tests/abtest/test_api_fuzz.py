"""Schemathesis against the app's OpenAPI schema, on PostgreSQL (which refuses what SQLite
takes: NUL characters, lone surrogates), with auth on: every generated request is sent with
an app, an engineer and an analyst key, and none gets a 5xx."""

import uuid

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from abtest import auth, db
from abtest.api import create_app
from abtest.settings import Settings
from models.arms.base import Prediction
from models.tools import ToolConfig
from tests.conftest import _postgres_admin_engine, unavailable
from tests.serving_setup import start_two_arm_experiment

pytestmark = pytest.mark.postgres


class Instant:
    name = "instant"

    async def predict(self, intent):
        return Prediction(ToolConfig(), 0.0)

    async def predict_batch(self, intents):
        return [Prediction(ToolConfig(), 0.0) for _ in intents]


@pytest.fixture(scope="module")
def fuzz_database():
    admin = _postgres_admin_engine()
    name = f"abtest_fuzz_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable("PostgreSQL", exc)
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    db.get_engine.cache_clear()
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def role_keys(fuzz_database):
    engine = start_two_arm_experiment(fuzz_database)
    with db.session_scope(engine) as session:
        keys = {
            role: auth.create_key(session, role, role)[1] for role in ("app", "engineer", "analyst")
        }
    engine.dispose()
    return keys


@pytest.fixture(scope="module")
def api_schema(fuzz_database, role_keys, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        Settings(
            database_url=fuzz_database,
            spool_dir=directory / "spool",
            auth_enabled=True,
            docs_public=True,
        )
    )
    app.state.abtest.extras["arms"] = {"teacher": Instant(), "student": Instant()}
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case, role_keys):
    for role, key in role_keys.items():
        response = case.call(headers={"X-API-Key": key})
        assert response.status_code < 500, (
            f"{role} key: {case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:500]}"
        )
