"""Variant and experiment services: the only code that writes those tables.

Each function takes a Session, validates everything before writing, and raises a
`ServiceError` naming the field so that a failed call changes nothing stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from abtest import (
    generation,  # noqa: F401 - registers the catalog-generation flush hook
    storable,  # noqa: F401 - registers the storable-values flush hook
)
from abtest.errors import Conflict, Invalid, NotFound
from abtest.settings import Settings
from abtest.tables import (
    INACTIVE_STATUSES,
    TEACHER_KINDS,
    VARIANT_KINDS,
    AllocationPeriod,
    Experiment,
    ExperimentArm,
    GateRun,
    Promotion,
    Variant,
    utcnow,
)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
WEIGHT_TOLERANCE = 1e-6
# The reference: the live teacher, or its recorded answers (the test truth itself). Registering
# one needs an explicit confirmation (`reference=True`, CLI `--reference`), which is recorded;
# at most one reference variant is active. Every other variant needs a passing gate run.
DEFAULT_TEST_SETTINGS: dict[str, Any] = {
    "alpha": 0.05,
    # how much worse the treatment may be: "-2%" of the control rate (relative; a bare number is a
    # relative fraction) or "-1pts" (absolute percentage points)
    "margin": "-2%",
    "sequential": True,
    "cache": True,
    "overrides": {},
    "export_window_h": 24.0,  # an export counts within this many hours of its project's start
    "mde": 0.02,  # without a margin: the relative change the power is judged for
    "power": 0.8,
    "baseline": None,  # expected control rate: plans the horizon when the experiment starts
    "horizon": None,  # planned projects per arm; set at the start from the plan when None
}


def _check_name(value: str, field_name: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise Invalid(
            field_name,
            f"{value!r} is not a valid name (letters, digits, '_', '.', ':' or '-', at most 100)",
        )
    return value


# --- variants ---------------------------------------------------------------------------------


def config_hash(config: dict[str, Any] | None) -> str:
    """SHA-256 of a variant config (canonical JSON): what a gate run clears."""
    text = json.dumps(config or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def register_variant(
    session: Session,
    name: str,
    kind: str,
    config: dict[str, Any] | None = None,
    description: str = "",
    actor: str = "unknown",
    *,
    reference: bool = False,
    settings: Settings | None = None,
) -> Variant:
    """Register a variant; its config is checked for its kind and stored normalised (model
    paths absolute under the model directory). Nothing is stored when a check fails.

    A `teacher` or `recorded` variant is the reference arm and needs no gate: registering one
    requires `reference=True` and is refused while another reference is active.
    """
    from abtest.variant_arms import check_variant_config

    _check_name(name, "name")
    if kind not in VARIANT_KINDS:
        raise Invalid("kind", f"{kind!r} is not one of {', '.join(VARIANT_KINDS)}")
    if config is not None and not isinstance(config, dict):
        raise Invalid("config", "must be a JSON object")
    if session.scalar(select(Variant.id).where(Variant.name == name)) is not None:
        raise Conflict("name", f"a variant named {name!r} already exists")
    is_reference = kind in TEACHER_KINDS
    if is_reference and not reference:
        raise Invalid(
            "kind",
            f"kind {kind!r} registers the reference teacher, which serves without a gate; "
            'confirm with --reference (API: "reference": true), or register a student kind',
        )
    if reference and not is_reference:
        raise Invalid("reference", "only a teacher or recorded variant can be the reference")
    if is_reference:
        existing = reference_variant(session)
        if existing is not None:
            raise Conflict(
                "kind",
                f"variant {existing.name!r} is already the reference teacher; archive it first "
                f"(`abtest variants archive {existing.name}`)",
            )
    checked = check_variant_config(kind, config or {}, settings)
    status = "champion" if is_reference and not _has_champion(session) else "registered"
    variant = Variant(
        name=name, kind=kind, config=checked, description=description, status="registered"
    )
    session.add(variant)
    _flush_new_variant(session, name, is_reference)
    if is_reference:
        reason = f"registered as the reference teacher (confirmed by {actor})"
        record_promotion(session, variant, "registered", status, actor, reason)
    return variant


def _flush_new_variant(session: Session, name: str, is_reference: bool) -> None:
    """Flush the new row; a registration that raced ours past the checks above loses here to
    the database's unique indexes (name, one active reference) and gets the same 409."""
    try:
        session.flush()
    except IntegrityError as error:
        if is_reference and "one_reference" in str(error.orig):
            raise Conflict("kind", "another reference teacher was registered at the same time; "
                           "archive it first") from None  # fmt: skip
        if "name" in str(error.orig):
            raise Conflict("name", f"a variant named {name!r} already exists") from None
        raise


