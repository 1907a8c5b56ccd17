"""Concurrency of the request path: group commits with several batches in flight, and the
experiment catalog reloading once, in the background, however many requests notice."""

import asyncio

import pytest

from routing.assignment import ArmDef, ExperimentDef
from routing.events import GroupCommit
from routing.router import ExperimentCatalog, RoutingError


def test_a_second_batch_flushes_while_the_first_is_in_flight():
    started: list[list[str]] = []

    async def scenario():
        gate = asyncio.Event()

        async def flush(items):
            started.append(list(items))
            if len(started) == 1:
                await gate.wait()  # the first batch hangs in "the database"
            return [item.upper() for item in items]

        commit = GroupCommit(flush, max_in_flight=2, max_batch=4)
        first = [asyncio.ensure_future(commit.submit(f"a{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        second = [asyncio.ensure_future(commit.submit(f"b{i}")) for i in range(3)]
        done_second = await asyncio.gather(*second)  # not stuck behind the first batch
        assert not any(f.done() for f in first)
        gate.set()
        return await asyncio.gather(*first), done_second

    first, second = asyncio.run(scenario())
    assert first == ["A0", "A1", "A2"] and second == ["B0", "B1", "B2"]
    assert started == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]


def test_one_batch_at_a_time_by_default_and_batches_are_capped():
    sizes: list[int] = []
    in_flight = 0
    most = 0

    async def flush(items):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        sizes.append(len(items))
        await asyncio.sleep(0.001)
        in_flight -= 1
        return list(items)

    async def scenario():
        commit = GroupCommit(flush, max_batch=10)
        return await asyncio.gather(*(commit.submit(i) for i in range(35)))

    assert asyncio.run(scenario()) == list(range(35))
    assert most == 1 and max(sizes) <= 10 and sum(sizes) == 35


def experiment(key="e1", weight=0.5):
    return ExperimentDef(
        key,
        key,
        (ArmDef("control", 1 - weight, True, 1), ArmDef("treatment", weight, False, 2)),
        id=1,
    )


def test_the_catalog_reloads_once_in_the_background_when_stale():
    loads = []

    def load():
        loads.append(1)
        return [experiment(weight=0.1 * len(loads))]

    async def scenario():
        catalog = ExperimentCatalog(load, ttl_s=0.05)
        first = await catalog.resolve(None)  # the very first call waits for a load
        await asyncio.sleep(0.06)
        stale = await asyncio.gather(*(catalog.resolve(None) for _ in range(50)))
        assert all(e is first for e in stale)  # answered at once with what it had
        while catalog._reloading is not None and not catalog._reloading.done():
            await asyncio.sleep(0.005)
        return await catalog.resolve(None)

    fresh = asyncio.run(scenario())
    assert len(loads) == 2 and fresh.arms[1].weight == pytest.approx(0.2)


def test_the_catalog_keeps_serving_when_reloads_fail_but_fails_when_it_never_loaded():
    state = {"up": True}

    def load():
        if not state["up"]:
            raise OSError("database down")
        return [experiment()]

    async def scenario():
        catalog = ExperimentCatalog(load, ttl_s=0.0)
        known = await catalog.resolve(None)
        state["up"] = False
        assert await catalog.refresh(force=True) == [known]
        with pytest.raises(RoutingError, match="unreachable"):
            await ExperimentCatalog(load).resolve(None)

    asyncio.run(scenario())
