"""Configuration and connection errors: one line naming the variable and what to do, never a
traceback, and no file left behind by a command that failed; `abtest doctor`."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from abtest import db
from abtest.cli import app
from abtest.settings import get_settings
from tests.conftest import POSTGRES_URL
from tests.gate_helpers import approved_student

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _abtest(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point (`python -m abtest`), as a user runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ABTEST_", "OPENAI_"))}
    clean.update(env, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "abtest", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _pg_url(database: str, port: int | None = None) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL).set(drivername="postgresql", database=database)
    if port is not None:
        url = url.set(port=port)
    return url.render_as_string(hide_password=False)


def test_wrong_port_is_one_line_naming_the_variable(tmp_path):
    url = _pg_url("abtest", _closed_port())
    for command in (("db", "upgrade"), ("serve", "--port", "1")):
        line = _one_line_error(_abtest(*command, cwd=tmp_path, ABTEST_DATABASE_URL=url))
        assert "ABTEST_DATABASE_URL=" in line and "refused" in line.lower()
        assert "start the server or fix the host and port" in line


@pytest.mark.postgres
def test_missing_postgres_database_says_create_it(tmp_path):
    line = _one_line_error(
        _abtest("variants", "list", cwd=tmp_path, ABTEST_DATABASE_URL=_pg_url("no_such_db_15"))
    )
    assert '"no_such_db_15" does not exist' in line and "createdb" in line


def test_command_before_upgrade_creates_no_sqlite_file(tmp_path):
    line = _one_line_error(_abtest("variants", "list", cwd=tmp_path))
    assert "abtest db upgrade" in line and "ABTEST_DATABASE_URL" in line
    assert list(tmp_path.iterdir()) == []  # no empty abtest.db, no -wal/-shm
    upgraded = _abtest("db", "upgrade", cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "abtest.db").exists()
    assert _abtest("variants", "list", "--json", cwd=tmp_path).stdout.strip() == "[]"


def test_upgrade_into_a_missing_directory_is_refused_without_creating_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'nope' / 'a.db'}"
    line = _one_line_error(_abtest("db", "upgrade", cwd=tmp_path, ABTEST_DATABASE_URL=url))
    assert "does not exist" in line and "ABTEST_DATABASE_URL" in line
    assert not (tmp_path / "nope").exists()


def test_unparsable_url_is_an_invalid_setting(tmp_path):
    url = "postgresql://postgres@127.0.0.1:port/x"
    line = _one_line_error(_abtest("variants", "list", cwd=tmp_path, ABTEST_DATABASE_URL=url))
    assert line.startswith("error: invalid setting ABTEST_DATABASE_URL")


def test_unknown_setting_lists_variable_names(tmp_path):
    line = _one_line_error(_abtest("variants", "list", cwd=tmp_path, ABTEST_ARM_TIMEOUT="3"))
    assert "unknown setting ABTEST_ARM_TIMEOUT:" in line
    assert "ABTEST_ARM_TIMEOUT_S" in line and "ABTEST_DATABASE_URL" in line
    assert "arm_timeout_s" not in line  # field names are not what the user types


@pytest.fixture
def cli(monkeypatch, tmp_path):
    def invoke(*args, **env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return runner.invoke(app, list(args))

    monkeypatch.chdir(tmp_path)
    return invoke


def _checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)}


def test_doctor_reports_a_missing_database_and_what_to_do(cli, tmp_path):
    result = cli("doctor", "--json")
    assert result.exit_code == 1
    checks = _checks(result)
    assert checks["settings"]["status"] == "ok"
    assert checks["database"]["status"] == "FAIL"
    assert "abtest db upgrade" in checks["database"]["detail"]
    assert "migrations" not in checks  # nothing to check without a database
    assert not (tmp_path / "abtest.db").exists()


def test_doctor_reports_unmigrated_database(cli, tmp_path):
    from abtest import db

    db.make_engine(f"sqlite:///{tmp_path / 'abtest.db'}").connect().close()  # empty file
    checks = _checks(cli("doctor", "--json"))
    assert checks["database"]["status"] == "ok"
    assert checks["migrations"]["status"] == "FAIL"
    assert "abtest db upgrade" in checks["migrations"]["detail"]


@pytest.mark.redis
def test_doctor_all_good_then_missing_model_files_and_dead_teacher(cli, redis_url, tmp_path):
    assert cli("db", "upgrade").exit_code == 0
    model = tmp_path / "student"
    model.mkdir()
    config = json.dumps({"path": str(model)})
    registered = cli(
        "variants", "register", "s1", "--kind", "local_student", "--config", config,
        ABTEST_MODEL_DIR=str(tmp_path),
    )  # fmt: skip
    assert registered.exit_code == 0, registered.output
    from models.recorded_server import serve_in_thread

    base_url, stop = serve_in_thread(latency_ms=0)
    try:
        result = cli(
            "doctor", "--json", ABTEST_REDIS_URL=redis_url, OPENAI_BASE_URL=base_url,
            OPENAI_API_KEY="recorded",
        )  # fmt: skip
    finally:
        stop()
    checks = _checks(result)
    assert result.exit_code == 0, result.output
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert checks["model files of s1"]["detail"] == str(model)

    model.rmdir()
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    assert cli("variants", "register", "t", "--kind", "teacher", "--reference").exit_code == 0
    result = cli("doctor", "--json", OPENAI_BASE_URL=dead, ABTEST_REDIS_URL="redis://127.0.0.1:1")
    assert result.exit_code == 1
    checks = _checks(result)
    assert checks["model files of s1"]["status"] == "FAIL"
    assert "does not exist" in checks["model files of s1"]["detail"]
    assert checks["teacher"]["status"] == "FAIL" and "unreachable" in checks["teacher"]["detail"]
    assert checks["redis"]["status"] == "FAIL" and "ABTEST_REDIS_URL" in checks["redis"]["detail"]


def test_doctor_table_piped_is_vertical_and_uncut(cli):
    result = cli("doctor")
    assert result.exit_code == 1
    assert "name  : database" in result.stdout
    detail = next(line for line in result.stdout.splitlines() if "abtest db upgrade" in line)
    assert detail.endswith("at your database")  # not cut at 80 columns, not wrapped


def test_train_register_is_checked_before_training(cli, tmp_path):
    """`--register` takes the variant name; a taken name or an unmigrated database stops the
    command at once (not after minutes of training), and nothing is written."""
    out = tmp_path / "student"
    missing = cli("train", "--bundled", "--embedding", "--out", str(out), "--register")
    assert missing.exit_code == 2 and "requires an argument" in missing.output
    unmigrated = cli("train", "--bundled", "--embedding", "--out", str(out), "--register", "s")
    assert unmigrated.exit_code == 2 and "abtest db upgrade" in unmigrated.output
    assert cli("db", "upgrade").exit_code == 0
    fit = json.dumps({"fit": "train"})
    assert (
        cli("variants", "register", "taken", "--kind", "knn_student", "--config", fit).exit_code
        == 0
    )
    taken = cli("train", "--bundled", "--embedding", "--out", str(out), "--register", "taken")
    assert taken.exit_code == 1 and "already exists" in taken.output
    bad = cli("train", "--bundled", "--embedding", "--out", str(out), "--register", "a b")
    assert bad.exit_code == 1 and "not a valid name" in bad.output
    assert not out.exists()


def test_after_the_demo_a_missing_database_points_at_the_demo_database(tmp_path):
    (tmp_path / "abtest-demo.db").write_bytes(b"")
    line = _one_line_error(_abtest("variants", "list", cwd=tmp_path))
    assert f"export ABTEST_DATABASE_URL=sqlite:///{tmp_path / 'abtest-demo.db'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abtest-demo.db"]


def test_commands_a_script_reads_answer_json(cli):
    def as_json(*args):
        result = cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    upgraded = as_json("db", "upgrade")
    assert upgraded["current"] == upgraded["head"]
    assert as_json("db", "current")["up_to_date"] is True
    created = as_json("keys", "create", "ci", "--role", "app")
    assert created["role"] == "app" and created["key"].startswith("abt_")
    assert as_json("keys", "revoke", "ci")["revoked_at"] is not None
    assert cli("variants", "register", "teacher", "--kind", "teacher", "--reference").exit_code == 0
    with db.session_scope(db.get_engine(get_settings().database_url)) as session:
        approved_student(session, "knn")  # as if it had passed its gate (tests/gate_helpers.py)
    arms = ("--arm", "control=teacher:0.5*", "--arm", "t=knn:0.5")
    assert cli("experiments", "create", "e", *arms).exit_code == 0
    assert as_json("experiments", "start", "e")["status"] == "running"
    assert as_json("experiments", "stop", "e")["status"] == "stopped"
    assert as_json("spool", "status")["depth"] == 0
