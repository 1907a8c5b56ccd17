"""The catalog as routing reads it: running experiments and the champion, from the app's
tables (`RoutingTables`), so routing never imports `abtest`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from routing.assignment import ArmDef, ExperimentDef, Namespace
from routing.eventlog import (
    RoutingTables,
)


def load_champion(engine: Engine, tables: RoutingTables) -> ArmDef | None:
    """The champion variant as the arm of the default route (None when there is none)."""
    variants = tables.variants
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(variants.c.name, variants.c.kind, variants.c.version, variants.c.config)
                .where(variants.c.status == "champion")
                .order_by(variants.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    config: Mapping[str, Any] = row["config"] or {}
    return ArmDef(
        name="champion",
        weight=1.0,
        control=True,
        variant=row["name"],
        variant_kind=row["kind"],
        variant_version=row["version"] or 1,
        variant_config=config,
    )


def load_experiments(engine: Engine, tables: RoutingTables) -> list[ExperimentDef]:
    """Every experiment with its arms and variants, newest first."""
    experiments, arms, variants = tables.experiments, tables.experiment_arms, tables.variants
    with engine.connect() as conn:
        experiment_rows = (
            conn.execute(sa.select(experiments).order_by(experiments.c.id.desc())).mappings().all()
        )
        arm_rows = (
            conn.execute(
                sa.select(
                    arms.c.id,
                    arms.c.experiment_id,
                    arms.c.name,
                    arms.c.weight,
                    arms.c.is_control,
                    variants.c.name.label("variant"),
                    variants.c.kind,
                    variants.c.version,
                    variants.c.config,
                )
                .join(variants, variants.c.id == arms.c.variant_id)
                .order_by(arms.c.id)
            )
            .mappings()
            .all()
        )
    by_experiment: dict[int, list[ArmDef]] = {}
    for row in arm_rows:
        config: Mapping[str, Any] = row["config"] or {}
        timeout = config.get("timeout_s") if isinstance(config, Mapping) else None
        by_experiment.setdefault(row["experiment_id"], []).append(
            ArmDef(
                name=row["name"],
                weight=float(row["weight"]),
                control=bool(row["is_control"]),
                arm_id=row["id"],
                variant=row["variant"],
                variant_kind=row["kind"],
                variant_version=row["version"] or 1,
                variant_config=config,
                timeout_s=float(timeout) if isinstance(timeout, int | float) else None,
            )
        )
    loaded = []
    for row in experiment_rows:
        arm_defs = by_experiment.get(row["id"], [])
        if sum(arm.control for arm in arm_defs) != 1:
            continue  # not routable; the services never create such an experiment
        settings = row["settings"] or {}
        namespace = (
            Namespace(row["namespace"], row["namespace_start"], row["namespace_end"])
            if row["namespace"]
            else None
        )
        loaded.append(
            ExperimentDef(
                key=row["key"],
                seed=row["seed"],
                arms=tuple(replace(a, cache=bool(settings.get("cache", True))) for a in arm_defs),
                coverage=float(row["coverage"]),
                namespace=namespace,
                overrides=dict(settings.get("overrides") or {}),
                id=row["id"],
                status=row["status"],
                allocation_version=int(row.get("allocation_version") or 0),
            )
        )
    return loaded
