"""ORM tables (SQLAlchemy 2.0 typed mapping). Alembic's `migrations/` is generated from these."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")

VARIANT_KINDS = ("teacher", "openai_student", "local_student", "recorded", "knn_student")
VARIANT_STATUSES = ("registered", "approved", "champion", "retired", "archived")
TEACHER_KINDS = ("teacher", "recorded")  # the reference: the live teacher or its recorded answers
INACTIVE_STATUSES = ("archived", "retired")
ACTIVE_REFERENCE = f"kind IN {TEACHER_KINDS} AND status NOT IN {INACTIVE_STATUSES}"
EXPERIMENT_STATUSES = ("draft", "running", "stopped", "concluded")
EVENT_TYPES = ("start", "export")
ROLES = ("app", "engineer", "analyst")
JOB_KINDS = ("gate",)
JOB_STATUSES = ("queued", "running", "succeeded", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Variant(Base):
    """A model configuration that can serve an arm: the teacher or a student."""

    __tablename__ = "variants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(30))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="registered")
    version: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        CheckConstraint(f"kind IN {VARIANT_KINDS}", name="kind"),
        CheckConstraint(f"status IN {VARIANT_STATUSES}", name="status"),
        # at most one active reference teacher, whatever races the service's check (0010)
        Index(
            "uq_variants_one_reference",
            literal_column("(1)"),
            unique=True,
            postgresql_where=text(ACTIVE_REFERENCE),
            sqlite_where=text(ACTIVE_REFERENCE),
        ),
    )


class GateRun(Base):
    """One offline evaluation of a variant against the promotion gate."""

    __tablename__ = "gate_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(
        ForeignKey("variants.id", ondelete="CASCADE"), index=True
    )
    champion_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id"), nullable=True)
    test_set_hash: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(40))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    failures: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    passed: Mapped[bool] = mapped_column(Boolean)
    # The variant config this run evaluated: it clears that config only (migration 0006).
    config_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(100), default="unknown")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """Long work asked for over the API (a gate run), done by a worker of the server that
    accepted it (`abtest.jobs`). `heartbeat_at` is refreshed while that server lives: a queued
    or running job whose heartbeat stopped was interrupted."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    actor: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    owner: Mapped[str] = mapped_column(String(200))  # the process that runs it
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        CheckConstraint(f"kind IN ({', '.join(map(repr, JOB_KINDS))})", name="kind"),
        CheckConstraint(f"status IN {JOB_STATUSES}", name="status"),
        Index("ix_jobs_status", "status", "heartbeat_at"),
    )


class Promotion(Base):
    """Audit trail of variant status changes (approve, champion, retire)."""

    __tablename__ = "promotions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(
        ForeignKey("variants.id", ondelete="CASCADE"), index=True
    )
    from_status: Mapped[str] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    gate_run_id: Mapped[int | None] = mapped_column(ForeignKey("gate_runs.id"), nullable=True)
    experiment_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    actor: Mapped[str] = mapped_column(String(100), default="unknown")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    seed: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="draft")
    coverage: Mapped[float] = mapped_column(Float, default=1.0)
    namespace: Mapped[str | None] = mapped_column(String(100), nullable=True)
    namespace_start: Mapped[float] = mapped_column(Float, default=0.0)
    namespace_end: Mapped[float] = mapped_column(Float, default=1.0)
    # Test settings: alpha, non-inferiority margin, sequential or fixed, cache on/off, overrides.
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    shipped_arm: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Weight changes since the experiment first started (routing skips assignment lookups at 0).
    allocation_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    arms: Mapped[list[ExperimentArm]] = relationship(
        back_populates="experiment", order_by="ExperimentArm.id", cascade="all, delete-orphan"
    )

    __table_args__ = (
        CheckConstraint(f"status IN {EXPERIMENT_STATUSES}", name="status"),
        CheckConstraint("coverage >= 0 AND coverage <= 1", name="coverage"),
        CheckConstraint(
            "namespace_start >= 0 AND namespace_start < namespace_end AND namespace_end <= 1",
            name="namespace_range",
        ),
    )


class ExperimentArm(Base):
    __tablename__ = "experiment_arms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    weight: Mapped[float] = mapped_column(Float)
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)

    experiment: Mapped[Experiment] = relationship(back_populates="arms")
    variant: Mapped[Variant] = relationship(lazy="joined")

    __table_args__ = (
        UniqueConstraint("experiment_id", "name"),
        CheckConstraint("weight >= 0 AND weight <= 1", name="weight"),
    )


class Assignment(Base):
    """The sticky, first assignment of a project in an experiment."""

    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # No foreign keys (migration 0005): every request's first assignment is written here, and
    # the two per-row key checks cost as much as the rest of the insert. Rows come from the
    # router, whose arm ids are loaded from experiment_arms; experiments are never deleted.
    experiment_id: Mapped[int] = mapped_column(Integer)
    project_id: Mapped[str] = mapped_column(String(200))
    arm_id: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(20), default="hash")  # hash | override
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("experiment_id", "project_id"),)


