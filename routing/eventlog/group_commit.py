"""Group commit: items from concurrent coroutines flushed together in one call."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from routing.eager import start_eagerly

T = TypeVar("T")
R = TypeVar("R")


class _Drains:
    """A group commit's drain tasks on one event loop, and how many of them are flushing."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.tasks: set[Any] = set()
        self.flushing = 0


class GroupCommit(Generic[T, R]):
    """Batches items submitted by concurrent coroutines into one call of `flush` (in a thread,
    or awaited on the loop when `flush` is a coroutine function).

    While a flush runs, new items queue up and go together in the next one, so a database
    commit is shared by every request that arrived in the meantime. With `max_in_flight` > 1
    the next batch need not wait for the previous one: the database works on one batch while
    the requests of the next are still being prepared (each flush then needs a connection of
    its own).
    """

    def __init__(
        self,
        flush: Callable[[list[T]], list[R]] | Callable[[list[T]], Awaitable[list[R]]],
        executor: Executor | None = None,
        max_batch: int = 2000,
        max_in_flight: int = 1,
        eager_batch: int | None = None,
    ) -> None:
        self._flush = flush
        self._flush_is_async = inspect.iscoroutinefunction(flush)
        self._executor = executor
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        # An async flush of this many waiting items starts at once, inside the submit that
        # completes them, when a batch slot is free (see submit)
        self.eager_batch = eager_batch if self._flush_is_async else None
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drains = _Drains(None)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        drains = self._drains
        if drains.loop is not loop:  # a new event loop (tests run several): start afresh
            drains = self._drains = _Drains(loop)
        eager = self.eager_batch is not None and len(self._pending) >= self.eager_batch
        if eager and drains.flushing < self.max_in_flight:
            # Requests arrive in bursts (the answers of one commit go out together and their
            # clients come back together). A drain task would run only after the whole burst
            # has been handled, so the database would wait for the loop and then the loop for
            # the database; starting this part's flush now (up to its first wait: the
            # statement is sent) lets the two overlap.
            self._start_drain(drains, loop, eager=True)
        elif len(drains.tasks) < self.max_in_flight and drains.flushing >= len(drains.tasks):
            self._start_drain(drains, loop, eager=False)  # else an idle drain takes the item
        return await future

    def _start_drain(self, drains: _Drains, loop: asyncio.AbstractEventLoop, eager: bool) -> None:
        coroutine = self._drain(drains, eager)
        task = start_eagerly(coroutine, loop) if eager else loop.create_task(coroutine)
        if task is not None:
            drains.tasks.add(task)
            task.add_done_callback(drains.tasks.discard)  # also when cancelled before it ran

    async def _drain(self, drains: _Drains, eager: bool) -> None:
        try:
            if not eager:
                await asyncio.sleep(0)  # let requests that are ready join this batch
            await self._drain_pending(drains)
        finally:  # on the loop's thread, before any other submit can look at the count
            drains.tasks.discard(asyncio.current_task())

    async def _drain_pending(self, drains: _Drains) -> None:
        loop = asyncio.get_running_loop()
        # with every slot flushing, the flushing drains take what is pending when they finish
        while self._pending and drains.flushing < self.max_in_flight:
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            items = [item for item, _ in batch]
            drains.flushing += 1
            try:
                if self._flush_is_async:  # runs on the loop: no thread, no GIL hand-offs
                    results = await self._flush(items)  # type: ignore[misc]
                else:
                    results = await loop.run_in_executor(self._executor, self._flush, items)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            finally:
                drains.flushing -= 1
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
