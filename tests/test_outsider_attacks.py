"""Attacks on the round's guarantees, tried as an outsider would (review of issues 12-17).

Each test names the bypass it tries; it fails when the bypass works.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from abtest import db, promotion, services
from abtest.api import create_app
from abtest.cli import app as cli_app
from abtest.errors import Conflict
from abtest.settings import get_settings
from abtest.tables import AllocationPeriod, Promotion
from tests import online_data


@pytest.fixture
def knn_file(tmp_path, monkeypatch):
    """A second valid kNN config: a JSON model file under the model directory."""
    monkeypatch.setenv("ABTEST_MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    (tmp_path / "knn.json").write_text("{}")
    yield {"path": "knn.json"}
    get_settings.cache_clear()


# --- issue 12: gate bypasses --------------------------------------------------------------------


def test_a_running_arm_config_cannot_be_swapped_for_an_ungated_one(engine, knn_file):
    """Routing serves the stored config of a running arm: an edit would serve it ungated."""
    online_data.create_experiment(engine)
    with db.session_scope(engine) as session:
        with pytest.raises(Conflict) as refused:
            services.update_variant_config(session, "student", knn_file)
        assert refused.value.field == "name" and "running experiment 'exp'" in refused.value.reason
    with db.session_scope(engine) as session:
        student = services.get_variant(session, "student")
        assert student.config == {"fit": "train"} and student.status == "approved"


def test_conclude_never_crowns_a_variant_whose_config_changed_after_its_gate(engine, knn_file):
    """Stop, edit the treatment's config, then ship it (even with an override): refused."""
    seeded = online_data.create_experiment(engine, settings={"sequential": False})
    online_data.simulate(engine, seeded, {"control": 0.5, "treatment": 0.9}, 150, 3)
    with db.session_scope(engine) as session:
        services.stop_experiment(session, "exp")
    with db.session_scope(engine) as session:
        services.update_variant_config(session, "student", knn_file)
    for override in (False, True):
        with db.session_scope(engine) as session:
            with pytest.raises(Conflict) as refused:
                promotion.conclude_experiment(
                    session, "exp", "treatment", "mallory", override=override, reason="go"
                )
            assert refused.value.field == "ship"
            assert "gate" in refused.value.reason
    with db.session_scope(engine) as session:
        assert services.champion(session).name == "teacher"
        assert services.get_experiment(session, "exp").status == "stopped"
        crowned = select(Promotion.experiment_key).where(Promotion.to_status == "champion")
        assert session.scalars(crowned).all() == [None]  # only the reference's registration


def test_no_service_crowns_an_ungated_student_with_a_made_up_experiment_key(engine):
    online_data.create_experiment(engine, start=False)
    with db.session_scope(engine) as session:
        rogue = services.register_variant(session, "rogue", "knn_student", {"fit": "train"})
        with pytest.raises(Conflict) as refused:
            services.record_promotion(
                session, rogue, "registered", "champion", "mallory", experiment_key="exp"
            )
        assert refused.value.field == "gate"
    with db.session_scope(engine) as session:
        assert services.champion(session).name == "teacher"
        assert services.get_variant(session, "rogue").status == "registered"


def test_weights_of_a_concluded_experiment_are_history(settings, engine):
    online_data.create_experiment(engine)
    with db.session_scope(engine) as session:
        promotion.conclude_experiment(session, "exp", "control", "x", override=True, reason="r")
    with TestClient(create_app(settings)) as client:
        weights = {"weights": {"control": 0.1, "treatment": 0.9}}
        refused = client.patch("/v1/experiments/exp/weights", json=weights)
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"][0]["loc"] == ["status"]
        arms = client.get("/v1/experiments/exp").json()["arms"]
        assert [a["weight"] for a in arms] == [0.5, 0.5]
    with db.session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(AllocationPeriod)) == 1


# --- issue 13: verdicts that overclaim ----------------------------------------------------------


def _stats(*args: str):
    return CliRunner().invoke(cli_app, ["stats", *args])


