"""Running a coroutine's first step at once, before the event loop would.

asyncio starts a coroutine handed to a task, or guarded by a timeout, only after the loop has
run everything already queued, and pays for the task or the timer even when the coroutine
never waits. Python 3.12's eager tasks address this; these helpers do it on 3.11.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """`await awaitable` under `asyncio.timeout(timeout_s)`, except that the timer is armed
    only once the awaitable suspends.

    A timeout can only interrupt an awaitable at a suspension point, so one that answers
    without suspending (a cached or local answer, an instant test arm) cannot overrun it:
    running its first step before arming the timer changes nothing but the cost, a timer
    scheduled and cancelled on the loop per call, which is a measurable share of a routed
    request (bench/bench_projects.py).
    """
    if not isinstance(awaitable, types.CoroutineType):
        async with asyncio.timeout(timeout_s):
            return await awaitable
    try:
        pending = awaitable.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    async with asyncio.timeout(timeout_s):
        return cast(T, await _resume(awaitable, pending))


@types.coroutine
def _resume(coroutine: Any, pending: Any) -> Any:
    """Go on driving a coroutine whose first step already yielded `pending` (to the task, as
    `await` would: values sent and exceptions thrown in are forwarded)."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - a cancellation, handed to the coroutine
            try:
                pending = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                pending = coroutine.send(sent)
            except StopIteration as done:
                return done.value


def start_eagerly(
    coroutine: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[None] | None:
    """Run `coroutine` up to its first suspension now, in the caller's context, and the rest
    in a task (returned; None when it finished without suspending)."""
    try:
        pending = coroutine.send(None)
    except StopIteration:
        return None
    return loop.create_task(_finish(coroutine, pending))


async def _finish(coroutine: Any, pending: Any) -> Any:
    return await _resume(coroutine, pending)
