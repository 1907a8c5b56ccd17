"""The response cache: in-process and Redis backends, TTL, hit rate, and degrading to a miss."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import redis

from models.arms.base import Prediction
from models.cache import CachedArm, ResponseCache
from models.tools import Filter, ToolConfig


class CountingArm:
    """An arm that answers a filter named after the intent's length and counts its calls."""

    name = "counting"

    def __init__(self, fail_parse: bool = False) -> None:
        self.calls: list[str] = []
        self.batches: list[list[str]] = []
        self.fail_parse = fail_parse

    def _answer(self, intent: str) -> Prediction:
        config = ToolConfig(filter=Filter("vivid", float(len(intent.strip()))))
        failures = ("adjust",) if self.fail_parse else ()
        return Prediction(
            config,
            latency_ms=50.0,
            prompt_tokens=100,
            completion_tokens=20,
            cost_usd=0.001,
            raw={"filter": f"Parameters: {intent}"},
            parse_failures=failures,
        )

    async def predict(self, intent: str) -> Prediction:
        self.calls.append(intent)
        return self._answer(intent)

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        self.batches.append(list(intents))
        return [self._answer(i) for i in intents]


async def test_memory_cache_hit_after_miss_with_normalized_intent():
    arm = CountingArm()
    cache = ResponseCache()
    cached = CachedArm(arm, cache, "student@1")
    first = await cached.predict("Golden hour")
    second = await cached.predict("  golden   HOUR ")
    assert not first.cache_hit and second.cache_hit
    assert arm.calls == ["Golden hour"]
    assert second.config == first.config and second.raw == first.raw
    assert (second.tokens, second.cost_usd) == (0, 0.0)  # a hit costs nothing
    assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.hit_rate() == 0.5
    assert cache.hit_rate("student@1") == 0.5 and cache.hit_rate("other@1") == 0.0
    assert cache.backend == "memory" and cached.name == "counting"


async def test_each_variant_version_has_its_own_entries():
    arm = CountingArm()
    cache = ResponseCache()
    await CachedArm(arm, cache, "student@1").predict("winter")
    again = await CachedArm(arm, cache, "student@2").predict("winter")
    assert not again.cache_hit and len(arm.calls) == 2
    assert cache.key("student@1", "winter") != cache.key("student@2", "winter")
    assert await cache.clear("student@1") == 1
    assert (await CachedArm(arm, cache, "student@1").predict("winter")).cache_hit is False


async def test_entries_expire_after_the_ttl():
    arm = CountingArm()
    cache = ResponseCache(ttl_s=0.05)
    cached = CachedArm(arm, cache, "v@1")
    await cached.predict("dusk")
    assert (await cached.predict("dusk")).cache_hit
    await asyncio.sleep(0.08)
    assert not (await cached.predict("dusk")).cache_hit
    assert len(arm.calls) == 2


async def test_memory_cache_is_bounded_lru():
    cache = ResponseCache(max_entries=2)
    for intent in ("a", "b", "c"):
        await cache.set("v@1", intent, {"config": {}})
    assert await cache.get("v@1", "a") is None
    assert await cache.get("v@1", "c") is not None


async def test_parse_failures_are_not_cached():
    arm = CountingArm(fail_parse=True)
    cached = CachedArm(arm, ResponseCache(), "v@1")
    await cached.predict("noir")
    result = await cached.predict("noir")
    assert not result.cache_hit and len(arm.calls) == 2


async def test_disabled_cache_passes_through():
    arm = CountingArm()
    cache = ResponseCache()
    cached = CachedArm(arm, cache, "v@1", enabled=False)
    await cached.predict("noir")
    await cached.predict("noir")
    await cached.predict_batch(["noir"])
    assert len(arm.calls) == 2 and arm.batches == [["noir"]]
    assert cache.stats.lookups == 0


