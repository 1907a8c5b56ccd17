"""Issue 12: every way around the gate and the lifecycle, tried as an outsider would.

Each bypass is refused with an error naming the field, and nothing is stored.
"""

from __future__ import annotations

import json
import pickle

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from abtest import db, promotion, services
from abtest.api import create_app
from abtest.cli import app as cli_app
from abtest.errors import Conflict, Invalid
from abtest.settings import get_settings
from abtest.tables import GateRun, Promotion, Variant
from tests import online_data
from tests.gate_helpers import FIT, approved_student, finished_job, pass_gate, reference_teacher


@pytest.fixture
def session(engine):
    with db.session_scope(engine) as s:
        yield s


def count(session, table=Variant):
    return session.scalar(select(func.count()).select_from(table))


# --- 1. one reference teacher; no approval without a passing gate run -----------------------------


def test_a_student_cannot_register_as_teacher_to_skip_the_gate(session):
    sneaky = {"base_url": "http://127.0.0.1:9/v1", "model": "student"}
    with pytest.raises(Invalid) as refused:
        services.register_variant(session, "sneaky", "teacher", sneaky)
    assert refused.value.field == "kind" and "--reference" in refused.value.reason
    assert count(session) == 0
    reference_teacher(session)
    with pytest.raises(Conflict) as second:  # even confirmed: there is one reference
        services.register_variant(session, "sneaky", "teacher", sneaky, reference=True)
    assert second.value.field == "kind" and "already the reference" in second.value.reason
    with pytest.raises(Invalid) as student:
        services.register_variant(session, "s", "knn_student", FIT, reference=True)
    assert student.value.field == "reference"
    assert count(session) == 1
    confirmation = session.scalar(select(Promotion))
    assert "reference teacher" in confirmation.reason and confirmation.to_status == "champion"


def test_the_api_and_cli_refuse_an_unconfirmed_teacher(settings, monkeypatch):
    body = {"name": "sneaky", "kind": "teacher", "config": {"base_url": "http://127.0.0.1:9/v1"}}
    with TestClient(create_app(settings)) as client:
        refused = client.post("/v1/variants", json=body)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["kind"]
        assert client.get("/v1/variants").json() == []
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    result = CliRunner().invoke(
        cli_app, ["variants", "register", "sneaky", "--kind", "teacher", "--config", "{}"]
    )
    assert result.exit_code == 1 and "--reference" in result.output


def test_no_service_approves_without_a_passing_gate_run_on_the_current_config(session):
    reference_teacher(session)
    student = services.register_variant(session, "s", "knn_student", FIT)
    with pytest.raises(Conflict, match="passing gate run"):
        services.record_promotion(session, student, "registered", "approved", "x")
    failing = GateRun(
        variant_id=student.id, test_set_hash="h", policy_version="p", passed=False,
        config_sha256=services.config_hash(student.config),
    )  # fmt: skip
    session.add(failing)
    session.flush()
    with pytest.raises(Conflict, match="not a passing run"):
        services.record_promotion(session, student, "registered", "approved", "x", "", failing.id)
    other = services.register_variant(session, "other", "knn_student", FIT)
    foreign = pass_gate(session, "other")
    with pytest.raises(Conflict, match="not a passing run"):
        services.record_promotion(session, student, "registered", "approved", "x", "", foreign.id)
    with pytest.raises(Conflict, match="only by an experiment"):
        services.record_promotion(session, other, "registered", "champion", "x")
    assert student.status == "registered" and count(session, Promotion) == 1  # the teacher's


def test_changing_a_config_invalidates_its_gate(session):
    reference_teacher(session)
    approved_student(session, "s")
    arms = [services.ArmSpec("c", "teacher", 0.5, True), services.ArmSpec("t", "s", 0.5)]
    services.create_experiment(session, services.ExperimentSpec("e", arms))
    # a config edited behind the services' back: the approval no longer clears it
    session.execute(update(Variant).where(Variant.name == "s").values(config={"fit": "train "}))
    session.expire_all()
    with pytest.raises(Conflict, match="no passing gate run on its current config"):
        services.start_experiment(session, "e")


