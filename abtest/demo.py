"""`abtest demo`: the whole platform end to end on an embedded SQLite database.

A teacher arm and a student arm are registered, the student passes the offline gate, an experiment
starts, and simulated editing projects go through the router, which logs start and export events.

The simulated user (`export_probability`) is a documented model, not a constant: a user is more
likely to export when the look they got agrees with what the teacher's *exported* answers look
like (the dataset keeps, per intent, the teacher output with the highest export rate), and less
likely when they waited longer:

    q = mean over the three tools of the agreement with the recorded teacher answer
        (both unused: 1; one used, the other not: 0; adjust and selective adjust:
        (1 + cosine) / 2; filter: 1 for the same preset, 0.3 for another preset)
    p(export) = clip(BASE + QUALITY_WEIGHT * q - LATENCY_PENALTY_PER_S * latency_s, 0.01, 0.99)

Intents are drawn from the test split (which no student saw) with probability proportional to
their popularity (`calls`), so popular intents dominate traffic as in production.

Time: the experiment runs `DAYS` simulated days ending today. Each day's projects go through the
real router; their start events (and assignments) are then stamped with seeded times spread
over that day, and an export comes `EXPORT_DELAY_MIN` minutes or so after its start. The report
therefore has one point per day and its always-valid interval narrows as the days accumulate.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from abtest import db, services
from abtest.settings import Settings
from models.dataset import IntentRecord, bundled_path, load_split
from models.tools import ToolConfig

if TYPE_CHECKING:
    from analysis.report_model import Report

BASE = 0.35
QUALITY_WEIGHT = 0.30
LATENCY_PENALTY_PER_S = 0.02
OTHER_FILTER_CREDIT = 0.3
PLATFORMS = ("ios", "android", "web")
COUNTRIES = ("US", "BR", "IN", "DE", "JP")
EXPERIMENT_KEY = "teacher-vs-student"
DAYS = 14
EXPORT_DELAY_MIN = (2.0, 30.0)  # uniform minutes from a project's start to its export
EXPORT_WINDOW_H = 1  # the demo experiment's attribution window
# A day can be the simulation's last only once this much of it has passed: its first projects'
# windows have closed by then, so today's report counts them (else, just after midnight UTC,
# the last day is all pending and the timeline is a day short).
LAST_DAY_NEEDS = timedelta(hours=EXPORT_WINDOW_H, minutes=EXPORT_DELAY_MIN[1] + 6)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm else 0.0


def agreement(served: ToolConfig, reference: ToolConfig) -> float:
    """How close a served configuration is to the reference answer, in [0, 1]."""
    scores = []
    for tool in ("adjust", "selective_adjust"):
        got, want = getattr(served, tool), getattr(reference, tool)
        if got is None or want is None:
            scores.append(float(got is None and want is None))
        else:
            scores.append((1 + _cosine(got.vector(), want.vector())) / 2)
    got_filter, want_filter = served.filter, reference.filter
    if got_filter is None or want_filter is None:
        scores.append(float(got_filter is None and want_filter is None))
    else:
        scores.append(1.0 if got_filter.name == want_filter.name else OTHER_FILTER_CREDIT)
    return float(np.mean(scores))


def export_probability(quality: float, latency_s: float) -> float:
    p = BASE + QUALITY_WEIGHT * quality - LATENCY_PENALTY_PER_S * latency_s
    return float(np.clip(p, 0.01, 0.99))


@dataclass(frozen=True)
class SimulatedProject:
    project_id: str
    record: IntentRecord
    attributes: dict[str, Any]


def draw_projects(
    records: list[IntentRecord], n: int, rng: np.random.Generator
) -> list[SimulatedProject]:
    weights = np.array([r.calls for r in records], dtype=float)
    picks = rng.choice(len(records), size=n, p=weights / weights.sum())
    return [
        SimulatedProject(
            project_id=f"project-{i:06d}",
            record=records[index],
            attributes={
                "platform": PLATFORMS[rng.integers(len(PLATFORMS))],
                "country": COUNTRIES[rng.integers(len(COUNTRIES))],
            },
        )
        for i, index in enumerate(picks)
    ]


def fresh_sqlite(path: str | Path) -> str:
    path = Path(path).resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def register_students(settings: Settings, cache_dir: Path) -> list[str]:
    """The candidate students: the kNN baseline and the MiniLM student trained by this code."""
    from models.distill.embedding_student import (
        embedding_variant_config,
        ensure_embedding_student,
    )

    engine = db.get_engine(settings.database_url)
    minilm = ensure_embedding_student(cache_dir)
    with db.session_scope(engine) as session:
        services.register_variant(
            session,
            "knn-baseline",
            "knn_student",
            {"fit": "train"},
            "nearest neighbours over character n-grams, fitted on the training split",
            actor="demo",
            settings=settings,
        )
        services.register_variant(
            session,
            "minilm-student",
            "local_student",
            embedding_variant_config(minilm),
            "frozen MiniLM encoder + heads trained on the training split (abtest train "
            "--embedding)",
            actor="demo",
            settings=settings,
        )
    return ["knn-baseline", "minilm-student"]


def setup_platform(settings: Settings, console: Console, cache_dir: Path) -> list[str]:
    """Migrate, register the teacher and the students, gate the students and start the
    experiment with every student that passed. Returns the experiment's arm names."""
    engine = db.get_engine(settings.database_url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        services.register_variant(
            session,
            "teacher",
            "teacher",
            {},
            "GPT-3.5-Turbo over the OpenAI API (here: the recorded server)",
            actor="demo",
            reference=True,
            settings=settings,
        )
    candidates = register_students(settings, cache_dir)
    approved = [name for name in candidates if gate_student(settings, name, console)]
    if not approved:
        raise RuntimeError("no student passed the offline gate: nothing to experiment with")
    weight = 1 / (len(approved) + 1)
    arms = [services.ArmSpec("control", "teacher", weight, control=True)]
    arm_names = ["student"] if len(approved) == 1 else approved
    arms += [
        services.ArmSpec(arm, name, weight) for arm, name in zip(arm_names, approved, strict=True)
    ]
    with db.session_scope(engine) as session:
        spec = services.ExperimentSpec(
            key=EXPERIMENT_KEY,
            arms=arms,
            description="Does the cheap student keep the project completion rate?",
            # Peeked at daily: the always-valid (sequential) interval decides. The simulated
            # users export within minutes of the start, so a one-hour attribution window closes
            # well before the report (production default: 24 h).
            settings={"sequential": True, "margin": "-2%", "export_window_h": EXPORT_WINDOW_H},
        )
        services.create_experiment(session, spec)
        experiment = services.start_experiment(session, EXPERIMENT_KEY)
        experiment.started_at = first_day()
    return [arm.name for arm in arms]


def gate_student(settings: Settings, name: str, console: Console) -> bool:
    """Run the offline gate under the demo's named policy (`analysis.gate_policy.DEMO_POLICY`, lower
    floors than the default `gate-v2`, printed) and promote the student when it passes."""
    from abtest import promotion
    from analysis.gate_policy import DEMO_POLICY

    engine = db.get_engine(settings.database_url)
    with db.session_scope(engine) as session:
        run = promotion.run_gate(session, name, "demo", DEMO_POLICY, settings=settings)
        overall = run.metrics["candidate"]["subsets"]["all"]["overall"]
        verdict = "[green]PASS[/]" if run.passed else "[red]FAIL[/]"
        console.print(
            f"offline gate {run.policy_version}: {name} overall {overall:.3f} -> {verdict}"
        )
        for failure in run.failures:
            console.print(f"  [red]- {failure}[/]")
        if run.passed:
            promotion.promote(session, name, "demo")
            console.print(f"{name} is approved for traffic")
        else:
            console.print(f"{name} stays out of the experiment")
    return bool(run.passed)


def first_day(days: int = DAYS, now: datetime | None = None) -> datetime:
    """Midnight (UTC) of the simulation's first day: `days` days ending today, or yesterday
    in the first `LAST_DAY_NEEDS` after midnight."""
    ready = (now or datetime.now(UTC)) - LAST_DAY_NEEDS
    last = ready.replace(hour=0, minute=0, second=0, microsecond=0)
    return last - timedelta(days=days - 1)


def day_of(index: int, total: int, days: int = DAYS) -> int:
    """Project `index` of `total` runs on this day (equal shares, in order)."""
    return index * days // total


async def simulate(
    settings: Settings,
    projects: list[SimulatedProject],
    seed: int,
    concurrency: int = 16,
    days: int = DAYS,
) -> None:
    """Route the projects day by day (`concurrency` at a time, like parallel app users), let each
    simulated user decide whether to export, and stamp each day's events with that day's
    seeded times (the last day's stay before now)."""
    from abtest.runtime import build_router

    rng = np.random.default_rng(seed + 1)
    engine = db.get_engine(settings.database_url)
    router = build_router(settings, engine)
    draws = rng.random(len(projects))
    start = first_day(days)
    now = datetime.now(UTC)
    day_span = [min(timedelta(days=1), now - (start + timedelta(days=d))) for d in range(days)]
    offsets = rng.random(len(projects))
    delays = rng.uniform(*EXPORT_DELAY_MIN, size=len(projects))

    def started_at(i: int) -> datetime:
        day = day_of(i, len(projects), days)
        late = day_span[day] - timedelta(minutes=EXPORT_DELAY_MIN[1] + 1)
        return start + timedelta(days=day) + max(late, timedelta(0)) * float(offsets[i])

    async def one(i: int) -> None:
        project = projects[i]
        routed = await router.handle_project(
            project.project_id, project.record.intent, project.attributes
        )
        if routed.served_by is None:
            raise RuntimeError(f"no arm could answer {project.project_id}: {routed.error}")
        quality = agreement(routed.config, project.record.teacher)
        if draws[i] < export_probability(quality, routed.latency_ms / 1000):
            exported = min(started_at(i) + timedelta(minutes=float(delays[i])), now)
            await router.record_export(project.project_id, occurred_at=exported)

    with Progress() as progress:
        task = progress.add_task(f"routing projects over {days} days", total=len(projects))
        for day in range(days):
            todays = [i for i in range(len(projects)) if day_of(i, len(projects), days) == day]
            for first in range(0, len(todays), concurrency):
                chunk = todays[first : first + concurrency]
                await asyncio.gather(*(one(i) for i in chunk))
                progress.advance(task, len(chunk))
            stamp_starts(engine, [(projects[i].project_id, started_at(i)) for i in todays])


def stamp_starts(engine: Any, stamps: list[tuple[str, datetime]]) -> None:
    """Give the projects' start events and assignments their simulated times."""
    from sqlalchemy import Table, bindparam, update

    from abtest.tables import Assignment, Event

    if not stamps:
        return
    rows = [{"p": project_id, "t": at} for project_id, at in stamps]
    events, assignments = cast(Table, Event.__table__), cast(Table, Assignment.__table__)
    with engine.begin() as connection:
        connection.execute(
            update(events)
            .where(events.c.project_id == bindparam("p"), events.c.type == "start")
            .values(occurred_at=bindparam("t"), received_at=bindparam("t")),
            rows,
        )
        connection.execute(
            update(assignments)
            .where(assignments.c.project_id == bindparam("p"))
            .values(assigned_at=bindparam("t")),
            rows,
        )


def per_arm_counts(settings: Settings) -> list[dict[str, Any]]:
    from sqlalchemy import text

    engine = db.get_engine(settings.database_url)
    query = text(
        """
        SELECT a.name AS arm, v.name AS variant,
               COUNT(DISTINCT CASE WHEN e.type = 'start' THEN e.project_id END) AS starts,
               COUNT(DISTINCT CASE WHEN e.type = 'export' THEN e.project_id END) AS exports,
               SUM(CASE WHEN e.type = 'start' AND e.fallback THEN 1 ELSE 0 END) AS fallbacks
        FROM experiment_arms a
        JOIN variants v ON v.id = a.variant_id
        JOIN experiments x ON x.id = a.experiment_id
        LEFT JOIN events e ON e.arm_id = a.id
        WHERE x.key = :key
        GROUP BY a.id, a.name, v.name ORDER BY a.id
        """
    )
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query, {"key": EXPERIMENT_KEY})]


