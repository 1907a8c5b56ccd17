"""Bucketing like GrowthBook, uniformity, independence, stickiness, overrides, coverage."""

import asyncio
import random

import numpy as np
import pytest
from growthbook import GrowthBook
from growthbook import core as gb
from growthbook.common_types import Experiment
from scipy import stats

from routing.assignment import (
    ArmDef,
    CachedStore,
    Decision,
    ExperimentDef,
    LruCache,
    MemoryStore,
    Namespace,
    RedisCache,
    StoredAssignment,
    assign,
    bucket_ranges,
    choose_arm,
    decide,
)


def experiment(weights=(0.5, 0.5), coverage=1.0, seed="exp", namespace=None, overrides=None, id=1):
    arms = tuple(ArmDef(f"arm{i}", w, control=i == 0, arm_id=10 + i) for i, w in enumerate(weights))
    return ExperimentDef(
        key=seed,
        seed=seed,
        arms=arms,
        coverage=coverage,
        namespace=namespace,
        overrides=overrides or {},
        id=id,
    )


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("weights", "coverage"),
    [
        ([0.5, 0.5], 1.0),
        ([0.2, 0.3, 0.5], 0.6),
        ([0.1, 0.9], 0.0),
        ([0.7, 0.7], 1.0),  # invalid: GrowthBook falls back to equal weights
        ([1.0, 0.0], 1.5),
        ([0.25, 0.25, 0.25, 0.25], -1),
    ],
)
def test_bucket_ranges_match_sdk(weights, coverage):
    assert bucket_ranges(weights, coverage) == gb.getBucketRanges(len(weights), coverage, weights)


def test_choose_arm_outside_ranges():
    ranges = bucket_ranges([0.5, 0.5], 0.5)
    assert choose_arm(0.1, ranges) == 0
    assert choose_arm(0.3, ranges) == -1
    assert choose_arm(0.6, ranges) == 1


def test_decide_matches_growthbook_sdk():
    exp = experiment((0.3, 0.7), coverage=0.8, seed="sdk-seed", namespace=Namespace("ns", 0, 0.7))
    gb_exp = Experiment(
        key="sdk-seed",
        variations=[0, 1],
        weights=[0.3, 0.7],
        coverage=0.8,
        seed="sdk-seed",
        hashVersion=2,
        namespace=("ns", 0, 0.7),
    )
    client = GrowthBook(attributes={})
    disagreements = 0
    for i in range(2000):
        pid = f"p{i}"
        client.set_attributes({"id": pid})
        result = client.run(gb_exp)
        ours = decide(exp, pid)
        expected_arm = f"arm{result.variationId}" if result.inExperiment else "arm0"
        disagreements += ours.in_experiment != result.inExperiment or ours.arm != expected_arm
    assert disagreements == 0


def test_uniformity_chi_square_100k():
    weights = (0.2, 0.3, 0.5)
    exp = experiment(weights, seed="uniform")
    counts = {"arm0": 0, "arm1": 0, "arm2": 0}
    for i in range(100_000):
        counts[decide(exp, f"user-{i}").arm] += 1
    observed = np.array(list(counts.values()))
    expected = np.array(weights) * 100_000
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_independence_between_seeds():
    a, b = experiment(seed="seed-a"), experiment(seed="seed-b")
    table = np.zeros((2, 2))
    for i in range(50_000):
        pid = f"user-{i}"
        table[int(decide(a, pid).arm[-1]), int(decide(b, pid).arm[-1])] += 1
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # a correlated pair (same seed) is detected by the same test
    same = np.zeros((2, 2))
    for i in range(1000):
        arm = int(decide(a, f"user-{i}").arm[-1])
        same[arm, arm] += 1
    assert stats.chi2_contingency(same).pvalue < 1e-6


async def assign_all(exp, ids, store):
    return [await assign(exp, pid, store) for pid in ids]


def test_stickiness_across_weight_and_coverage_changes():
    store = MemoryStore()
    before = experiment((0.5, 0.5), coverage=0.5)
    ids = [f"p{i}" for i in range(3000)]
    first = dict(zip(ids, run(assign_all(before, ids, store)), strict=True))
    counted = {p: d.arm for p, d in first.items() if d.in_experiment}
    assert 1200 < len(counted) < 1800
    after = experiment((0.1, 0.9), coverage=0.2)
    again = run(assign_all(after, list(counted), store))
    assert all(d.in_experiment for d in again)
    assert [d.arm for d in again] == list(counted.values())
    # new projects follow the new weights
    new = run(assign_all(after, [f"new{i}" for i in range(3000)], store))
    share = sum(d.arm == "arm1" for d in new if d.in_experiment) / sum(d.in_experiment for d in new)
    assert 0.85 < share < 0.95