def test_alpha_at_or_above_a_half_is_refused_rather_than_calling_ten_projects_equivalent():
    counts = ["proportions", "--control", "5/10", "--treatment", "5/10", "--margin", "-50%"]
    for alpha in ("0.5", "0.99"):
        result = _stats(*counts, "--alpha", alpha)
        assert result.exit_code == 1, result.output
        assert "alpha" in result.output and "equivalent" not in result.output
    allowed = _stats(*counts, "--alpha", "0.2", "--json")
    assert allowed.exit_code == 0, allowed.output
    decision = json.loads(allowed.stdout)["treatments"]["treatment"]["decision"]
    assert decision not in ("equivalent", "non-inferior")


@pytest.mark.parametrize(
    "args",
    [
        ["proportions", "--control", "50/100", "--treatment", "51/100", "--days", "inf"],
        ["power", "--baseline", "0.5", "--mde", "2%", "--daily-projects", "inf"],
    ],
)
def test_infinite_days_are_a_one_line_error_not_a_traceback(args):
    result = _stats(*args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "must be" in result.output and "Traceback" not in result.output


def test_an_experiment_without_a_margin_does_not_take_the_dashboard_down(settings, engine):
    online_data.create_experiment(engine, "plain")
    online_data.create_experiment(engine, "no-margin", settings={"margin": None})
    with TestClient(create_app(settings)) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200, page.text[-300:]
        assert "plain" in page.text and "no-margin" in page.text
        assert client.get("/v1/experiments/no-margin/results").status_code == 200


def _arms() -> list[dict]:
    return [
        {"name": "c", "variant": "teacher", "weight": 0.5, "control": True},
        {"name": "t", "variant": "student", "weight": 0.5},
    ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the strict one
@pytest.mark.parametrize(
    ("test_settings", "field"),
    [
        ({"alpha": None}, "alpha"),
        ({"alpha": [1]}, "alpha"),
        ({"alpha": "0.1"}, "alpha"),  # stored as text before
        ({"sequential": "no"}, "sequential"),  # "no" read as true before
        ({"cache": "x"}, "cache"),
        ({"overrides": {"p1": ["c"]}}, "overrides"),
        ({"margin": None, "baseline": 0.5, "mde": 10}, "mde"),  # start and results 500 before
    ],
)
def test_bad_test_settings_are_422_naming_the_field_and_store_nothing(
    settings, engine, test_settings, field
):
    online_data.create_experiment(engine, "seed-variants", start=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = {"key": "e", "arms": _arms(), "settings": test_settings}
        refused = client.post("/v1/experiments", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["settings", field]
        assert client.get("/v1/experiments/e").status_code == 404


# --- issue 14: acknowledged events, stored exactly once and as sent ----------------------------


def _stored_events(engine) -> dict[str, tuple[str, str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT client_event_id, type, project_id, occurred_at FROM events")
        ).all()
    as_utc = [(r[0], r[1], r[2], _utc(r[3])) for r in rows]
    assert len({r[0] for r in as_utc}) == len(as_utc)  # exactly once
    return {r[0]: (r[1], r[2], r[3]) for r in as_utc}


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite through a plain text() query
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def test_odd_but_valid_events_are_stored_once_at_the_instant_sent(settings, engine):
    online_data.create_experiment(engine)
    longest = "é" * 99 + "😀"  # 100 characters, 201 bytes in UTF-8
    events = [
        {"client_event_id": longest, "type": "start", "project_id": "😀" * 200},
        {"client_event_id": "x" * 100, "type": "start", "project_id": "p" * 200},
        {"client_event_id": "dup", "type": "start", "project_id": "first"},
        {"client_event_id": "dup", "type": "export", "project_id": "second"},
        {"client_event_id": "east", "type": "start", "project_id": "p",
         "occurred_at": "2200-01-01T13:59:59+14:00"},
        {"client_event_id": "west", "type": "start", "project_id": "p",
         "occurred_at": "1969-12-31T23:00:00-01:00"},
        {"client_event_id": "local", "type": "start", "project_id": "p",
         "occurred_at": "2026-11-02T10:00:00+02:00"},
    ]  # fmt: skip
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/events:batch", json={"events": events})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": 7, "stored": 6, "duplicates": 1, "spooled": 0}
        export = client.post(
            "/v1/projects/p/export",
            json={"client_event_id": "exp-1", "occurred_at": "2026-11-02T23:30:00-05:00"},
        )
        assert export.status_code == 200, export.text
    stored = _stored_events(engine)
    assert set(stored) == {longest, "x" * 100, "dup", "east", "west", "local", "exp-1"}
    assert stored[longest][1] == "😀" * 200
    assert stored["dup"][:2] == ("start", "first")  # the first of the duplicates wins
    assert stored["east"][2] == datetime(2199, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert stored["west"][2] == datetime(1970, 1, 1, tzinfo=UTC)
    assert stored["local"][2] == datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    assert stored["exp-1"][2] == datetime(2026, 11, 3, 4, 30, tzinfo=UTC)


# --- bad input never 500s -----------------------------------------------------------------------


def test_many_or_repeated_segment_attributes_are_a_422_or_counted_once(settings, engine):
    seeded = online_data.create_experiment(engine)
    online_data.simulate(engine, seeded, {"control": 0.5, "treatment": 0.6}, 20, 1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        url = "/v1/experiments/exp/results?segments="
        repeated = client.get(url + ",".join(["platform"] * 600))  # SQLite: 500 before
        assert repeated.status_code == 200, repeated.text[:300]
        assert "platform" in repeated.json()["segments"]
        many = client.get(url + ",".join(f"s{i}" for i in range(21)))
        assert many.status_code == 422, many.text[:300]
        assert many.json()["detail"][0]["loc"] == ["segments"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the strict one
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/variants", '{"name":"v","kind":"knn_student","config":{"fit":"train"},'
         '"description":"a\\u0000b"}', "description"),
        ("/v1/variants", '{"name":"v","kind":"knn_student","config":{"fit":"train"},'
         '"description":"a\\ud83d"}', "description"),
        ("/v1/variants", '{"name":"v","kind":"knn_student","config":{"fit":"train"},'
         '"status":"champion"}', "status"),  # was ignored: 201 as if it meant something
        ("/v1/experiments", '{"key":"x","arms":ARMS,"seed":"\\u0000"}', "seed"),
        ("/v1/experiments", '{"key":"x","arms":ARMS,"settings":{"overrides":{"\\ud83d":"c"}}}',
         "settings"),
        ("/v1/experiments", '{"key":"x","arms":ARMS,"status":"running"}', "status"),
        ("/v1/variants/student/archive", '{"actor":"\\u0000"}', "actor"),
        ("/v1/variants/student/gate", '{"policy":{"version":"\\u0000"}}', "policy"),
    ],
)  # fmt: skip
def test_admin_bodies_refuse_unknown_fields_and_unstorable_text(
    settings, engine, path, body, field
):
    """On PostgreSQL each of these was a 500 (NUL or a lone surrogate reached the database)."""
    online_data.create_experiment(engine, start=False)
    body = body.replace("ARMS", json.dumps(_arms()))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text[:300]
        assert answer.json()["detail"][0]["loc"] == ["body", field]
        assert [v["name"] for v in client.get("/v1/variants").json()] == ["teacher", "student"]
        assert [e["key"] for e in client.get("/v1/experiments").json()] == ["exp"]
        assert client.get("/v1/variants/student").json()["status"] == "approved"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["variants", "register", "v", "--kind", "knn_student", "--config", '{"fit":"train"}',
          "--description", "\udcff"], "description"),  # undecodable argv bytes
        (["experiments", "create", "x", "--arm", "c=teacher:0.5*", "--arm", "t=student:0.5",
          "--seed", "\udcff"], "seed"),
        (["experiments", "create", "x", "--arm", "c=teacher:0.5*", "--arm", "t=student:0.5",
          "--settings", '{"overrides": {"p\\u0000": "c"}}'], "settings.overrides"),
        (["variants", "archive", "student", "--actor", "\udcff"], "actor"),
    ],
)  # fmt: skip
def test_cli_unstorable_text_is_one_line_naming_the_field(
    settings, engine, monkeypatch, args, field
):
    """On PostgreSQL: tracebacks, or "cannot open the database" for a JSON \\u0000."""
    online_data.create_experiment(engine, start=False)
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert f"{field}:" in result.output and "database" not in result.output
    with db.session_scope(engine) as session:
        assert [v.name for v in services.list_variants(session)] == ["teacher", "student"]
        assert [e.key for e in services.list_experiments(session)] == ["exp"]
        assert services.get_variant(session, "student").status == "approved"


def test_a_policy_looser_than_the_minimum_is_refused_everywhere(tmp_path, monkeypatch):
    """Whoever runs the gate cannot pass a student by lowering the floors on their own."""
    from typer.testing import CliRunner

    from abtest.cli import app as cli
    from abtest.settings import get_settings

    monkeypatch.setenv("ABTEST_DATABASE_URL", f"sqlite:///{tmp_path / 'a.db'}")
    get_settings.cache_clear()
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli, ["variants", "register", "teacher", "--kind", "teacher",
                               "--reference"]).exit_code == 0  # fmt: skip
    assert runner.invoke(cli, ["variants", "register", "knn", "--kind", "knn_student",
                               "--config", '{"fit": "train"}']).exit_code == 0  # fmt: skip
    policy = tmp_path / "zero.json"
    policy.write_text('{"version": "zero", "overall_floor": 0, "tool_final_floor": 0}')
    for name in (str(policy), "demo-v2", "baseline-v2"):
        result = runner.invoke(cli, ["gate", "knn", "--policy", name])
        assert result.exit_code == 1, result.output
        assert "looser than the minimum 'gate-v2'" in result.output
    import sqlalchemy as sa

    from abtest import db as abtest_db
    from abtest.tables import GateRun

    engine = abtest_db.make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as connection:  # nothing was evaluated, nothing stored
        assert connection.scalar(sa.select(sa.func.count()).select_from(GateRun)) == 0
    engine.dispose()
    monkeypatch.setenv("ABTEST_GATE_POLICY_MINIMUM", "gate-v9")
    get_settings.cache_clear()
    bad = runner.invoke(cli, ["gate", "knn"])
    assert bad.exit_code == 2 and "ABTEST_GATE_POLICY_MINIMUM" in bad.output


