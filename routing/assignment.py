"""Which arm a project gets: bucket ranges, coverage, namespaces, overrides and stickiness.

The pure part (`bucket_ranges`, `choose_arm`, `decide`) follows GrowthBook's experiment
evaluation, so a GrowthBook SDK with the same seed, weights and coverage picks the same arm.
Stickiness comes from an `AssignmentStore`: the first assignment of a project is stored and wins
over later hashing, so changing weights or coverage never moves a project already assigned.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from routing.hashing import bucket_hash, in_namespace

WEIGHT_SUM_MIN = 0.99  # GrowthBook replaces weight vectors outside this band with equal weights
WEIGHT_SUM_MAX = 1.01


@dataclass(frozen=True)
class ArmDef:
    """One arm of an experiment and the variant (model) behind it."""

    name: str
    weight: float
    control: bool = False
    arm_id: int | None = None
    variant: str | None = None
    variant_kind: str | None = None
    variant_version: int = 1
    variant_config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    timeout_s: float | None = None
    cache: bool = True  # the experiment's response-cache switch


@dataclass(frozen=True)
class Namespace:
    """A namespace range `[start, end)`: experiments with disjoint ranges never share a project."""

    name: str
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class ExperimentDef:
    """What routing needs to know about an experiment (loaded from the database by the app)."""

    key: str
    seed: str
    arms: tuple[ArmDef, ...]
    coverage: float = 1.0
    namespace: Namespace | None = None
    overrides: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    id: int | None = None
    status: str = "running"
    hash_version: int = 2
    # Bumped whenever the weights of a started experiment change: until then hashing alone
    # reproduces every stored assignment, so routing need not look them up.
    allocation_version: int = 0
    # derived from the arms in __post_init__
    _ranges: list[tuple[float, float]] = field(init=False, repr=False, compare=False)
    _by_name: dict[str, ArmDef] = field(init=False, repr=False, compare=False)
    _by_id: dict[int | None, ArmDef] = field(init=False, repr=False, compare=False)
    _control: ArmDef = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        controls = [arm for arm in self.arms if arm.control]
        if len(controls) != 1:
            raise ValueError(f"experiment {self.key!r} needs exactly one control arm")
        ranges = bucket_ranges([arm.weight for arm in self.arms], self.coverage)
        object.__setattr__(self, "_ranges", ranges)
        object.__setattr__(self, "_by_name", {arm.name: arm for arm in self.arms})
        object.__setattr__(self, "_by_id", {arm.arm_id: arm for arm in self.arms})
        object.__setattr__(self, "_control", controls[0])

    @property
    def ranges(self) -> list[tuple[float, float]]:
        return self._ranges

    @property
    def control(self) -> ArmDef:
        return self._control

    def arm(self, name: str) -> ArmDef:
        return self._by_name[name]

    def arm_by_id(self, arm_id: int) -> ArmDef | None:
        return self._by_id.get(arm_id)

    def has_arm(self, name: str) -> bool:
        return name in self._by_name


def arm_to_json(arm: ArmDef) -> dict[str, Any]:
    """Plain JSON data for `arm_from_json`."""
    return {**vars(arm), "variant_config": dict(arm.variant_config)}


def arm_from_json(data: Mapping[str, Any]) -> ArmDef:
    return ArmDef(**data)


def experiments_to_json(experiments: Sequence[ExperimentDef]) -> list[dict[str, Any]]:
    """Plain JSON data for `experiments_from_json` (what a server remembers across restarts)."""
    return [
        {
            **{k: v for k, v in vars(e).items() if not k.startswith("_")},
            "arms": [arm_to_json(arm) for arm in e.arms],
            "namespace": vars(e.namespace) if e.namespace is not None else None,
            "overrides": dict(e.overrides),
        }
        for e in experiments
    ]


def experiments_from_json(data: Sequence[Mapping[str, Any]]) -> list[ExperimentDef]:
    """The experiments `experiments_to_json` wrote (a KeyError/TypeError/ValueError if not)."""
    return [
        ExperimentDef(
            **{
                **item,
                "arms": tuple(arm_from_json(arm) for arm in item["arms"]),
                "namespace": Namespace(**item["namespace"]) if item["namespace"] else None,
            }
        )
        for item in data
    ]


@dataclass(frozen=True)
class Decision:
    """The outcome of assignment.

    `arm` is the arm the project counts in (intention to treat); `serve` the arm whose model
    answers (differs only for a forced override of an already-assigned project);
    `in_experiment` is false for projects outside coverage or the namespace, which get the
    control arm's behaviour and are neither stored nor counted.
    """

    arm: str
    in_experiment: bool
    source: str  # hash | override | sticky | coverage | namespace
    serve: str | None = None

    @property
    def serving_arm(self) -> str:
        return self.serve or self.arm


@dataclass(frozen=True)
class StoredAssignment:
    """A first assignment; `confirmed` is false when the source of truth could not be reached
    (the assignment was spooled), so caches must not keep it."""

    arm: str
    source: str = "hash"
    confirmed: bool = field(default=True, compare=False)


def equal_weights(count: int) -> list[float]:
    return [1 / count] * count if count > 0 else []


def normalized_weights(weights: Sequence[float]) -> list[float]:
    """The weights GrowthBook buckets with: the input if valid, equal weights otherwise."""
    valid = all(
        isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
        for w in weights
    )
    if valid and WEIGHT_SUM_MIN <= sum(weights) <= WEIGHT_SUM_MAX:
        return list(weights)
    return equal_weights(len(weights))


def bucket_ranges(weights: Sequence[float], coverage: float = 1.0) -> list[tuple[float, float]]:
    """GrowthBook's getBucketRanges: arm i owns `[start_i, start_i + coverage * w_i)`."""
    coverage = min(max(coverage, 0.0), 1.0)
    ranges = []
    cumulative = 0.0
    for weight in normalized_weights(weights):
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_arm(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """Index of the range holding `n`, or -1 when `n` falls outside coverage."""
    for index, (start, end) in enumerate(ranges):
        if start <= n < end:
            return index
    return -1


def decide(experiment: ExperimentDef, project_id: str) -> Decision:
    """Stateless assignment: override, then namespace, then hash into the bucket ranges."""
    forced = experiment.overrides.get(project_id)
    if forced is not None and experiment.has_arm(forced):
        return Decision(forced, True, "override")
    control = experiment.control.name
    namespace = experiment.namespace
    if namespace is not None and not in_namespace(
        project_id, namespace.name, namespace.start, namespace.end
    ):
        return Decision(control, False, "namespace")
    n = bucket_hash(experiment.seed, project_id, experiment.hash_version)
    index = choose_arm(n, experiment.ranges)
    if index < 0:
        return Decision(control, False, "coverage")
    return Decision(experiment.arms[index].name, True, "hash")


class AssignmentStore(Protocol):
    """Where first assignments live. `put_first` stores `proposed` unless the project already
    has an assignment, and returns the one that is stored (first writer wins).

    `writes_with_events`: when true, the router stores a new project's first assignment
    together with its start event (the event gateway's first-writer-wins insert) and only
    `recall`s and `remember`s assignments here; when false, it calls `put_first`."""

    writes_with_events: bool

    async def get(self, experiment_id: int, project_id: str) -> StoredAssignment | None: ...

    async def put_first(
        self, experiment_id: int, project_id: str, proposed: StoredAssignment
    ) -> StoredAssignment: ...

    async def recall(
        self, experiment_id: int, project_id: str, *, deep: bool
    ) -> StoredAssignment | None:
        """The stored assignment as far as this store knows cheaply; with `deep`, everywhere."""
        ...

    def remember(
        self, experiment_id: int, project_id: str, value: StoredAssignment, *, shared: bool
    ) -> None:
        """Keep an assignment the source of truth confirmed (`shared`: for other processes)."""
        ...


async def assign(experiment: ExperimentDef, project_id: str, store: AssignmentStore) -> Decision:
    """Sticky assignment: a stored first assignment wins; new projects are hashed and stored.

    A forced override is always served, but the project counts in its first stored arm.
    """
    fresh = decide(experiment, project_id)
    experiment_id = experiment.id if experiment.id is not None else 0
    stored: StoredAssignment | None
    if fresh.in_experiment:
        stored = await store.put_first(
            experiment_id, project_id, StoredAssignment(fresh.arm, fresh.source)
        )
    else:
        stored = await store.get(experiment_id, project_id)
    return sticky(experiment, fresh, stored) or fresh


def sticky(
    experiment: ExperimentDef, fresh: Decision, stored: StoredAssignment | None
) -> Decision | None:
    """The decision of a project with a stored first assignment: it counts there, and a forced
    override is still what answers. None without one, or when its arm was removed since (then
    the fresh pick is served)."""
    if stored is None or not experiment.has_arm(stored.arm):
        return None
    serve = fresh.arm if fresh.source == "override" else None
    return Decision(stored.arm, True, stored.source, serve)


class LruCache:
    """A small in-process LRU of first assignments (they never change once stored)."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[int, str], StoredAssignment] = OrderedDict()

    def get(self, experiment_id: int, project_id: str) -> StoredAssignment | None:
        key = (experiment_id, project_id)
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, experiment_id: int, project_id: str, value: StoredAssignment) -> None:
        key = (experiment_id, project_id)
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class MemoryStore:
    """An `AssignmentStore` in a dict: for tests and single-process experiments without a DB."""

    writes_with_events = False  # the dict is the source of truth: `put_first` stores there

    def __init__(self) -> None:
        self.data: dict[tuple[int, str], StoredAssignment] = {}

    async def get(self, experiment_id: int, project_id: str) -> StoredAssignment | None:
        return self.data.get((experiment_id, project_id))

    async def put_first(
        self, experiment_id: int, project_id: str, proposed: StoredAssignment
    ) -> StoredAssignment:
        return self.data.setdefault((experiment_id, project_id), proposed)

    async def recall(
        self, experiment_id: int, project_id: str, *, deep: bool
    ) -> StoredAssignment | None:
        return self.data.get((experiment_id, project_id))

    def remember(
        self, experiment_id: int, project_id: str, value: StoredAssignment, *, shared: bool
    ) -> None:
        self.data.setdefault((experiment_id, project_id), value)


class RedisCache:
    """First assignments cached in Redis, with the lookups of concurrent requests coalesced
    into one MGET and the writes into one pipeline (written in the background).

    Never raises: when Redis is down it answers misses and stays quiet for `retry_after_s`.
    """

    def __init__(
        self,
        client: Any,
        prefix: str = "abtest:",
        ttl_s: int = 7 * 24 * 3600,
        retry_after_s: float = 1.0,
    ) -> None:
        self.client = client  # redis.asyncio.Redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self.errors = 0
        self._gets: list[tuple[str, asyncio.Future[Any]]] = []
        self._sets: list[tuple[str, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, experiment_id: int, project_id: str) -> str:
        return f"{self.prefix}asg:{experiment_id}:{project_id}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self.retry_after_s

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def get(self, experiment_id: int, project_id: str) -> StoredAssignment | None:
        if not self.available:
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._gets.append((self._key(experiment_id, project_id), future))
        if len(self._gets) == 1:
            self._spawn(self._flush_gets())
        raw = await future
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        arm, _, source = text.partition("|")
        return StoredAssignment(arm, source or "hash")

    async def _flush_gets(self) -> None:
        batch, self._gets = self._gets, []
        try:
            values = await self.client.mget([key for key, _ in batch])
        except Exception:  # noqa: BLE001 - a cache outage is never the client's error
            self._failed()
            values = [None] * len(batch)
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(value)

    async def put(self, experiment_id: int, project_id: str, value: StoredAssignment) -> None:
        """Queue the write (it does not delay the answer)."""
        self.queue_put(experiment_id, project_id, value)

    def queue_put(self, experiment_id: int, project_id: str, value: StoredAssignment) -> None:
        """Queue the write; one background pipeline sends every write queued meanwhile."""
        if not self.available:
            return
        self._sets.append((self._key(experiment_id, project_id), f"{value.arm}|{value.source}"))
        if len(self._sets) == 1:
            self._spawn(self._flush_sets())

    async def _flush_sets(self) -> None:
        batch, self._sets = self._sets, []
        try:
            pipeline = self.client.pipeline(transaction=False)
            for key, value in batch:
                pipeline.set(key, value, ex=self.ttl_s)
            await pipeline.execute()
        except Exception:  # noqa: BLE001
            self._failed()


class CachedStore:
    """The layered store: in-process LRU, then Redis (optional), then the source of truth.
    New first assignments are written with their start events (`writes_with_events`)."""

    writes_with_events = True

    def __init__(
        self,
        backend: AssignmentStore,
        redis: RedisCache | None = None,
        lru: LruCache | None = None,
    ) -> None:
        self.backend = backend
        self.redis = redis
        self.lru = lru or LruCache()
        self.hits = 0
        self.misses = 0

    async def _cached(self, experiment_id: int, project_id: str) -> StoredAssignment | None:
        value = self.lru.get(experiment_id, project_id)
        if value is None and self.redis is not None:
            value = await self.redis.get(experiment_id, project_id)
            if value is not None:
                self.lru.put(experiment_id, project_id, value)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def _remember(self, experiment_id: int, project_id: str, value: StoredAssignment) -> None:
        self.lru.put(experiment_id, project_id, value)
        if self.redis is not None:
            await self.redis.put(experiment_id, project_id, value)

    async def recall(
        self, experiment_id: int, project_id: str, *, deep: bool
    ) -> StoredAssignment | None:
        """The stored assignment as far as the in-process cache knows; with `deep`, also ask
        Redis and then the source of truth."""
        if deep:
            return await self.get(experiment_id, project_id)
        value = self.lru.get(experiment_id, project_id)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def remember(
        self, experiment_id: int, project_id: str, value: StoredAssignment, *, shared: bool
    ) -> None:
        """Cache an assignment the source of truth confirmed: in-process, and in Redis when
        `shared` (only experiments whose lookups go past this process need it there)."""
        self.lru.put(experiment_id, project_id, value)
        if shared and self.redis is not None:
            self.redis.queue_put(experiment_id, project_id, value)

    async def get(self, experiment_id: int, project_id: str) -> StoredAssignment | None:
        value = await self._cached(experiment_id, project_id)
        if value is None:
            value = await self.backend.get(experiment_id, project_id)
            if value is not None and value.confirmed:
                await self._remember(experiment_id, project_id, value)
        return value

    async def put_first(
        self, experiment_id: int, project_id: str, proposed: StoredAssignment
    ) -> StoredAssignment:
        value = await self._cached(experiment_id, project_id)
        if value is None:
            value = await self.backend.put_first(experiment_id, project_id, proposed)
            if value.confirmed:
                await self._remember(experiment_id, project_id, value)
        return value
