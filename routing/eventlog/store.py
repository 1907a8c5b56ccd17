"""What an event store is: the protocol the router and the gateways write through, its
results and errors, and what counts as an outage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import sqlalchemy as sa

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from routing.eventlog.schema import RoutingTables
    from routing.eventlog.spool import EventSpool


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached (spool), not that the data is bad:
    refused or lost connections, connect and statement timeouts, an exhausted pool."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(
        exc,
        sa.exc.OperationalError
        | sa.exc.InterfaceError
        | sa.exc.DisconnectionError
        | sa.exc.TimeoutError
        | TimeoutError,
    ):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class InvalidEventReference(ValueError):
    """Events name an experiment or arm that does not exist, or an arm of another experiment.

    Bad data, not an outage: the batch is refused and never spooled."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid event references: " + "; ".join(self.problems))


@dataclass
class WriteResult:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    spooled: int = 0
    new_ids: set[str] = field(default_factory=set, repr=False)

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.received + other.received,
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.spooled + other.spooled,
        )


class FirstAssignment(NamedTuple):
    """A project's proposed first assignment (the stored one wins: first writer)."""

    experiment_id: int
    project_id: str
    arm_id: int | None
    source: str


# (experiment_id, project_id) -> the stored (arm_id, source)
StoredAssignments = dict[tuple[int, str], tuple[int, str]]


@runtime_checkable
class EventStore(Protocol):
    """Where the router's events and first assignments go: one implementation per backend
    (`SqlEventStore` for any SQLAlchemy dialect, `PostgresEventStore`), chosen by
    `routing.eventlog.open_event_store`. Writes are idempotent (client_event_id, and first
    writer wins per (experiment, project)); while the database cannot be reached they go to
    the spool and `replay` stores them later."""

    postgres: bool
    engine: Engine
    tables: RoutingTables
    spool: EventSpool | None

    def insert(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Store rows not stored yet (no spool: an outage raises); the ids that were new."""
        ...

    def write_events(self, rows: Sequence[dict[str, Any]]) -> WriteResult: ...

    def write_first(self, items: Sequence[FirstAssignment]) -> StoredAssignments: ...

    def write_together(
        self, assignments: Sequence[FirstAssignment], rows: Sequence[dict[str, Any]]
    ) -> tuple[StoredAssignments | None, WriteResult]: ...

    def spool_together(
        self, assignments: Sequence[FirstAssignment], rows: Sequence[dict[str, Any]]
    ) -> WriteResult: ...

    def get_assignments(self, keys: Sequence[tuple[int, str]]) -> StoredAssignments: ...

    def check_references(self, rows: Sequence[dict[str, Any]]) -> None: ...

    def references_unchecked(self, rows: Sequence[dict[str, Any]]) -> bool: ...

    def replay(self, limit: int = 5000) -> int: ...
