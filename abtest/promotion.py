"""The promotion gate as a platform rule: the only code that writes gate runs and approvals.

- `evaluate_variant` runs a registered variant over a test set (batched, with a progress bar)
  and scores it with `analysis.offline_metrics` (read-only).
- `run_gate` evaluates the candidate, compares it with the champion and stores a `GateRun`
  (test-set hash, metrics, policy version, verdict, failures, actor, time).
- `promote` approves a variant for traffic only when its latest gate run on the *current* test
  set, the *current* champion and the variant's *current* config passed; every status change is
  recorded as a `Promotion` (and `services.record_promotion` refuses "approved" without such a
  run).
- `conclude_experiment` ends an A/B test and makes the shipped arm's variant the champion, only
  when the experiment's decision supports shipping that arm (or with an override and a reason,
  recorded with the actor).

Champion semantics: the teacher's outputs *are* the ground truth, so a teacher champion scores
exactly 1.0 on the test set and is not run (no API calls); only the absolute floors apply.
Once an A/B test ships a student, that student is the champion: it is run over the same test
set and compared with a paired bootstrap (non-inferiority), and the floors still apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select
from sqlalchemy.orm import Session

from abtest import jobs, services
from abtest.errors import Conflict, Invalid
from abtest.settings import Settings, get_settings
from abtest.tables import Experiment, GateRun, Job, Promotion, Variant, utcnow
from abtest.variant_arms import build_variant_arm
from analysis import offline_metrics
from analysis.gate_policy import (
    NAMED_POLICIES,
    GatePolicy,
    GateVerdict,
    PolicyError,
    evaluate_gate,
    looser_than,
)
from models.arms.base import Arm, ArmError, Prediction
from models.dataset import DatasetError, IntentRecord, bundled_path, file_hash, load_records

# Variants whose answers are the recorded teacher outputs, i.e. the test truth itself.
TEACHER_KINDS = ("teacher", "recorded")
DEFAULT_BATCH_SIZE = 64


# --- test sets and arms -------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSet:
    path: Path
    sha256: str
    records: list[IntentRecord]

    __test__ = False  # not a pytest class

    @property
    def truth(self) -> list[Any]:
        return [r.teacher for r in self.records]

    @property
    def calls(self) -> list[int]:
        return [r.calls for r in self.records]


def current_test_set_path() -> Path:
    """The platform's test set: the bundled test split (1,000 intents)."""
    return bundled_path("test")


def current_test_set_hash() -> str:
    return file_hash(current_test_set_path())


def load_test_set(path: str | Path | None = None) -> TestSet:
    """Load a test set (default: the current one); a bad file is an `Invalid('test_set')`."""
    resolved = Path(path) if path is not None else current_test_set_path()
    if not resolved.is_file():
        raise Invalid("test_set", f"{resolved}: no such file")
    sha256 = file_hash(resolved)
    try:
        records = _cached_records(str(resolved.resolve()), sha256)
    except DatasetError as exc:
        raise Invalid("test_set", str(exc)) from None
    if not records:
        raise Invalid("test_set", f"{resolved}: no records")
    return TestSet(resolved, sha256, list(records))


@lru_cache(maxsize=8)
def _cached_records(path: str, sha256: str) -> tuple[IntentRecord, ...]:
    """Parsed dataset files, keyed by content hash (records are immutable)."""
    return tuple(load_records(path))


# --- running a variant --------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantRun:
    """A variant's predictions over a test set, aligned with its rows."""

    predictions: list[Prediction | None]

    @property
    def configs(self) -> list[Any]:
        return [p.config if p is not None else None for p in self.predictions]

    @property
    def parse_failures(self) -> list[bool]:
        return [p is None or bool(p.parse_failures) for p in self.predictions]

    @property
    def latency_p95_ms(self) -> float | None:
        latencies = [p.latency_ms for p in self.predictions if p is not None]
        return float(np.percentile(latencies, 95)) if latencies else None

    @property
    def errors(self) -> int:
        return sum(p is None for p in self.predictions)

    @property
    def repair_rate(self) -> float:
        """Share of answers that needed a repair (clamped value, dropped key, fixed name)."""
        if not self.predictions:
            return 0.0
        repaired = sum(bool(p is not None and p.repairs) for p in self.predictions)
        return repaired / len(self.predictions)


async def _predict_batch(arm: Arm, intents: Sequence[str]) -> list[Prediction | None]:
    try:
        return list(await arm.predict_batch(intents))
    except (ArmError, TimeoutError):
        pass
    out: list[Prediction | None] = []
    for intent in intents:  # one bad intent should not sink its whole batch
        try:
            out.append(await arm.predict(intent))
        except (ArmError, TimeoutError):
            out.append(None)
    return out


