"""Test scaffolding: a student cleared for traffic without running the (slow) offline gate.

It stores what a passing gate run stores (on the variant's current config, the current test set
and champion) and approves through `promotion.promote`, the production path; the gate itself is
tested in tests/abtest/test_promotion.py and tests/abtest/test_gate_integrity.py.
"""

from typing import Any

from sqlalchemy.orm import Session

from abtest import promotion, services
from abtest.tables import GateRun

FIT = {"fit": "train"}


def pass_gate(session: Session, name: str) -> GateRun:
    variant = services.get_variant(session, name)
    champion = services.champion(session)
    run = GateRun(
        variant_id=variant.id,
        champion_id=champion.id if champion else None,
        test_set_hash=promotion.current_test_set_hash(),
        policy_version="test-scaffold",
        metrics={},
        failures=[],
        passed=True,
        config_sha256=services.config_hash(variant.config),
        actor="test",
    )
    session.add(run)
    session.flush()
    return run


def approved_student(session: Session, name: str, config: dict[str, Any] | None = None) -> None:
    """Register a kNN student and approve it as if it had passed its gate."""
    services.register_variant(session, name, "knn_student", config or FIT)
    pass_gate(session, name)
    promotion.promote(session, name, "test")


def reference_teacher(session: Session, name: str = "teacher", kind: str = "teacher") -> None:
    services.register_variant(session, name, kind, reference=True)


def finished_job(client: Any, accepted: Any, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll the job a `202 Accepted` answer names (its `Location`) until it has finished."""
    import time

    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    assert location == accepted.json()["url"]
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(location)
        assert job.status_code == 200, job.text
        if job.json()["status"] in ("succeeded", "failed"):
            return job.json()
        assert time.monotonic() < deadline, f"job still {job.json()['status']}"
        time.sleep(0.05)
