"""Long work outside the request that asked for it.

A job is a row (`tables.Job`), so every server process and the CLI see it; the server that
accepted it runs it on its `JobRunner` (one worker thread: gate runs are CPU-heavy and queue
behind each other). The runner refreshes `heartbeat_at` of its queued and running jobs every
`HEARTBEAT_S`; a job whose heartbeat is older than `STALE_AFTER_S` belongs to a process that
died: reads report it as failed ("interrupted") without writing, and `fail_interrupted` (run
when a server starts) marks it so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, select, update
from sqlalchemy.orm import Session

from abtest import db
from abtest.app_state import AppState
from abtest.errors import NotFound, ServiceError
from abtest.tables import Job, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
UNFINISHED = ("queued", "running")
INTERRUPTED = "interrupted: the server running this job stopped before it finished; start it again"

Work = Callable[[Session], dict[str, Any]]


def process_owner() -> str:
    """This process, as a job's `owner`: host, pid and a per-runner token (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def create_job(session: Session, kind: str, actor: str, params: dict[str, Any], owner: str) -> Job:
    now = utcnow()
    job = Job(
        kind=kind,
        status="queued",
        actor=actor,
        params=params,
        owner=owner,
        created_at=now,
        heartbeat_at=now,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("id", f"no job {job_id}")
    return job


def is_interrupted(job: Job, now: datetime | None = None) -> bool:
    """Unfinished, and its server has not shown a sign of life for `STALE_AFTER_S`."""
    if job.status not in UNFINISHED:
        return False
    return _as_utc(job.heartbeat_at) < (now or utcnow()) - timedelta(seconds=STALE_AFTER_S)


def _as_utc(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back (stored as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


def interrupted_error() -> dict[str, Any]:
    return {"loc": ["job"], "msg": INTERRUPTED, "type": "Interrupted"}


def job_summary(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """The job as the API shows it; an interrupted job reads as failed (nothing is written)."""
    interrupted = is_interrupted(job, now)
    return {
        "id": job.id,
        "kind": job.kind,
        "status": "failed" if interrupted else job.status,
        "actor": job.actor,
        "params": job.params,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "result": job.result,
        "error": interrupted_error() if interrupted else job.error,
        "url": f"/v1/jobs/{job.id}",
    }


def _iso(moment: datetime | None) -> str | None:
    return _as_utc(moment).isoformat() if moment is not None else None


def fail_interrupted(session: Session, now: datetime | None = None) -> int:
    """Mark failed every unfinished job whose server stopped beating; returns how many. Only
    reads when there is none (the usual start), so a start writes nothing it need not."""
    now = now or utcnow()
    interrupted = (
        Job.status.in_(UNFINISHED),
        Job.heartbeat_at < now - timedelta(seconds=STALE_AFTER_S),
    )
    stale = list(session.scalars(select(Job.id).where(*interrupted)))
    if not stale:
        return 0
    return mark_interrupted(session, Job.id.in_(stale), *interrupted, now=now)


def mark_interrupted(
    session: Session, *where: ColumnElement[bool], now: datetime | None = None
) -> int:
    """Mark the jobs matching `where` failed with the interrupted error; returns how many."""
    marked = session.execute(
        update(Job)
        .where(*where)
        .values(status="failed", error=interrupted_error(), finished_at=now or utcnow())
    )
    return int(getattr(marked, "rowcount", 0) or 0)


def fail_unstarted(engine: Engine, job_id: int) -> None:
    """Mark failed (interrupted) a queued job no runner took: its server is shutting down."""
    with db.session_scope(engine) as session:
        mark_interrupted(session, Job.id == job_id, Job.status == "queued")


def error_of(exc: BaseException) -> dict[str, Any]:
    """A failed job's `error`: a `ServiceError`'s field, reason and HTTP status; anything else
    is named by its type only (details go to the server log, not to the caller)."""
    if isinstance(exc, ServiceError):
        return {**exc.as_detail()[0], "status": exc.status}
    return {
        "loc": ["job"],
        "msg": f"the job failed unexpectedly ({type(exc).__name__}); see the server log",
        "type": "InternalError",
        "status": 500,
    }


class JobRunner:
    """Runs this process's jobs on one worker thread and keeps their heartbeat."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.owner = process_owner()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abtest-job")
        self._unfinished = 0  # submitted here, not yet done: the heartbeat is idle without any
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._beat = threading.Thread(target=self._beat_forever, name="abtest-job-beat")
        self._beat.daemon = True
        self._beat.start()

    def submit(self, job_id: int, work: Work) -> None:
        """Run `work` for the committed, queued job `job_id`; its result (or error) is stored."""
        with self._lock:
            self._unfinished += 1
        try:
            self._executor.submit(self._run_counted, job_id, work)
        except RuntimeError:  # closed: the job stays queued and reads as interrupted
            self._done()
            raise

    def _done(self) -> None:
        with self._lock:
            self._unfinished -= 1

    def _run_counted(self, job_id: int, work: Work) -> None:
        try:
            self._run(job_id, work)
        except Exception:  # noqa: BLE001 - the job could not even be marked: it reads as stale
            log.exception("job %s could not be run", job_id)
        finally:
            self._done()

    def _run(self, job_id: int, work: Work) -> None:
        with db.session_scope(self.engine) as session:
            started = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="running", started_at=utcnow(), heartbeat_at=utcnow())
            )
        if not getattr(started, "rowcount", 0):
            return  # no longer queued (marked interrupted meanwhile): nothing to run
        try:
            with db.session_scope(self.engine) as session:
                result = work(session)  # the work's writes commit with the job's success
                self._finish(session, job_id, "succeeded", result=result)
        except Exception as exc:  # noqa: BLE001 - every failure is the job's outcome
            if not isinstance(exc, ServiceError):
                log.exception("job %s failed", job_id)
            with db.session_scope(self.engine) as session:
                self._finish(session, job_id, "failed", error=error_of(exc))

    @staticmethod
    def _finish(session: Session, job_id: int, status: str, **values: Any) -> None:
        now = utcnow()
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=status, finished_at=now, heartbeat_at=now, **values)
        )

    def _beat_forever(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self.beat()

    def beat(self) -> None:
        """Refresh the heartbeat of this process's unfinished jobs (quietly, if it cannot)."""
        with self._lock:
            if not self._unfinished:
                return
        try:
            with db.session_scope(self.engine) as session:
                session.execute(
                    update(Job)
                    .where(Job.owner == self.owner, Job.status.in_(UNFINISHED))
                    .values(heartbeat_at=utcnow())
                )
        except Exception as exc:  # noqa: BLE001 - a missed beat only ages the heartbeat
            log.warning("job heartbeat failed: %s", exc)

    def close(self) -> None:
        """Let the running job finish; the queued ones are marked failed (interrupted)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._stopped.set()
        try:
            with db.session_scope(self.engine) as session:
                mark_interrupted(session, Job.owner == self.owner, Job.status.in_(UNFINISHED))
        except Exception as exc:  # noqa: BLE001 - they read as interrupted once stale anyway
            log.warning("could not mark this server's queued jobs interrupted: %s", exc)


_RUNNER_LOCK = threading.Lock()


def job_runner(state: AppState) -> JobRunner:
    """The app's runner, started on first use (one per app, whichever request comes first)."""
    with _RUNNER_LOCK:
        runner = state.extras.get("jobs")
        if runner is None:
            runner = state.extras["jobs"] = JobRunner(state.engine)
        return runner


@asynccontextmanager
async def jobs_lifespan(state: AppState) -> AsyncIterator[None]:
    """At start, mark failed the jobs of servers that died (in the background: a database
    that is down or slow must not delay serving); at the end, close this runner."""
    sweep = threading.Thread(
        target=fail_interrupted_at_start, args=(state.engine,), name="abtest-job-sweep"
    )
    sweep.daemon = True
    sweep.start()
    state.extras["job_sweep"] = sweep  # joined by tests
    try:
        yield
    finally:
        runner = state.extras.pop("jobs", None)
        if runner is not None:
            await asyncio.to_thread(runner.close)


def fail_interrupted_at_start(engine: Engine) -> None:
    """`fail_interrupted`, logged; a failure is only logged (reads report them anyway)."""
    try:
        with db.session_scope(engine) as session:
            marked = fail_interrupted(session)
    except Exception as exc:  # noqa: BLE001 - the next start, or a read, reports them
        log.warning("interrupted jobs not marked at start: %s", exc)
        return
    if marked:
        log.warning("%d job(s) of a stopped server marked failed (interrupted)", marked)
