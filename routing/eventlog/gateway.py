"""The synchronous write route: first assignments and events batched across concurrent
requests into one `EventStore` transaction (`DatabaseGateway`), and the assignment store over
it (`DatabaseStore`). `pg_gateway` is the same on the event loop for PostgreSQL."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, cast

from routing.assignment import StoredAssignment
from routing.eventlog.group_commit import GroupCommit
from routing.eventlog.spool import EventSpool
from routing.eventlog.store import (
    EventStore,
    FirstAssignment,
    StoredAssignments,
    WriteResult,
    is_unavailable,
)


@dataclass(frozen=True, slots=True, eq=False)
class Item:
    """One request's part of a group commit: a first assignment, an event row, or both (a new
    project's first assignment with its start event)."""

    first: FirstAssignment | None = None
    row: dict[str, Any] | None = None


def split_items(items: list[Item]) -> tuple[list[FirstAssignment], list[dict[str, Any]]]:
    """The assignments and the (deduplicated) event rows of a group commit's items."""
    assignments = []
    rows: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.first is not None:
            assignments.append(item.first)
        if item.row is not None:
            rows.setdefault(item.row["client_event_id"], item.row)
    return assignments, list(rows.values())


def item_outcomes(
    items: list[Item],
    stored: StoredAssignments | None,
    result: WriteResult,
) -> list[Any]:
    """What each waiting request gets back: its stored assignment (None when spooled) and/or
    its event's outcome (stored, duplicate — also a repeat within the batch — or spooled)."""
    outcomes: list[Any] = []
    seen: set[str] = set()

    def event_outcome(event_id: str) -> str:
        if result.spooled:
            outcome = "spooled"
        elif event_id in seen or event_id not in result.new_ids:
            outcome = "duplicate"
        else:
            outcome = "stored"
        seen.add(event_id)
        return outcome

    for item in items:
        found = None
        if item.first is not None and stored is not None:
            found = stored.get((item.first.experiment_id, item.first.project_id))
        if item.row is None:
            outcomes.append(found)
        elif item.first is None:
            outcomes.append(event_outcome(item.row["client_event_id"]))
        else:
            outcomes.append((found, event_outcome(item.row["client_event_id"])))
    return outcomes


class EventGateway(Protocol):
    """The request path's write route: a new project's first assignment with its start event,
    and single events, committed in groups (`DatabaseGateway`, `pg_gateway.PostgresGateway`)."""

    async def write_first(
        self, item: FirstAssignment, row: dict[str, Any]
    ) -> tuple[tuple[int, str] | None, str]: ...

    async def write_event(self, row: dict[str, Any]) -> str: ...

    async def close(self) -> None: ...


class DatabaseGateway:
    """One group commit for the request path: the first assignments and the events of
    concurrent requests reach the database together, in one transaction per batch."""

    def __init__(self, writer: EventStore, executor: Executor | None = None) -> None:
        self.writer = writer
        self._commit: GroupCommit[Item, Any] = GroupCommit(self._flush, executor)

    def _flush(self, items: list[Item]) -> list[Any]:
        assignments, rows = split_items(items)
        stored, result = self.writer.write_together(assignments, rows)
        return item_outcomes(items, stored, result)

    async def put_assignment(self, item: FirstAssignment) -> tuple[int, str] | None:
        """`(experiment_id, project_id, arm_id, source)` -> the stored `(arm_id, source)`, or
        None when the database is unreachable (the assignment was spooled)."""
        return cast(tuple[int, str] | None, await self._commit.submit(Item(first=item)))

    async def write_first(
        self, item: FirstAssignment, row: dict[str, Any]
    ) -> tuple[tuple[int, str] | None, str]:
        """A new project's first assignment and its start event, in the same commit: the
        stored `(arm_id, source)` (None when spooled) and the event's outcome. The event takes
        the stored arm, whichever request stored it."""
        outcome = await self._commit.submit(Item(item, row))
        return cast(tuple[tuple[int, str] | None, str], outcome)

    async def write_event(self, row: dict[str, Any]) -> str:
        """Store one event row: 'stored', 'duplicate' or 'spooled' (durable either way)."""
        return cast(str, await self._commit.submit(Item(row=row)))

    async def close(self) -> None:
        return None


class DatabaseStore:
    """First assignments in the assignments table, batched across concurrent requests.

    When the database is down, `get` answers a miss and `put_first` spools the proposed
    assignment (replayed later, first writer still wins) and returns it unconfirmed.
    Used on its own, `put_first` stores assignments (`writes_with_events` is false); the
    runtime puts a `CachedStore` in front of it, which lets the gateway write them instead.
    """

    writes_with_events = False

    def __init__(
        self,
        writer: EventStore,
        arms_by_experiment: Any,
        spool: EventSpool | None = None,
        executor: Executor | None = None,
        gateway: DatabaseGateway | None = None,
    ) -> None:
        self.writer = writer
        self.spool = spool
        self._arms = arms_by_experiment  # callable: experiment_id -> ExperimentDef | None
        self.gateway = gateway
        self._puts: GroupCommit[FirstAssignment, tuple[int, str] | None] = GroupCommit(
            self._flush_puts, executor
        )
        self._gets: GroupCommit[tuple[int, str], tuple[int, str] | None] = GroupCommit(
            self._flush_gets, executor
        )

    def _flush_puts(self, items: list[FirstAssignment]) -> list[tuple[int, str] | None]:
        try:
            stored = self.writer.write_first(items)
        except Exception as exc:
            if self.spool is None or not is_unavailable(exc):
                raise
            self.spool.append(
                "assignment",
                [
                    {"experiment_id": e, "project_id": p, "arm_id": a, "source": s}
                    for e, p, a, s in items
                ],
            )
            return [None] * len(items)
        return [stored.get((e, p)) for e, p, _, _ in items]

    def _flush_gets(self, keys: list[tuple[int, str]]) -> list[tuple[int, str] | None]:
        try:
            stored = self.writer.get_assignments(keys)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            return [None] * len(keys)
        return [stored.get(key) for key in keys]

    def _name(self, experiment_id: int, arm_id: int) -> str | None:
        experiment = self._arms(experiment_id)
        arm = experiment.arm_by_id(arm_id) if experiment is not None else None
        return arm.name if arm is not None else None

    async def get(self, experiment_id: int, project_id: str) -> StoredAssignment | None:
        found = await self._gets.submit((experiment_id, project_id))
        if found is None:
            return None
        name = self._name(experiment_id, found[0])
        return StoredAssignment(name, found[1]) if name is not None else None

    async def put_first(
        self, experiment_id: int, project_id: str, proposed: StoredAssignment
    ) -> StoredAssignment:
        experiment = self._arms(experiment_id)
        arm_id = experiment.arm(proposed.arm).arm_id
        item = FirstAssignment(experiment_id, project_id, arm_id, proposed.source)
        if self.gateway is not None:
            found = await self.gateway.put_assignment(item)
        else:
            found = await self._puts.submit(item)
        if found is None:
            return StoredAssignment(proposed.arm, proposed.source, confirmed=False)
        name = self._name(experiment_id, found[0])
        if name is None:
            return StoredAssignment(proposed.arm, proposed.source, confirmed=False)
        return StoredAssignment(name, found[1])

    async def recall(
        self, experiment_id: int, project_id: str, *, deep: bool
    ) -> StoredAssignment | None:
        """The table is the only place to look, deep or not."""
        return await self.get(experiment_id, project_id)

    def remember(
        self, experiment_id: int, project_id: str, value: StoredAssignment, *, shared: bool
    ) -> None:
        """Nothing to keep: an assignment the database confirmed is already in its table."""
