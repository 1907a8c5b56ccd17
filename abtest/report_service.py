"""Report service: build significance reports, store them, run them all for cron.

A report covers every event before its `period_end` (the start of the UTC day after `as_of`).
Storing is an upsert on (experiment, period_end): rerunning a period replaces that period's
row instead of adding one. The previous stored report (the latest with an earlier period end)
is handed to the report so that a changed decision or a new SRM flag is called out at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pandas as pd
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from abtest import db
from abtest.errors import Invalid, NotFound
from abtest.tables import Experiment, Report
from analysis import queries
from analysis.report_model import (
    DEFAULT_SEGMENT_ATTRIBUTES,
    ArmResult,
    Comparison,
    Instant,
    PreviousReport,
    StatsSource,
    build_report,
    period_end_for,
)
from analysis.report_model import Report as ReportModel

FORMATS = ("md", "html", "json")
REPORTED_STATUSES = ("running", "stopped")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredReport:
    key: str
    period_end: datetime
    decision: str
    srm: bool
    created: bool  # False when an existing row for the period was updated


def today_utc(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def check_as_of(as_of: date | None, now: datetime | None = None) -> date:
    """The report day (default: today, UTC); a day in the future is refused."""
    today = today_utc(now)
    if as_of is None:
        return today
    if as_of > today:
        raise Invalid("as_of", f"{as_of.isoformat()} is in the future (today is {today} UTC)")
    return as_of


def check_after_start(experiment: Experiment, period_end: datetime) -> None:
    """A report covers a period after the start: one that ended before it is refused."""
    started = experiment.started_at
    if started is None:
        return
    started = started.replace(tzinfo=UTC) if started.tzinfo is None else started
    if period_end <= started.replace(hour=0, minute=0, second=0, microsecond=0):
        day = (period_end - timedelta(days=1)).date()
        raise Invalid(
            "as_of",
            f"{day.isoformat()} is before the experiment started ({started.date().isoformat()})",
        )


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise Invalid("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


MAX_SEGMENTS = 20  # one query part per attribute: SQLite refuses a compound of 500


def check_segments(attributes: Sequence[str]) -> tuple[str, ...]:
    """Plain attribute names, each once, at most `MAX_SEGMENTS`; else `Invalid('segments')`."""
    for attribute in attributes:
        if not queries.ATTRIBUTE_PATTERN.match(attribute):
            raise Invalid("segments", f"{attribute!r} is not a plain attribute name")
    unique = tuple(dict.fromkeys(attributes))
    if len(unique) > MAX_SEGMENTS:
        raise Invalid("segments", f"at most {MAX_SEGMENTS} attributes, got {len(unique)}")
    return unique


def previous_report(session: Session, experiment_id: int, period_end: datetime) -> Report | None:
    """The stored report with the latest period end before `period_end`."""
    return session.scalar(
        select(Report)
        .where(Report.experiment_id == experiment_id, Report.period_end < period_end)
        .order_by(Report.period_end.desc())
        .limit(1)
    )


def stored_reports(session: Session, key: str) -> Sequence[Report]:
    experiment = _experiment(session, key)
    return session.scalars(
        select(Report).where(Report.experiment_id == experiment.id).order_by(Report.period_end)
    ).all()


class StoredSummary(BaseModel):
    """One stored report as listed by the API and `abtest reports list`."""

    period_end: Instant
    decision: str
    srm: bool
    created_at: Instant


def stored_summaries(session: Session, key: str) -> list[StoredSummary]:
    """The stored reports of `key`, oldest first, without their bodies."""
    return [
        StoredSummary(
            period_end=r.period_end, decision=r.decision, srm=r.srm, created_at=r.created_at
        )
        for r in stored_reports(session, key)
    ]


def _experiment(session: Session, key: str) -> Experiment:
    experiment = session.scalar(select(Experiment).where(Experiment.key == key))
    if experiment is None:
        raise NotFound("key", f"no experiment with key {key!r}")
    return experiment


def build(
    session: Session,
    key: str,
    as_of: date | None = None,
    segments: Sequence[str] = DEFAULT_SEGMENT_ATTRIBUTES,
    now: datetime | None = None,
    source: StatsSource | None = None,
) -> ReportModel:
    """The report for `key` as of a day, computed now from the events (not stored); the counts
    come from the rollup, or from `source` (e.g. Spark over exported events)."""
    experiment = _experiment(session, key)
    period_end = period_end_for(check_as_of(as_of, now))
    check_after_start(experiment, period_end)
    segments = check_segments(segments)
    previous = _readable(previous_report(session, experiment.id, period_end))
    connection = session.connection()
    return build_report(connection, key, period_end, previous, segments, now, source)


def _readable(before: Report | None) -> PreviousReport | None:
    """The previous report for the callouts; one whose stored body no longer reads (edited by
    hand, written by a broken version) is left out with a warning rather than failing this one."""
    if before is None:
        return None
    try:
        return PreviousReport.model_validate(before.body)
    except ValidationError as error:
        log.warning("previous report %s is unreadable, no callouts against it: %s", before.id,
                    error.errors()[0]["loc"])  # fmt: skip
        return None


def store(session: Session, experiment_id: int, report: ReportModel) -> tuple[Report, bool]:
    """Insert the report, or update the stored one for the same period; returns (row, created)."""
    row = session.scalar(
        select(Report).where(
            Report.experiment_id == experiment_id, Report.period_end == report.period_end
        )
    )
    created = row is None
    if row is None:
        row = Report(experiment_id=experiment_id, period_end=report.period_end)
        session.add(row)
    row.decision = report.decision.value[:40]
    row.srm = report.srm.flagged
    row.body = report.model_dump(mode="json")
    row.created_at = datetime.now(UTC)
    session.flush()
    return row, created


def run_report(
    session: Session,
    key: str,
    as_of: date | None = None,
    now: datetime | None = None,
    source: StatsSource | None = None,
) -> tuple[ReportModel, StoredReport]:
    """Build and store the report for one experiment and day."""
    report = build(session, key, as_of, now=now, source=source)
    row, created = store(session, report.experiment.id, report)
    return report, StoredReport(key, report.period_end, row.decision, row.srm, created)


def run_all(
    engine: Engine,
    as_of: date | None = None,
    statuses: tuple[str, ...] = REPORTED_STATUSES,
    now: datetime | None = None,
    source_for: Callable[[Session], StatsSource | None] | None = None,
) -> list[StoredReport]:
    """Store reports for every running/stopped experiment; the cron and scheduler entry point.

    Without `as_of` it finalises yesterday (a complete day) and refreshes today's partial report.
    Each experiment is committed on its own, so one broken experiment does not block the others.
    """
    days = [check_as_of(as_of, now)] if as_of else _default_days(now)
    with engine.connect() as connection:
        keys = queries.experiment_keys(connection, statuses)
    stored: list[StoredReport] = []
    for key in keys:
        for day in days:
            with db.session_scope(engine) as session:
                experiment = _experiment(session, key)
                try:
                    check_after_start(experiment, period_end_for(day))
                except Invalid:
                    continue  # no back-filled report for a period before the start
                source = source_for(session) if source_for else None
                stored.append(run_report(session, key, day, now, source)[1])
    return stored


def _default_days(now: datetime | None) -> list[date]:
    today = today_utc(now)
    return [today - timedelta(days=1), today]


def latest_report(session: Session, key: str) -> ReportModel | None:
    """The stored report with the latest period end, read back into the model."""
    rows = stored_reports(session, key)
    return ReportModel.model_validate(rows[-1].body) if rows else None


# --- for analysts ------------------------------------------------------------------------------


def _engine(engine_or_url: Engine | str) -> Engine:
    if isinstance(engine_or_url, str):
        engine = db.get_engine(engine_or_url)
        db.ensure_migrated(engine)
        return engine
    return engine_or_url


def results_frame(engine_or_url: Engine | str, key: str, as_of: date | None = None) -> pd.DataFrame:
    """One row per arm: counts, rate and interval, and versus control the difference, ratio,
    p-values, always-valid interval and decision; plus the SRM flag. For notebooks."""
    with db.session_scope(_engine(engine_or_url)) as session:
        report = build(session, key, as_of, segments=())
    comparisons = {c.arm: c for c in report.comparisons}
    return pd.DataFrame(
        [_result_row(report, arm, comparisons.get(arm.name)) for arm in report.arms]
    )


def _result_row(report: ReportModel, arm: ArmResult, c: Comparison | None) -> dict[str, object]:
    """One arm's row of `results_frame` (the control's comparison columns are None)."""
    always_valid = c.sequential.difference_ci if c and c.sequential else (None, None)
    return {
        "experiment": report.experiment.key,
        "as_of": report.as_of.isoformat(),
        "arm": arm.name,
        "control": arm.control,
        "starts": arm.starts,
        "exports": arm.exports,
        "rate": arm.rate,
        "ci_low": arm.ci_low,
        "ci_high": arm.ci_high,
        "difference": c.difference if c else None,
        "difference_ci_low": c.difference_ci[0] if c else None,
        "difference_ci_high": c.difference_ci[1] if c else None,
        "ratio": c.ratio if c else None,
        "ratio_ci_low": c.ratio_ci[0] if c else None,
        "ratio_ci_high": c.ratio_ci[1] if c else None,
        # the report's p-value (pooled z, or always-valid when sequential) is already
        # Holm-adjusted with several treatments: both columns hold it
        "p_value": c.p_value if c else None,
        "p_value_adjusted": c.p_value if c else None,
        "decision_interval_low": c.decision_interval[0] if c else None,
        "decision_interval_high": c.decision_interval[1] if c else None,
        "scale": c.scale if c else None,
        "pending": arm.pending,
        "always_valid_low": always_valid[0],
        "always_valid_high": always_valid[1],
        "decision": c.decision.value if c else None,
        "srm_flagged": report.srm.flagged,
    }


def timeline_frame(
    engine_or_url: Engine | str, key: str, as_of: date | None = None
) -> pd.DataFrame:
    """One row per day and arm: cumulative starts, exports, rate and its interval."""
    with db.session_scope(_engine(engine_or_url)) as session:
        report = build(session, key, as_of, segments=())
    rows = [
        {"day": pd.Timestamp(point.day), "arm": name, **values.model_dump()}
        for point in report.timeline
        for name, values in point.arms.items()
    ]
    columns = ["day", "arm", "starts", "exports", "rate", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)
