"""Concurrency of the request path: group commits with several batches in flight, and the
experiment catalog reloading once, in the background, however many requests notice."""

import asyncio

import pytest

from routing.assignment import ArmDef, ExperimentDef
from routing.eventlog import GroupCommit
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


def burst(eager_batch, items=10, max_in_flight=3, fail=False):
    """`items` requests become ready in one loop iteration (a burst); the log shows where
    each flush started among their submits."""
    log: list[str] = []

    async def flush(batch):
        log.append(f"flush {len(batch)}")
        await asyncio.sleep(0.001)  # the database
        if fail:
            raise ConnectionError("database went away")
        return [item * 10 for item in batch]

    async def scenario():
        commit = GroupCommit(
            flush, max_in_flight=max_in_flight, max_batch=64, eager_batch=eager_batch
        )

        async def request(i):
            log.append(f"submit {i}")
            return await commit.submit(i)

        tasks = [asyncio.ensure_future(request(i)) for i in range(items)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(scenario()), log


def test_without_eager_flushes_a_burst_is_flushed_after_all_of_it_was_handled():
    results, log = burst(None)
    assert results == [i * 10 for i in range(10)]
    assert log == [f"submit {i}" for i in range(10)] + ["flush 10"]


def test_eager_flushes_start_inside_the_burst_while_slots_are_free():
    results, log = burst(4)
    assert results == [i * 10 for i in range(10)]
    # the 4th and the 8th waiting request start a flush at once; the last two go after the
    # burst, with the drain the first request started
    assert log[:5] == ["submit 0", "submit 1", "submit 2", "submit 3", "flush 4"]
    assert log[5:10] == ["submit 4", "submit 5", "submit 6", "submit 7", "flush 4"]
    assert log[10:12] == ["submit 8", "submit 9"] and log[12:] == ["flush 2"]


def test_eager_flushes_wait_for_a_free_slot():
    results, log = burst(2, items=6, max_in_flight=1)
    assert results == [i * 10 for i in range(6)]
    assert log[:3] == ["submit 0", "submit 1", "flush 2"]  # the one slot is taken now
    assert log[3:7] == ["submit 2", "submit 3", "submit 4", "submit 5"]
    assert log[7:] == ["flush 4"]  # the rest, once the slot is free again


def test_a_failed_eager_flush_fails_its_waiting_requests():
    results, log = burst(3, items=5, fail=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert log.count("flush 3") == 1 and sum(line.startswith("flush") for line in log) == 2


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