def print_rates(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"experiment {EXPERIMENT_KEY}: project completion rate")
    for column in ("arm", "variant", "starts", "exports", "completion rate", "fallbacks"):
        table.add_column(column)
    for row in rows:
        rate = row["exports"] / row["starts"] if row["starts"] else float("nan")
        table.add_row(
            row["arm"],
            row["variant"],
            str(row["starts"]),
            str(row["exports"]),
            f"{rate:.2%}",
            str(row["fallbacks"] or 0),
        )
    console.print(table)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f} pts"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def print_analysis(settings: Settings, console: Console, html_out: Path) -> Report:
    """Store today's report, print the decision per treatment and write the HTML report."""
    from abtest import report_service
    from analysis.report_render import render_html

    engine = db.get_engine(settings.database_url)
    with db.session_scope(engine) as session:
        report, _ = report_service.run_report(session, EXPERIMENT_KEY)
    for arm in report.arms:
        console.print(
            f"{arm.name:>10}: {_pct(arm.rate)} "
            f"(95% CI {_pct(arm.ci_low)} to {_pct(arm.ci_high)}, {arm.starts} projects"
            f", {arm.pending} pending)"
        )
    for comparison in report.comparisons:
        low, high = comparison.difference_ci
        ratio_low, ratio_high = comparison.ratio_ci
        console.print(
            f"{comparison.arm} vs control: difference {_pts(comparison.difference)} "
            f"(95% CI {_pts(low)} to {_pts(high)}), ratio {_pct(comparison.ratio)} of control "
            f"(95% CI {_pct(ratio_low)} to {_pct(ratio_high)}), "
            f"{report.labels.p_value} = {_num(comparison.p_value)} "
            f"-> [bold]{comparison.decision}[/]"
        )
        non_inferior = comparison.non_inferiority
        if non_inferior:
            verdict = "non-inferior" if non_inferior.non_inferior else "not shown non-inferior"
            console.print(f"  non-inferiority margin {non_inferior.margin}: {verdict}")
        for note in comparison.notes:
            console.print(f"  {note}")
    if report.srm.flagged:
        console.print(f"[bold red]sample ratio mismatch:[/] {report.srm.message}")
    print_daily_intervals(report, console)
    html_out.write_text(render_html(report), encoding="utf-8")
    console.print(f"HTML report with plots: {html_out}")
    return report


