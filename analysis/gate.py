"""The promotion gate: a versioned policy turned into a verdict. Pure: no database, no models.

A student must pass before it may serve traffic. The default policy (`gate-v1`):

- the candidate's overall score is at least the champion's minus `max_overall_drop` (0.02);
- the lower bound of the paired-bootstrap interval of (candidate - champion) overall is above
  `min_difference_lower_bound` (-0.04);
- every tool's final score is at least `tool_final_floor` (0.5);
- the parse-failure rate is below `max_parse_failure_rate` (1%);
- the p95 latency per intent is below `latency_p95_budget_ms` (2,000 ms; the paper's students
  average 1.4-1.6 s for all three tools).

When the champion is the teacher, its outputs *are* the test truth, so it scores exactly 1.0 and
a relative comparison would demand a perfect copy. The relative criteria are then replaced by an
absolute one: the candidate's overall score must reach `teacher_champion_overall_floor` (0.6,
below the paper's students at 0.72-0.74 and above a nearest-neighbour baseline at about 0.50).
Once a student is champion (after an A/B test ships it), the relative criteria apply against it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from analysis.offline import Interval, OfflineScores


class PolicyError(ValueError):
    """A gate policy that cannot be used; `field` names the setting at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class GatePolicy:
    version: str = "gate-v1"
    max_overall_drop: float = 0.02
    min_difference_lower_bound: float = -0.04
    tool_final_floor: float = 0.5
    max_parse_failure_rate: float = 0.01
    latency_p95_budget_ms: float | None = 2000.0
    teacher_champion_overall_floor: float = 0.6
    bootstrap_resamples: int = 1000
    bootstrap_confidence: float = 0.95
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not 0 < len(self.version) <= 30:
            raise PolicyError("version", "must be a non-empty string of at most 30 characters")
        for name in (
            "max_overall_drop",
            "tool_final_floor",
            "max_parse_failure_rate",
            "teacher_champion_overall_floor",
        ):
            _check_number(name, getattr(self, name), 0.0, 1.0)
        _check_number("min_difference_lower_bound", self.min_difference_lower_bound, -1.0, 1.0)
        if self.latency_p95_budget_ms is not None:
            _check_number("latency_p95_budget_ms", self.latency_p95_budget_ms, 0.0, math.inf)
        if isinstance(self.bootstrap_resamples, bool) or not isinstance(
            self.bootstrap_resamples, int
        ):
            raise PolicyError("bootstrap_resamples", "must be an integer")
        if not 100 <= self.bootstrap_resamples <= 100_000:
            raise PolicyError("bootstrap_resamples", "must be between 100 and 100000")
        _check_number("bootstrap_confidence", self.bootstrap_confidence, 0.5, 0.999)
        if isinstance(self.bootstrap_seed, bool) or not isinstance(self.bootstrap_seed, int):
            raise PolicyError("bootstrap_seed", "must be an integer")

    @property
    def fingerprint(self) -> str:
        """SHA-256 of every setting, so an edited policy never passes for the original."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def full_version(self) -> str:
        """`version+fingerprint8`: what a gate run stores (at most 40 characters)."""
        return f"{self.version}+{self.fingerprint[:8]}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GatePolicy:
        if not isinstance(data, Mapping):
            raise PolicyError("policy", "must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(unknown[0], f"unknown gate setting; known: {sorted(known)}")
        if "version" not in data:
            raise PolicyError("version", "a policy file must name its version")
        return cls(**dict(data))


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(name, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise PolicyError(name, f"{value} is outside {low}..{high}")


def load_policy(path: str | Path) -> GatePolicy:
    """Read a policy from a JSON file (any subset of the settings, `version` required)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError("policy", f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PolicyError("policy", f"{path} is not valid JSON ({exc.msg})") from None
    return GatePolicy.from_mapping(data)


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    failures: list[str]
    criteria: list[Criterion]
    policy_version: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "criteria": [c.as_dict() for c in self.criteria],
            "policy_version": self.policy_version,
        }


def _at_least(name: str, value: float, threshold: float, what: str) -> Criterion:
    ok = value >= threshold
    relation = ">=" if ok else "<"
    return Criterion(name, ok, value, threshold, f"{what} {value:.4f} {relation} {threshold:.4f}")


def evaluate_gate(
    policy: GatePolicy,
    candidate: OfflineScores,
    champion: OfflineScores | None,
    difference: Interval | None,
    latency_p95_ms: float | None,
) -> GateVerdict:
    """Check every criterion of `policy`; `champion=None` means the champion is the teacher.

    `difference` is the paired-bootstrap interval of candidate minus champion overall (required
    when a student champion is given).
    """
    criteria: list[Criterion] = []
    if champion is None:
        criteria.append(
            _at_least(
                "overall_vs_teacher",
                candidate.overall,
                policy.teacher_champion_overall_floor,
                "overall score (champion is the teacher, whose outputs are the truth)",
            )
        )
    else:
        if difference is None:
            raise ValueError("difference: a bootstrap interval is needed against a champion")
        criteria.append(
            _at_least(
                "overall_vs_champion",
                candidate.overall,
                champion.overall - policy.max_overall_drop,
                f"overall score (champion {champion.overall:.4f} - {policy.max_overall_drop})",
            )
        )
        bound = policy.min_difference_lower_bound
        ok = difference.low > bound
        criteria.append(
            Criterion(
                "difference_lower_bound",
                ok,
                difference.low,
                bound,
                f"lower bound of the {policy.bootstrap_confidence:.0%} interval of "
                f"candidate - champion overall {difference.low:.4f} "
                f"{'>' if ok else '<='} {bound:.4f}",
            )
        )
    for tool, scores in candidate.tools.items():
        criteria.append(
            _at_least(f"final.{tool}", scores.final, policy.tool_final_floor, f"{tool} final score")
        )
    rate, limit = candidate.parse_failure_rate, policy.max_parse_failure_rate
    criteria.append(
        Criterion(
            "parse_failure_rate",
            rate < limit or (limit == 0 and rate == 0),
            rate,
            limit,
            f"parse-failure rate {rate:.2%} {'<' if rate < limit else '>='} {limit:.2%}",
        )
    )
    budget = policy.latency_p95_budget_ms
    if budget is not None:
        if latency_p95_ms is None:
            criteria.append(
                Criterion("latency_p95_ms", False, None, budget, "p95 latency was not measured")
            )
        else:
            ok = latency_p95_ms < budget
            criteria.append(
                Criterion(
                    "latency_p95_ms",
                    ok,
                    latency_p95_ms,
                    budget,
                    f"p95 latency {latency_p95_ms:.1f} ms {'<' if ok else '>='} {budget:.0f} ms",
                )
            )
    failures = [c.message for c in criteria if not c.passed]
    return GateVerdict(not failures, failures, criteria, policy.full_version)


# A looser, named policy for admitting a baseline such as the kNN student (overall ~0.50 on the
# bundled test set) as a comparison arm, e.g. in the demo. Real students use the default.
BASELINE_POLICY = GatePolicy(
    version="baseline-v1", tool_final_floor=0.4, teacher_champion_overall_floor=0.45
)


__all__ = [
    "BASELINE_POLICY",
    "Criterion",
    "GatePolicy",
    "GateVerdict",
    "PolicyError",
    "evaluate_gate",
    "load_policy",
]
