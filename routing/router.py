"""The production path: assign a project, call its arm with a timeout, fall back, log events.

`Router.handle_project` serves the experiment's control arm when the assigned arm fails (an
error, a timeout or an unusable answer) and records the fallback, while the project keeps
counting in its assigned arm (intention to treat). One deadline per request
(`RouterConfig.deadline_s`) covers the arm and its fallback; when no arm can answer in it the
request is a 503 (nothing is logged: nothing was served). A circuit breaker per experiment arm
counts transport failures and timeouts only (`models.arms.base.is_transport_failure`): an
intent an arm cannot answer is that arm's quality problem, not an outage, and never opens it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.arms.base import Arm, Prediction, is_transport_failure
from models.tools import ToolConfig
from routing.assignment import (
    ArmDef,
    AssignmentStore,
    Decision,
    ExperimentDef,
    StoredAssignment,
    assign,
    decide,
    sticky,
)
from routing.eager import within
from routing.eventlog import (
    EventRecord,
    EventSpool,
    EventStore,
    FirstAssignment,
    UnstorableEvent,
    WriteResult,
    check_storable,
    json_problem,
    replay_spool,
    text_problem,
    utcnow,
)
from routing.eventlog.gateway import DatabaseGateway, EventGateway
from routing.metrics import RouterMetrics

EVENT_TYPES = ("start", "export")
CHAMPION_LABEL = "(champion)"  # the metrics' experiment label of the default route
MAX_PROJECT_ID = 200
MAX_EVENT_ID = 100


class RoutingError(Exception):
    """A request the router cannot serve; `field`, `reason` and an HTTP `status`."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status

    def as_detail(self) -> list[dict[str, object]]:
        return [{"loc": self.field.split("."), "msg": self.reason, "type": "RoutingError"}]


# --- circuit breaker --------------------------------------------------------------------------


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures -> half-open after
    `reset_after_s` (one probe call) -> closed on success, open again on failure."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and self.clock() - self.opened_at >= self.reset_after_s:
            self.state = "half_open"
            self._probing = False
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self._probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.state = "open"
            self.opened_at = self.clock()
            self._probing = False

    @property
    def is_open(self) -> bool:
        return self.state != "closed"


# --- experiments --------------------------------------------------------------------------------