def run_arm(
    arm: Arm,
    intents: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    label: str = "predicting",
    console: Console | None = None,
) -> VariantRun:
    """Predict every intent in batches; an `ArmError` or timeout leaves that row missing.

    Runs its own event loop: call it from synchronous code (CLI, sync route handlers).
    """
    if batch_size < 1:
        raise Invalid("batch_size", "must be at least 1")
    results: list[Prediction | None] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    bar = Progress(
        *columns, console=console or Console(stderr=True), disable=not progress, transient=True
    )

    async def _all() -> None:
        with bar:
            task = bar.add_task(label, total=len(intents))
            for start in range(0, len(intents), batch_size):
                chunk = intents[start : start + batch_size]
                results.extend(await _predict_batch(arm, chunk))
                bar.advance(task, len(chunk))

    asyncio.run(_all())
    return VariantRun(results)


@dataclass(frozen=True)
class VariantEvaluation:
    variant: str
    test_set: TestSet
    run: VariantRun
    subsets: dict[str, offline_metrics.OfflineScores]
    bootstrap: offline_metrics.BootstrapResult

    @property
    def scores(self) -> offline_metrics.OfflineScores:
        return self.subsets["all"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "test_set": {"path": str(self.test_set.path), "sha256": self.test_set.sha256},
            "latency_p95_ms": self.run.latency_p95_ms,
            "arm_errors": self.run.errors,
            "repair_rate": self.run.repair_rate,
            "subsets": {name: s.as_dict() for name, s in self.subsets.items()},
            "bootstrap": self.bootstrap.as_dict(),
        }


def evaluate_variant(
    session: Session,
    name: str,
    test_set_path: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    arm_builder: Callable[[Variant], Arm] | None = None,
    policy: GatePolicy | None = None,
    settings: Settings | None = None,
) -> VariantEvaluation:
    """Run a registered variant over the test set and compute the paper's metrics (no writes)."""
    variant = services.get_variant(session, name)
    test_set = load_test_set(test_set_path)
    builder = arm_builder or _default_builder(settings)
    return _evaluate(variant, test_set, batch_size, progress, builder, policy or GatePolicy())


def _default_builder(settings: Settings | None) -> Callable[[Variant], Arm]:
    return lambda variant: build_variant_arm(variant, settings)


def _evaluate(
    variant: Variant,
    test_set: TestSet,
    batch_size: int,
    progress: bool,
    arm_builder: Callable[[Variant], Arm],
    policy: GatePolicy,
) -> VariantEvaluation:
    arm = arm_builder(variant)
    run = run_arm(
        arm, [r.intent for r in test_set.records], batch_size, progress, f"{variant.name}"
    )
    encoded_truth = offline_metrics.encode(test_set.truth)
    encoded_pred = offline_metrics.encode(run.configs)
    subsets = offline_metrics.score_subsets(
        encoded_pred, encoded_truth, test_set.calls, run.parse_failures
    )
    ci = offline_metrics.bootstrap(
        encoded_pred,
        encoded_truth,
        resamples=policy.bootstrap_resamples,
        seed=policy.bootstrap_seed,
        confidence=policy.bootstrap_confidence,
    )
    return VariantEvaluation(variant.name, test_set, run, subsets, ci)


# --- gate runs ----------------------------------------------------------------------------------


def _comparison_baseline(champion: Variant | None) -> Variant | None:
    """The student champion to compare with, or None when the champion is the teacher."""
    if champion is None or champion.kind in TEACHER_KINDS:
        return None
    return champion


