"""Reports on both backends: numbers, storage without duplicates, callouts, CLI, scheduler."""

import base64
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from abtest import db, report_service
from abtest.cli import app
from abtest.cli.reports_cmds import build_scheduler
from abtest.errors import Invalid, NotFound
from abtest.settings import get_settings
from abtest.tables import Report
from analysis import report_render, stats
from analysis.report_model import DecisionChanged
from tests.analysis.report_scenarios import golden_text
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
LAST_DAY = (DAY0 + timedelta(days=3)).date()
runner = CliRunner()


@pytest.fixture
def seeded(engine):
    seeded = create_experiment(engine, settings={"margin": "-5%"})
    truth = simulate(engine, seeded, {"control": 0.9, "treatment": 0.9}, 80, 4, seed=5)
    return seeded, truth


def stored_count(engine):
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Report))


def run(engine, as_of=LAST_DAY, key="exp"):
    with db.session_scope(engine) as session:
        return report_service.run_report(session, key, as_of)


CLOSED = LAST_DAY + timedelta(days=2)  # every project's 24 h export window has closed


def test_report_numbers_and_shape(engine, seeded):
    _, truth = seeded
    model, stored = run(engine, CLOSED)
    report = model.model_dump(mode="json")
    json.dumps(report, allow_nan=False)  # strictly JSON: no NaN or infinity
    arms = {a["name"]: (a["exports"], a["starts"]) for a in report["arms"]}
    assert arms == truth
    assert all(a["pending"] == 0 for a in report["arms"])
    (exports_c, starts_c), (exports_t, starts_t) = truth["control"], truth["treatment"]
    expected = stats.compare(exports_c, starts_c, exports_t, starts_t, 0.05)
    (comparison,) = report["comparisons"]
    assert comparison["difference"] == pytest.approx(expected.difference, abs=1e-12)
    assert comparison["decision"] in stats.DECISIONS
    assert comparison["scale"] == "relative" and report["margin"]["label"] == "-5% relative"
    assert comparison["decision_interval"] == comparison["sequential"]["ratio_ci"]
    assert "always-valid" in comparison["decision_interval_label"]
    assert comparison["sequential"]["looks"] == 1
    # The always-valid interval is wider than the fixed-horizon one (Newcombe at z = 1.96).
    low, high = stats.newcombe_difference(exports_c, starts_c, exports_t, starts_t, 1.96)
    seq_low, seq_high = comparison["sequential"]["difference_ci"]
    assert seq_low < low and seq_high > high
    assert report["decision"] == comparison["decision"] == stored.decision
    assert report["as_of"] == CLOSED.isoformat() and not report["srm"]["flagged"]
    assert [t["day"] for t in report["timeline"]][-1] == LAST_DAY.isoformat()
    last = report["timeline"][-1]
    assert last["arms"]["control"]["starts"] == starts_c
    # The last point of the plotted path is the report's always-valid ratio interval.
    ratio_low, ratio_high = comparison["sequential"]["ratio_ci"]
    assert last["relative"]["treatment"]["ci_low"] == pytest.approx(ratio_low - 1)
    assert last["relative"]["treatment"]["ci_high"] == pytest.approx(ratio_high - 1)
    assert {g["arm"] for g in report["guardrails"]} == {"control", "treatment"}
    assert report["guardrails"][0]["cost_per_project"] == pytest.approx(0.002)
    assert set(report["segments"]) == {"platform", "country", "popularity"}
    platform_starts = sum(
        a["starts"] for row in report["segments"]["platform"] for a in row["arms"]
    )
    assert platform_starts == starts_c + starts_t
    (power,) = report["power"]
    assert 0 <= power["power_reached"] <= 1 and power["effect"] == -0.05
    assert power["kind"] == "non-inferiority"
    labels = report["labels"]
    assert "pts" in labels["difference"] and "%" in labels["ratio"]
    assert "mixture SPRT" in labels["p_value"] and "alpha/2" in labels["non_inferiority"]


def test_young_projects_are_pending_until_their_window_closes(engine, seeded):
    _, truth = seeded
    model, _ = run(engine, LAST_DAY)  # the last two start days are still in their window
    report = model.model_dump(mode="json")
    pending = {a["name"]: a["pending"] for a in report["arms"]}
    starts = {a["name"]: a["starts"] for a in report["arms"]}
    assert sum(pending.values()) > 0
    for arm, (_, total) in truth.items():
        assert starts[arm] + pending[arm] == total
    assert any("pending" in note for note in report["notes"])
    assert "pending" in report_render.render_markdown(model)


