"""Jobs: long work asked for over the API (gate runs), read by id."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from abtest import jobs
from abtest.api.deps import db_session, require_role

router = APIRouter(prefix="/v1", tags=["jobs"])
reader = [Depends(require_role("engineer", "analyst"))]  # who may read gate runs


@router.get("/jobs/{job_id}", dependencies=reader)
def get_job(
    job_id: int = Path(ge=1, le=2**31 - 1), session: Session = Depends(db_session)
) -> dict[str, Any]:
    """A job's status (`queued`, `running`, `succeeded`, `failed`), its times and actor; its
    `result` once it succeeded (a gate job: the gate run), its `error` when it failed."""
    return jobs.job_summary(jobs.get_job(session, job_id))
