"""The router's response cache: popular intents are served from it, unless the experiment
switches it off."""

import asyncio

import pytest

from abtest import db, services
from abtest.runtime import build_router


def start_experiment(settings, cache: bool) -> None:
    engine = db.get_engine(settings.database_url)
    with db.session_scope(engine) as session:
        services.register_variant(session, "teacher", "recorded", {"split": "test"}, reference=True)
        services.create_experiment(
            session,
            services.ExperimentSpec(
                "exp",
                [
                    services.ArmSpec("control", "teacher", 1.0, control=True),
                    services.ArmSpec("other", "teacher", 0.0),
                ],
                settings={"cache": cache},
            ),
        )
        services.start_experiment(session, "exp")


async def route_same_intent(settings, count: int) -> list[bool]:
    router = build_router(settings, db.get_engine(settings.database_url))
    hits = []
    for i in range(count):
        routed = await router.handle_project(f"p{i}", "  Candle LIT ")
        assert routed.served_by == "teacher" and not routed.fallback
        hits.append(routed.cache_hit)
    return hits


@pytest.mark.parametrize("cache", [True, False])
def test_cache_serves_repeated_intents_only_when_switched_on(settings, cache):
    start_experiment(settings, cache)
    hits = asyncio.run(route_same_intent(settings, 3))
    assert hits == ([False, True, True] if cache else [False, False, False])
