"""Analysts' API on both backends: experiments, results with segments, stored reports, 4xx."""

import json

import pytest
from fastapi.testclient import TestClient

from abtest import db, report_service
from abtest.api import create_app
from analysis import stats
from analysis.report_model import Report
from tests.analysis.report_scenarios import golden_text
from tests.online_data import create_experiment, simulate


@pytest.fixture
def seeded(settings):
    engine = db.get_engine(settings.database_url)
    seeded = create_experiment(engine, settings={"margin": "-3%"})
    truth = simulate(engine, seeded, {"control": 0.85, "treatment": 0.8}, 60, 3, seed=2)
    return engine, truth


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_list_experiments(client, seeded):
    (experiment,) = client.get("/v1/experiments").json()
    assert experiment["key"] == "exp" and experiment["status"] == "running"
    assert client.get("/v1/experiments", params={"status": "draft"}).json() == []


def test_results_with_segments(client, seeded):
    _, truth = seeded
    # data on Nov 1-3: every 24 h export window has closed by the end of Nov 5
    response = client.get("/v1/experiments/exp/results", params={"as_of": "2026-11-05"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {a["name"]: (a["exports"], a["starts"]) for a in body["arms"]} == truth
    assert body["comparisons"][0]["decision"] in stats.DECISIONS
    assert body["margin"] == {"value": -0.03, "scale": "relative", "label": "-3% relative"}
    assert body["srm"]["flagged"] is False
    again = client.get("/v1/experiments/exp/results", params={"as_of": "2026-11-05"}).json()
    for part in ("arms", "comparisons", "power", "srm", "horizon", "timeline"):
        assert again[part] == body[part]
    assert set(body["segments"]) == {"platform", "country", "popularity"}
    only = client.get("/v1/experiments/exp/results", params={"segments": "country"}).json()
    assert set(only["segments"]) == {"country", "popularity"}
    countries = {row["segment"] for row in only["segments"]["country"]}
    assert countries == {"us", "de", "fr"}


def test_stored_reports_listing(client, seeded):
    engine, _ = seeded
    with db.session_scope(engine) as session:
        report_service.run_report(session, "exp")
    (row,) = client.get("/v1/experiments/exp/reports").json()
    assert row["decision"] in stats.DECISIONS


@pytest.mark.parametrize(
    ("path", "params", "status", "loc"),
    [
        ("/v1/experiments/nope/results", {}, 404, ["key"]),
        ("/v1/experiments/exp/results", {"as_of": "2999-01-01"}, 422, ["as_of"]),
        ("/v1/experiments/exp/results", {"as_of": "soon"}, 422, ["query", "as_of"]),
        ("/v1/experiments/exp/results", {"segments": "a b"}, 422, ["segments"]),
        ("/v1/experiments/nope/reports", {}, 404, ["key"]),
    ],
)
def test_bad_requests_name_the_field(client, seeded, path, params, status, loc):
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert client.get("/v1/experiments/exp/reports").json() == []  # nothing was stored


def test_dashboard_lists_experiments_and_panels(client, seeded):
    engine, truth = seeded
    create_experiment(engine, key="draft-one", start=False)
    response = client.get("/dashboard")
    assert response.status_code == 200
    html = response.text
    assert "draft-one" in html  # listed, but no panel without traffic
    assert html.count('class="experiment"') == 1
    assert html.count("data:image/png;base64,") == 2
    rate = truth["control"][0] / truth["control"][1]
    assert f"{100 * rate:.2f}%" in html
    assert "SRM ok" in " ".join(html.split())


def _empty_and_degenerate(engine):
    """Experiments with no projects, a zero-start arm and zero-export arms."""
    from tests.online_data import DAY0, assignment, event, insert

    create_experiment(engine, key="empty")
    one_sided = create_experiment(engine, key="one-sided")
    rows = [event(one_sided, "start", f"o{i}", "control", DAY0) for i in range(30)]
    insert(engine, rows, [assignment(one_sided, f"o{i}", "control") for i in range(30)])
    nothing = create_experiment(engine, key="no-exports")
    rows = [
        event(nothing, "start", f"n{i}", "control" if i % 2 else "treatment", DAY0)
        for i in range(40)
    ]
    insert(engine, rows)


@pytest.mark.parametrize("key", ["empty", "one-sided", "no-exports"])
def test_degenerate_experiments_render_in_the_api(client, seeded, key):
    engine, _ = seeded
    _empty_and_degenerate(engine)
    response = client.get(f"/v1/experiments/{key}/results")
    assert response.status_code == 200, response.text
    body = response.json()
    (comparison,) = body["comparisons"]
    # 30 starts all in control at weights 0.5/0.5: the SRM check rightly overrides
    expected = {"empty": "insufficient data", "one-sided": "srm — do not trust"}
    if key in expected:
        assert comparison["decision"] == expected[key]
        if key == "one-sided":
            assert "insufficient data" in comparison["notes"][0]
    else:  # 0% in both arms: nothing can be excluded with 20 projects an arm
        assert comparison["decision"] == "underpowered"
        assert comparison["difference_ci"][0] is not None
    html = client.get("/dashboard")
    assert html.status_code == 200, html.text
    assert f'data-key="{key}"' in html.text


def test_dashboard_shows_what_the_report_shows(client, seeded):
    response = client.get("/dashboard")
    html = " ".join(response.text.split())
    for needle in ("Guardrails", "Segments", "Power (the deciding test", "pts", "% of control",
                   "Decided on:", "export window", "pending"):  # fmt: skip
        assert needle in html, needle
    assert "p (adjusted)" not in html


def test_results_are_the_report_model_and_say_so_in_the_schema(client, seeded):
    body = client.get("/v1/experiments/exp/results", params={"as_of": "2026-11-05"}).json()
    assert Report.model_validate(body).model_dump(mode="json") == body
    # the same fields, in the same order, as the report the dict code wrote
    assert list(body) == list(json.loads(golden_text("three_arms.json")))
    paths = client.get("/openapi.json").json()["paths"]
    ok = paths["/v1/experiments/{key}/results"]["get"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/Report"}
    listing = paths["/v1/experiments/{key}/reports"]["get"]["responses"]["200"]["content"]
    assert listing["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/StoredSummary"
    }


def test_stored_reports_are_listed_as_before(client, seeded):
    engine, _ = seeded
    with db.session_scope(engine) as session:
        report_service.run_report(session, "exp")
    with db.session_scope(engine) as session:
        (stored,) = report_service.stored_reports(session, "exp")
        expected = {
            "period_end": stored.period_end.isoformat(),
            "decision": stored.decision,
            "srm": stored.srm,
            "created_at": stored.created_at.isoformat(),
        }
    assert client.get("/v1/experiments/exp/reports").json() == [expected]