def run_gate(
    session: Session,
    name: str,
    actor: str,
    policy: GatePolicy | None = None,
    test_set_path: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    arm_builder: Callable[[Variant], Arm] | None = None,
    settings: Settings | None = None,
) -> GateRun:
    """Evaluate `name` against the champion under `policy` and store the gate run; a policy
    looser than the configured minimum (`gate_policy_minimum`) is refused before it runs."""
    policy = policy or GatePolicy()
    variant = check_gate(session, name, policy, settings or get_settings())
    arm_builder = arm_builder or _default_builder(settings)
    test_set = load_test_set(test_set_path)
    candidate = _evaluate(variant, test_set, batch_size, progress, arm_builder, policy)
    champion = services.champion(session)  # read once: the run records what it compared with
    baseline = _comparison_baseline(champion)
    metrics: dict[str, Any] = {
        "candidate": candidate.as_dict(),
        "policy": policy.as_dict(),
        "champion": None,
    }
    if baseline is None:
        metrics["champion"] = {
            "name": champion.name if champion else None,
            "kind": "teacher",
            "overall": 1.0,
            "note": "the teacher's outputs are the test truth; absolute floor applies",
        }
        verdict = evaluate_gate(
            policy,
            candidate.scores,
            candidate.bootstrap,
            None,
            candidate.run.latency_p95_ms,
            candidate.run.repair_rate,
        )
        champion_id = champion.id if champion else None
    else:
        champion_run = run_arm(
            arm_builder(baseline),
            [r.intent for r in test_set.records],
            batch_size,
            progress,
            f"{baseline.name} (champion)",
        )
        comparison = offline_metrics.compare(
            candidate.run.configs,
            champion_run.configs,
            test_set.truth,
            candidate_parse_failures=candidate.run.parse_failures,
            champion_parse_failures=champion_run.parse_failures,
            resamples=policy.bootstrap_resamples,
            seed=policy.bootstrap_seed,
            confidence=policy.bootstrap_confidence,
        )
        metrics["champion"] = {
            "name": baseline.name,
            "kind": baseline.kind,
            "overall": comparison.champion.overall,
            "scores": comparison.champion.as_dict(),
            "bootstrap": comparison.champion_ci.as_dict(),
        }
        metrics["difference"] = comparison.difference.as_dict()
        metrics["final_differences"] = {
            t: i.as_dict() for t, i in comparison.final_differences.items()
        }
        verdict = evaluate_gate(
            policy,
            candidate.scores,
            candidate.bootstrap,
            comparison.difference,
            candidate.run.latency_p95_ms,
            candidate.run.repair_rate,
        )
        champion_id = baseline.id
    metrics["verdict"] = verdict.as_dict()
    gate_run = GateRun(
        variant_id=variant.id,
        champion_id=champion_id,
        test_set_hash=test_set.sha256,
        policy_version=verdict.policy_version,
        metrics=metrics,
        failures=list(verdict.failures),
        passed=verdict.passed,
        config_sha256=services.config_hash(variant.config),
        actor=actor,
        created_at=utcnow(),
    )
    session.add(gate_run)
    session.flush()
    return gate_run


def check_gate(session: Session, name: str, policy: GatePolicy, settings: Settings) -> Variant:
    """The variant `run_gate` would evaluate, or what it refuses before evaluating anything: a
    policy below the minimum, an unknown, teacher or inactive variant."""
    check_policy_minimum(policy, settings)
    variant = services.get_variant(session, name)
    if variant.kind in TEACHER_KINDS:
        raise Invalid("name", f"{name!r} is the teacher: it is the reference and needs no gate")
    if variant.status in services.INACTIVE_STATUSES:
        raise Conflict("name", f"variant {name!r} is {variant.status}")
    return variant


def start_gate_job(
    session: Session, name: str, actor: str, policy: GatePolicy, settings: Settings, owner: str
) -> tuple[Job, jobs.Work]:
    """A queued gate job and the work that runs it (`run_gate`, nothing else). What `run_gate`
    refuses at once (`check_gate`) is raised here, before a job exists."""
    check_gate(session, name, policy, settings)
    params = {"variant": name, "policy": policy.as_dict()}
    job = jobs.create_job(session, "gate", actor, params, owner)

    def work(job_session: Session) -> dict[str, Any]:
        run = run_gate(job_session, name, actor, policy, progress=False, settings=settings)
        return gate_run_summary(run)

    return job, work


def check_policy_minimum(policy: GatePolicy, settings: Settings) -> None:
    """Refuse a policy that asks less than the configured minimum: otherwise whoever runs the
    gate could pass any student with floors of 0."""
    minimum = NAMED_POLICIES.get(settings.gate_policy_minimum)
    if minimum is None:
        raise Invalid(
            "gate_policy_minimum",
            f"ABTEST_GATE_POLICY_MINIMUM={settings.gate_policy_minimum!r} is not one of "
            f"{sorted(NAMED_POLICIES)}",
        )
    looser = looser_than(policy, minimum)
    if looser:
        raise Invalid(
            "policy",
            f"policy {policy.version!r} is looser than the minimum {minimum.version!r} "
            f"({'; '.join(looser)}); ABTEST_GATE_POLICY_MINIMUM names the minimum",
        )