def test_coverage_outside_is_control_and_not_stored():
    store = MemoryStore()
    exp = experiment(coverage=0.3)
    decisions = run(assign_all(exp, [f"p{i}" for i in range(2000)], store))
    outside = [d for d in decisions if not d.in_experiment]
    assert all(d.arm == "arm0" and d.source == "coverage" for d in outside)
    assert len(store.data) == 2000 - len(outside)
    assert 0.6 < len(outside) / 2000 < 0.8
    none = experiment(coverage=0.0)
    assert not any(d.in_experiment for d in run(assign_all(none, ["a", "b", "c"], store)))


def test_overrides_force_the_arm():
    store = MemoryStore()
    exp = experiment(overrides={"qa-1": "arm1", "qa-2": "arm0", "ghost": "no-such-arm"})
    assert decide(exp, "qa-1") == Decision("arm1", True, "override")
    assert decide(exp, "qa-2").arm == "arm0"
    assert decide(exp, "ghost").source == "hash"  # an unknown arm in overrides is ignored
    assigned = run(assign(exp, "qa-1", store))
    assert assigned.serving_arm == "arm1" and store.data[(1, "qa-1")].source == "override"
    # a project assigned before the override keeps counting in its arm but is served the forced one
    store.data[(1, "qa-2")] = StoredAssignment("arm1")
    forced = run(assign(exp, "qa-2", store))
    assert forced.arm == "arm1" and forced.serving_arm == "arm0"


def test_namespaces_are_mutually_exclusive():
    left = experiment(seed="left", namespace=Namespace("checkout", 0.0, 0.5), id=1)
    right = experiment(seed="right", namespace=Namespace("checkout", 0.5, 1.0), id=2)
    both = 0
    inside = [0, 0]
    for i in range(5000):
        pid = f"p{i}"
        a, b = decide(left, pid).in_experiment, decide(right, pid).in_experiment
        both += a and b
        inside[0] += a
        inside[1] += b
    assert both == 0
    assert inside[0] > 2000 and inside[1] > 2000
    assert decide(left, "x").source in {"hash", "namespace"}


def test_lru_evicts_oldest():
    lru = LruCache(maxsize=2)
    lru.put(1, "a", StoredAssignment("x"))
    lru.put(1, "b", StoredAssignment("y"))
    lru.get(1, "a")
    lru.put(1, "c", StoredAssignment("z"))
    assert lru.get(1, "b") is None and lru.get(1, "a") == StoredAssignment("x") and len(lru) == 2


class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.puts = 0

    async def put_first(self, experiment_id, project_id, proposed):
        self.puts += 1
        return await super().put_first(experiment_id, project_id, proposed)


class UnconfirmedStore(MemoryStore):
    async def put_first(self, experiment_id, project_id, proposed):
        return StoredAssignment(proposed.arm, proposed.source, confirmed=False)


def test_cached_store_reads_through_once():
    backend = CountingStore()
    store = CachedStore(backend)
    exp = experiment()
    arms = [run(assign(exp, "p1", store)).arm for _ in range(5)]
    assert len(set(arms)) == 1 and backend.puts == 1 and store.hits == 4


def test_cached_store_does_not_keep_unconfirmed_assignments():
    store = CachedStore(UnconfirmedStore())
    run(assign(experiment(), "p1", store))
    assert len(store.lru) == 0


@pytest.mark.redis
def test_redis_cache_shares_assignments(redis_url, redis_prefix):
    import redis.asyncio

    async def scenario():
        client = redis.asyncio.Redis.from_url(redis_url)
        backend = CountingStore()
        exp = experiment()
        one = CachedStore(backend, RedisCache(client, redis_prefix))
        two = CachedStore(backend, RedisCache(client, redis_prefix))  # another process
        first = await assign(exp, "p1", one)
        second = await assign(exp, "p1", two)
        await client.aclose()
        return first, second, backend.puts

    first, second, puts = run(scenario())
    assert first.arm == second.arm and puts == 1


class BrokenRedis:
    def __init__(self):
        self.calls = 0

    async def mget(self, keys):
        self.calls += 1
        raise ConnectionError("redis is down")

    def pipeline(self, transaction=True):
        self.calls += 1
        raise ConnectionError("redis is down")


def test_redis_down_serves_from_the_source_of_truth():
    backend = MemoryStore()
    exp = experiment()
    healthy = {f"p{i}": run(assign(exp, f"p{i}", CachedStore(backend))).arm for i in range(50)}
    broken = BrokenRedis()
    store = CachedStore(backend, RedisCache(broken, "x:", retry_after_s=60))
    # weights changed meanwhile: only the stored assignments can give the same answers
    changed = experiment((0.05, 0.95))
    for pid, arm in healthy.items():
        assert run(assign(changed, pid, store)).arm == arm
    assert broken.calls == 1  # after the first failure Redis is left alone for retry_after_s
    assert store.redis.errors == 1


def test_experiment_needs_one_control():
    with pytest.raises(ValueError, match="control"):
        ExperimentDef("k", "k", (ArmDef("a", 0.5), ArmDef("b", 0.5)))


def test_random_ids_always_land_in_a_range():
    exp = experiment((0.2, 0.8))
    rng = random.Random(1)
    for _ in range(2000):
        assert decide(exp, str(rng.random())).in_experiment
