"""The catalog generation: one number that changes whenever what servers cache changes.

Every flush that writes a variant, an experiment, an arm, a promotion or an API key bumps the
single row of `catalog_generation` in the same transaction (a SQLAlchemy `before_flush` hook,
so no service can forget it). Each server reads the number every `POLL_S` seconds (one primary
key read) and, when it changed, reloads its experiment catalog and forgets cached API-key roles
(`watch`): a stopped experiment stops receiving projects, and a revoked key stops working, on
every server within about `POLL_S` plus one catalog load, with no TTL involved. While the
database is unreachable the read fails and servers keep what they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from sqlalchemy import Engine, Table, event, insert, select, update
from sqlalchemy.orm import Session

from abtest.tables import (
    ApiKey,
    CatalogGeneration,
    Experiment,
    ExperimentArm,
    Promotion,
    Variant,
)

POLL_S = 0.25
WATCHED = (Variant, Experiment, ExperimentArm, Promotion, ApiKey)
log = logging.getLogger(__name__)


def bump(session: Session) -> None:
    """Add one to the generation (creating its row in a database that lacks it)."""
    table = cast(Table, CatalogGeneration.__table__)
    connection = session.connection()
    result = connection.execute(
        update(table).where(table.c.id == 1).values(generation=table.c.generation + 1)
    )
    if result.rowcount == 0:
        connection.execute(insert(table).values(id=1, generation=1))


def read(engine: Engine) -> int | None:
    """The current generation (None when the row is missing)."""
    table = cast(Table, CatalogGeneration.__table__)
    with engine.connect() as connection:
        return connection.scalar(select(table.c.generation).where(table.c.id == 1))


@event.listens_for(Session, "before_flush")
def _bump_on_catalog_writes(session: Session, _context: Any, _instances: Any) -> None:
    touched = (*session.new, *session.dirty, *session.deleted)
    if any(isinstance(obj, WATCHED) for obj in touched) and not session.info.get("bumped"):
        session.info["bumped"] = True  # once per transaction is enough
        session.info["catalog_changed"] = True  # read (and cleared) by the API after commit
        bump(session)


@event.listens_for(Session, "after_transaction_end")
def _reset(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop("bumped", None)


async def watch(
    engine: Engine,
    on_change: Callable[[], Awaitable[None]],
    poll_s: float = POLL_S,
    executor: Any = None,
) -> None:
    """Call `on_change` whenever the generation differs from the last one read (forever)."""
    loop = asyncio.get_running_loop()
    last: int | None = None
    while True:
        try:
            current = await loop.run_in_executor(executor, read, engine)
        except Exception as exc:  # noqa: BLE001 - database down: keep what we have
            log.debug("catalog generation unreadable: %s", exc)
        else:
            if last is not None and current != last:
                with contextlib.suppress(Exception):
                    await on_change()
            last = current
        await asyncio.sleep(poll_s)