def reference_variant(session: Session) -> Variant | None:
    """The active reference teacher (a teacher or recorded variant that is not archived)."""
    return session.scalar(
        select(Variant).where(
            Variant.kind.in_(TEACHER_KINDS), Variant.status.not_in(INACTIVE_STATUSES)
        )
    )


def archive_variant(session: Session, name: str, actor: str = "unknown") -> Variant:
    """Take a variant out of service for good: refused for the champion and for a variant in
    a running experiment; the row and its history stay (experiments are never deleted)."""
    variant = get_variant(session, name)
    if variant.status == "archived":
        raise Conflict("name", f"variant {name!r} is already archived")
    if variant.status == "champion":
        raise Conflict("name", f"variant {name!r} is the champion; ship another one first")
    _refuse_if_serving(session, variant)
    record_promotion(session, variant, variant.status, "archived", actor, "archived")
    return variant


def _refuse_if_serving(session: Session, variant: Variant) -> None:
    """Conflict when `variant` is an arm of a running experiment (routing serves its stored
    config, so an archive or a config edit would change what that arm serves)."""
    running = session.scalar(
        select(Experiment.key)
        .join(ExperimentArm, ExperimentArm.experiment_id == Experiment.id)
        .where(ExperimentArm.variant_id == variant.id, Experiment.status == "running")
    )
    if running is not None:
        raise Conflict(
            "name", f"variant {variant.name!r} serves the running experiment {running!r}"
        )


def update_variant_config(
    session: Session,
    name: str,
    config: dict[str, Any],
    actor: str = "unknown",
    settings: Settings | None = None,
) -> Variant:
    """Change a student's config: its version goes up and its gate no longer holds (an
    approved variant goes back to `registered`). Refused for the champion, a reference and an
    arm of a running experiment (stop it first: the new config needs a new gate)."""
    from abtest.variant_arms import check_variant_config

    variant = get_variant(session, name)
    if variant.kind in TEACHER_KINDS:
        raise Conflict("name", f"{name!r} is the reference teacher; register a new one")
    if variant.status in ("champion", "archived"):
        raise Conflict("name", f"variant {name!r} is {variant.status}; register a new variant")
    if not isinstance(config, dict):
        raise Invalid("config", "must be a JSON object")
    _refuse_if_serving(session, variant)
    checked = check_variant_config(variant.kind, config, settings)
    if config_hash(checked) == config_hash(variant.config):
        return variant
    variant.config = checked
    variant.version = (variant.version or 1) + 1
    if variant.status == "approved":
        record_promotion(session, variant, "approved", "registered", actor, "config changed")
    session.flush()
    return variant


def _has_champion(session: Session) -> bool:
    return session.scalar(select(Variant.id).where(Variant.status == "champion")) is not None


def get_variant(session: Session, name: str, field_name: str = "name") -> Variant:
    variant = session.scalar(select(Variant).where(Variant.name == name))
    if variant is None:
        raise NotFound(field_name, f"no variant named {name!r}")
    return variant


def list_variants(session: Session) -> Sequence[Variant]:
    return session.scalars(select(Variant).order_by(Variant.id)).all()


def champion(session: Session) -> Variant | None:
    return session.scalar(select(Variant).where(Variant.status == "champion"))


def record_promotion(
    session: Session,
    variant: Variant,
    from_status: str,
    to_status: str,
    actor: str,
    reason: str = "",
    gate_run_id: int | None = None,
    experiment_key: str | None = None,
) -> Promotion:
    """Change a variant's status and record it. "approved" needs a passing gate run of this
    variant on its current config; "champion" needs a concluded experiment or the reference."""
    if to_status == "approved":
        _check_gate_run(session, variant, gate_run_id)
    if to_status == "champion" and variant.kind not in TEACHER_KINDS:
        if experiment_key is None:
            raise Conflict("status", f"{variant.name!r} can become champion only by an experiment")
        problem = clearance_problem(session, variant)
        if problem is not None:
            raise Conflict("gate", f"{variant.name!r} cannot become champion: {problem}")
    promotion = Promotion(
        variant_id=variant.id,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        reason=reason,
        gate_run_id=gate_run_id,
        experiment_key=experiment_key,
    )
    session.add(promotion)
    variant.status = to_status
    session.flush()
    return promotion


