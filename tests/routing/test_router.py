"""Router: fallback on error/hang/unusable output, circuit breaker, experiment choice, events."""

import asyncio
import time

import pytest

from models.arms.base import ArmError, Prediction
from models.tools import Filter, ToolConfig
from routing.assignment import ArmDef, ExperimentDef, MemoryStore
from routing.eventlog import EVENT_COLUMNS, WriteResult
from routing.router import (
    CircuitBreaker,
    ExperimentCatalog,
    Router,
    RouterConfig,
    RoutingError,
    start_event_id,
)

TEACHER = ToolConfig(filter=Filter("vivid", 50.0))
STUDENT = ToolConfig(filter=Filter("winter", 20.0))


class FakeArm:
    def __init__(self, name, config=None, error=None, hang=False, parse_failures=()):
        self.name = name
        self.config = config or TEACHER
        self.error = error
        self.hang = hang
        self.parse_failures = parse_failures
        self.calls = 0

    async def predict(self, intent):
        self.calls += 1
        if self.hang:
            await asyncio.sleep(30)
        if self.error:
            raise self.error
        return Prediction(self.config, 1.0, parse_failures=self.parse_failures)

    async def predict_batch(self, intents):
        return [await self.predict(i) for i in intents]


class FakeWriter:
    def __init__(self):
        self.rows = {}
        self.writes = 0

    def write_events(self, rows):
        self.writes += 1
        new = {r["client_event_id"] for r in rows if r["client_event_id"] not in self.rows}
        for r in rows:
            self.rows.setdefault(r["client_event_id"], r)
        return WriteResult(len(rows), len(new), len(rows) - len(new), 0, new)

    def write_together(self, assignments, rows):  # the default gateway's route
        assert not assignments  # MemoryStore has no recall: first assignments go to the store
        return {}, self.write_events(rows)


def exp(key="e1", status="running", coverage=1.0, weights=(0.0, 1.0), id=1):
    arms = (
        ArmDef("control", weights[0], True, arm_id=id * 10, variant="teacher"),
        ArmDef("student", weights[1], False, arm_id=id * 10 + 1, variant="student", timeout_s=None),
    )
    return ExperimentDef(key, key, arms, coverage=coverage, id=id, status=status)


def make_router(student, teacher=None, experiments=None, timeout_s=0.2, clock=time.monotonic):
    arms = {"teacher": teacher or FakeArm("teacher"), "student": student}
    experiments = experiments or [exp()]
    catalog = ExperimentCatalog(lambda: experiments)
    writer = FakeWriter()
    router = Router(
        catalog,
        MemoryStore(),
        lambda arm: arms[arm.variant],
        writer,
        config=RouterConfig(timeout_s=timeout_s, failure_threshold=3, reset_after_s=10),
        clock=clock,
    )
    return router, writer


def run(coro):
    return asyncio.run(coro)


def test_healthy_arm_answers_and_logs_start():
    router, writer = make_router(FakeArm("student", STUDENT))
    routed = run(router.handle_project("p1", "winter mood", {"device": "ios"}))
    assert routed.arm == "student" and routed.served_by == "student" and not routed.fallback
    assert routed.config == STUDENT and routed.in_experiment
    row = writer.rows[start_event_id("e1", "p1")]
    assert row["arm_id"] == 11 and row["type"] == "start" and row["attributes"] == {"device": "ios"}
    assert row["output"]["filter"]["name"] == "winter"
    assert tuple(row) == EVENT_COLUMNS  # the shape the writers' fast paths expect
    assert row["occurred_at"] == row["received_at"] and row["occurred_at"].tzinfo is not None


@pytest.mark.parametrize(
    "student",
    [
        FakeArm("student", error=ArmError("bad gateway")),
        FakeArm("student", error=ValueError("boom")),
        FakeArm("student", hang=True),
        FakeArm("student", STUDENT, parse_failures=("filter",)),
    ],
    ids=["arm-error", "exception", "hang", "unusable"],
)
def test_failures_fall_back_to_control_within_the_timeout(student):
    router, writer = make_router(student)
    started = time.perf_counter()
    routed = run(router.handle_project("p1", "warm"))
    assert time.perf_counter() - started < 2.0  # timeout is 0.2 s; a hang would take 30 s
    assert routed.fallback and routed.served_by == "teacher" and routed.config == TEACHER
    assert routed.arm == "student"  # intention to treat: still counted in its assigned arm
    row = writer.rows[routed.event_id]
    assert row["fallback"] is True and row["error"] and row["arm_id"] == 11
    assert row["served_by"] == "teacher"
    metrics = router.metrics.registry.get_sample_value(
        "abtest_fallbacks_total", {"experiment": "e1", "arm": "student", "reason": "arm_failed"}
    )
    assert metrics == 1


def test_control_failure_is_a_503_and_logs_nothing():
    teacher = FakeArm("teacher", error=ArmError("down"))
    router, writer = make_router(FakeArm("s"), teacher, [exp(weights=(1.0, 0.0))])
    with pytest.raises(RoutingError) as caught:
        run(router.handle_project("p1", "warm"))
    assert caught.value.status == 503 and "down" in caught.value.reason
    assert writer.rows == {}  # nothing was served: no start event