class ExperimentCatalog:
    """The experiments routing knows about, reloaded at most every `ttl_s` (and on a miss),
    and the champion (`load_champion`) that serves projects no running experiment covers.

    When reloading fails (database down) the last known experiments keep serving. A server
    also reloads at once when the catalog generation changes (`abtest.generation.watch`).
    """

    def __init__(
        self,
        load: Callable[[], Sequence[ExperimentDef]],
        ttl_s: float = 1.0,
        executor: Executor | None = None,
        load_champion: Callable[[], ArmDef | None] | None = None,
    ) -> None:
        self._load = load
        self._load_champion = load_champion
        self.champion: ArmDef | None = None
        self.ttl_s = ttl_s
        self._executor = executor
        self._experiments: list[ExperimentDef] | None = None
        self._by_id: dict[int, ExperimentDef] = {}
        self._loaded_at = 0.0
        self._stale = False
        self._reloading: asyncio.Task[None] | None = None

    def set(self, experiments: Sequence[ExperimentDef]) -> None:
        self._experiments = list(experiments)
        self._by_id = {e.id: e for e in self._experiments if e.id is not None}
        self._loaded_at = time.monotonic()

    def invalidate(self) -> None:
        """The catalog changed (here, or as the generation says): the next request waits for a
        fresh load (while the database is down it keeps the last known catalog)."""
        self._loaded_at = 0.0
        self._stale = True

    mark_stale = invalidate

    def by_id(self, experiment_id: int) -> ExperimentDef | None:
        return self._by_id.get(experiment_id)

    async def refresh(self, force: bool = False) -> list[ExperimentDef]:
        """The experiments. Past `ttl_s` they are reloaded in the background while requests
        keep the ones they have (one reload at a time, however many requests notice); `force`
        and the very first call wait for a reload."""
        if self._experiments is not None and not force and not self._stale:
            if time.monotonic() - self._loaded_at >= self.ttl_s:
                self._reload()
            return self._experiments
        await asyncio.shield(self._reload())
        return self._experiments or []

    def _reload(self) -> asyncio.Task[None]:
        task = self._reloading
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._reloading = asyncio.get_running_loop().create_task(self._load_now())
        return task

    async def _load_now(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            self._stale = False
            experiments, champion = await loop.run_in_executor(self._executor, self._load_both)
            self.set(experiments)
            self.champion = champion
        except Exception:  # noqa: BLE001 - keep serving the last known experiments
            if self._experiments is None:
                raise RoutingError(
                    "experiment", "experiments cannot be loaded: the database is unreachable", 503
                ) from None
            self._loaded_at = time.monotonic()

    def _load_both(self) -> tuple[Sequence[ExperimentDef], ArmDef | None]:
        champion = self._load_champion() if self._load_champion is not None else None
        return self._load(), champion

    async def resolve(self, key: str | None, *, running_only: bool = True) -> ExperimentDef | None:
        """The experiment for a request: `key` if given, else the single running one.

        Unknown key: 404. A key that is not running (when `running_only`): 409. No key and no
        running experiment: 409 (None when `running_only` is false). No key and several
        running: 409 naming them.
        """
        for attempt in (0, 1):
            experiments = await self.refresh(force=attempt == 1)
            try:
                return _pick(experiments, key, running_only)
            except RoutingError:
                if attempt == 1:
                    raise
        return None  # pragma: no cover


def _pick(
    experiments: Sequence[ExperimentDef], key: str | None, running_only: bool
) -> ExperimentDef | None:
    if key is not None:
        match = next((e for e in experiments if e.key == key), None)
        if match is None:
            raise RoutingError("experiment_key", f"no experiment with key {key!r}", 404)
        if running_only and match.status != "running":
            raise RoutingError(
                "experiment_key", f"experiment {key!r} is {match.status}, not running", 409
            )
        return match
    running = [e for e in experiments if e.status == "running"]
    if len(running) == 1:
        return running[0]
    if not running:
        if not running_only:
            return None
        raise RoutingError(
            "experiment_key",
            "no experiment is running: start one with `abtest experiments start KEY`",
            409,
        )
    keys = ", ".join(sorted(e.key for e in running))
    raise RoutingError(
        "experiment_key",
        f"{len(running)} experiments are running ({keys}): pass experiment_key",
        409,
    )


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutedProject:
    """The router's answer for one project."""

    project_id: str
    experiment: str | None  # None: served by the champion outside any experiment
    arm: str  # the arm the project counts in (intention to treat)
    variant: str | None  # the variant behind that arm
    config: ToolConfig
    latency_ms: float
    fallback: bool
    served_by: str | None  # the variant that actually answered (None: nothing could)
    cache_hit: bool
    in_experiment: bool
    event_id: str | None
    spooled: bool = False
    error: str | None = None
    route: str = "experiment"  # or "champion": no running experiment covers the project

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "route": self.route,
            "experiment": self.experiment,
            "arm": self.arm,
            "variant": self.variant,
            "in_experiment": self.in_experiment,
            "tools": self.config.to_record(),
            "latency_ms": round(self.latency_ms, 3),
            "fallback": self.fallback,
            "served_by": self.served_by,
            "cache_hit": self.cache_hit,
            "event_id": self.event_id,
            "spooled": self.spooled,
            "error": self.error,
        }


@dataclass
class _Answer:
    prediction: Prediction | None
    served_by: str | None
    fallback: bool
    error: str | None = None
    reason: str | None = None


def start_event_id(experiment_key: str, project_id: str) -> str:
    """A project has one start per experiment: retries of it share this id."""
    digest = hashlib.sha256(f"{experiment_key}\x00{project_id}".encode()).hexdigest()[:40]
    return f"start:{digest}"