def _check_gate_run(session: Session, variant: Variant, gate_run_id: int | None) -> None:
    run = session.get(GateRun, gate_run_id) if gate_run_id is not None else None
    if run is None:
        raise Conflict("gate", f"approving {variant.name!r} needs the id of a passing gate run")
    if run.variant_id != variant.id or not run.passed:
        raise Conflict("gate", f"gate run #{run.id} is not a passing run of {variant.name!r}")
    if run.config_sha256 != config_hash(variant.config):
        raise Conflict(
            "gate",
            f"gate run #{run.id} evaluated another config of {variant.name!r}; "
            f"run `abtest gate {variant.name}` again",
        )


def is_cleared_for_traffic(variant: Variant) -> bool:
    """The reference teacher, or an approved or champion student, may serve an experiment arm."""
    if variant.status in INACTIVE_STATUSES:
        return False
    return variant.kind in TEACHER_KINDS or variant.status in ("approved", "champion")


def clearance_problem(session: Session, variant: Variant) -> str | None:
    """Why `variant` may not receive traffic now, or None: a student must hold a passing gate
    run on its *current* config (a config edited behind the services' back loses it)."""
    if not is_cleared_for_traffic(variant):
        return variant.status
    if variant.kind in TEACHER_KINDS:
        return None
    approval = session.scalar(
        select(Promotion)
        .where(Promotion.variant_id == variant.id, Promotion.gate_run_id.is_not(None))
        .order_by(Promotion.id.desc())
        .limit(1)
    )
    run = session.get(GateRun, approval.gate_run_id) if approval is not None else None
    if run is None or not run.passed or run.config_sha256 != config_hash(variant.config):
        return "no passing gate run on its current config"
    return None


# --- experiments ------------------------------------------------------------------------------


@dataclass
class ArmSpec:
    name: str
    variant: str
    weight: float
    control: bool = False


@dataclass
class ExperimentSpec:
    key: str
    arms: list[ArmSpec]
    seed: str | None = None
    coverage: float = 1.0
    namespace: str | None = None
    namespace_range: tuple[float, float] = (0.0, 1.0)
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def _validate_arms(arms: Sequence[ArmSpec]) -> None:
    if len(arms) < 2:
        raise Invalid("arms", "an experiment needs at least two arms")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise Invalid("arms", f"arm names must be unique, got {names}")
    for index, arm in enumerate(arms):
        _check_name(arm.name, f"arms.{index}.name")
        if not isinstance(arm.weight, int | float) or not math.isfinite(arm.weight):
            raise Invalid(f"arms.{index}.weight", "must be a finite number")
        if not 0 <= arm.weight <= 1:
            raise Invalid(f"arms.{index}.weight", f"{arm.weight} is outside 0..1")
    total = sum(arm.weight for arm in arms)
    if abs(total - 1) > WEIGHT_TOLERANCE:
        raise Invalid("arms", f"weights must sum to 1, they sum to {total:g}")
    controls = [arm.name for arm in arms if arm.control]
    if len(controls) != 1:
        raise Invalid("arms", f"exactly one arm must be the control, got {len(controls)}")


def _validate_settings(settings: dict[str, Any]) -> dict[str, Any]:
    from analysis import stats  # scipy loads only when settings are checked

    unknown = sorted(set(settings) - set(DEFAULT_TEST_SETTINGS))
    if unknown:
        raise Invalid(
            f"settings.{unknown[0]}",
            f"unknown test setting; known: {sorted(DEFAULT_TEST_SETTINGS)}",
        )
    merged = {**DEFAULT_TEST_SETTINGS, **settings}
    alpha = merged["alpha"]
    if not _is_number(alpha) or not 0 < alpha < 0.5:
        raise Invalid("settings.alpha", f"must be a number between 0 and 0.5, got {alpha!r}")
    for flag in ("sequential", "cache"):
        if not isinstance(merged[flag], bool):  # "no" would read as true
            raise Invalid(f"settings.{flag}", f"must be true or false, got {merged[flag]!r}")
    if isinstance(merged["margin"], int | float) and not isinstance(merged["margin"], bool):
        # A bare number meant absolute points before margins became relative by default;
        # guessing either way could flip a verdict, so the unit must be spelled out.
        raise Invalid(
            "settings.margin",
            f"give the unit: '{100 * merged['margin']:g}pts' (absolute points) or "
            f"'{100 * merged['margin']:g}%' (relative)",
        )
    try:
        if merged["margin"] is not None:  # None: superiority only, no margin
            stats.parse_margin(merged["margin"])
    except (ValueError, TypeError) as exc:
        raise Invalid("settings.margin", f"{exc}; e.g. '-2%' or '-1pts'") from None
    _check_number(merged, "export_window_h", 0, 24 * 90, "hours, more than 0 and at most 90 days")
    _check_number(merged, "mde", 0, 10, "a relative change above 0, e.g. 0.02 for 2%")
    _check_number(merged, "power", 0, 1, "between 0 and 1")
    if merged["baseline"] is not None:
        _check_number(merged, "baseline", 0, 1, "an expected control rate between 0 and 1")
    if merged["horizon"] is not None:
        _check_number(merged, "horizon", 0, 1e12, "a positive number of projects per arm")
    overrides = merged["overrides"]
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        raise Invalid("settings.overrides", "must map project ids to arm names")
    if merged["baseline"] is not None:
        try:
            planned_horizon(merged)
        except ValueError as exc:  # e.g. baseline 0.5 with mde 10: a rate above 100%
            field_name = "mde" if merged["margin"] is None else "margin"
            raise Invalid(f"settings.{field_name}", f"cannot plan with baseline: {exc}") from None
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(settings: dict[str, Any], name: str, low: float, high: float, what: str) -> None:
    value = settings[name]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low < value <= high or value == high == 1:
        raise Invalid(f"settings.{name}", f"must be {what}, got {value!r}")


