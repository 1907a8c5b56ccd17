"""The typed report keeps the JSON the dict code wrote, reads stored reports back, refuses junk.

The golden files in `golden/` were written by the dict-building code (before the models) from
the counts in `report_scenarios`; the models must reproduce them byte for byte.
"""

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from analysis import report_render, stats
from analysis.report_model import (
    ArmRate,
    Decision,
    DecisionChanged,
    Guardrail,
    NoPower,
    PowerEstimate,
    PreviousReport,
    Report,
    assemble_report,
)
from tests.analysis.report_scenarios import SCENARIOS, golden_text


def assembled(name: str) -> Report:
    s = SCENARIOS[name]()
    previous = PreviousReport.model_validate(s["previous"]) if s["previous"] else None
    return assemble_report(
        s["info"], s["daily"], s["guardrails"], s["segments"], s["period_end"], previous,
        s["now"], pending=s["pending"], periods=s["periods"],
    )  # fmt: skip


def stored(name: str) -> Report:
    """The report as the old code stored it (its JSON), read back."""
    return Report.model_validate_json(golden_text(f"{name}.json"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_assembled_report_is_the_json_the_dict_code_wrote(name):
    report = assembled(name)
    assert report_render.render_json(report) + "\n" == golden_text(f"{name}.json")
    assert report.model_dump(mode="json") == json.loads(golden_text(f"{name}.json"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_report_stored_by_the_old_code_loads_and_writes_back_unchanged(name):
    report = stored(name)
    assert report == assembled(name)
    assert report_render.render_json(report) + "\n" == golden_text(f"{name}.json")


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize(
    ("suffix", "render"),
    [
        ("md", report_render.render_markdown),
        ("html", lambda r: report_render.render_html(r, images={})),
        ("panel.html", lambda r: report_render.render_panel(r, images={})),
    ],
)
def test_renderers_write_what_they_wrote_from_the_dict(name, suffix, render):
    assert render(assembled(name)) == golden_text(f"{name}.{suffix}")


def test_plots_come_from_the_typed_timeline():
    images = report_render.plot_images(assembled("three_arms"))
    assert set(images) == {"completion_rate", "relative_difference"}
    assert report_render.plot_images(assembled("no_data")) == {}


def test_undefined_numbers_become_null_and_numpy_scalars_plain_numbers():
    arm = ArmRate(
        name="a", control=True, weight=np.float64(0.5), starts=np.int64(0), exports=0,
        rate=math.nan, ci_low=-math.inf, ci_high=np.float64(math.inf),
    )  # fmt: skip
    dumped = arm.model_dump(mode="json")
    assert dumped["rate"] is dumped["ci_low"] is dumped["ci_high"] is None
    assert type(dumped["weight"]) is float and type(dumped["starts"]) is int
    json.dumps(dumped, allow_nan=False)


def test_an_int_keeps_its_spelling_and_a_float_its_own():
    row = Guardrail(
        arm="a", calls=0, projects=0, latency_p50_ms=12, latency_p95_ms=12.0,
        fallback_rate=None, error_rate=None, cache_hit_rate=None, cost_usd=0, cost_per_project=0.0,
    )  # fmt: skip
    text = row.model_dump_json()
    assert '"latency_p50_ms":12,' in text and '"latency_p95_ms":12.0' in text
    assert '"cost_usd":0,' in text and '"cost_per_project":0.0' in text


def test_the_decision_vocabulary_is_the_statistics_one():
    assert {d.value for d in Decision} == set(stats.DECISIONS)


def test_a_stored_report_with_an_unknown_decision_is_refused_naming_the_field():
    body = json.loads(golden_text("three_arms.json"))
    body["decision"] = "ship it"
    with pytest.raises(ValidationError) as caught:
        Report.model_validate(body)
    assert [e["loc"] for e in caught.value.errors()] == [("decision",)]


def test_a_stored_report_missing_a_part_is_refused_naming_it():
    body = json.loads(golden_text("no_data.json"))
    del body["srm"]
    body["arms"][1]["starts"] = "many"
    with pytest.raises(ValidationError) as caught:
        Report.model_validate(body)
    assert {e["loc"] for e in caught.value.errors()} == {("srm",), ("arms", 1, "starts")}


def test_power_rows_keep_their_two_shapes():
    three, empty = stored("three_arms"), stored("no_data")
    assert all(isinstance(p, PowerEstimate) for p in three.power)
    (none,) = empty.power
    assert isinstance(none, NoPower)
    assert set(none.model_dump(mode="json")) == {"arm", "message", "power_reached", "days_elapsed"}
    half = {"arm": "a", "message": "m", "power_reached": 0.5, "days_elapsed": 1.0, "kind": "x"}
    with pytest.raises(ValidationError):  # neither a full estimate nor the no-power row
        NoPower.model_validate(half)
    with pytest.raises(ValidationError):
        PowerEstimate.model_validate(half)


def test_labels_name_the_margin_only_when_there_is_one():
    assert "non_inferiority" in assembled("three_arms").model_dump(mode="json")["labels"]
    labels = assembled("no_data").model_dump(mode="json")["labels"]
    assert "non_inferiority" not in labels and assembled("no_data").labels.non_inferiority is None


def test_a_decision_change_is_written_with_the_key_from():
    change = DecisionChanged(
        arm="t", from_="inconclusive", to=Decision.TREATMENT_BETTER,
        previous_period_end="2026-11-02T00:00:00+00:00", message="m",
    )  # fmt: skip
    dumped = change.model_dump(mode="json")
    assert dumped["from"] == "inconclusive" and "from_" not in dumped
    assert DecisionChanged.model_validate(dumped) == change


def test_the_previous_report_is_read_leniently():
    """Call-outs only need a few fields: an old or partial stored body still feeds them."""
    previous = PreviousReport.model_validate({"comparisons": [{"arm": "t", "decision": "x"}]})
    assert previous.srm.flagged is False and previous.period_end is None
    assert (
        PreviousReport.model_validate(json.loads(golden_text("three_arms.json"))).srm.flagged
        is False
    )


def test_reports_are_immutable():
    report = assembled("no_data")
    with pytest.raises(ValidationError):
        report.decision = Decision.TREATMENT_BETTER  # type: ignore[misc]