def _check_text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RoutingError(name, "must be a non-empty string")
    if len(value) > limit:
        raise RoutingError(name, f"must be at most {limit} characters, got {len(value)}")
    problem = text_problem(value)
    if problem:
        raise RoutingError(name, problem)
    return value


def _check_json(value: Any, name: str) -> None:
    found = json_problem(value, name)
    if found is not None:
        raise RoutingError(*found)


def _storable_start(row: dict[str, Any]) -> dict[str, Any]:
    """The start row, storable: what the request sent was checked already, so a problem is in
    the arm's output (text a model produced), which is then dropped and named in `error`."""
    try:
        check_storable(row)
    except UnstorableEvent as exc:
        if not exc.field.startswith("output"):
            raise RoutingError(exc.field, exc.reason) from None
        note = f"output not stored: {exc.field} {exc.reason}"
        row = {**row, "output": None, "error": f"{row['error']}; {note}" if row["error"] else note}
    return row


def _as_utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    # in UTC, not merely tagged: SQLite stores the wall time and drops the offset, so
    # 10:00+02:00 would read back as 10:00 UTC (two hours off) where PostgreSQL reads 08:00
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def unusable_reason(prediction: Any) -> str | None:
    """Why an arm's answer cannot be served, or None when it can."""
    if not isinstance(prediction, Prediction):
        return f"returned {type(prediction).__name__}, not a Prediction"
    if not isinstance(prediction.config, ToolConfig):
        return "returned no tool configuration"
    if prediction.parse_failures:
        return f"unparseable output for {', '.join(prediction.parse_failures)}"
    return None


# --- the router -------------------------------------------------------------------------------


ArmProvider = Callable[[ArmDef], Arm]


@dataclass
class RouterConfig:
    timeout_s: float = 10.0  # one arm call (an arm's own `timeout_s` wins)
    failure_threshold: int = 5
    reset_after_s: float = 30.0
    max_batch_events: int = 10_000
    deadline_s: float | None = None  # arm + fallback together; None: 1.5 x timeout_s

    @property
    def request_deadline_s(self) -> float:
        return self.deadline_s if self.deadline_s is not None else 1.5 * self.timeout_s