def planned_horizon(settings: dict[str, Any]) -> float | None:
    """Projects per arm the deciding test needs, from the plan in the settings (None without an
    expected baseline): fixed when the experiment starts, never re-estimated from the data."""
    from analysis import stats  # scipy loads only when settings are checked

    if settings.get("horizon"):
        return float(settings["horizon"])
    baseline = settings.get("baseline")
    if baseline is None:
        return None
    raw_margin = settings.get("margin", DEFAULT_TEST_SETTINGS["margin"])
    margin = stats.parse_margin(raw_margin) if raw_margin is not None else stats.Margin(0.0)
    sequential = bool(settings.get("sequential", True))
    power = float(settings.get("power", 0.8))
    alpha = float(settings.get("alpha", 0.05))
    if margin.value != 0:
        plan = stats.plan(
            baseline, margin.value, scale=margin.scale, kind="non-inferiority", alpha=alpha,
            power=power, sequential=sequential,
        )  # fmt: skip
    else:
        plan = stats.plan(
            baseline, float(settings.get("mde", 0.02)), alpha=alpha, power=power,
            sequential=sequential,
        )  # fmt: skip
    return float(plan.control)


def create_experiment(session: Session, spec: ExperimentSpec) -> Experiment:
    _check_name(spec.key, "key")
    if session.scalar(select(Experiment.id).where(Experiment.key == spec.key)) is not None:
        raise Conflict("key", f"an experiment with key {spec.key!r} already exists")
    _validate_arms(spec.arms)
    if not 0 <= spec.coverage <= 1:
        raise Invalid("coverage", f"{spec.coverage} is outside 0..1")
    start, end = spec.namespace_range
    if not 0 <= start < end <= 1:
        raise Invalid("namespace_range", f"({start}, {end}) must satisfy 0 <= start < end <= 1")
    settings = _validate_settings(spec.settings)
    arm_names = {arm.name for arm in spec.arms}
    for project, arm_name in settings["overrides"].items():
        if arm_name not in arm_names:
            raise Invalid(f"settings.overrides.{project}", f"no arm named {arm_name!r}")
    variants = [
        get_variant(session, arm.variant, f"arms.{i}.variant") for i, arm in enumerate(spec.arms)
    ]
    for index, variant in enumerate(variants):
        if variant.status in INACTIVE_STATUSES:
            raise Conflict(f"arms.{index}.variant", f"variant {variant.name!r} is {variant.status}")
    experiment = Experiment(
        key=spec.key,
        seed=spec.seed or spec.key,
        coverage=spec.coverage,
        namespace=spec.namespace,
        namespace_start=start,
        namespace_end=end,
        description=spec.description,
        settings=settings,
    )
    experiment.arms = [
        ExperimentArm(name=arm.name, variant=variant, weight=arm.weight, is_control=arm.control)
        for arm, variant in zip(spec.arms, variants, strict=True)
    ]
    session.add(experiment)
    session.flush()
    return experiment


def get_experiment(session: Session, key: str, field_name: str = "key") -> Experiment:
    experiment = session.scalar(select(Experiment).where(Experiment.key == key))
    if experiment is None:
        raise NotFound(field_name, f"no experiment with key {key!r}")
    return experiment


