"""CLI: db upgrade, variants and experiments, on both backends; errors change nothing."""

import json

import pytest
from typer.testing import CliRunner

from abtest.cli import app
from abtest.settings import get_settings

runner = CliRunner()


@pytest.fixture
def cli(database_url, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", database_url)
    get_settings.cache_clear()

    def invoke(*args):
        result = runner.invoke(app, list(args))
        return result

    return invoke


def test_unmigrated_database_tells_to_run_upgrade(cli):
    result = cli("variants", "list")
    assert result.exit_code == 2
    assert "abtest db upgrade" in result.output


def test_full_admin_flow(cli):
    assert cli("db", "upgrade").exit_code == 0
    assert cli("variants", "register", "teacher", "--kind", "teacher", "--reference").exit_code == 0
    result = cli(
        "variants", "register", "knn", "--kind", "knn_student", "--config", '{"fit":"train"}'
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(cli("variants", "list", "--json").output)
    assert [(v["name"], v["status"]) for v in listed] == [
        ("teacher", "champion"),
        ("knn", "registered"),
    ]
    result = cli(
        "experiments", "create", "exp1", "--arm", "control=teacher:0.5*", "--arm", "t=knn:0.5"
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("experiments", "show", "exp1", "--json").output)
    assert shown["status"] == "draft" and shown["arms"][0]["control"] is True
    result = cli("experiments", "start", "exp1")
    assert result.exit_code == 1 and "passing gate" in result.output
    assert json.loads(cli("experiments", "list", "--json").output)[0]["status"] == "draft"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("variants", "register", "x", "--kind", "nope"), "kind"),
        (("variants", "register", "x", "--kind", "teacher", "--config", "{bad"), "config"),
        (("variants", "show", "ghost"), "no variant named 'ghost'"),
        (("experiments", "start", "ghost"), "no experiment"),
        (
            ("experiments", "create", "e", "--arm", "c=teacher:0.5*", "--arm", "t=teacher:0.6"),
            "sum to 1",
        ),
        (("experiments", "create", "e", "--arm", "garbage"), "NAME=VARIANT:WEIGHT"),
    ],
)
def test_bad_input_gets_a_clear_message(cli, args, message):
    assert cli("db", "upgrade").exit_code == 0
    assert cli("variants", "register", "teacher", "--kind", "teacher", "--reference").exit_code == 0
    result = cli(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert json.loads(cli("experiments", "list", "--json").output) == []
    assert len(json.loads(cli("variants", "list", "--json").output)) == 1


def test_every_command_has_help():
    for args in (
        [],
        ["db"],
        ["variants"],
        ["experiments"],
        ["variants", "register"],
        ["experiments", "create"],
        ["demo"],
    ):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output