def test_reading_twice_gives_identical_numbers(engine, seeded):
    first, _ = run(engine, LAST_DAY - timedelta(days=1))
    again, _ = run(engine, LAST_DAY - timedelta(days=1))  # now with a stored previous report
    third, _ = run(engine, LAST_DAY)
    fourth, _ = run(engine, LAST_DAY)
    for a, b in ((first, again), (third, fourth)):
        for part in ("arms", "comparisons", "power", "srm", "horizon", "timeline", "decision"):
            assert getattr(a, part) == getattr(b, part), part
        assert not [c for c in b.callouts if c.kind == "decision_changed"]
    assert first.horizon == third.horizon


def test_no_report_for_a_period_before_the_start(engine, seeded):
    before = (DAY0 - timedelta(days=2)).date()
    with pytest.raises(Invalid, match="before the experiment started"):
        run(engine, before)
    stored = report_service.run_all(engine, as_of=before)
    assert stored == [] and stored_count(engine) == 0


def test_rerunning_a_period_updates_instead_of_duplicating(engine, seeded):
    _, first = run(engine)
    _, again = run(engine)
    assert first.created and not again.created
    assert stored_count(engine) == 1
    run(engine, LAST_DAY - timedelta(days=1))
    assert stored_count(engine) == 2
    with db.session_scope(engine) as session:
        periods = [r.period_end.date() for r in report_service.stored_reports(session, "exp")]
    assert periods == [LAST_DAY, LAST_DAY + timedelta(days=1)]


def test_changed_decision_is_called_out_at_the_top(engine, seeded):
    run(engine, LAST_DAY - timedelta(days=1))
    with db.session_scope(engine) as session:
        row = session.scalar(select(Report))
        body = dict(row.body)
        body["comparisons"] = [dict(body["comparisons"][0], decision="treatment better")]
        row.body = body
    model, _ = run(engine)
    report = model.model_dump(mode="json")
    changed = [c for c in report["callouts"] if c["kind"] == "decision_changed"]
    assert changed and changed[0]["from"] == "treatment better"
    assert changed[0]["to"] == report["comparisons"][0]["decision"]
    markdown = report_render.render_markdown(model).splitlines()
    assert "DECISION_CHANGED" in markdown[2]


@SQLITE_ONLY  # rendering does not depend on the backend
def test_sample_ratio_mismatch_is_flagged_loudly(engine):
    seeded = create_experiment(engine)
    rows, assigned = [], []
    for i in range(400):
        arm = "control" if i < 300 else "treatment"
        assigned.append(assignment(seeded, f"s{i}", arm))
        rows.append(event(seeded, "start", f"s{i}", arm, DAY0))
    insert(engine, rows, assigned)
    model, stored = run(engine)
    report = model.model_dump(mode="json")
    assert report["srm"]["flagged"] and stored.srm
    assert report["decision"] == stats.SRM_DO_NOT_TRUST
    assert report["callouts"][0]["kind"] == "srm"
    assert "sample ratio mismatch" in report_render.render_markdown(model).splitlines()[2]
    html = report_render.render_html(model)
    assert "SRM\nFLAGGED" in html


@SQLITE_ONLY  # rendering does not depend on the backend
def test_html_report_embeds_both_plots(engine, seeded):
    model, _ = run(engine)
    report = model.model_dump(mode="json")
    images = report_render.plot_images(model)
    assert set(images) == {"completion_rate", "relative_difference"}
    for png in images.values():
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    html = report_render.render_html(model, images)
    assert html.count("data:image/png;base64,") == 2
    assert "control" in html and report["decision"] in html


@SQLITE_ONLY  # rendering does not depend on the backend
def test_experiment_without_events_gives_an_empty_report(engine):
    create_experiment(engine)
    model, _ = run(engine)
    report = model.model_dump(mode="json")
    assert report["decision"] == stats.INSUFFICIENT_DATA
    assert report["timeline"] == [] and report_render.plot_images(model) == {}
    assert "insufficient data" in report_render.render_markdown(model)


def test_bad_requests_change_nothing(engine, seeded):
    with pytest.raises(NotFound) as info:
        run(engine, key="nope")
    assert info.value.field == "key"
    with pytest.raises(Invalid) as info:
        run(engine, as_of=date.today() + timedelta(days=3))
    assert info.value.field == "as_of"
    with db.session_scope(engine) as session, pytest.raises(Invalid) as info:
        report_service.build(session, "exp", LAST_DAY, segments=("platform; drop",))
    assert info.value.field == "segments"
    assert stored_count(engine) == 0


