"""Wiring of the production path: tables, stores, arms and the `routing.Router`.

`build_router(settings, engine, arms=None)` returns a ready `Router`:
- experiments and the champion come from the database (reloaded every second, on a miss, and
  at once when the catalog generation changes: `abtest.generation`);
- first assignments live in the assignments table, cached in Redis when `redis_url` is set and
  always in an in-process LRU; when Redis is down the router keeps serving from the database;
- arms are built per variant: an explicit `arms` mapping wins (keyed by variant name, or by
  experiment arm name), then `abtest.variant_arms.build_variant_arm` (the models factory);
- events are group-committed to the database, spooled to `settings.spool_dir` when it is down.

`serving_lifespan(state)` builds the router for the FastAPI app and runs the spool replayer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, Table

from abtest import generation
from abtest.app_state import AppState, redis_client
from abtest.db import bounded_postgres
from abtest.rollup_refresher import refresh_forever
from abtest.settings import Settings
from abtest.tables import Assignment, Event, Experiment, ExperimentArm, Variant
from abtest.variant_arms import build_variant_arm
from models.arms.base import Arm
from models.cache import CachedArm, ResponseCache
from routing.assignment import (
    ArmDef,
    CachedStore,
    ExperimentDef,
    LruCache,
    RedisCache,
    arm_from_json,
    arm_to_json,
    experiments_from_json,
    experiments_to_json,
)
from routing.catalog import load_champion, load_experiments
from routing.eventlog import (
    EventSpool,
    RoutingTables,
    is_unavailable,
    json_text,
    open_event_store,
)
from routing.eventlog.gateway import DatabaseGateway, DatabaseStore
from routing.eventlog.pg_gateway import PostgresGateway
from routing.metrics import RouterMetrics
from routing.router import ExperimentCatalog, Router, RouterConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLES = RoutingTables(
    experiments=cast(Table, Experiment.__table__),
    experiment_arms=cast(Table, ExperimentArm.__table__),
    variants=cast(Table, Variant.__table__),
    assignments=cast(Table, Assignment.__table__),
    events=cast(Table, Event.__table__),
)


def response_cache(settings: Settings) -> ResponseCache:
    """Arm outputs per variant version and intent: Redis when configured, else in-process."""
    client = redis_client(settings.redis_url) if settings.redis_url else None
    return ResponseCache(client, prefix=f"{settings.redis_prefix}llm:", ttl_s=settings.cache_ttl_s)


def arm_provider(
    settings: Settings, arms: Mapping[str, Arm] | None = None, cache: ResponseCache | None = None
) -> Any:
    """A function ArmDef -> Arm: explicit arms first, else the variant's arm from the models
    factory; with a `cache`, wrapped in the response cache (switched by the experiment)."""
    explicit = dict(arms or {})

    def build(arm: ArmDef) -> Arm:
        for key in (arm.variant, arm.name):
            if key is not None and key in explicit:
                return explicit[key]
        built = build_variant_arm(_variant_view(arm), settings)
        if cache is None:
            return built
        variant_key = f"{arm.variant or arm.name}:v{arm.variant_version}"
        return CachedArm(built, cache, variant_key, enabled=arm.cache)

    return build


class _VariantView:
    """What `models.arms.factory.build_arm` reads from a variant row."""

    def __init__(self, arm: ArmDef) -> None:
        self.name = arm.variant or arm.name
        if arm.variant_kind is None:
            raise ValueError(f"arm {arm.name!r} names no variant kind")
        self.kind = arm.variant_kind
        self.config = dict(arm.variant_config or {})
        self.version = arm.variant_version


def _variant_view(arm: ArmDef) -> _VariantView:
    return _VariantView(arm)


def remembered(
    load: Callable[[], T],
    path: Path,
    encode: Callable[[T], Any],
    decode: Callable[[Any], T],
) -> Callable[[], T]:
    """`load`, whose last answer is kept in the JSON file `path`: when the database is
    unreachable at start (nothing in memory yet), the server routes with what it last saw
    (experiments, the champion) and spools their events, instead of refusing every request.
    JSON, not pickle: a file in the spool folder must never be able to run code."""
    last: list[bytes] = []

    def load_or_recall() -> T:
        try:
            value = load()
        except Exception as exc:
            if not is_unavailable(exc) or not path.exists():
                raise
            log.warning("database unreachable: routing with what was saved in %s", path)
            try:
                return decode(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s is unreadable: nothing to recall while the database is down", path)
                raise exc from None
        data = json_text(encode(value)).encode()
        if not last or last[0] != data:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".tmp")
                partial.write_bytes(data)
                os.replace(partial, path)
            last[:] = [data]
        return value

    return load_or_recall


def remembered_experiments(
    load: Callable[[], list[ExperimentDef]], directory: Path
) -> Callable[[], list[ExperimentDef]]:
    return remembered(
        load, Path(directory) / "experiments.json", experiments_to_json, experiments_from_json
    )


def remembered_champion(
    load: Callable[[], ArmDef | None], directory: Path
) -> Callable[[], ArmDef | None]:
    return remembered(
        load,
        Path(directory) / "champion.json",
        lambda arm: arm_to_json(arm) if arm is not None else None,
        lambda data: arm_from_json(data) if data is not None else None,
    )


def build_router(
    settings: Settings, engine: Engine, arms: Mapping[str, Arm] | None = None
) -> Router:
    """The router for this database, Redis (if configured) and arms."""
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="abtest-db")
    spool = EventSpool(settings.spool_dir)
    writer = open_event_store(engine, TABLES, spool)
    catalog = ExperimentCatalog(
        remembered_experiments(lambda: load_experiments(engine, TABLES), settings.spool_dir),
        1.0,
        executor,
        load_champion=remembered_champion(
            lambda: load_champion(engine, TABLES), settings.spool_dir
        ),
    )
    bounded = bounded_postgres(settings.db_connect_timeout_s, settings.db_statement_timeout_s)
    gateway = (
        PostgresGateway(
            writer,
            executor,
            connect_timeout_s=settings.db_connect_timeout_s,
            max_in_flight=settings.commit_in_flight,
            max_batch=settings.commit_batch_size,
            eager_batch=settings.commit_eager_batch or None,
            connection_class=bounded.async_connection_class,
            connect_params={k: v for k, v in bounded.params.items() if k != "connect_timeout"},
        )
        if writer.postgres
        else DatabaseGateway(writer, executor)
    )
    database = DatabaseStore(writer, catalog.by_id, spool, executor, gateway)
    redis = (
        RedisCache(redis_client(settings.redis_url), settings.redis_prefix, settings.cache_ttl_s)
        if settings.redis_url
        else None
    )
    store = CachedStore(database, redis, LruCache())
    metrics = RouterMetrics()
    metrics.watch_assignment_cache(lambda: store.hits, lambda: store.misses)
    router = Router(
        catalog,
        store,
        arm_provider(settings, arms, response_cache(settings)),
        writer,
        spool=spool,
        config=RouterConfig(
            timeout_s=settings.arm_timeout_s, deadline_s=settings.request_deadline_s
        ),
        metrics=metrics,
        executor=executor,
        gateway=gateway,
    )
    return router


def get_router(state: AppState) -> Router:
    """The app's router, built on first use."""
    router = state.extras.get("router")
    if router is None:
        router = build_router(state.settings, state.fast_engine, state.extras.get("arms"))
        state.extras["router"] = router
    return router


