"""Synthetic events written straight to Parquet, in the layout `analysis.export` writes.

`bench_warehouse.populate` fills PostgreSQL with generate_series and exports it: ~10k-35k
events/s, so 100M events would take hours before any engine ran. `write` makes the same shape
(one start event per project with latency, cost, platform/country and one of 2,000 intents; an
export 5 minutes later for ~62 % of control and ~60 % of treatment projects; an assignment per
project; 14 days from 2026-11-01) with numpy and pyarrow, a chunk of projects at a time, into
``events/experiment_id=E/day=D/part-...parquet`` and ``assignments/experiment_id=E/...`` with
the export's file schema (`analysis.export.arrow_schema`) and a manifest listing every file, so
`analysis.spark.SparkSource` and the pandas reader take the folder unchanged.

`rows` gives the same rows as Python tuples (small sizes only), for loading into a database to
check the files against a real export.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import export  # noqa: E402

START = datetime(2026, 11, 1, tzinfo=UTC)
START_US = int(START.timestamp() * 1_000_000)
DAY_US = 86_400 * 1_000_000
DAYS = 14
EXPORT_DELAY_US = 5 * 60 * 1_000_000
PLATFORMS = ("ios", "android", "web")
COUNTRIES = ("us", "de", "fr", "jp")
INTENTS = 2000
EXPORT_RATE = (0.62, 0.60)  # control, treatment
COST = (0.002, 0.0005)


@dataclass(frozen=True)
class Shape:
    experiment_id: int = 1
    arms: tuple[int, int] = (1, 2)  # control, treatment
    seed: int = 17


def _text(prefix: str, numbers: np.ndarray) -> pa.Array:
    """prefix || number, as one Arrow string array (no Python objects)."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _pick(values: list[str], index: np.ndarray) -> pa.Array:
    """values[index] as a plain string array (through a dictionary: no Python objects)."""
    indices = pa.array(index.astype(np.int32))
    return pa.DictionaryArray.from_arrays(indices, pa.array(values)).cast(pa.string())


# The JSON text PostgreSQL prints for the start event of project g, by g % 12 (jsonb key order).
ATTRIBUTES = [
    json.dumps({"country": COUNTRIES[g % 4], "platform": PLATFORMS[g % 3]}) for g in range(12)
]