def _pct_or_dash(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:+.1%}"


def print_daily_intervals(report: Report, console: Console) -> None:
    """The always-valid interval of treatment/control - 1 after each day: it narrows."""
    for arm in [c.arm for c in report.comparisons]:
        console.print(f"{arm} vs control, relative difference after each day (always-valid):")
        for point in report.timeline:
            relative = point.relative[arm]
            starts = sum(a.starts for a in point.arms.values())
            console.print(
                f"  {point.day}  {starts:>6} projects  {_pct_or_dash(relative.estimate)}"
                f"  [{_pct_or_dash(relative.ci_low)}, {_pct_or_dash(relative.ci_high)}]"
            )


def run_demo(
    projects: int, database: str, seed: int, console: Console, teacher_latency_ms: float = 20.0
) -> list[dict[str, Any]]:
    from models.recorded_server import serve_in_thread

    base_url, stop = serve_in_thread(latency_ms=teacher_latency_ms)
    console.print(f"recorded OpenAI-compatible teacher server: {base_url}")
    cache_dir = Path(database).resolve().parent / "abtest-demo-models"
    try:
        settings = Settings(
            database_url=fresh_sqlite(database),
            openai_base_url=base_url,
            openai_api_key="recorded",  # type: ignore[arg-type]
            spool_dir=Path(database).resolve().parent / "abtest-demo-spool",
            # the committed students, and the cache a retrained one would land in
            model_dir=os.pathsep.join([str(bundled_path("train").parent), str(cache_dir)]),
            gate_policy_minimum="demo-v2",  # the policy the demo gates its students under
        )
        console.print(f"demo database: {settings.database_url}")
        setup_platform(settings, console, cache_dir)
        rng = np.random.default_rng(seed)
        simulated = draw_projects(load_split("test"), projects, rng)
        asyncio.run(simulate(settings, simulated, seed))
    finally:
        stop()
    rows = per_arm_counts(settings)
    print_rates(rows, console)
    print_analysis(settings, console, Path(database).with_suffix(".html"))
    console.print(
        "explore the demo database (other commands and notebooks/analyst.ipynb read it):\n"
        f"  export ABTEST_DATABASE_URL={settings.database_url}\n"
        f"  abtest variants list; abtest report {EXPERIMENT_KEY}",
        soft_wrap=True,
    )
    return rows
