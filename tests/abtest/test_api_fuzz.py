"""Schemathesis against the app's OpenAPI schema: no generated input gets a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from abtest.api import create_app
from abtest.settings import Settings
from models.arms.base import Prediction
from models.tools import ToolConfig
from tests.serving_setup import start_two_arm_experiment


class Instant:
    name = "instant"

    async def predict(self, intent):
        return Prediction(ToolConfig(), 0.0)

    async def predict_batch(self, intents):
        return [Prediction(ToolConfig(), 0.0) for _ in intents]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{directory / 'abtest.db'}"
    engine = start_two_arm_experiment(url)
    engine.dispose()
    app = create_app(Settings(database_url=url, spool_dir=directory / "spool"))
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
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
