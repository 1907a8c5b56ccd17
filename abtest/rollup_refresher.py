"""Keeps the report rollup fresh from the serving process, so reads never have to write.

GET /v1/experiments/{key}/results and /dashboard read through a READ_ONLY engine: they use
the rollup while it is fresh and fall back to the (slower) event scan when it is not. Every
`ABTEST_ROLLUP_REFRESH_S` seconds each running or stopped experiment's rollup is brought up
to date here, in a worker thread, so those reads stay on the rollup between scheduled reports.
Several server processes may do it at once: `analysis.rollup.refresh` locks the experiment's
watermark row, so each event is merged once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Engine

from abtest.tables import Experiment
from analysis import rollup

log = logging.getLogger(__name__)
REFRESHED_STATUSES = ("running", "stopped")


@dataclass
class RefreshRound:
    """One pass over the experiments: the keys refreshed and the ones that failed, with why."""

    refreshed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def refresh_experiments(engine: Engine) -> RefreshRound:
    """Refresh the rollup of every running or stopped experiment, one transaction each; an
    experiment that fails (its data, a timeout) is reported and the others still go on."""
    done = RefreshRound()
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(Experiment.id, Experiment.key).where(
                Experiment.status.in_(REFRESHED_STATUSES)
            )
        ).all()
    for experiment_id, key in found:
        try:
            with engine.begin() as connection:
                rollup.refresh(connection, experiment_id)
            done.refreshed.append(key)
        except Exception as exc:  # noqa: BLE001 - one experiment must not stop the others
            done.failed[key] = f"{type(exc).__name__}: {exc}"
            log.warning("rollup refresh of %s failed: %s", key, exc)
    return done


async def refresh_forever(engine: Engine, interval_s: float) -> None:
    """Every `interval_s` seconds, `refresh_experiments` in a worker thread; an unreachable
    database is logged and tried again at the next round (serving never waits on this)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(refresh_experiments, engine)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down: next round
            log.warning("rollup refresh round failed: %s", exc)