def test_update_variant_config_demotes_and_needs_a_new_gate(session, tmp_path, monkeypatch):
    monkeypatch.setenv("ABTEST_MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    reference_teacher(session)
    approved_student(session, "s")
    (tmp_path / "knn.json").write_text("{}")
    variant = services.update_variant_config(session, "s", {"path": "knn.json"})
    assert variant.status == "registered" and variant.version == 2
    assert variant.config == {"path": str(tmp_path / "knn.json")}
    with pytest.raises(Conflict, match="no gate run|another config"):
        promotion.promote(session, "s", "x")


# --- 4. concluding -----------------------------------------------------------------------------


@pytest.fixture
def worse(engine):
    seeded = online_data.create_experiment(engine, settings={"sequential": False})
    online_data.simulate(engine, seeded, {"control": 0.9, "treatment": 0.6}, 150, 3)
    return seeded


def test_conclude_refuses_to_ship_a_worse_treatment_and_records_an_override(engine, worse):
    with db.session_scope(engine) as session:
        with pytest.raises(Conflict) as refused:
            promotion.conclude_experiment(session, "exp", "treatment", "carol")
        assert refused.value.field == "ship"
        assert "'treatment worse'" in refused.value.reason
    with db.session_scope(engine) as session:
        assert services.get_experiment(session, "exp").status == "running"
        assert services.champion(session).name == "teacher"
        with pytest.raises(Invalid, match="reason"):
            promotion.conclude_experiment(session, "exp", "treatment", "carol", override=True)
    with db.session_scope(engine) as session:
        promotion.conclude_experiment(
            session, "exp", "treatment", "carol", override=True, reason="cost cut approved"
        )
    with db.session_scope(engine) as session:
        assert services.champion(session).name == "student"
        shipped = session.scalar(
            select(Promotion).where(
                Promotion.to_status == "champion", Promotion.experiment_key == "exp"
            )
        )
        assert shipped.actor == "carol"
        assert "OVERRIDE by carol" in shipped.reason and "treatment worse" in shipped.reason
        assert "cost cut approved" in shipped.reason


def test_keeping_the_champion_is_supported_when_the_treatment_is_worse(engine, worse):
    with db.session_scope(engine) as session:
        experiment = promotion.conclude_experiment(session, "exp", "control", "carol")
        assert experiment.status == "concluded" and services.champion(session).name == "teacher"


def test_supportive_decisions_are_the_analysis_shippable_ones():
    from analysis import stats

    assert set(promotion.SUPPORTIVE) == set(stats.SHIPPABLE)
    assert set(stats.SHIPPABLE) < set(stats.DECISIONS)


def test_shipping_support_reads_only_explicit_support():
    def report(decision, srm=False, starts=10):
        return {
            "srm": {"flagged": srm},
            "arms": [{"starts": starts}],
            "comparisons": [{"arm": "t", "decision": decision}],
        }

    for ok in ("treatment better", "non-inferior", "equivalent"):
        assert promotion.shipping_support(report(ok), "t", "c") is None
    for bad in ("treatment worse", "inconclusive", "underpowered", "insufficient data"):
        assert bad in promotion.shipping_support(report(bad), "t", "c")
    assert "sample ratio" in promotion.shipping_support(
        report("treatment better", srm=True), "t", "c"
    )
    assert "no data" in promotion.shipping_support(report("inconclusive", starts=0), "c", "c")
    assert promotion.shipping_support(None, "c", "c") is not None


# --- 5. configs validated at registration; model paths; no pickle; base_url allowlist ----------


@pytest.mark.parametrize(
    ("kind", "config", "field"),
    [
        ("local_student", {}, "config.path"),
        ("knn_student", {"fitt": "train"}, "config.fitt"),
        ("knn_student", {}, "config.path"),
        ("openai_student", {"base_url": "http://127.0.0.1:1/v1"}, "config.model"),
        ("local_student", {"path": "x", "device": "tpu"}, "config.device"),
        ("recorded", {"split": "all"}, "config.split"),
    ],
)
def test_bad_configs_are_refused_at_registration(session, kind, config, field):
    with pytest.raises(Invalid) as refused:
        services.register_variant(session, "v", kind, config, reference=kind == "recorded")
    assert refused.value.field == field
    assert count(session) == 0


def test_model_paths_must_lie_under_the_model_dir_and_do_not_leak_existence(
    session, tmp_path, monkeypatch
):
    models = tmp_path / "models"
    (models / "student").mkdir(parents=True)
    monkeypatch.setenv("ABTEST_MODEL_DIR", str(models))
    get_settings.cache_clear()
    messages = set()
    for outside in ("/etc/passwd", "/no/such/file", "../escape.json", str(tmp_path)):
        with pytest.raises(Invalid) as refused:
            services.register_variant(session, "v", "knn_student", {"path": outside})
        assert refused.value.field == "config.path"
        messages.add(refused.value.reason)
    assert len(messages) == 1 and "ABTEST_MODEL_DIR" in messages.pop()
    with pytest.raises(Invalid, match="not a directory"):
        services.register_variant(session, "v", "local_student", {"path": "missing"})
    assert count(session) == 0
    (models / "knn.json").write_text("{}")
    variant = services.register_variant(session, "v", "knn_student", {"path": "knn.json"})
    assert variant.config == {"path": str(models / "knn.json")}  # absolute, not cwd-relative


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_refused_and_never_unpickled(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("ABTEST_MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Payload(marker)))
    settings = settings.model_copy(update={"model_dir": str(tmp_path)})
    with TestClient(create_app(settings)) as client:
        body = {"name": "evil", "kind": "knn_student", "config": {"path": "evil.pkl"}}
        assert client.post("/v1/variants", json=body).status_code == 201
        gate = finished_job(client, client.post("/v1/variants/evil/gate"))
        assert gate["status"] == "failed" and gate["result"] is None, gate
        error = gate["error"]
        assert error["loc"] == ["config", "path"] and "JSON expected" in error["msg"]
        assert error["status"] == 422
    assert not marker.exists()
    with db.session_scope(db.get_engine(settings.database_url)) as s:
        assert count(s, GateRun) == 0


def test_knn_student_round_trips_through_json(tmp_path):
    from models.arms.knn import KnnStudent
    from models.dataset import load_split

    records = load_split("train")[:50]
    student = KnnStudent().fit(records)
    student.save(tmp_path / "knn.json")
    json.loads((tmp_path / "knn.json").read_text())  # plain JSON
    loaded = KnnStudent.load(tmp_path / "knn.json")
    intents = [r.intent for r in records[:5]]
    assert loaded.predict_configs(intents) == student.predict_configs(intents)


def test_base_url_is_restricted_to_the_allowlist(session, monkeypatch):
    config = {"model": "student", "base_url": "http://169.254.169.254/v1"}
    with pytest.raises(Invalid) as refused:
        services.register_variant(session, "s", "openai_student", config)
    assert refused.value.field == "config.base_url" and "ALLOWLIST" in refused.value.reason
    ok = services.register_variant(
        session, "s", "openai_student", {"model": "m", "base_url": "http://localhost:8001/v1"}
    )
    assert ok.config["base_url"] == "http://localhost:8001/v1"
    monkeypatch.setenv("ABTEST_ARM_BASE_URL_ALLOWLIST", "https://vllm.internal/")
    get_settings.cache_clear()
    with pytest.raises(Invalid):
        services.register_variant(session, "t", "openai_student", config)
    allowed = {"model": "m", "base_url": "https://vllm.internal/v1"}
    assert services.register_variant(session, "t", "openai_student", allowed).name == "t"


def test_archive(session):
    reference_teacher(session)
    approved_student(session, "s")
    arms = [services.ArmSpec("c", "teacher", 0.5, True), services.ArmSpec("t", "s", 0.5)]
    services.create_experiment(session, services.ExperimentSpec("e", arms))
    services.start_experiment(session, "e")
    with pytest.raises(Conflict, match="running experiment"):
        services.archive_variant(session, "s")
    with pytest.raises(Conflict, match="champion"):
        services.archive_variant(session, "teacher")
    services.stop_experiment(session, "e")
    assert services.archive_variant(session, "s", "dana").status == "archived"
    with pytest.raises(Conflict, match="archived"):
        services.create_experiment(session, services.ExperimentSpec("e2", arms))
    with pytest.raises(Conflict, match="archived"):
        promotion.promote(session, "s", "x")


def test_cli_archive_and_api_archive(settings, monkeypatch):
    with TestClient(create_app(settings)) as client:
        body = {"name": "k", "kind": "knn_student", "config": FIT}
        assert client.post("/v1/variants", json=body).status_code == 201
        archived = client.post("/v1/variants/k/archive", json={"actor": "dana"})
        assert archived.status_code == 200 and archived.json()["status"] == "archived"
        assert client.post("/v1/variants/k/archive").status_code == 409
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    runner.invoke(cli_app, ["variants", "register", "j", "--kind", "knn_student",
                            "--config", json.dumps(FIT)])  # fmt: skip
    result = runner.invoke(cli_app, ["variants", "archive", "j"])
    assert result.exit_code == 0 and "archived" in result.output


# --- 3. one parse-and-validate path ---------------------------------------------------------------


def test_serving_gate_and_evaluate_parse_the_same_answer_the_same_way():
    """The issue's example: clamped and kept by the gate's parser, a failure in `evaluate`."""
    from analysis.offline_io import parse_prediction
    from models.parsing import parse_outputs, validate_record

    record = {"adjust": {"exposure": 150, "grain": 3}, "filter": {"name": "sepia_magic"}}
    as_text = parse_outputs({tool: json.dumps(value) for tool, value in record.items()})
    as_record = validate_record(record)
    from_file = parse_prediction(record)
    for parsed in (as_text, as_record):
        assert parsed.config == from_file.config
        assert parsed.failures == from_file.failed_tools == ("filter",)
        assert len(parsed.repairs) == len(from_file.repairs) == 2  # clamp + dropped key
    assert from_file.config.adjust.as_dict()["exposure"] == 100
    assert from_file.config.filter is None


def test_repairs_count_in_the_gate(session, tmp_path):
    """A student whose every answer needed a clamp fails the repair-rate criterion."""
    from models.arms.base import Prediction
    from models.dataset import load_split, write_records

    records = load_split("test")[:60]
    path = tmp_path / "small.jsonl"
    write_records(records, path)
    answers = {r.intent: r.teacher for r in records}

    class Clamped:
        name = "clamped"

        async def predict(self, intent):
            return Prediction(answers[intent], 1.0, repairs=("adjust: clamped exposure",))

        async def predict_batch(self, intents):
            return [await self.predict(i) for i in intents]

    reference_teacher(session)
    services.register_variant(session, "c", "knn_student", FIT)
    run = promotion.run_gate(
        session, "c", "t", test_set_path=path, progress=False, arm_builder=lambda v: Clamped()
    )
    assert not run.passed
    assert [c["name"] for c in run.metrics["verdict"]["criteria"] if not c["passed"]] == [
        "repair_rate"
    ]
    assert run.metrics["candidate"]["repair_rate"] == 1.0


def test_cli_set_config_refuses_bad_configs_and_demotes(settings, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    with db.session_scope(db.get_engine(settings.database_url)) as session:
        reference_teacher(session)
        approved_student(session, "s")
    runner = CliRunner()
    bad = runner.invoke(cli_app, ["variants", "set-config", "s", "--config", '{"fitt": 1}'])
    assert bad.exit_code == 1 and "config.fitt" in bad.output
    same = runner.invoke(cli_app, ["variants", "set-config", "s", "--config", json.dumps(FIT)])
    assert same.exit_code == 0 and "version 1 (approved)" in same.output  # unchanged config
    teacher = runner.invoke(cli_app, ["variants", "set-config", "teacher", "--config", "{}"])
    assert teacher.exit_code == 1 and "reference teacher" in teacher.output
