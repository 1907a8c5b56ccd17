"""Analysts' endpoints: experiment listing, results with segments, and the /dashboard page."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy.orm import Session

from abtest import report_service, services
from abtest.api.deps import db_session, page_templates, require_role
from abtest.api.signin import dashboard_viewer
from analysis.report_model import DEFAULT_SEGMENT_ATTRIBUTES, Report
from analysis.report_render import render_panel, template_helpers

router = APIRouter(tags=["results"])
reader = [Depends(require_role("engineer", "analyst"))]
DASHBOARD_STATUSES = ("running", "stopped", "concluded")


def _segments(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_SEGMENT_ATTRIBUTES
    return report_service.check_segments(tuple(part.strip() for part in text.split(",") if part))


@router.get("/v1/experiments", dependencies=reader)
def list_experiments(
    status: str | None = None, session: Session = Depends(db_session)
) -> list[dict[str, Any]]:
    return [services.experiment_summary(e) for e in services.list_experiments(session, status)]


@router.get("/v1/experiments/{key}/results", dependencies=reader, response_model=Report)
def experiment_results(
    key: str,
    as_of: date | None = Query(None, description="Report day (UTC); default today."),
    segments: str | None = Query(
        None,
        description="Comma-separated event attributes to segment by (default platform,country).",
    ),
    session: Session = Depends(db_session),
) -> Report:
    """The full report as JSON: arms, comparisons, SRM, power, guardrails, segments, timeline."""
    return report_service.build(session, key, as_of, _segments(segments))


@router.get(
    "/v1/experiments/{key}/reports",
    dependencies=reader,
    response_model=list[report_service.StoredSummary],
)
def stored_reports(
    key: str, session: Session = Depends(db_session)
) -> list[report_service.StoredSummary]:
    """Stored reports (period end, decision, SRM flag), oldest first."""
    return report_service.stored_summaries(session, key)


@router.get("/dashboard", response_class=HTMLResponse, dependencies=[Depends(dashboard_viewer)])
def dashboard(request: Request, session: Session = Depends(db_session)) -> HTMLResponse:
    """Every experiment; per experiment with traffic, the report's body: decision, SRM badge, arms
    with pending projects, intervals with their labels, plots, power, guardrails, segments."""
    experiments = services.list_experiments(session)
    panels = []
    for experiment in experiments:
        if experiment.status not in DASHBOARD_STATUSES:
            continue
        report = report_service.build(session, experiment.key)
        panels.append({"report": report, "html": Markup(render_panel(report))})
    html = (
        page_templates()
        .get_template("dashboard.html")
        .render(
            experiments=experiments,
            panels=panels,
            champion=services.champion(session),
            signed_in=getattr(request.state, "signed_in", False),
            **template_helpers(),
        )
    )
    return HTMLResponse(html)
