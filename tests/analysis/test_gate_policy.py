"""The gate policy: every criterion can pass and fail; policies are validated and versioned."""

from __future__ import annotations

import json

import pytest

from analysis.gate_policy import GatePolicy, PolicyError, evaluate_gate, load_policy
from analysis.offline_metrics import BootstrapResult, Interval, OfflineScores, ToolScores

TOOLS = ("adjust", "selective_adjust", "filter")


def scores(overall: float, finals=(0.8, 0.8, 0.8), parse_failure_rate: float = 0.0):
    tools = {
        tool: ToolScores(0.9, 0.9, 0.9, 0.8, final, 0.8, 10, 10, 9)
        for tool, final in zip(("adjust", "selective_adjust", "filter"), finals, strict=True)
    }
    return OfflineScores(tools, overall, 1000, parse_failure_rate)


def by_name(verdict):
    return {c.name: c for c in verdict.criteria}


def ci(overall: tuple[float, float, float], finals=((0.8, 0.75, 0.85),) * 3) -> BootstrapResult:
    """A bootstrap result: (estimate, low, high) for overall and each tool's final."""
    return BootstrapResult(
        {t: Interval(*f) for t, f in zip(TOOLS, finals, strict=True)},
        Interval(*overall),
        0.95,
        1000,
        0,
    )


GOOD = ci((0.72, 0.70, 0.74))


def failed(verdict):
    return [c.name for c in verdict.criteria if not c.passed]


def test_candidate_clear_of_every_floor_passes():
    verdict = evaluate_gate(GatePolicy(), scores(0.72), GOOD, Interval(-0.01, -0.015, 0.01), 900.0)
    assert verdict.passed and verdict.failures == []
    assert set(by_name(verdict)) == {
        "overall_floor",
        "final.adjust",
        "final.selective_adjust",
        "final.filter",
        "non_inferiority",
        "parse_failure_rate",
        "repair_rate",
        "latency_p95_ms",
    }
    assert verdict.policy_version.startswith("gate-v2+")


def test_an_interval_straddling_the_floor_is_refused():
    """0.6029 with a bootstrap interval 0.582-0.623 used to pass the 0.60 floor."""
    verdict = evaluate_gate(GatePolicy(), scores(0.6029), ci((0.6029, 0.582, 0.623)), None, 10.0)
    assert failed(verdict) == ["overall_floor"]
    assert "lower bound 0.5820 (estimate 0.6029) < 0.6000" in verdict.failures[0]
    clear = evaluate_gate(GatePolicy(), scores(0.62), ci((0.62, 0.601, 0.64)), None, 10.0)
    assert clear.passed


def test_tool_floor_reads_the_lower_bound_of_each_final():
    finals = ((0.8, 0.75, 0.85), (0.52, 0.48, 0.56), (0.8, 0.75, 0.85))
    verdict = evaluate_gate(GatePolicy(), scores(0.72), ci((0.72, 0.7, 0.74), finals), None, 1.0)
    assert failed(verdict) == ["final.selective_adjust"]


def test_the_floor_applies_against_a_student_champion_too():
    """A chain of champions cannot drift: non-inferior to a 0.60 champion is not enough."""
    verdict = evaluate_gate(
        GatePolicy(), scores(0.58), ci((0.58, 0.56, 0.60)), Interval(0.0, -0.01, 0.01), 10.0
    )
    assert failed(verdict) == ["overall_floor"]


def test_non_inferiority_reads_the_difference_lower_bound():
    verdict = evaluate_gate(GatePolicy(), scores(0.72), GOOD, Interval(-0.01, -0.03, 0.01), 1.0)
    assert failed(verdict) == ["non_inferiority"]
    # the bound is strict: exactly -margin fails too
    verdict = evaluate_gate(GatePolicy(), scores(0.72), GOOD, Interval(-0.01, -0.02, 0.01), 1.0)
    assert failed(verdict) == ["non_inferiority"]


def test_parse_failures_repairs_and_latency_fail_independently():
    verdict = evaluate_gate(
        GatePolicy(), scores(0.72, parse_failure_rate=0.02), GOOD, None, 2500.0, repair_rate=0.06
    )
    assert failed(verdict) == ["parse_failure_rate", "repair_rate", "latency_p95_ms"]
    ok = evaluate_gate(GatePolicy(), scores(0.72), GOOD, None, 10.0, repair_rate=0.05)
    assert ok.passed


def test_unmeasured_latency_fails_unless_the_policy_has_no_budget():
    verdict = evaluate_gate(GatePolicy(), scores(0.72), GOOD, None, None)
    assert failed(verdict) == ["latency_p95_ms"]
    verdict = evaluate_gate(GatePolicy(latency_p95_budget_ms=None), scores(0.72), GOOD, None, None)
    assert verdict.passed


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
    with pytest.raises(PolicyError, match="non_inferiority_margin"):
        GatePolicy(non_inferiority_margin="a lot")
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
    assert policy.overall_floor == GatePolicy().overall_floor
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(tmp_path / "bad.json")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.json")


def test_verdict_as_dict_is_json():
    verdict = evaluate_gate(GatePolicy(), scores(0.5), ci((0.5, 0.45, 0.55)), None, 1.0)
    data = json.loads(json.dumps(verdict.as_dict()))
    assert data["passed"] is False
    assert data["failures"] == verdict.failures


def test_policies_by_name_or_file(tmp_path):
    from analysis.gate_policy import DEMO_POLICY, PolicyError, policy_named_or_file

    assert policy_named_or_file("demo-v2") is DEMO_POLICY
    assert policy_named_or_file("gate-v2").overall_floor == 0.60
    path = tmp_path / "p.json"
    path.write_text('{"version": "mine", "overall_floor": 0.7}')
    assert policy_named_or_file(str(path)).overall_floor == 0.7
    with pytest.raises(PolicyError, match="neither a named policy"):
        policy_named_or_file("gate-v9")


def test_a_seed_of_ones_choosing_or_fewer_resamples_is_looser_than_the_minimum():
    """Seed shopping: with the seed free, a borderline student is re-run until one bootstrap's
    lower bound clears the floor; fewer resamples make a noisier bound. Both ask less."""
    from analysis.gate_policy import looser_than

    minimum = GatePolicy()
    assert looser_than(GatePolicy(), minimum) == []
    assert looser_than(GatePolicy(bootstrap_resamples=5000), minimum) == []  # more: stricter
    shopped = looser_than(GatePolicy(bootstrap_seed=7), minimum)
    assert shopped == ["bootstrap_seed 7 != 0 (the seed is the minimum's, not the runner's)"]
    fewer = looser_than(GatePolicy(bootstrap_resamples=200), minimum)
    assert fewer == ["bootstrap_resamples 200 < 1000"]