class Router:
    def __init__(
        self,
        catalog: ExperimentCatalog,
        store: AssignmentStore,
        arm_provider: ArmProvider,
        writer: EventStore,
        *,
        spool: EventSpool | None = None,
        config: RouterConfig | None = None,
        metrics: RouterMetrics | None = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        gateway: EventGateway | None = None,
    ) -> None:
        """`gateway` is the request path's one write route (default: the thread group commit
        over `writer`; `routing.eventlog.pg_gateway.PostgresGateway` on PostgreSQL);
        `writer` takes the
        batches of `ingest` and replays the spool."""
        self.catalog = catalog
        self.store = store
        self.arm_provider = arm_provider
        self.writer = writer
        self.spool = spool
        self.config = config or RouterConfig()
        self.metrics = metrics or RouterMetrics()
        self.executor = executor
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}
        self._arms: dict[tuple[str, int, bool], Arm] = {}
        self.gateway = gateway or DatabaseGateway(writer, executor)
        # awaited by the app at exit
        self.close_hooks: list[Callable[[], Awaitable[None]]] = [self.gateway.close]
        if spool is not None:
            self.metrics.watch_spool(lambda: spool.depth, lambda: spool.dead_letters)

    # arms -------------------------------------------------------------------------------------

    def breaker(self, arm: ArmDef, experiment: str = "") -> CircuitBreaker:
        """The circuit breaker of one arm of one experiment."""
        key = f"{experiment}/{arm.name}"
        breaker = self.breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(
                self.config.failure_threshold, self.config.reset_after_s, self.clock
            )
            self.breakers[key] = breaker
            # read when scraped, not set on every call
            self.metrics.circuit_open.labels(key).set_function(lambda: float(breaker.is_open))
        return breaker

    def arm_instance(self, arm: ArmDef) -> Arm:
        key = (arm.variant or arm.name, arm.variant_version, arm.cache)
        if key not in self._arms:
            self._arms[key] = self.arm_provider(arm)
        return self._arms[key]

    async def warm_up(self) -> None:
        """Load experiments and build the arms of running ones (in a thread) before traffic."""
        experiments = await self.catalog.refresh(force=True)
        loop = asyncio.get_running_loop()
        for experiment in experiments:
            if experiment.status != "running":
                continue
            for arm in experiment.arms:
                try:
                    await loop.run_in_executor(self.executor, self.arm_instance, arm)
                except Exception:  # noqa: BLE001,S112 - the first request falls back and reports it
                    continue

    async def _call(
        self, experiment: str, arm: ArmDef, intent: str, deadline: float
    ) -> tuple[Prediction | None, str | None]:
        """One guarded call, bounded by the arm's timeout and the request's `deadline` (a
        `time.monotonic()` instant): (prediction, None) or (None, reason)."""
        label = arm.variant or arm.name
        breaker = self.breaker(arm, experiment)
        if not breaker.allow():
            self.metrics.arm_errors.labels(label, "circuit_open").inc()
            return None, f"circuit open for {experiment}/{arm.name}"
        timeout = min(arm.timeout_s or self.config.timeout_s, deadline - time.monotonic())
        if timeout <= 0:
            self.metrics.arm_errors.labels(label, "deadline").inc()
            return None, f"{label} not tried: the request's deadline has passed"
        transport = False
        try:
            model = self.arm_instance(arm)
            prediction = await within(model.predict(intent), timeout)
            problem = unusable_reason(prediction)
        except TimeoutError:
            prediction, problem, kind = None, f"{label} timed out after {timeout:.3g}s", "timeout"
            transport = True
        except Exception as exc:  # noqa: BLE001 - any arm failure becomes a fallback
            prediction, problem, kind = None, f"{label}: {type(exc).__name__}: {exc}", "error"
            transport = is_transport_failure(exc)
        else:
            kind = "unusable"
        if transport:
            breaker.record_failure()
        else:  # the arm was reached: whatever it answered, it is not an outage
            breaker.record_success()
        if problem is None:
            return prediction, None
        self.metrics.arm_errors.labels(label, kind).inc()
        return None, problem[:2000]

    async def _answer(self, experiment: ExperimentDef, arm: ArmDef, intent: str) -> _Answer:
        """The assigned arm's answer, else the control's, within one deadline; RoutingError
        (503) when neither answers."""
        deadline = time.monotonic() + self.config.request_deadline_s
        prediction, problem = await self._call(experiment.key, arm, intent, deadline)
        if prediction is not None:
            return _Answer(prediction, arm.variant or arm.name, False)
        control = experiment.control
        if arm.name == control.name:
            self._unanswered(experiment.key, arm.name, "control_failed")
            raise RoutingError("arm", f"no arm could answer: {problem}", 503)
        fallback, control_problem = await self._call(experiment.key, control, intent, deadline)
        if fallback is not None:
            return _Answer(fallback, control.variant or control.name, True, problem, "arm_failed")
        self._unanswered(experiment.key, arm.name, "both_failed")
        raise RoutingError(
            "arm", f"no arm could answer: {problem}; control: {control_problem}", 503
        )

    def _unanswered(self, experiment: str, arm: str, reason: str) -> None:
        self.metrics.fallbacks.labels(experiment, arm, reason).inc()

    # projects ----------------------------------------------------------------------------------

    async def handle_project(
        self,
        project_id: str,
        intent: str,
        attributes: Mapping[str, Any] | None = None,
        experiment_key: str | None = None,
        client_event_id: str | None = None,
    ) -> RoutedProject:
        """Assign, answer (with fallback) and durably log the start event."""
        _check_text(project_id, "project_id", MAX_PROJECT_ID)
        _check_text(intent, "intent", 10_000)
        if client_event_id is not None:
            _check_text(client_event_id, "client_event_id", MAX_EVENT_ID)
        _check_json(attributes, "attributes")
        # no key: the single running experiment, else (none running) the champion
        experiment = await self.catalog.resolve(
            experiment_key, running_only=experiment_key is not None
        )
        if experiment is None:
            return await self._serve_champion(project_id, intent)
        decision, first = await self._assignment(experiment, project_id)
        counted_arm = experiment.arm(decision.arm)
        served_arm = experiment.arm(decision.serving_arm)
        started = time.perf_counter()
        answer = await self._answer(experiment, served_arm, intent)
        latency_ms = (time.perf_counter() - started) * 1000
        prediction = answer.prediction
        config = prediction.config if prediction is not None else ToolConfig()
        cache_hit = bool(prediction is not None and prediction.cache_hit)
        event_id = None
        spooled = False
        if decision.in_experiment:
            event_id = client_event_id or start_event_id(experiment.key, project_id)
            now = utcnow()
            row = {  # EventRecord.to_row's shape, built directly on the hot path
                "client_event_id": event_id,
                "type": "start",
                "project_id": project_id,
                "experiment_id": experiment.id,
                "arm_id": counted_arm.arm_id,
                "occurred_at": now,
                "received_at": now,
                "latency_ms": latency_ms,
                "served_by": answer.served_by,
                "fallback": answer.fallback,
                "error": answer.error,
                "cache_hit": cache_hit,
                "cost_usd": prediction.cost_usd if prediction is not None else None,
                "tokens": prediction.tokens if prediction is not None else None,
                "intent": intent,
                "output": prediction.to_output() if prediction is not None else None,
                "attributes": dict(attributes) if attributes else None,
            }
            row = _storable_start(row)
            if first is None:
                outcome = await self._record(row)
            else:
                counted_arm, outcome = await self._record_first(experiment, first, row, counted_arm)
            spooled = outcome == "spooled"
        self._observe(experiment.key, counted_arm.name, decision.in_experiment, latency_ms, answer)
        return RoutedProject(
            project_id=project_id,
            experiment=experiment.key,
            arm=counted_arm.name,
            variant=counted_arm.variant,
            config=config,
            latency_ms=latency_ms,
            fallback=answer.fallback,
            served_by=answer.served_by,
            cache_hit=cache_hit,
            in_experiment=decision.in_experiment,
            event_id=event_id,
            spooled=spooled,
            error=answer.error,
        )

    async def _serve_champion(self, project_id: str, intent: str) -> RoutedProject:
        """The default route: the champion answers a project no running experiment covers.

        No assignment and no start event are written (nothing enters an experiment's
        analysis); the answer says `route: "champion"` and Prometheus counts it under the
        experiment label "(champion)".
        """
        champion = self.catalog.champion
        if champion is None:
            raise RoutingError(
                "experiment_key",
                "no experiment is running and there is no champion: start an experiment with "
                "`abtest experiments start KEY`",
                409,
            )
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.request_deadline_s
        prediction, problem = await self._call(CHAMPION_LABEL, champion, intent, deadline)
        latency_ms = (time.perf_counter() - started) * 1000
        answer = _Answer(
            prediction,
            champion.variant if prediction is not None else None,
            prediction is None,
            problem,
            "champion_failed" if prediction is None else None,
        )
        self._observe(CHAMPION_LABEL, champion.name, False, latency_ms, answer)
        if prediction is None:  # nothing else can answer outside an experiment
            raise RoutingError("arm", f"the champion could not answer: {problem}", 503)
        return RoutedProject(
            project_id=project_id,
            experiment=None,
            arm=champion.name,
            variant=champion.variant,
            config=prediction.config,
            latency_ms=latency_ms,
            fallback=False,
            served_by=answer.served_by,
            cache_hit=prediction.cache_hit,
            in_experiment=False,
            event_id=None,
            error=problem,
            route="champion",
        )

    async def _assignment(
        self, experiment: ExperimentDef, project_id: str
    ) -> tuple[Decision, FirstAssignment | None]:
        """The project's decision, and the first assignment to store with its start event when
        it has none yet (None: already stored, or not in the experiment).

        While an experiment's allocation has never changed, hashing gives every project the
        arm it was first stored with, so only the in-process cache is consulted and the new
        assignment is committed together with the start event (one commit per request). After
        a weight change, Redis and the database are asked first. Either way the database's
        first-writer-wins insert decides: a project never moves.
        """
        if not self.store.writes_with_events:
            return await assign(experiment, project_id, self.store), None
        fresh = decide(experiment, project_id)
        experiment_id = experiment.id if experiment.id is not None else 0
        deep = experiment.allocation_version > 0
        stored = await self.store.recall(experiment_id, project_id, deep=deep)
        kept = sticky(experiment, fresh, stored)
        if kept is not None:
            return kept, None
        if not fresh.in_experiment:
            return fresh, None
        return fresh, FirstAssignment(
            experiment_id, project_id, experiment.arm(fresh.arm).arm_id, fresh.source
        )

    async def _record_first(
        self,
        experiment: ExperimentDef,
        first: FirstAssignment,
        row: dict[str, Any],
        proposed: ArmDef,
    ) -> tuple[ArmDef, str]:
        """Commit a new assignment with its start event; returns the arm the project counts in
        (the stored one, should another request have stored it first) and the event outcome."""
        stored, outcome = await self.gateway.write_first(first, row)
        self.metrics.event_outcome(outcome)
        if stored is None:  # spooled: unconfirmed, so not cached
            return proposed, outcome
        arm = experiment.arm_by_id(stored[0]) or proposed
        self.store.remember(
            first[0],
            first[1],
            StoredAssignment(arm.name, stored[1]),
            shared=experiment.allocation_version > 0,
        )
        if arm.name != proposed.name:
            self.metrics.assignment_conflicts.inc()
        return arm, outcome

    def _observe(
        self, experiment: str, arm: str, in_experiment: bool, latency_ms: float, answer: _Answer
    ) -> None:
        latency, projects = self.metrics.project_children(experiment, arm, in_experiment)
        latency.observe(latency_ms / 1000)
        projects.inc()
        if answer.fallback:
            self.metrics.fallbacks.labels(experiment, arm, answer.reason or "error").inc()
        if answer.prediction is not None and answer.prediction.cache_hit:
            self.metrics.cache_hits.labels(answer.served_by or "none").inc()

    # events ------------------------------------------------------------------------------------

    async def _record(self, row: dict[str, Any]) -> str:
        outcome = await self.gateway.write_event(row)
        self.metrics.event_outcome(outcome)
        return outcome

    async def record_export(
        self,
        project_id: str,
        kept_tools: Sequence[str] | None = None,
        client_event_id: str | None = None,
        occurred_at: datetime | None = None,
        experiment_key: str | None = None,
    ) -> dict[str, Any]:
        """Log an export. Its arm comes from the project's assignment, now or when it appears."""
        _check_text(project_id, "project_id", MAX_PROJECT_ID)
        if client_event_id is not None:
            _check_text(client_event_id, "client_event_id", MAX_EVENT_ID)
        experiment = await self.catalog.resolve(experiment_key, running_only=False)
        row = self._export_row(
            project_id,
            kept_tools,
            client_event_id or f"export:{uuid.uuid4().hex}",
            occurred_at,
            experiment,
        )
        outcome = await self._record(row)
        return {
            "client_event_id": row["client_event_id"],
            "experiment": experiment.key if experiment else None,
            "outcome": outcome,
        }

    def _export_row(
        self,
        project_id: str,
        kept_tools: Sequence[str] | None,
        event_id: str,
        occurred_at: datetime | None,
        experiment: ExperimentDef | None,
    ) -> dict[str, Any]:
        attributes = {"kept_tools": list(kept_tools)} if kept_tools is not None else None
        return EventRecord(
            client_event_id=event_id,
            type="export",
            project_id=project_id,
            experiment_id=experiment.id if experiment else None,
            occurred_at=_as_utc(occurred_at),
            attributes=attributes,
        ).to_row()

    async def ingest(self, events: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Store a batch of events from an app back end in one write (idempotent).

        Each event: client_event_id, type (start/export), project_id, and optionally
        occurred_at, experiment_key, arm, kept_tools, latency_ms, served_by, fallback, error,
        intent, attributes. Unknown experiment keys or arms are 4xx naming the event.
        """
        if len(events) > self.config.max_batch_events:
            raise RoutingError(
                "events",
                f"at most {self.config.max_batch_events} events per batch, got {len(events)}",
            )
        await self.catalog.refresh()
        default: ExperimentDef | None = None
        default_error: RoutingError | None = None
        try:
            default = _pick(await self.catalog.refresh(), None, running_only=False)
        except RoutingError as exc:
            default_error = exc
        by_key = {e.key: e for e in await self.catalog.refresh()}
        now = datetime.now(UTC)
        rows = []
        for index, event in enumerate(events):
            rows.append(self._batch_row(index, event, by_key, default, default_error, now))
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, self.writer.write_events, rows)
        self.metrics.events.labels("stored").inc(result.stored)
        self.metrics.events.labels("duplicate").inc(result.duplicates)
        self.metrics.events.labels("spooled").inc(result.spooled)
        return result

    def _batch_row(
        self,
        index: int,
        event: Mapping[str, Any],
        by_key: Mapping[str, ExperimentDef],
        default: ExperimentDef | None,
        default_error: RoutingError | None,
        now: datetime,
    ) -> dict[str, Any]:
        where = f"events.{index}"
        event_type = event.get("type")
        if event_type not in EVENT_TYPES:
            raise RoutingError(f"{where}.type", f"must be one of {', '.join(EVENT_TYPES)}")
        key = event.get("experiment_key")
        if key is not None:
            experiment = by_key.get(key)
            if experiment is None:
                raise RoutingError(
                    f"{where}.experiment_key", f"no experiment with key {key!r}", 404
                )
        elif default_error is not None:
            raise RoutingError(
                f"{where}.experiment_key", default_error.reason, default_error.status
            )
        else:
            experiment = default
        arm_id = None
        arm_name = event.get("arm")
        if arm_name is not None:
            if experiment is None or not experiment.has_arm(arm_name):
                raise RoutingError(f"{where}.arm", f"no arm named {arm_name!r} in the experiment")
            arm_id = experiment.arm(arm_name).arm_id
        attributes = dict(event.get("attributes") or {}) or None
        if event.get("kept_tools") is not None:
            attributes = {**(attributes or {}), "kept_tools": list(event["kept_tools"])}
        row = EventRecord(
            client_event_id=event["client_event_id"],
            type=event_type,
            project_id=event["project_id"],
            experiment_id=experiment.id if experiment else None,
            arm_id=arm_id,
            occurred_at=_as_utc(event.get("occurred_at")),
            received_at=now,
            latency_ms=event.get("latency_ms"),
            served_by=event.get("served_by"),
            fallback=bool(event.get("fallback", False)),
            error=event.get("error"),
            cache_hit=bool(event.get("cache_hit", False)),
            intent=event.get("intent"),
            attributes=attributes,
        ).to_row()
        try:
            check_storable(row)
        except UnstorableEvent as exc:
            raise RoutingError(f"{where}.{exc.field}", exc.reason) from None
        return row

    # spool -------------------------------------------------------------------------------------

    async def replay(self) -> int:
        """Drain the local spool into the database; 0 when empty or the database is still down."""
        if self.spool is None or self.spool.depth == 0:
            return 0
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, replay_spool, self.writer, self.spool)
        except Exception:  # noqa: BLE001 - still down: keep the spool for the next try
            return 0

    async def replay_forever(self, interval_s: float = 1.0) -> None:
        while True:
            await self.replay()
            await asyncio.sleep(interval_s)


__all__ = [
    "CircuitBreaker",
    "ExperimentCatalog",
    "RoutedProject",
    "Router",
    "RouterConfig",
    "RoutingError",
]