def test_both_failing_is_a_503_naming_both():
    router, writer = make_router(
        FakeArm("s", error=ArmError("x")), FakeArm("t", error=ArmError("y"))
    )
    with pytest.raises(RoutingError) as caught:
        run(router.handle_project("p1", "warm"))
    assert caught.value.status == 503 and caught.value.field == "arm"
    assert "x" in caught.value.reason and "y" in caught.value.reason
    assert writer.rows == {}


def test_one_deadline_covers_the_arm_and_its_fallback():
    """A hanging arm and a slow control: the request ends by the deadline, not 2x the timeout."""
    slow_teacher = FakeArm("teacher", hang=True)
    router, _ = make_router(FakeArm("student", hang=True), slow_teacher, timeout_s=0.2)
    started = time.perf_counter()
    with pytest.raises(RoutingError) as caught:
        run(router.handle_project("p1", "warm"))
    elapsed = time.perf_counter() - started
    assert caught.value.status == 503
    assert elapsed < router.config.request_deadline_s + 0.15 < 2 * 0.2 + 0.15


def test_answers_an_arm_cannot_give_never_open_its_breaker():
    """12 intents the student cannot answer (ArmError without a transport cause, or parse
    failures) are its quality problem: later requests still reach it."""
    student = FakeArm("student", STUDENT, error=ArmError("no recorded answer"))
    router, _ = make_router(student)

    async def many(n, prefix):
        return [await router.handle_project(f"{prefix}{i}", "??") for i in range(n)]

    results = run(many(12, "bad"))
    assert student.calls == 12 and all(r.fallback for r in results)
    student.error, student.parse_failures = None, ("filter",)
    run(many(12, "unparsed"))
    assert student.calls == 24
    student.parse_failures = ()
    ok = run(many(1, "good"))[0]
    assert not ok.fallback and ok.served_by == "student"
    assert router.breaker(router.catalog._experiments[0].arm("student"), "e1").state == "closed"


def test_breakers_are_per_experiment_arm():
    student = FakeArm("student", error=ConnectionError("refused"))
    router, _ = make_router(student, experiments=[exp("e1", id=1), exp("e2", id=2)])

    async def many(n, key):
        return [await router.handle_project(f"{key}-{i}", "w", None, key) for i in range(n)]

    run(many(5, "e1"))
    assert student.calls == 3  # e1/student opened after 3 transport failures
    run(many(1, "e2"))
    assert student.calls == 4  # e2/student has its own breaker, still closed


def test_circuit_breaker_opens_and_half_opens():
    now = [0.0]
    student = FakeArm("student", error=ArmError("flaky"))
    student.error.__cause__ = ConnectionError("connection refused")
    router, _ = make_router(student, clock=lambda: now[0])

    async def many(n, prefix):
        return [await router.handle_project(f"{prefix}{i}", "warm") for i in range(n)]

    results = run(many(10, "a"))
    assert student.calls == 3  # opened after 3 failures; the other 7 skipped the arm
    assert all(r.fallback for r in results) and "circuit open" in results[-1].error
    now[0] = 11.0
    student.error = None
    student.config = STUDENT
    probe = run(many(1, "b"))[0]
    assert not probe.fallback and student.calls == 4
    assert router.breaker(router.catalog._experiments[0].arm("student"), "e1").state == "closed"


def test_circuit_breaker_states():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=5, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert not breaker.allow() and breaker.state == "open"
    now[0] = 5.0
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # one probe at a time
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_outside_coverage_gets_control_and_is_not_counted():
    router, writer = make_router(FakeArm("student", STUDENT), experiments=[exp(coverage=0.0)])
    routed = run(router.handle_project("p1", "warm"))
    assert not routed.in_experiment and routed.arm == "control" and routed.config == TEACHER
    assert routed.event_id is None and writer.rows == {}


def test_experiment_choice():
    router, _ = make_router(FakeArm("s"), experiments=[exp("a", id=1), exp("b", id=2)])
    with pytest.raises(RoutingError) as many:
        run(router.handle_project("p1", "warm"))
    assert many.value.status == 409 and "a, b" in many.value.reason
    assert run(router.handle_project("p1", "warm", experiment_key="b")).experiment == "b"
    with pytest.raises(RoutingError) as unknown:
        run(router.handle_project("p1", "warm", experiment_key="zzz"))
    assert unknown.value.status == 404 and unknown.value.field == "experiment_key"

    router, _ = make_router(FakeArm("s"), experiments=[exp("a", status="stopped")])
    with pytest.raises(RoutingError) as none:
        run(router.handle_project("p1", "warm"))
    assert none.value.status == 409 and "no experiment is running" in none.value.reason
    with pytest.raises(RoutingError) as stopped:
        run(router.handle_project("p1", "warm", experiment_key="a"))
    assert stopped.value.status == 409 and "stopped" in stopped.value.reason