@contextlib.asynccontextmanager
async def serving_lifespan(state: AppState) -> AsyncIterator[None]:
    """Build the router and run the spool replayer while the app is up."""
    router = get_router(state)
    try:
        await router.warm_up()
    except Exception as exc:  # noqa: BLE001 - serving starts anyway; requests report the cause
        log.warning("router warm-up failed: %s", exc)
    settle_garbage_collector()
    replayer = asyncio.create_task(router.replay_forever())
    watcher = asyncio.create_task(
        generation.watch(state.engine, lambda: invalidate(state, router), executor=None)
    )
    tasks = [replayer, watcher]
    if state.settings.rollup_refresh_s > 0:
        refresh = refresh_forever(state.engine, state.settings.rollup_refresh_s)
        tasks.append(asyncio.create_task(refresh))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await router.replay()
        await close_router(router)
        roles_redis = state.extras.pop("roles_redis", None)  # bound to this event loop
        if roles_redis is not None:
            with contextlib.suppress(Exception):
                await roles_redis.aclose()
        if state.extras.get("router") is router:
            del state.extras["router"]  # a restarted app builds a fresh one


async def invalidate(state: AppState, router: Router) -> None:
    """The catalog generation changed: forget cached API-key roles, reload the experiments."""
    cache = state.extras.get("role_cache")
    if cache is not None:
        cache.clear()
    await router.catalog.refresh(force=True)


def settle_garbage_collector(young_threshold: int = 20_000) -> None:
    """Keep the collector off the request path: what exists after start-up (modules, models,
    schemas: hundreds of thousands of objects) is frozen out of collections, and the youngest
    generation is collected less often. Unfrozen, a full collection of that heap paused every
    in-flight request for ~170 ms several times a minute under load (bench/RESULTS.md)."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young_threshold, young), middle, old)


async def close_router(router: Router) -> None:
    """Release what `build_router` opened: the Redis client, the DB threads, the spool file."""
    redis = getattr(getattr(router, "store", None), "redis", None)
    if redis is not None:
        with contextlib.suppress(Exception):
            await redis.client.aclose()
    for hook in getattr(router, "close_hooks", ()):
        with contextlib.suppress(Exception):
            await hook()
    executor = getattr(router, "executor", None)
    if executor is not None:
        executor.shutdown(wait=False)
    spool = getattr(router, "spool", None)
    if spool is not None:
        spool.close()