# --- review 2: the gate jobs, partitions, typed reports round ----------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "text/plain"}, {}],
    ids=["curl-d", "text", "none"],
)
def test_admin_and_gate_bodies_are_json_without_a_json_content_type(settings, engine, headers):
    """The README: "Bodies are JSON, with or without Content-Type: application/json (plain
    `curl -d` works)". The FastAPI body routes (variants, gate, promote, archive) said 422."""
    from tests.gate_helpers import FIT, reference_teacher

    with db.session_scope(engine) as session:
        reference_teacher(session)
        services.register_variant(session, "knn", "knn_student", FIT)

    def post(client: TestClient, path: str, body: dict) -> object:
        return client.post(path, content=json.dumps(body).encode(), headers=headers)

    with TestClient(create_app(settings)) as client:
        made = post(client, "/v1/variants", {"name": "k2", "kind": "knn_student", "config": FIT})
        assert made.status_code == 201, made.text
        refused = post(client, "/v1/variants/knn/gate", {"actor": ""})  # read, then refused
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == [
            "body",
            "actor",
        ]
        promote = post(client, "/v1/variants/knn/promote", {"actor": "dana"})
        assert promote.status_code == 409 and promote.json()["detail"][0]["loc"] == ["gate"]
        archived = post(client, "/v1/variants/k2/archive", {"actor": "dana"})
        assert archived.status_code == 200, archived.text
        bad = client.post("/v1/variants/knn/promote", content=b"{", headers=headers)
        assert bad.status_code == 422
        empty = client.post("/v1/variants/knn/promote", content=b"", headers=headers)
        assert empty.status_code == 409  # no body: the defaults, as with JSON
    with db.session_scope(engine) as session:
        assert services.get_variant(session, "k2").status == "archived"


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_gate_seed_numpy_refuses_is_a_synchronous_422_not_a_failed_job(settings, engine, seed):
    """A policy stricter than the minimum but with a seed the bootstrap cannot use was queued,
    then failed in the background as an 'unexpected' 500 (CLI: a traceback)."""
    from abtest.tables import GateRun, Job
    from tests.gate_helpers import FIT, reference_teacher

    with db.session_scope(engine) as session:
        reference_teacher(session)
        services.register_variant(session, "knn", "knn_student", FIT)
    with TestClient(create_app(settings)) as client:
        policy = {"version": "strict", "bootstrap_seed": seed}
        answer = client.post("/v1/variants/knn/gate", json={"policy": policy})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["policy", "bootstrap_seed"]
    with db.session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(GateRun)) == 0


