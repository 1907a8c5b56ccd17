"""routing.eager.within: a timeout armed only once the awaited call suspends."""

import asyncio

import pytest

from routing import eager as eager_module
from routing.eager import within


class CountingTimeout:
    """Counts the timers `within` arms (it must arm none for an answer that never waits)."""

    def __init__(self, monkeypatch):
        self.armed = 0
        real = asyncio.timeout

        def counting(delay):
            self.armed += 1
            return real(delay)

        monkeypatch.setattr(eager_module.asyncio, "timeout", counting)


async def instant():
    return "instant"


async def suspends_then_answers(log):
    log.append("before")
    await asyncio.sleep(0)
    log.append("after")
    await asyncio.sleep(0.01)
    return "late"


async def hangs(log):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        log.append("cancelled")
        raise


async def fails_after_waiting():
    await asyncio.sleep(0)
    raise ValueError("broken arm")


def test_an_answer_without_suspending_arms_no_timer(monkeypatch):
    timers = CountingTimeout(monkeypatch)
    assert asyncio.run(within(instant(), 0.1)) == "instant"
    assert timers.armed == 0


def test_a_suspending_call_runs_to_its_answer_under_a_timer(monkeypatch):
    timers = CountingTimeout(monkeypatch)
    log = []
    assert asyncio.run(within(suspends_then_answers(log), 5)) == "late"
    assert log == ["before", "after"]
    assert timers.armed == 1


def test_a_hanging_call_times_out_and_is_cancelled():
    log = []

    async def main():
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await within(hangs(log), 0.05)
        return loop.time() - started

    assert asyncio.run(main()) < 5
    assert log == ["cancelled"]


def test_errors_before_and_after_suspending_propagate():
    async def fails_at_once():
        raise KeyError("at once")

    with pytest.raises(KeyError):
        asyncio.run(within(fails_at_once(), 1))
    with pytest.raises(ValueError, match="broken arm"):
        asyncio.run(within(fails_after_waiting(), 1))


def test_cancelling_the_caller_cancels_the_call():
    log = []

    async def main():
        task = asyncio.get_running_loop().create_task(within(hangs(log), 30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["cancelled"]


def test_awaitables_that_are_not_coroutines_get_the_timer(monkeypatch):
    timers = CountingTimeout(monkeypatch)

    async def main():
        future = asyncio.get_running_loop().create_future()
        future.set_result("ready")
        return await within(future, 1)

    assert asyncio.run(main()) == "ready"
    assert timers.armed == 1