def _chunk(shape: Shape, first: int, count: int, first_id: int) -> tuple[pa.Table, pa.Table]:
    """Events and assignments of projects first..first+count-1 (numbers from 1)."""
    rng = np.random.default_rng([shape.seed, first])
    g = np.arange(first, first + count, dtype=np.int64)
    treated = rng.random(count) >= 0.5
    arm = np.where(treated, shape.arms[1], shape.arms[0]).astype(np.int32)
    at = START_US + (rng.random(count) * DAYS * DAY_US).astype(np.int64)
    exported = rng.random(count) < np.where(treated, EXPORT_RATE[1], EXPORT_RATE[0])
    n_export = int(exported.sum())
    n = count + n_export
    ts = pa.timestamp("us", tz="UTC")
    project = _text("p", g)
    occurred = np.concatenate([at, at[exported] + EXPORT_DELAY_US])
    is_start = np.arange(n) < count

    def call_column(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        """A start-event field: null on the export rows."""
        full = np.concatenate([values, np.zeros(n_export, dtype=values.dtype)])
        return pa.array(full, type=kind, mask=~is_start)

    events = {
        "id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "client_event_id": pa.concat_arrays([_text("s", g), _text("e", g[exported])]),
        "type": _pick(["export", "start"], is_start),
        "project_id": pa.concat_arrays([project, project.filter(pa.array(exported))]),
        "arm_id": pa.array(np.concatenate([arm, arm[exported]])),
        "occurred_at": pa.array(occurred, type=ts),
        "received_at": pa.array(occurred, type=ts),
        "latency_ms": call_column(100 + rng.random(count) * 900, pa.float64()),
        "served_by": pa.nulls(n, pa.string()),
        "fallback": pa.array(np.concatenate([rng.random(count) < 0.01, np.zeros(n_export, bool)])),
        "error": pa.nulls(n, pa.string()),
        "cache_hit": pa.array(np.concatenate([rng.random(count) < 0.2, np.zeros(n_export, bool)])),
        "cost_usd": call_column(np.where(treated, COST[1], COST[0]), pa.float64()),
        "tokens": pa.nulls(n, pa.int32()),
        "intent": pa.concat_arrays(
            [_text("intent ", g % INTENTS), pa.nulls(n_export, pa.string())]
        ),
        "output": pa.nulls(n, pa.string()),
        "attributes": pa.concat_arrays(
            [_pick(ATTRIBUTES, g % 12), pa.nulls(n_export, pa.string())]
        ),
    }
    events_schema = export.arrow_schema(export.SOURCES[0])
    assignments = {
        "id": pa.array(g),
        "project_id": project,
        "arm_id": pa.array(arm),
        "source": _pick(["hash"], np.zeros(count)),
        "assigned_at": pa.array(at, type=ts),
    }
    assignments_schema = export.arrow_schema(export.SOURCES[1])
    return (
        pa.table([events[f.name] for f in events_schema], schema=events_schema),
        pa.table([assignments[f.name] for f in assignments_schema], schema=assignments_schema),
    )


def _write(folder: Path, relative: Path, table: pa.Table) -> dict[str, Any]:
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    ids = table.column("id")
    return {
        "path": relative.as_posix(),
        "rows": table.num_rows,
        "min_id": pc.min(ids).as_py(),
        "max_id": pc.max(ids).as_py(),
    }


def _by_day(events: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    micros = events.column("occurred_at").cast(pa.int64()).to_numpy()
    day = (micros - START_US) // DAY_US
    order = np.argsort(day, kind="stable")
    events, day = events.take(pa.array(order)), day[order]
    bounds = np.flatnonzero(np.diff(day)) + 1
    for low, high in zip(np.r_[0, bounds], np.r_[bounds, len(day)], strict=True):
        name = datetime.fromtimestamp((START_US + int(day[low]) * DAY_US) / 1e6, UTC)
        yield name.date().isoformat(), events.slice(int(low), int(high - low))


def write(folder: Path, projects: int, chunk: int = 2_000_000, shape: Shape = Shape()) -> int:
    """Write `projects` projects' events and assignments under `folder`; returns the events."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict[str, Any]]] = {"events": [], "assignments": []}
    next_id, experiment = 1, f"experiment_id={shape.experiment_id}"
    for batch, first in enumerate(range(1, projects + 1, chunk)):
        events, assignments = _chunk(shape, first, min(chunk, projects + 1 - first), next_id)
        next_id += events.num_rows
        name = f"part-000001-{batch:04d}-0000.parquet"
        files["assignments"].append(
            _write(folder, Path("assignments", experiment, name), assignments)
        )
        for index, (day, rows) in enumerate(_by_day(events)):
            name = f"part-000001-{batch:04d}-{index:04d}.parquet"
            files["events"].append(
                _write(folder, Path("events", experiment, f"day={day}", name), rows)
            )
    last = {"events": next_id - 1, "assignments": projects}
    manifest = {
        "version": export.MANIFEST_VERSION,
        "since": None,
        "runs": 1,
        "exported_at": datetime.now(UTC).isoformat(),
        "tables": {
            table: {"last_id": last[table], "window_ids": export.WINDOW_IDS, "files": entries}
            for table, entries in files.items()
        },
    }
    (folder / export.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return next_id - 1


def rows(folder: Path, table: str) -> list[dict[str, Any]]:
    """Every row of one table of a written folder, with its partition columns (small sizes)."""
    out = []
    for path in export.manifest_files(Path(folder), table):
        experiment = int(path.relative_to(folder / table).parts[0].split("=")[1])
        for row in pq.ParquetFile(path).read().to_pylist():
            out.append({**row, "experiment_id": experiment})
    return out
