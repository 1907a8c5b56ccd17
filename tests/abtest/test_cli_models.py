"""`abtest serve-recorded`: options, validation, and the app it serves."""

from __future__ import annotations

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from abtest.cli import app
from models.dataset import load_split
from models.prompts import student_prompt

runner = CliRunner()


def test_help_lists_the_options():
    result = runner.invoke(app, ["serve-recorded", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--latency-ms", "--model"):
        assert option in result.output


def test_serves_the_recorded_app_with_the_given_options(monkeypatch):
    seen = {}

    def fake_run(served_app, host, port, log_level):
        seen.update(app=served_app, host=host, port=port)

    monkeypatch.setattr("uvicorn.run", fake_run)
    result = runner.invoke(app, ["serve-recorded", "--port", "8123", "--model", "rec"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8123/v1" in result.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    record = load_split("test")[0]
    client = TestClient(seen["app"])
    assert client.get("/v1/models").json()["data"][0]["id"] == "rec"
    answer = client.post(
        "/v1/completions", json={"model": "rec", "prompt": student_prompt("filter", record.intent)}
    ).json()["choices"][0]["text"]
    assert answer.startswith("Parameters: {")


def test_bad_options_are_rejected(monkeypatch):
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: None)
    for args in (["--port", "0"], ["--port", "70000"], ["--latency-ms", "-5"]):
        result = runner.invoke(app, ["serve-recorded", *args])
        assert result.exit_code == 2, args