def test_a_gate_run_records_the_champion_it_was_compared_with(engine, settings, monkeypatch):
    """The champion was read twice in `run_gate`: once to pick the comparison, once to record
    it. A conclusion between the two reads stored a run judged on the teacher's floors alone
    under the new student champion's id, which `promote` then accepted as compared with it."""
    from tests.gate_helpers import FIT, reference_teacher

    with db.session_scope(engine) as session:
        reference_teacher(session)
        services.register_variant(session, "knn", "knn_student", FIT)
        rival = services.register_variant(session, "rival", "knn_student", FIT)
        rival_id = rival.id
    reads = []
    real_champion = services.champion

    def champion_changing_after_the_first_read(session):  # the conclusion lands here
        reads.append(1)
        if len(reads) == 1:
            return real_champion(session)
        return session.get(type(real_champion(session)), rival_id)

    monkeypatch.setattr(services, "champion", champion_changing_after_the_first_read)
    with db.session_scope(engine) as session:
        run = promotion.run_gate(session, "knn", "dana", progress=False, settings=settings)
        compared = run.metrics["champion"]
        assert compared["kind"] == "teacher"
        assert run.champion_id != rival_id  # recorded: what it was compared with


def test_set_config_before_or_during_a_gate_job_is_recorded_and_refused_at_approval(
    engine, settings, knn_file, monkeypatch
):
    """Queue a gate job, change the config, let it run; change it again while it evaluates.
    The run records the config it evaluated (the second), and promote refuses the third."""
    from tests.gate_helpers import FIT, reference_teacher

    with db.session_scope(engine) as session:
        reference_teacher(session)
        services.register_variant(session, "knn", "knn_student", FIT)
        job, work = promotion.start_gate_job(
            session, "knn", "dana", promotion.GatePolicy(), settings, "me"
        )
    with db.session_scope(engine) as session:
        services.update_variant_config(session, "knn", knn_file)  # before the job runs
    evaluated = []
    real_build = promotion.build_variant_arm

    def build_then_edit(variant, config_settings=None):
        evaluated.append(dict(variant.config))
        with db.session_scope(engine) as other:  # while it evaluates
            services.update_variant_config(other, "knn", FIT)
        return real_build(variant.__class__(kind="knn_student", config=FIT, name="x"), None)

    monkeypatch.setattr(promotion, "build_variant_arm", build_then_edit)
    with db.session_scope(engine) as session:
        result = work(session)
    assert len(evaluated) == 1 and evaluated[0]["path"].endswith("knn.json")
    assert result["config_sha256"] == services.config_hash(evaluated[0])
    with db.session_scope(engine) as session:
        stale = services.get_variant(session, "knn")
        assert services.config_hash(stale.config) != result["config_sha256"]
        from abtest.tables import GateRun

        session.get(GateRun, result["id"]).passed = True  # as if it had passed: still stale
        session.flush()
        with pytest.raises(Conflict) as refused:
            promotion.promote(session, "knn", "dana")
        assert "evaluated another config" in refused.value.reason