@pytest.mark.parametrize(
    ("project_id", "intent", "field"),
    [("", "x", "project_id"), ("p", "  ", "intent"), ("p" * 201, "x", "project_id")],
)
def test_bad_input_names_the_field(project_id, intent, field):
    router, _ = make_router(FakeArm("s"))
    with pytest.raises(RoutingError) as error:
        run(router.handle_project(project_id, intent))
    assert error.value.field == field and error.value.status == 422


def test_retried_start_and_concurrent_events_are_group_committed():
    router, writer = make_router(FakeArm("student", STUDENT))

    async def burst():
        return await asyncio.gather(*(router.handle_project(f"p{i % 50}", "w") for i in range(200)))

    results = run(burst())
    assert len(writer.rows) == 50  # a project's start is one event however often it is retried
    assert writer.writes < 50  # concurrent requests share writes
    assert {r.arm for r in results} == {"student"}


def test_export_and_batch_rows():
    router, writer = make_router(FakeArm("student"))
    out = run(router.record_export("p1", ["filter"], "x-1"))
    assert out == {"client_event_id": "x-1", "experiment": "e1", "outcome": "stored"}
    assert run(router.record_export("p1", ["filter"], "x-1"))["outcome"] == "duplicate"
    assert writer.rows["x-1"]["attributes"] == {"kept_tools": ["filter"]}
    result = run(
        router.ingest(
            [
                {"client_event_id": "b1", "type": "export", "project_id": "p2", "arm": "student"},
                {"client_event_id": "b1", "type": "export", "project_id": "p2"},
            ]
        )
    )
    assert result.received == 2 and writer.rows["b1"]["arm_id"] == 11
    with pytest.raises(RoutingError) as bad:
        run(
            router.ingest(
                [{"client_event_id": "c", "type": "export", "project_id": "p", "arm": "nope"}]
            )
        )
    assert bad.value.field == "events.0.arm"
    with pytest.raises(RoutingError) as bad_key:
        run(
            router.ingest(
                [
                    {
                        "client_event_id": "c",
                        "type": "start",
                        "project_id": "p",
                        "experiment_key": "zz",
                    }
                ]
            )
        )
    assert bad_key.value.field == "events.0.experiment_key" and bad_key.value.status == 404


def test_arm_that_cannot_be_built_falls_back():
    def provider(arm):
        if arm.variant == "student":
            raise ArmError("no such model")
        return FakeArm("teacher")

    catalog = ExperimentCatalog(lambda: [exp()])
    router = Router(catalog, MemoryStore(), provider, FakeWriter())
    routed = run(router.handle_project("p1", "warm"))
    assert routed.fallback and "no such model" in routed.error


class RecallingStore(MemoryStore):
    """A store whose first assignments the gateway writes: the router must only recall and
    remember through the protocol, never call `put_first`."""

    writes_with_events = True

    def __init__(self):
        super().__init__()
        self.recalls = []

    async def recall(self, experiment_id, project_id, *, deep):
        self.recalls.append((experiment_id, project_id, deep))
        return await super().recall(experiment_id, project_id, deep=deep)

    async def put_first(self, experiment_id, project_id, proposed):
        raise AssertionError("put_first is not the route of a store written with events")


class AssigningWriter(FakeWriter):
    """First writer wins on assignments, like the event stores."""

    def __init__(self):
        super().__init__()
        self.assignments = {}

    def write_together(self, assignments, rows):
        for experiment_id, project_id, arm_id, source in assignments:
            self.assignments.setdefault((experiment_id, project_id), (arm_id, source))
        stored = {(e, p): self.assignments[(e, p)] for e, p, _, _ in assignments}
        return stored, self.write_events(rows)


def test_a_store_written_with_events_is_recalled_and_remembered_through_the_protocol():
    store = RecallingStore()
    writer = AssigningWriter()
    arms = {"teacher": FakeArm("teacher"), "student": FakeArm("student", STUDENT)}
    catalog = ExperimentCatalog(lambda: [exp()])
    router = Router(catalog, store, lambda arm: arms[arm.variant], writer)
    first = run(router.handle_project("p1", "warm"))
    again = run(router.handle_project("p1", "warm"))
    assert store.recalls == [(1, "p1", False), (1, "p1", False)]  # allocation never changed
    assert writer.assignments == {(1, "p1"): (11, "hash")}  # stored with the start event
    assert store.data[(1, "p1")].arm == first.arm == again.arm == "student"  # remembered


def test_every_assignment_store_implements_the_protocol():
    import inspect

    from routing.assignment import AssignmentStore, CachedStore
    from routing.eventlog.gateway import DatabaseStore

    members = ("get", "put_first", "recall", "remember")
    for store in (MemoryStore, CachedStore, DatabaseStore):
        assert isinstance(store.writes_with_events, bool), store
        for name in members:
            wanted = inspect.signature(getattr(AssignmentStore, name))
            assert inspect.signature(getattr(store, name)).parameters.keys() == (
                wanted.parameters.keys()
            ), (store, name)