def test_results_frame(engine, seeded):
    _, truth = seeded
    frame = report_service.results_frame(engine, "exp", CLOSED)
    assert list(frame["arm"]) == ["control", "treatment"]
    assert frame.set_index("arm").loc["treatment", "starts"] == truth["treatment"][1]
    assert frame["decision"].iloc[1] in stats.DECISIONS
    assert list(frame["pending"]) == [0, 0] and frame["scale"].iloc[1] == "relative"
    timeline = report_service.timeline_frame(engine, "exp", CLOSED)
    assert len(timeline) == 8 and set(timeline["arm"]) == {"control", "treatment"}


def test_run_all_reports_running_experiments_yesterday_and_today(engine, seeded):
    create_experiment(engine, key="draft", start=False)
    stored = report_service.run_all(engine)
    assert {s.key for s in stored} == {"exp"}
    assert len(stored) == 2 and stored_count(engine) == 2


@pytest.fixture
def cli(settings, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()

    def invoke(*args, env=None):
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_cli_report_formats_and_storage(cli, settings, tmp_path):
    engine = db.get_engine(settings.database_url)
    seeded = create_experiment(engine)
    simulate(engine, seeded, {"control": 0.8, "treatment": 0.8}, 30, 2)
    result = cli("report", "exp", "--as-of", "2026-11-02")
    assert result.exit_code == 0, result.output
    assert "# Experiment exp — report as of 2026-11-02" in result.output
    out = tmp_path / "r.json"
    result = cli("report", "exp", "--format", "json", "--out", str(out), "--as-of", "2026-11-02")
    assert result.exit_code == 0, result.output
    assert "updated report" in result.output
    assert json.loads(out.read_text())["arms"][0]["name"] == "control"
    html = tmp_path / "r.html"
    assert cli("report", "exp", "-f", "html", "-o", str(html)).exit_code == 0
    assert html.read_text().count("data:image/png") == 2
    assert stored_count(engine) == 2


def test_cli_errors_are_clear_and_store_nothing(cli, settings, tmp_path):
    engine = db.get_engine(settings.database_url)
    create_experiment(engine)
    cases = [
        (("report", "exp", "--format", "pdf"), "format"),
        (("report", "exp", "--as-of", "yesterday"), "as-of"),
        (("report", "exp", "--out", str(tmp_path / "missing" / "r.md")), "does not exist"),
        (("report", "nope"), "no experiment"),
        (("report", "exp", "--as-of", "2999-01-01"), "in the future"),
        (("reports", "run"), "--all"),
        (("reports", "run", "exp", "--all"), "--all"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 1, args
        assert message in result.output, (args, result.output)
    assert stored_count(engine) == 0


def test_cli_reports_run_all_and_list(cli, settings):
    engine = db.get_engine(settings.database_url)
    seeded = create_experiment(engine)
    simulate(engine, seeded, {"control": 0.8, "treatment": 0.8}, 20, 2)
    result = cli("reports", "run", "--all", "--as-of", "2026-11-02", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["experiment"] == "exp" and row["stored"] == "new"
    again = json.loads(cli("reports", "run", "exp", "--as-of", "2026-11-02", "--json").output)
    assert again[0]["stored"] == "updated"
    listed = json.loads(cli("reports", "list", "exp", "--json").output)
    assert len(listed) == 1


def test_scheduler_once_runs_the_reports(cli, settings):
    engine = db.get_engine(settings.database_url)
    create_experiment(engine)
    result = cli("scheduler", "--once")
    assert result.exit_code == 0, result.output
    assert "stored 2 report(s)" in result.output
    assert stored_count(engine) == 2


@SQLITE_ONLY  # rendering does not depend on the backend
def test_scheduler_uses_the_cron_setting(cli):
    scheduler = build_scheduler("30 5 * * 1", lambda: None)
    (job,) = scheduler.get_jobs()
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert fields["hour"] == "5" and fields["minute"] == "30" and fields["day_of_week"] == "1"
    result = cli("scheduler", "--once", env={"ABTEST_REPORT_CRON": "every day"})
    assert result.exit_code == 1 and "ABTEST_REPORT_CRON" in result.output


def test_ramp_is_checked_per_allocation_period_and_stratified(engine):
    """A healthy ramp 0.8/0.2 -> 0.5/0.5 with a rising rate: no SRM, no pooled 'winner'."""
    import random

    from abtest import services
    from abtest.tables import AllocationPeriod

    seeded = create_experiment(
        engine, key="ramp", arms=(("control", 0.8), ("treatment", 0.2)), settings={"margin": None}
    )
    rng = random.Random(3)
    rows, assigned = [], []
    for day, (share, rate) in enumerate([(0.2, 0.3)] * 3 + [(0.5, 0.7)] * 3):
        for i in range(300):
            project = f"r{day}-{i}"
            arm = "treatment" if rng.random() < share else "control"
            at = DAY0 + timedelta(days=day, minutes=i)
            assigned.append(assignment(seeded, project, arm, at))
            rows.append(event(seeded, "start", project, arm, at))
            if rng.random() < rate:
                rows.append(event(seeded, "export", project, arm, at + timedelta(minutes=5)))
    insert(engine, rows, assigned)
    with db.session_scope(engine) as session:
        services.update_arm_weights(session, "ramp", {"control": 0.5, "treatment": 0.5})
        periods = session.scalars(
            select(AllocationPeriod)
            .where(AllocationPeriod.experiment_id == seeded.experiment_id)
            .order_by(AllocationPeriod.version)
        ).all()
        assert [p.version for p in periods] == [0, 1]  # recorded at the start and the change
        periods[0].started_at, periods[1].started_at = DAY0, DAY0 + timedelta(days=3)
    model, _ = run(engine, (DAY0 + timedelta(days=8)).date(), key="ramp")
    report = model.model_dump(mode="json")
    assert not report["srm"]["flagged"] and len(report["srm"]["periods"]) == 2
    assert any("stratified" in note for note in report["notes"])
    (comparison,) = report["comparisons"]
    assert comparison["decision"] not in ("treatment better", "srm — do not trust")
    # pooled, the same counts look like a broken split and a better treatment
    pooled = stats.decide(
        (report["arms"][0]["exports"], report["arms"][0]["starts"]),
        [(report["arms"][1]["exports"], report["arms"][1]["starts"])],
        weights=[0.5, 0.5],
    )
    assert pooled.srm.flagged
    assert "would read: treatment better" in pooled.treatments["treatment"].notes[0]


@SQLITE_ONLY
@pytest.mark.parametrize("kind", ["empty", "zero-start arm", "zero exports"])
def test_degenerate_experiments_render_in_every_format(engine, kind):
    seeded = create_experiment(engine, key="odd")
    if kind == "zero-start arm":
        insert(engine, [event(seeded, "start", f"z{i}", "control", DAY0) for i in range(5)])
    if kind == "zero exports":
        insert(engine, [event(seeded, "start", f"z{i}", ("control", "treatment")[i % 2], DAY0)
                        for i in range(10)])  # fmt: skip
    model, _ = run(engine, CLOSED, key="odd")
    report = model.model_dump(mode="json")
    json.dumps(report, allow_nan=False)
    assert report["comparisons"][0]["decision"] in stats.DECISIONS
    for fmt in ("md", "html", "json"):
        assert report_render.render(model, fmt)
    result = runner.invoke(
        app, ["report", "odd", "--as-of", CLOSED.isoformat(), "--format", "md"],
        env={"ABTEST_DATABASE_URL": str(engine.url), "COLUMNS": "120"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Decision:" in result.output


def test_a_report_stored_by_the_old_code_loads_and_feeds_the_callouts(engine, seeded):
    """A body the dict code wrote (a literal old-format document) in the reports table."""
    experiment, _ = seeded
    body = json.loads(golden_text("three_arms.json"))
    body["srm"]["flagged"] = True
    body["comparisons"][0].update(arm="treatment", decision=stats.SRM_DO_NOT_TRUST)
    period_end = datetime.fromisoformat(body["period_end"])  # before LAST_DAY's period
    with db.session_scope(engine) as session:
        session.add(
            Report(
                experiment_id=experiment.experiment_id, period_end=period_end,
                decision=body["decision"], srm=True, body=body, created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    with db.session_scope(engine) as session:
        old = report_service.latest_report(session, "exp")
    assert old is not None and old.model_dump(mode="json") == body
    model, _ = run(engine)
    srm_cleared, changed = model.callouts  # the SRM has cleared, so has its decision
    assert srm_cleared.kind == "srm_cleared" and isinstance(changed, DecisionChanged)
    assert changed.from_ == stats.SRM_DO_NOT_TRUST and changed.arm == "treatment"
    assert changed.previous_period_end == body["period_end"]


def test_a_stored_report_reads_back_as_the_model_it_was(engine, seeded):
    model, _ = run(engine)
    with db.session_scope(engine) as session:
        assert report_service.latest_report(session, "exp") == model


def test_an_unreadable_previous_report_leaves_out_its_callouts_not_the_report(engine, seeded):
    """A stored body that no longer reads (edited by hand: a decision that is not one) must not
    take down the next report; the report is built without callouts against it."""
    experiment, _ = seeded
    body = json.loads(golden_text("three_arms.json"))
    body["comparisons"][0]["decision"] = 42
    with db.session_scope(engine) as session:
        session.add(
            Report(
                experiment_id=experiment.experiment_id,
                period_end=datetime.fromisoformat(body["period_end"]),
                decision="?", srm=False, body=body, created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    model, _ = run(engine)
    assert model.arms and model.callouts == []