def list_experiments(session: Session, status: str | None = None) -> Sequence[Experiment]:
    query = select(Experiment).order_by(Experiment.id)
    if status:
        query = query.where(Experiment.status == status)
    return session.scalars(query).all()


def start_experiment(session: Session, key: str) -> Experiment:
    experiment = get_experiment(session, key)
    if experiment.status == "running":
        raise Conflict("status", f"experiment {key!r} is already running")
    if experiment.status == "concluded":
        raise Conflict("status", f"experiment {key!r} is concluded and cannot restart")
    problems = {arm.name: clearance_problem(session, arm.variant) for arm in experiment.arms}
    blocked = [arm for arm in experiment.arms if problems[arm.name] is not None]
    if blocked:
        names = ", ".join(f"{a.name} ({a.variant.name}: {problems[a.name]})" for a in blocked)
        raise Conflict(
            "arms",
            f"arms without a passing gate cannot receive traffic: {names}; run `abtest gate`",
        )
    experiment.status = "running"
    first_start = experiment.started_at is None
    experiment.started_at = experiment.started_at or utcnow()
    experiment.stopped_at = None
    settings = dict(experiment.settings or {})
    if first_start and settings.get("horizon") is None:
        horizon = planned_horizon(settings)
        if horizon is not None:
            experiment.settings = {**settings, "horizon": horizon}
    if first_start:
        _record_allocation(session, experiment)
    session.flush()
    return experiment


def _record_allocation(session: Session, experiment: Experiment) -> None:
    """A new allocation period from now with the experiment's current weights."""
    session.flush()
    session.add(
        AllocationPeriod(
            experiment_id=experiment.id,
            version=experiment.allocation_version or 0,
            started_at=utcnow(),
            weights={str(arm.id): arm.weight for arm in experiment.arms},
        )
    )


def stop_experiment(session: Session, key: str) -> Experiment:
    experiment = get_experiment(session, key)
    if experiment.status != "running":
        raise Conflict("status", f"experiment {key!r} is {experiment.status}, not running")
    experiment.status = "stopped"
    experiment.stopped_at = utcnow()
    session.flush()
    return experiment


def update_arm_weights(session: Session, key: str, weights: dict[str, float]) -> Experiment:
    """Change weights mid-experiment; sticky assignments keep already-assigned projects."""
    experiment = get_experiment(session, key)
    if experiment.status == "concluded":
        raise Conflict("status", f"experiment {key!r} is concluded; its allocation is history")
    arms = {arm.name: arm for arm in experiment.arms}
    unknown = sorted(set(weights) - set(arms))
    if unknown:
        raise Invalid(f"weights.{unknown[0]}", "no such arm")
    specs = [
        ArmSpec(a.name, a.variant.name, weights.get(a.name, a.weight), a.is_control)
        for a in experiment.arms
    ]
    _validate_arms(specs)
    changed = any(arms[spec.name].weight != spec.weight for spec in specs)
    for spec in specs:
        arms[spec.name].weight = spec.weight
    if changed and experiment.started_at is not None:
        # projects assigned so far may now hash elsewhere: routing must look them up
        experiment.allocation_version = (experiment.allocation_version or 0) + 1
        _record_allocation(session, experiment)
    session.flush()
    return experiment


def experiment_summary(experiment: Experiment) -> dict[str, Any]:
    return {
        "key": experiment.key,
        "status": experiment.status,
        "seed": experiment.seed,
        "coverage": experiment.coverage,
        "namespace": experiment.namespace,
        "namespace_range": [experiment.namespace_start, experiment.namespace_end],
        "settings": experiment.settings,
        "created_at": experiment.created_at.isoformat() if experiment.created_at else None,
        "started_at": experiment.started_at.isoformat() if experiment.started_at else None,
        "stopped_at": experiment.stopped_at.isoformat() if experiment.stopped_at else None,
        "shipped_arm": experiment.shipped_arm,
        "arms": [
            {
                "name": arm.name,
                "variant": arm.variant.name,
                "weight": arm.weight,
                "control": arm.is_control,
            }
            for arm in experiment.arms
        ],
    }


def variant_summary(variant: Variant) -> dict[str, Any]:
    return {
        "name": variant.name,
        "kind": variant.kind,
        "status": variant.status,
        "version": variant.version,
        "config": variant.config,
        "description": variant.description,
        "created_at": variant.created_at.isoformat() if variant.created_at else None,
    }
