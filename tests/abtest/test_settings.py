import pytest

from abtest.settings import SettingsError, load_settings


def test_defaults_use_embedded_sqlite():
    settings = load_settings()
    assert settings.database_url.startswith("sqlite")
    assert settings.redis_url is None


def test_unknown_variable_is_named(monkeypatch):
    monkeypatch.setenv("ABTEST_DATABSE_URL", "sqlite://")
    with pytest.raises(SettingsError, match="ABTEST_DATABSE_URL"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ABTEST_DATABASE_URL", "mysql://x"),
        ("ABTEST_REDIS_URL", "http://localhost"),
        ("ABTEST_ARM_TIMEOUT_S", "-1"),
        ("ABTEST_AUTH_ENABLED", "maybe"),
        ("ABTEST_COMMIT_BATCH_SIZE", "0"),
        ("ABTEST_COMMIT_IN_FLIGHT", "many"),
        ("ABTEST_COMMIT_EAGER_BATCH", "-1"),
    ],
)
def test_invalid_value_is_named(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_openai_key_is_read_from_the_standard_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_settings().openai_api_key.get_secret_value() == "sk-test"


def test_group_commit_settings_reach_the_postgresql_gateway(monkeypatch, tmp_path):
    from abtest.db import make_engine
    from abtest.runtime import build_router
    from tests.conftest import POSTGRES_URL

    monkeypatch.setenv("ABTEST_COMMIT_BATCH_SIZE", "16")
    monkeypatch.setenv("ABTEST_COMMIT_IN_FLIGHT", "5")
    monkeypatch.setenv("ABTEST_COMMIT_EAGER_BATCH", "4")
    monkeypatch.setenv("ABTEST_SPOOL_DIR", str(tmp_path / "spool"))
    settings = load_settings()
    engine = make_engine(POSTGRES_URL)  # not connected: building the router needs no server
    try:
        router = build_router(settings, engine)
        commit = router.gateway._commit
        assert (commit.max_batch, commit.max_in_flight, commit.eager_batch) == (16, 5, 4)
    finally:
        engine.dispose()
