"""The gate policy: every criterion can pass and fail; policies are validated and versioned."""

from __future__ import annotations

import json

import pytest

from analysis.gate import GatePolicy, PolicyError, evaluate_gate, load_policy
from analysis.offline import Interval, OfflineScores, ToolScores


def scores(overall: float, finals=(0.8, 0.8, 0.8), parse_failure_rate: float = 0.0):
    tools = {
        tool: ToolScores(0.9, 0.9, 0.9, 0.8, final, 0.8, 10, 10, 9)
        for tool, final in zip(("adjust", "selective_adjust", "filter"), finals, strict=True)
    }
    return OfflineScores(tools, overall, 1000, parse_failure_rate)


def by_name(verdict):
    return {c.name: c for c in verdict.criteria}


def test_candidate_close_to_champion_passes():
    verdict = evaluate_gate(
        GatePolicy(), scores(0.72), scores(0.73), Interval(-0.01, -0.03, 0.01), 900.0
    )
    assert verdict.passed
    assert verdict.failures == []
    assert set(by_name(verdict)) == {
        "overall_vs_champion",
        "difference_lower_bound",
        "final.adjust",
        "final.selective_adjust",
        "final.filter",
        "parse_failure_rate",
        "latency_p95_ms",
    }
    assert verdict.policy_version.startswith("gate-v1+")


def test_overall_more_than_the_allowed_drop_below_champion_fails():
    verdict = evaluate_gate(
        GatePolicy(), scores(0.70), scores(0.73), Interval(-0.03, -0.035, -0.02), 900.0
    )
    assert not verdict.passed
    assert [c.name for c in verdict.criteria if not c.passed] == ["overall_vs_champion"]
    assert "0.7000 < 0.7100" in verdict.failures[0]


def test_bootstrap_lower_bound_below_limit_fails():
    verdict = evaluate_gate(
        GatePolicy(), scores(0.72), scores(0.73), Interval(-0.01, -0.05, 0.03), 900.0
    )
    assert [c.name for c in verdict.criteria if not c.passed] == ["difference_lower_bound"]
    # the bound is strict: exactly -0.04 fails too
    verdict = evaluate_gate(
        GatePolicy(), scores(0.72), scores(0.73), Interval(-0.01, -0.04, 0.03), 900.0
    )
    assert not by_name(verdict)["difference_lower_bound"].passed


def test_tool_floor_parse_failures_and_latency_fail_independently():
    verdict = evaluate_gate(
        GatePolicy(),
        scores(0.72, finals=(0.9, 0.49, 0.9), parse_failure_rate=0.01),
        scores(0.72),
        Interval(0.0, -0.01, 0.01),
        2000.0,
    )
    failed = [c.name for c in verdict.criteria if not c.passed]
    assert failed == ["final.selective_adjust", "parse_failure_rate", "latency_p95_ms"]
    assert len(verdict.failures) == 3
    assert any("selective_adjust final score 0.4900 < 0.5000" in f for f in verdict.failures)


def test_unmeasured_latency_fails_unless_the_policy_has_no_budget():
    verdict = evaluate_gate(GatePolicy(), scores(0.72), None, None, None)
    assert not by_name(verdict)["latency_p95_ms"].passed
    verdict = evaluate_gate(GatePolicy(latency_p95_budget_ms=None), scores(0.72), None, None, None)
    assert "latency_p95_ms" not in by_name(verdict)
    assert verdict.passed


def test_teacher_champion_uses_the_absolute_floor():
    verdict = evaluate_gate(GatePolicy(), scores(0.61), None, None, 10.0)
    assert verdict.passed
    assert "overall_vs_champion" not in by_name(verdict)
    assert by_name(verdict)["overall_vs_teacher"].threshold == 0.6
    verdict = evaluate_gate(GatePolicy(), scores(0.59), None, None, 10.0)
    assert [c.name for c in verdict.criteria if not c.passed] == ["overall_vs_teacher"]


def test_student_champion_needs_a_difference_interval():
    with pytest.raises(ValueError, match="difference"):
        evaluate_gate(GatePolicy(), scores(0.7), scores(0.7), None, 1.0)


def test_policy_version_includes_a_fingerprint_of_every_setting():
    default = GatePolicy()
    assert default.full_version == GatePolicy().full_version
    edited = GatePolicy(tool_final_floor=0.3)
    assert edited.version == default.version
    assert edited.full_version != default.full_version
    assert len(edited.full_version) <= 40


def test_policy_validation_names_the_setting():
    with pytest.raises(PolicyError, match="tool_final_floor"):
        GatePolicy(tool_final_floor=1.5)
    with pytest.raises(PolicyError, match="bootstrap_resamples"):
        GatePolicy(bootstrap_resamples=10)
    with pytest.raises(PolicyError, match="max_overall_drop"):
        GatePolicy(max_overall_drop="a lot")
    with pytest.raises(PolicyError, match="version"):
        GatePolicy(version="")
    with pytest.raises(PolicyError, match="floor_of_everything"):
        GatePolicy.from_mapping({"version": "x", "floor_of_everything": 1})
    with pytest.raises(PolicyError, match="version"):
        GatePolicy.from_mapping({"tool_final_floor": 0.4})


def test_load_policy_from_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"version": "strict-1", "tool_final_floor": 0.7}))
    policy = load_policy(path)
    assert policy.version == "strict-1"
    assert policy.tool_final_floor == 0.7
    assert policy.max_overall_drop == GatePolicy().max_overall_drop
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(tmp_path / "bad.json")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.json")


def test_verdict_as_dict_is_json():
    verdict = evaluate_gate(GatePolicy(), scores(0.5), None, None, 1.0)
    data = json.loads(json.dumps(verdict.as_dict()))
    assert data["passed"] is False
    assert data["failures"] == verdict.failures