def parse_policy(data: dict[str, Any] | None) -> GatePolicy:
    """A policy from a JSON object (API body / file); errors name the `policy.<field>`."""
    if data is None:
        return GatePolicy()
    try:
        return GatePolicy.from_mapping(data)
    except PolicyError as exc:
        raise Invalid(f"policy.{exc.field}", exc.reason) from None
    except TypeError as exc:
        raise Invalid("policy", str(exc)) from None


def gate_runs(session: Session, name: str) -> list[GateRun]:
    variant = services.get_variant(session, name)
    query = select(GateRun).where(GateRun.variant_id == variant.id).order_by(GateRun.id.desc())
    return list(session.scalars(query).all())


def latest_gate_run(session: Session, variant: Variant, test_set_hash: str) -> GateRun | None:
    query = (
        select(GateRun)
        .where(GateRun.variant_id == variant.id, GateRun.test_set_hash == test_set_hash)
        .order_by(GateRun.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def gate_run_summary(run: GateRun) -> dict[str, Any]:
    candidate = run.metrics.get("candidate", {}) if run.metrics else {}
    subsets = candidate.get("subsets", {})
    return {
        "id": run.id,
        "variant_id": run.variant_id,
        "champion_id": run.champion_id,
        "passed": run.passed,
        "config_sha256": run.config_sha256,
        "failures": list(run.failures or []),
        "policy_version": run.policy_version,
        "test_set_hash": run.test_set_hash,
        "overall": subsets.get("all", {}).get("overall"),
        "champion_overall": (run.metrics.get("champion") or {}).get("overall"),
        "actor": run.actor,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "metrics": run.metrics,
    }


# --- promotion and conclusion -------------------------------------------------------------------


def promote(session: Session, name: str, actor: str, test_set_hash: str | None = None) -> Promotion:
    """Approve a variant for traffic.

    Refused (listing the failed criteria) unless the variant's latest gate run on the current
    test set passed and compared against the current champion.
    """
    variant = services.get_variant(session, name)
    if variant.kind in TEACHER_KINDS:
        raise Conflict("name", f"{name!r} is the teacher: it serves without promotion")
    if variant.status in services.INACTIVE_STATUSES:
        raise Conflict("status", f"variant {name!r} is {variant.status}")
    if variant.status in ("approved", "champion"):
        raise Conflict("status", f"variant {name!r} is already {variant.status}")
    current = test_set_hash or current_test_set_hash()
    run = latest_gate_run(session, variant, current)
    if run is None:
        other = session.scalar(select(GateRun.id).where(GateRun.variant_id == variant.id))
        hint = " (its gate runs were on an older test set)" if other is not None else ""
        raise Conflict(
            "gate",
            f"variant {name!r} has no gate run on the current test set {current[:12]}{hint}; "
            f"run `abtest gate {name}`",
        )
    if not run.passed:
        raise Conflict(
            "gate",
            f"variant {name!r} failed its latest gate run #{run.id}: " + "; ".join(run.failures),
        )
    champion = services.champion(session)
    if run.champion_id != (champion.id if champion else None):
        raise Conflict(
            "gate",
            f"gate run #{run.id} of {name!r} compared against an earlier champion; the champion "
            f"is now {champion.name if champion else 'none'}: run `abtest gate {name}` again",
        )
    return services.record_promotion(
        session,
        variant,
        variant.status,
        "approved",
        actor,
        reason=f"passed gate run #{run.id} ({run.policy_version})",
        gate_run_id=run.id,
    )


SUPPORTIVE = ("treatment better", "non-inferior", "equivalent")  # analysis.stats.SHIPPABLE


def shipping_support(report: dict[str, Any] | None, ship_arm: str, control_arm: str) -> str | None:
    """Why the experiment's decision does not support shipping `ship_arm`, or None when it does.

    Only explicit support counts: the shipped treatment's decision is "treatment better",
    "non-inferior" or "equivalent"; shipping the control (keeping the champion) needs data and
    no sample-ratio mismatch. Anything else (worse, inconclusive, underpowered, SRM, no data) is
    a reason to refuse.
    """
    if report is None:
        return "the experiment has no results"
    srm = report.get("srm") or {}
    if srm.get("flagged"):
        return "a sample ratio mismatch is flagged: the results cannot be trusted"
    starts = sum(int(arm.get("starts") or 0) for arm in report.get("arms", []))
    if starts == 0:
        return "the experiment has no data (no project started)"
    if ship_arm == control_arm:
        return None
    decisions = {c.get("arm"): c.get("decision") for c in report.get("comparisons", [])}
    decision = decisions.get(ship_arm)
    if decision in SUPPORTIVE:
        return None
    return f"the decision for arm {ship_arm!r} is {decision or 'missing'!r}"


def _experiment_report(session: Session, key: str) -> dict[str, Any] | str:
    """The experiment's report now, or why it could not be computed (a refusal reason)."""
    from abtest import report_service

    try:
        with session.begin_nested():  # a failed report leaves nothing half-written
            return report_service.build(session, key).model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001 - no trustworthy decision: refuse, say why
        return f"the results could not be computed ({type(exc).__name__}: {exc})"


def conclude_experiment(
    session: Session,
    key: str,
    ship_arm: str,
    actor: str,
    *,
    override: bool = False,
    reason: str | None = None,
) -> Experiment:
    """End an A/B test: ship `ship_arm` and make its variant the champion future gates use.

    Refused (Conflict naming the decision) unless the experiment's decision supports shipping
    that arm (`shipping_support`); `override=True` with a `reason` ships anyway and records
    the decision, the reason and the actor in the promotion.
    """
    experiment = services.get_experiment(session, key)
    if experiment.status == "draft":
        raise Conflict("status", f"experiment {key!r} never ran; there is nothing to conclude")
    if experiment.status == "concluded":
        raise Conflict("status", f"experiment {key!r} is already concluded")
    arms = {arm.name: arm for arm in experiment.arms}
    if ship_arm not in arms:
        raise Invalid("ship", f"no arm named {ship_arm!r} (arms: {', '.join(sorted(arms))})")
    if override and not (reason and reason.strip()):
        raise Invalid("reason", "an override needs a reason (--reason '...')")
    control = next(arm.name for arm in experiment.arms if arm.is_control)
    report = _experiment_report(session, key)
    if isinstance(report, str):
        problem: str | None = report
    else:
        problem = shipping_support(report, ship_arm, control)
    if problem is not None and not override:
        raise Conflict(
            "ship",
            f"refusing to ship {ship_arm!r}: {problem}; conclude with --override --reason "
            "'...' to ship anyway (recorded)",
        )
    winner = arms[ship_arm].variant
    if winner.status in services.INACTIVE_STATUSES:
        raise Conflict("ship", f"variant {winner.name!r} is {winner.status}")
    uncleared = services.clearance_problem(session, winner)
    if uncleared is not None:  # an override answers for the decision, never for the gate
        raise Conflict(
            "ship",
            f"variant {winner.name!r} cannot become champion: {uncleared} "
            f"(run `abtest gate {winner.name}` and promote it, then conclude)",
        )
    previous = services.champion(session)
    now = utcnow()
    if experiment.status == "running":
        experiment.stopped_at = now
    experiment.status = "concluded"
    experiment.shipped_arm = ship_arm
    why = f"shipped arm {ship_arm!r} of experiment {key!r}"
    if problem is not None:
        why += f"; OVERRIDE by {actor} ({problem}): {reason.strip()}"  # type: ignore[union-attr]
    elif reason:
        why += f": {reason.strip()}"
    if previous is not None and previous.id != winner.id:
        # a superseded champion must pass a gate against the new one before serving again
        services.record_promotion(
            session, previous, "champion", "registered", actor, f"superseded: {why}",
            experiment_key=key,
        )  # fmt: skip
    services.record_promotion(
        session, winner, winner.status, "champion", actor, why, experiment_key=key
    )
    session.flush()
    return experiment


def promotions(session: Session, name: str) -> list[Promotion]:
    variant = services.get_variant(session, name)
    query = select(Promotion).where(Promotion.variant_id == variant.id).order_by(Promotion.id)
    return list(session.scalars(query).all())


def promotion_summary(promotion: Promotion) -> dict[str, Any]:
    return {
        "id": promotion.id,
        "variant_id": promotion.variant_id,
        "from_status": promotion.from_status,
        "to_status": promotion.to_status,
        "gate_run_id": promotion.gate_run_id,
        "experiment_key": promotion.experiment_key,
        "actor": promotion.actor,
        "reason": promotion.reason,
        "created_at": promotion.created_at.isoformat() if promotion.created_at else None,
    }


__all__ = [
    "GateVerdict",
    "check_gate",
    "start_gate_job",
    "TestSet",
    "VariantEvaluation",
    "VariantRun",
    "build_variant_arm",
    "conclude_experiment",
    "shipping_support",
    "current_test_set_hash",
    "evaluate_variant",
    "gate_run_summary",
    "gate_runs",
    "latest_gate_run",
    "load_test_set",
    "parse_policy",
    "promote",
    "promotion_summary",
    "promotions",
    "run_arm",
    "run_gate",
]