class Event(Base):
    """A start or export of an editing project; `client_event_id` makes retries idempotent."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client_event_id: Mapped[str] = mapped_column(String(100), unique=True)
    type: Mapped[str] = mapped_column(String(10))
    project_id: Mapped[str] = mapped_column(String(200))
    # No foreign keys: events are an append-only log and the writer checks the references of
    # each batch in one query (routing.eventlog.InvalidEventReference); see migration 0004.
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    arm_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    served_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    intent: Mapped[str | None] = mapped_column(Text, nullable=True)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    __table_args__ = (
        CheckConstraint(f"type IN {EVENT_TYPES}", name="type"),
        Index(
            "ix_events_experiment_arm_type_day", "experiment_id", "arm_id", "type", "occurred_at"
        ),
        Index("ix_events_project", "project_id", "experiment_id"),
        Index(
            "ix_events_orphans",
            "project_id",
            postgresql_where=text("arm_id IS NULL"),
            sqlite_where=text("arm_id IS NULL"),
        ),
    )


class ProjectOutcome(Base):
    """Rollup: one row per (experiment, project) with its first start/export and segment values.

    Maintained incrementally by `analysis.rollup.refresh` (the report reads it, not the events).
    """

    __tablename__ = "project_outcomes"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    first_start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    first_export_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    start_day: Mapped[date | None] = mapped_column(Date, nullable=True)
    export_day: Mapped[date | None] = mapped_column(Date, nullable=True)
    event_arm_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    assigned_arm_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    platform: Mapped[str | None] = mapped_column(Text, nullable=True)
    country: Mapped[str | None] = mapped_column(Text, nullable=True)
    intent: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_project_outcomes_last_start", "experiment_id", "last_start_at"),)


class OutcomeCount(Base):
    """Rollup: started projects per (experiment, arm, start day, export day, platform, country).

    ``export_day`` is 9999-12-31 for a project not exported; maintained with project_outcomes.
    """

    __tablename__ = "outcome_counts"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    arm_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_day: Mapped[date] = mapped_column(Date, primary_key=True)
    export_day: Mapped[date] = mapped_column(Date, primary_key=True)
    platform: Mapped[str] = mapped_column(Text, primary_key=True)
    country: Mapped[str] = mapped_column(Text, primary_key=True)
    projects: Mapped[int] = mapped_column(BigInteger)


class IntentCount(Base):
    """Rollup: started projects per (experiment, arm, normalised intent, start day, export day)."""

    __tablename__ = "intent_counts"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    arm_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    intent: Mapped[str] = mapped_column(Text, primary_key=True)
    start_day: Mapped[date] = mapped_column(Date, primary_key=True)
    export_day: Mapped[date] = mapped_column(Date, primary_key=True)
    projects: Mapped[int] = mapped_column(BigInteger)


class CallRollup(Base):
    """Rollup: guardrail sums per (experiment, arm, UTC day, latency bucket)."""

    __tablename__ = "call_rollups"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    arm_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    fallbacks: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    cache_hits: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Float)


class RollupWatermark(Base):
    """The last events.id / assignments.id merged into an experiment's rollup."""

    __tablename__ = "rollup_watermarks"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    last_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_assignment_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_events: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_assignments: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EventDrop(Base):
    """An experiment whose events went with a month partition that retention dropped
    (`abtest.partitions`, migration 0011): its rollup holds them, a scan of the events left does
    not, so its read-only results use the rollup even while it is stale (`analysis.rollup`)."""

    __tablename__ = "event_drops"
    experiment_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partition: Mapped[str] = mapped_column(String(40), primary_key=True)
    dropped_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AllocationPeriod(Base):
    """The weights of a started experiment from `started_at` until the next period starts.

    One row when the experiment starts and one per weight change after that: the analysis
    checks SRM per period and estimates the effect stratified by period.
    """

    __tablename__ = "allocation_periods"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # arm id (as text: JSON keys) -> weight
    weights: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (UniqueConstraint("experiment_id", "version"),)


class Report(Base):
    """A stored significance report for one experiment and period."""

    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decision: Mapped[str] = mapped_column(String(40))
    srm: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("experiment_id", "period_end"),)


class CatalogGeneration(Base):
    """One row: bumped by every service write to variants, experiments and API keys.

    Servers poll it (`abtest.catalog_watch`) and reload what they cache when it changes.
    """

    __tablename__ = "catalog_generation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiKey(Base):
    """An API key, stored as a SHA-256 hash with its role."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (CheckConstraint(f"role IN {ROLES}", name="role"),)
