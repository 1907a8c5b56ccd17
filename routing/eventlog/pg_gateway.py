"""The request path's group commit on PostgreSQL, on the event loop.

`DatabaseGateway` hands each batch to a thread; under load that thread and the event loop
take turns on the GIL, and each batch pays three round trips (two statements and a COMMIT).
`PostgresGateway` awaits asyncio psycopg connections instead (a few batches in flight) and
writes a batch with ONE statement in autocommit mode (the statement is the transaction): it
inserts the new first assignments (first writer wins), reads back what is stored for every
key, lets the new assignments adopt their projects' orphan events, and inserts the events — a
start event taking its project's stored arm — skipping known client_event_ids. A key stored
by a batch that committed while this one waited for it is invisible to the statement's
snapshot: its start event is held back, the key read back, and the event inserted with that
arm by a second statement, before any request of the batch is answered.

Batches with an event that has no experiment (an export before any experiment is known) go
through `EventStore.write_together` in a thread, which reconciles them. When the database is
unreachable the batch is spooled (`EventStore.spool_together`), exactly like the thread path.
The tables have no foreign keys: the experiment and arm ids of a batch are checked by
`EventStore.check_references` the first time they are seen (`InvalidEventReference`).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from typing import Any

import sqlalchemy as sa

from routing.eventlog import EventStore, FirstAssignment, GroupCommit, WriteResult, is_unavailable
from routing.eventlog.gateway import DatabaseGateway, Item, item_outcomes, split_items
from routing.eventlog.postgres import batch_statement, insert_rows_statement, json_rows
from routing.eventlog.schema import json_text, rows_json
from routing.eventlog.sql import batch_references


def conninfo(engine: sa.Engine) -> str:
    """A libpq URL for the engine's database (SQLAlchemy's minus the driver name)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresGateway(DatabaseGateway):
    """`DatabaseGateway` for PostgreSQL: the group commit awaited on the event loop."""

    def __init__(
        self,
        writer: EventStore,
        executor: Executor | None = None,
        connect_timeout_s: int = 2,
        max_in_flight: int = 3,
        max_batch: int = 64,
        eager_batch: int | None = None,
        connection_class: Any = None,
        connect_params: dict[str, Any] | None = None,
    ) -> None:
        """`connection_class` (a psycopg.AsyncConnection subclass) and `connect_params` (libpq
        parameters such as a statement_timeout in `options`) bound each wait on a hung server
        (abtest.db.BoundedPostgres): the batch then fails as unreachable and is spooled."""
        self.writer = writer
        self._connection_class = connection_class
        self._connect_params = dict(connect_params or {})
        self._executor = executor
        self._conninfo = conninfo(writer.engine)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Any] = []  # psycopg.AsyncConnection, one per batch in flight
        self._assignments = writer.tables.assignments.name
        self._events = writer.tables.events.name
        self._statement = batch_statement(self._assignments, self._events)
        self._insert_rows = insert_rows_statement(self._events, json_rows("%s"))
        # several batches in flight: PostgreSQL commits one while the loop prepares the next
        self._commit: GroupCommit[Item, Any] = GroupCommit(
            self._flush_async,
            executor,
            max_in_flight=max_in_flight,
            max_batch=max_batch,
            eager_batch=eager_batch,
        )

    async def _acquire(self) -> Any:
        import psycopg

        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        params = {"connect_timeout": self._connect_timeout_s, **self._connect_params}
        connection_class = self._connection_class or psycopg.AsyncConnection
        return await connection_class.connect(self._conninfo, autocommit=True, **params)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _flush_async(self, items: list[Item]) -> list[Any]:
        assignments, rows = split_items(items)
        loop = asyncio.get_running_loop()
        if any(row.get("experiment_id") is None for row in rows):
            stored, result = await loop.run_in_executor(
                self._executor, self.writer.write_together, assignments, rows
            )
            return item_outcomes(items, stored, result)
        references = batch_references(assignments, rows)
        try:
            if self.writer.references_unchecked(references):  # no foreign keys: check once
                await loop.run_in_executor(self._executor, self.writer.check_references, references)
            stored, new_ids = await self._write(assignments, rows)
        except Exception as exc:
            if is_unavailable(exc):
                await self.close()  # the other connections are likely broken too
            if self.writer.spool is None or not is_unavailable(exc):
                raise
            result = await loop.run_in_executor(
                self._executor, self.writer.spool_together, assignments, rows
            )
            return item_outcomes(items, None, result)
        result = WriteResult(len(rows), len(new_ids), len(rows) - len(new_ids), 0, new_ids)
        return item_outcomes(items, stored, result)

    async def _write(
        self, assignments: list[FirstAssignment], rows: list[dict[str, Any]]
    ) -> tuple[dict[tuple[int, str], tuple[int, str]], set[str]]:
        unique = {(e, p): (a, s) for e, p, a, s in assignments}
        new = [{"e": e, "p": p, "a": a, "s": s} for (e, p), (a, s) in unique.items()]
        params = {"a": json_text(new), "r": rows_json(rows)}
        connection = await self._acquire()
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(self._statement, params)
                result = await cursor.fetchall()
                stored: dict[tuple[int, str], tuple[int, str]] = {}
                new_ids: set[str] = set()
                for e, p, arm_id, source in result:
                    if e is None:
                        new_ids.add(p)
                    elif arm_id is not None:
                        stored[(e, p)] = (arm_id, source)
                missing = {key for key in unique if key not in stored}
                if missing:  # stored by a batch committed while this one ran: a new snapshot
                    found = await self._read_stored(cursor, sorted(missing))
                    stored.update(found)
                    new_ids |= await self._insert_late_starts(cursor, found, missing, rows)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._idle.append(connection)
        return stored, new_ids

    async def _insert_late_starts(
        self,
        cursor: Any,
        found: dict[tuple[int, str], tuple[int, str]],
        missing: set[tuple[int, str]],
        rows: list[dict[str, Any]],
    ) -> set[str]:
        """Insert the start events the batch statement held back (their project's stored arm
        was not in its snapshot) with the arm now read back."""
        late = [
            {**row, "arm_id": found[key][0]}
            for row in rows
            if row.get("type") == "start"
            and (key := (row["experiment_id"], row["project_id"])) in missing
            and key in found
        ]
        if not late:
            return set()
        await cursor.execute(self._insert_rows, [rows_json(late)])
        return {event_id for (event_id,) in await cursor.fetchall()}

    async def _read_stored(
        self, cursor: Any, keys: list[tuple[int, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        await cursor.execute(
            "SELECT k.e, k.p, y.arm_id, y.source FROM jsonb_to_recordset(%s::jsonb) "
            f"AS k(e int, p text) JOIN LATERAL (SELECT arm_id, source FROM {self._assignments} y "
            "WHERE y.experiment_id = k.e AND y.project_id = k.p OFFSET 0) y ON true",
            [json_text([{"e": e, "p": p} for e, p in keys])],
        )
        return {(e, p): (arm_id, source) for e, p, arm_id, source in await cursor.fetchall()}