async def test_batch_sends_only_the_misses_to_the_arm():
    arm = CountingArm()
    cached = CachedArm(arm, ResponseCache(), "v@1")
    await cached.predict("alpha")
    results = await cached.predict_batch(["alpha", "beta", "gamma"])
    assert [r.cache_hit for r in results] == [True, False, False]
    assert arm.batches == [["beta", "gamma"]]
    assert [r.config.filter.intensity for r in results] == [5, 4, 5]


async def test_corrupt_entry_is_a_miss():
    arm = CountingArm()
    cache = ResponseCache()
    await cache.set("v@1", "noir", {"config": {"adjust": "not an object"}})
    result = await CachedArm(arm, cache, "v@1").predict("noir")
    assert not result.cache_hit and arm.calls == ["noir"] and cache.stats.errors == 1


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="^ttl_s: "):
        ResponseCache(ttl_s=0)
    with pytest.raises(ValueError, match="^max_entries: "):
        ResponseCache(max_entries=0)


@pytest.mark.redis
async def test_redis_cache_is_shared_and_expires(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    arm = CountingArm()
    first = CachedArm(arm, ResponseCache(client, prefix=redis_prefix, ttl_s=30), "v@1")
    await first.predict("Tokyo at night")
    # another process (another cache object) sees the entry
    other_cache = ResponseCache(client, prefix=redis_prefix, ttl_s=30)
    hit = await CachedArm(arm, other_cache, "v@1").predict("tokyo AT night")
    assert hit.cache_hit and len(arm.calls) == 1 and other_cache.backend == "redis"
    keys = [k.decode() for k in client.scan_iter(match=f"{redis_prefix}*")]
    assert keys == [other_cache.key("v@1", "tokyo at night")]
    assert 0 < client.pttl(keys[0]) <= 30_000
    assert await other_cache.clear("v@1") == 1
    assert list(client.scan_iter(match=f"{redis_prefix}*")) == []
    client.close()


@pytest.mark.redis
async def test_redis_asyncio_client_works(redis_url, redis_prefix):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    cache = ResponseCache(client, prefix=redis_prefix)
    assert await cache.set("v@1", "x", {"config": {}})
    assert await cache.get("v@1", "x") == {"config": {}}
    await client.aclose()


async def test_unreachable_redis_degrades_to_misses():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    broken = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    arm = CountingArm()
    cache = ResponseCache(broken, prefix="abtest-test:unreachable:")
    cached = CachedArm(arm, cache, "v@1")
    first = await cached.predict("storm")
    second = await cached.predict("storm")
    assert first.config == second.config and not second.cache_hit
    assert len(arm.calls) == 2
    assert cache.stats.misses == 2 and cache.stats.errors == 4  # two failed reads, two writes
    assert cache.hit_rate() == 0.0


class FlakyRedis:
    """Reads work, writes fail: a cache that cannot store must still answer."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}

    def get(self, key: str):
        return self.store.get(key)

    def set(self, key: str, value: str, px: int):
        raise redis.ConnectionError("write failed")


async def test_failing_writes_never_fail_the_request():
    arm = CountingArm()
    cache = ResponseCache(FlakyRedis())
    results = await CachedArm(arm, cache, "v@1").predict_batch(["a", "b"])
    assert len(results) == 2 and cache.stats.errors == 2 and cache.stats.writes == 0


class SlowRedis:
    """A Redis that hangs (e.g. reconnecting with back-off): the cache gives up after timeout_s."""

    def get(self, key: str):
        import time

        time.sleep(0.5)
        return None

    def set(self, key: str, value: str, px: int):
        import time

        time.sleep(0.5)


async def test_a_hanging_redis_is_bounded_by_the_timeout():
    import time

    arm = CountingArm()
    cache = ResponseCache(SlowRedis(), timeout_s=0.05)
    started = time.perf_counter()
    result = await CachedArm(arm, cache, "v@1").predict("storm")
    assert time.perf_counter() - started < 0.4
    assert not result.cache_hit and cache.stats.errors == 2
