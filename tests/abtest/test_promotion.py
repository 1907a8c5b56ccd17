"""Gate runs, promotion and conclusion on both backends: services, API and CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from abtest import db, promotion, services
from abtest.api import create_app
from abtest.cli import app as cli_app
from abtest.errors import Conflict, Invalid, NotFound
from abtest.settings import Settings, get_settings
from abtest.tables import GateRun, Promotion
from analysis.gate_policy import BASELINE_POLICY, GatePolicy
from models.arms.base import ArmError, Prediction
from models.dataset import IntentRecord, load_split, normalize_intent, write_records
from models.tools import ToolConfig
from tests.gate_helpers import finished_job

# A small test set keeps these tests fast; the bundled one is used where "current" matters.
SMALL = load_split("test")[:60]


class ScriptedArm:
    """Answers from a table; `quality` picks the teacher answer or nothing; `fail` raises."""

    def __init__(self, records: Sequence[IntentRecord], mode: str = "perfect") -> None:
        self.name = f"scripted-{mode}"
        self.mode = mode
        self.answers = {normalize_intent(r.intent): r.teacher for r in records}
        self.calls = 0

    async def predict(self, intent: str) -> Prediction:
        self.calls += 1
        if self.mode == "flaky" and len(intent) % 4 == 0:
            raise ArmError("unusable output")
        config = self.answers[normalize_intent(intent)]
        if self.mode == "empty":
            config = ToolConfig()
        return Prediction(config, latency_ms=5.0)

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        if self.mode == "flaky":
            raise ArmError("batch failed")
        return [await self.predict(i) for i in intents]


def builder(modes: dict[str, str], records=SMALL):
    return lambda variant: ScriptedArm(records, modes[variant.name])


@pytest.fixture
def small_test_set(tmp_path):
    path = tmp_path / "small-test.jsonl"
    sha = write_records(SMALL, path)
    return path, sha


@pytest.fixture
def session(engine):
    with db.session_scope(engine) as s:
        yield s


def setup_variants(session):
    services.register_variant(session, "teacher", "teacher", actor="t", reference=True)
    services.register_variant(session, "good", "knn_student", FIT, actor="t")
    services.register_variant(session, "bad", "knn_student", FIT, actor="t")
    session.flush()


FIT = {"fit": "train"}
MODES = {"good": "perfect", "bad": "empty", "flaky": "flaky", "champ": "perfect"}


def test_gate_runs_are_stored_passed_or_failed(session, small_test_set):
    path, sha = small_test_set
    setup_variants(session)
    good = promotion.run_gate(
        session, "good", "alice", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    assert good.passed and good.failures == []
    assert good.test_set_hash == sha
    assert good.policy_version == GatePolicy().full_version
    assert good.actor == "alice" and good.created_at is not None
    assert good.champion_id == services.get_variant(session, "teacher").id
    candidate = good.metrics["candidate"]
    assert candidate["subsets"]["all"]["overall"] == 1.0
    assert candidate["subsets"]["all"]["n"] == len(SMALL)
    assert good.metrics["champion"]["kind"] == "teacher"
    bad = promotion.run_gate(
        session, "bad", "bob", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    assert not bad.passed
    assert any(f.startswith("overall (95%): lower bound") for f in bad.failures)
    assert any("filter final (95%): lower bound 0.0000" in f for f in bad.failures)
    session.flush()
    stored = session.scalar(select(func.count()).select_from(GateRun))
    assert stored == 2
    assert [r.id for r in promotion.gate_runs(session, "bad")] == [bad.id]


def test_arm_errors_become_missing_predictions_and_parse_failures(session, small_test_set):
    path, _ = small_test_set
    services.register_variant(session, "flaky", "knn_student", FIT)
    run = promotion.run_gate(
        session, "flaky", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    expected = sum(len(r.intent) % 4 == 0 for r in SMALL) / len(SMALL)
    scores = run.metrics["candidate"]["subsets"]["all"]
    assert expected > 0.01
    assert scores["parse_failure_rate"] == pytest.approx(expected)
    assert any("parse-failure rate" in f for f in run.failures)


def test_promote_is_refused_with_the_failed_criteria_then_allowed(session, small_test_set):
    path, sha = small_test_set
    setup_variants(session)
    with pytest.raises(Conflict, match="no gate run on the current test set"):
        promotion.promote(session, "bad", "alice", test_set_hash=sha)
    promotion.run_gate(
        session, "bad", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    with pytest.raises(Conflict) as refused:
        promotion.promote(session, "bad", "alice", test_set_hash=sha)
    assert refused.value.field == "gate"
    assert "filter final (95%): lower bound 0.0000" in refused.value.reason
    assert services.get_variant(session, "bad").status == "registered"
    run = promotion.run_gate(
        session, "good", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    promoted = promotion.promote(session, "good", "alice", test_set_hash=sha)
    assert (promoted.from_status, promoted.to_status) == ("registered", "approved")
    assert promoted.gate_run_id == run.id and promoted.actor == "alice"
    assert services.get_variant(session, "good").status == "approved"
    with pytest.raises(Conflict, match="already approved"):
        promotion.promote(session, "good", "alice", test_set_hash=sha)
    with pytest.raises(Conflict, match="teacher"):
        promotion.promote(session, "teacher", "alice")
    with pytest.raises(NotFound):
        promotion.promote(session, "nobody", "alice")


def test_a_later_failing_gate_run_supersedes_a_passing_one(session, small_test_set):
    path, sha = small_test_set
    setup_variants(session)
    modes = dict(MODES)
    promotion.run_gate(
        session, "good", "t", test_set_path=path, progress=False, arm_builder=builder(modes)
    )
    modes["good"] = "empty"
    promotion.run_gate(
        session, "good", "t", test_set_path=path, progress=False, arm_builder=builder(modes)
    )
    with pytest.raises(Conflict, match="failed its latest gate run"):
        promotion.promote(session, "good", "t", test_set_hash=sha)


def test_a_new_test_set_invalidates_earlier_gate_runs(session, small_test_set):
    path, _ = small_test_set
    setup_variants(session)
    promotion.run_gate(
        session, "good", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    # the platform's current test set is the bundled one, not the small file gated on
    with pytest.raises(Conflict, match="older test set") as refused:
        promotion.promote(session, "good", "alice")
    assert promotion.current_test_set_hash()[:12] in refused.value.reason
    assert session.scalar(select(func.count()).select_from(Promotion).where(
        Promotion.to_status == "approved")) == 0  # fmt: skip


def test_experiment_cannot_start_with_an_ungated_arm(session, small_test_set):
    path, sha = small_test_set
    setup_variants(session)
    spec = services.ExperimentSpec(
        key="exp",
        arms=[
            services.ArmSpec("control", "teacher", 0.5, True),
            services.ArmSpec("student", "good", 0.5),
        ],
    )
    services.create_experiment(session, spec)
    with pytest.raises(Conflict, match="without a passing gate"):
        services.start_experiment(session, "exp")
    promotion.run_gate(
        session, "good", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    with pytest.raises(Conflict):  # a passing run is not yet a promotion
        services.start_experiment(session, "exp")
    promotion.promote(session, "good", "t", test_set_hash=sha)
    assert services.start_experiment(session, "exp").status == "running"


def _running_experiment(session, sha, path):
    setup_variants(session)
    promotion.run_gate(
        session, "good", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    promotion.promote(session, "good", "t", test_set_hash=sha)
    spec = services.ExperimentSpec(
        key="exp",
        arms=[
            services.ArmSpec("control", "teacher", 0.5, True),
            services.ArmSpec("student", "good", 0.5),
        ],
    )
    services.create_experiment(session, spec)
    services.start_experiment(session, "exp")


def test_conclude_makes_the_shipped_variant_champion(session, small_test_set):
    path, sha = small_test_set
    _running_experiment(session, sha, path)
    services.register_variant(session, "champ", "knn_student", FIT)
    early = promotion.run_gate(
        session, "champ", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    assert early.passed
    # no data: the decision supports nothing, so only an override (recorded) ships
    experiment = promotion.conclude_experiment(
        session, "exp", "student", "carol", override=True, reason="test of champion mechanics"
    )
    assert experiment.status == "concluded" and experiment.shipped_arm == "student"
    assert experiment.stopped_at is not None
    assert services.champion(session).name == "good"
    assert services.get_variant(session, "teacher").status == "registered"
    moves = session.scalars(select(Promotion).where(Promotion.experiment_key == "exp")).all()
    assert {(m.from_status, m.to_status, m.actor) for m in moves} == {
        ("champion", "registered", "carol"),
        ("approved", "champion", "carol"),
    }
    with pytest.raises(Conflict, match="already concluded"):
        promotion.conclude_experiment(session, "exp", "student", "carol")
    # future gates compare against the new (student) champion with a paired bootstrap
    run = promotion.run_gate(
        session, "bad", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    assert run.champion_id == services.get_variant(session, "good").id
    assert run.metrics["champion"]["overall"] == 1.0
    assert run.metrics["difference"]["estimate"] == pytest.approx(-1.0)
    names = [c["name"] for c in run.metrics["verdict"]["criteria"]]
    assert "non_inferiority" in names and "overall_floor" in names
    # a gate run against the previous champion no longer counts
    with pytest.raises(Conflict, match="earlier champion"):
        promotion.promote(session, "champ", "t", test_set_hash=sha)
    again = promotion.run_gate(
        session, "champ", "t", test_set_path=path, progress=False, arm_builder=builder(MODES)
    )
    assert again.passed and again.metrics["difference"]["estimate"] == 0
    assert promotion.promote(session, "champ", "t", test_set_hash=sha).gate_run_id == again.id


def test_conclude_refuses_bad_requests_and_changes_nothing(session, small_test_set):
    path, sha = small_test_set
    _running_experiment(session, sha, path)
    with pytest.raises(Invalid) as bad_arm:
        promotion.conclude_experiment(session, "exp", "nope", "carol")
    assert bad_arm.value.field == "ship"
    assert services.get_experiment(session, "exp").status == "running"
    assert services.champion(session).name == "teacher"
    with pytest.raises(NotFound):
        promotion.conclude_experiment(session, "missing", "student", "carol")
    services.create_experiment(
        session,
        services.ExperimentSpec(
            key="draft",
            arms=[
                services.ArmSpec("a", "teacher", 0.5, True),
                services.ArmSpec("b", "good", 0.5),
            ],
        ),
    )
    with pytest.raises(Conflict, match="never ran"):
        promotion.conclude_experiment(session, "draft", "a", "carol")


def test_teacher_needs_no_gate_and_bad_test_sets_are_errors(session, tmp_path):
    setup_variants(session)
    with pytest.raises(Invalid, match="teacher"):
        promotion.run_gate(session, "teacher", "t", progress=False)
    with pytest.raises(Invalid) as missing:
        promotion.run_gate(session, "good", "t", test_set_path=tmp_path / "no.jsonl")
    assert missing.value.field == "test_set"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"intent": "x", "calls": 0}\n')
    with pytest.raises(Invalid, match="broken.jsonl:1"):
        promotion.run_gate(session, "good", "t", test_set_path=broken, progress=False)
    with pytest.raises(Invalid) as bad_config:  # refused at registration, nothing stored
        services.register_variant(session, "unfit", "knn_student", {"fit": "everything"})
    assert bad_config.value.field == "config.fit"
    assert session.scalar(select(func.count()).select_from(GateRun)) == 0


def test_knn_student_on_the_bundled_test_set_fails_the_default_gate(session):
    """The real kNN baseline (fit on the train split) scored on the current test set."""
    setup_variants(session)
    run = promotion.run_gate(session, "good", "t", progress=False)  # kind knn_student
    overall = run.metrics["candidate"]["subsets"]["all"]["overall"]
    assert 0.45 < overall < 0.55
    assert run.test_set_hash == promotion.current_test_set_hash()
    assert not run.passed
    failed = {c["name"] for c in run.metrics["verdict"]["criteria"] if not c["passed"]}
    assert "overall_floor" in failed
    # the named baseline policy admits it as a comparison arm, and says so in the version
    with pytest.raises(Invalid, match="looser than the minimum 'gate-v2'"):
        promotion.run_gate(session, "good", "t", BASELINE_POLICY, progress=False)
    lowered = Settings(gate_policy_minimum="baseline-v2")  # an operator's explicit choice
    baseline = promotion.run_gate(
        session, "good", "t", BASELINE_POLICY, progress=False, settings=lowered
    )
    assert baseline.passed and baseline.policy_version.startswith("baseline-v2+")
    assert promotion.promote(session, "good", "t").gate_run_id == baseline.id


# --- API ------------------------------------------------------------------------------------------


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


LOOSE = {"version": "loose-1", "overall_floor": 0.4, "tool_final_floor": 0.3}


def test_api_gate_promote_conclude(client):
    for name, kind, config in (("teacher", "teacher", {}), ("knn", "knn_student", FIT)):
        body = {"name": name, "kind": kind, "config": config, "reference": kind == "teacher"}
        assert client.post("/v1/variants", json=body).status_code == 201
    broken = client.post("/v1/variants", json={"name": "broken", "kind": "knn_student"})
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["loc"] == ["config", "path"]
    assert client.get("/v1/variants/broken").status_code == 404
    accepted = client.post("/v1/variants/knn/gate", json={"actor": "dana"})
    assert accepted.status_code == 202, accepted.text  # a job: the evaluation runs after
    assert accepted.json()["kind"] == "gate" and accepted.json()["actor"] == "dana"
    failed = finished_job(client, accepted)
    assert failed["status"] == "succeeded" and failed["actor"] == "dana", failed
    assert failed["result"]["passed"] is False and failed["result"]["actor"] == "dana"
    refused = client.post("/v1/variants/knn/promote", json={})
    assert refused.status_code == 409
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["gate"] and "lower bound" in detail["msg"]
    bad_policy = client.post("/v1/variants/knn/gate", json={"policy": {"tool_final_floor": 2}})
    assert bad_policy.status_code == 422
    assert bad_policy.json()["detail"][0]["loc"] == ["policy", "version"]
    loose = client.post("/v1/variants/knn/gate", json={"policy": LOOSE})
    assert loose.status_code == 422, loose.text  # floors below the minimum gate-v2
    assert loose.json()["detail"][0]["loc"] == ["policy"]
    assert "overall_floor 0.4 < 0.6" in loose.json()["detail"][0]["msg"]
    client.app.state.abtest.settings = client.app.state.abtest.settings.model_copy(
        update={"gate_policy_minimum": "baseline-v2"}
    )  # the operator lowers the minimum: now the looser policy may run
    at_minimum = {**LOOSE, "overall_floor": 0.45, "tool_final_floor": 0.4}
    passed = finished_job(client, client.post("/v1/variants/knn/gate", json={"policy": at_minimum}))
    assert passed["result"]["passed"] is True, passed
    promoted = client.post("/v1/variants/knn/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["variant"]["status"] == "approved"
    assert promoted.json()["promotion"]["gate_run_id"] == passed["result"]["id"]
    runs = client.get("/v1/variants/knn/gate-runs").json()
    assert [r["passed"] for r in runs] == [True, False]
    assert client.get("/v1/variants/nobody/gate-runs").status_code == 404
    body = {
        "key": "exp",
        "arms": [
            {"name": "control", "variant": "teacher", "weight": 0.5, "control": True},
            {"name": "student", "variant": "knn", "weight": 0.5},
        ],
    }
    assert client.post("/v1/experiments", json=body).status_code == 201
    not_started = client.post("/v1/experiments/exp/conclude", json={"ship": "student"})
    assert not_started.status_code == 409
    assert client.post("/v1/experiments/exp/start").status_code == 200
    bad_arm = client.post("/v1/experiments/exp/conclude", json={"ship": "nope"})
    assert bad_arm.status_code == 422 and bad_arm.json()["detail"][0]["loc"] == ["ship"]
    no_data = client.post("/v1/experiments/exp/conclude", json={"ship": "student"})
    assert no_data.status_code == 409 and "no data" in no_data.json()["detail"][0]["msg"]
    no_reason = {"ship": "student", "override": True}
    assert client.post("/v1/experiments/exp/conclude", json=no_reason).status_code == 422
    forced = {"ship": "student", "override": True, "reason": "api test", "actor": "erin"}
    concluded = client.post("/v1/experiments/exp/conclude", json=forced)
    assert concluded.status_code == 200, concluded.text
    assert concluded.json()["champion"] == "knn"
    assert concluded.json()["experiment"]["status"] == "concluded"


# --- CLI ------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli(settings, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    return lambda *args: runner.invoke(cli_app, list(args))


def test_cli_gate_promote_conclude(cli, tmp_path, monkeypatch):
    teacher = ("variants", "register", "teacher", "--kind", "teacher", "--reference")
    assert cli(*teacher).exit_code == 0
    knn = ("variants", "register", "knn", "--kind", "knn_student", "--config", json.dumps(FIT))
    assert cli(*knn).exit_code == 0
    second = cli("variants", "register", "rec", "--kind", "recorded", "--reference")
    assert second.exit_code == 1 and "already the reference" in second.output
    failed = cli("gate", "knn", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["passed"] is False
    refused = cli("variants", "promote", "knn")
    assert refused.exit_code == 1
    assert "failed its latest gate run" in refused.output and "lower bound" in refused.output
    policy = tmp_path / "loose.json"
    policy.write_text(json.dumps({**LOOSE, "overall_floor": 0.45, "tool_final_floor": 0.4}))
    below = cli("gate", "knn", "--policy", str(policy))
    assert below.exit_code == 1 and "looser than the minimum 'gate-v2'" in below.output
    monkeypatch.setenv("ABTEST_GATE_POLICY_MINIMUM", "baseline-v2")  # the operator allows it
    get_settings.cache_clear()
    loose = cli("gate", "knn", "--policy", str(policy))
    assert loose.exit_code == 0, loose.output
    assert "PASSED" in loose.output and "loose-1+" in loose.output
    promoted = cli("variants", "promote", "knn", "--json")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["to_status"] == "approved"
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text('{"version": "x", "nonsense": 1}')
    result = cli("gate", "knn", "--policy", str(bad_policy))
    assert result.exit_code == 1 and "nonsense" in result.output
    created = cli(
        "experiments", "create", "exp", "--arm", "control=teacher:0.5*", "--arm", "s=knn:0.5"
    )
    assert created.exit_code == 0, created.output
    assert cli("experiments", "start", "exp").exit_code == 0
    refused = cli("experiments", "conclude", "exp", "--ship", "s")
    assert refused.exit_code == 1 and "no data" in refused.output
    concluded = cli(
        "experiments", "conclude", "exp", "--ship", "s", "--json", "--override", "--reason", "t"
    )
    assert concluded.exit_code == 0, concluded.output
    assert json.loads(concluded.stdout)["champion"] == "knn"
    shown = json.loads(cli("variants", "show", "knn", "--json").stdout)
    assert shown["status"] == "champion"
    again = cli("experiments", "conclude", "exp", "--ship", "s")
    assert again.exit_code == 1 and "already concluded" in again.output


def test_cli_evaluate_files(cli, tmp_path):
    truth_path = tmp_path / "truth.jsonl"
    write_records(SMALL, truth_path)
    pred_path = tmp_path / "pred.jsonl"
    rows = [r.to_json() for r in SMALL[:50]]
    rows[0]["filter"] = {"name": "???", "intensity": 3}
    pred_path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    result = cli(
        "evaluate", "--predictions", str(pred_path), "--truth", str(truth_path), "--json",
        "--subsets",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["subsets"]) == {"all", "r3", "r5"}
    assert data["subsets"]["all"]["parse_failure_rate"] == pytest.approx(11 / 60)
    assert data["matching"]["missing_predictions"] == 10
    assert data["matching"]["unreadable_lines"] == 1
    assert data["bootstrap"]["overall"]["low"] <= data["subsets"]["all"]["overall"]
    table = cli("evaluate", "--predictions", str(pred_path), "--truth", str(truth_path))
    assert table.exit_code == 0 and "overall" in table.output
    missing = cli("evaluate", "--predictions", str(pred_path), "--truth", str(tmp_path / "x"))
    assert missing.exit_code == 1 and "no such file" in missing.output
    neither = cli("evaluate", "--truth", str(truth_path))
    assert neither.exit_code == 1 and "--predictions" in neither.output


def test_cli_evaluate_variant(cli, tmp_path):
    knn = ("variants", "register", "knn", "--kind", "knn_student", "--config", json.dumps(FIT))
    assert cli(*knn).exit_code == 0
    truth_path = tmp_path / "small.jsonl"
    write_records(SMALL, truth_path)
    result = cli("evaluate", "--variant", "knn", "--test-set", str(truth_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["subsets"]["all"]["n"] == len(SMALL)
    assert data["latency_p95_ms"] is not None
    unknown = cli("evaluate", "--variant", "nobody")
    assert unknown.exit_code == 1 and "no variant named 'nobody'" in unknown.output
