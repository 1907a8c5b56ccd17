"""Events and assignments out of the database as Parquet, incrementally and idempotently.

Layout under the target folder (Hive partitioning, read by Spark, pyarrow, DuckDB, ...)::

    manifest.json
    events/experiment_id=<id>/day=<YYYY-MM-DD>/part-<run>-<n>.parquet
    events/experiment_id=__HIVE_DEFAULT_PARTITION__/day=.../...      (events without experiment)
    assignments/experiment_id=<id>/part-<run>-<n>.parquet

The partition columns (``experiment_id``, and ``day``: the UTC day of ``occurred_at``) are in the
folder names, not in the files. JSON columns (``attributes``, ``output``) are JSON text (as the
database prints it).

**The manifest is the truth**: it lists every exported file with its row count and id range, and
per table the last exported id. Readers take the files it lists (`manifest_files`); a file the
manifest does not list (left by a crash between writing files and the manifest) is deleted by the
next export, whose rows it re-exports. Files are written first, the manifest last, atomically.

**Incremental**: each run exports the rows with ``id > last_id``. PostgreSQL allocates ids before
commit, so a row can become visible after a run with an id below its ``last_id``: each run counts
the rows of the last ``window_ids`` ids below ``last_id`` in the database and in the files, and
when they differ exports the missing ids. A run with nothing new writes nothing, not even the
manifest. A lock file stops two exports into one folder at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, column, func, table

from analysis.queries import JSON_TYPE, TIMESTAMP

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
WINDOW_IDS = 50_000
BATCH_ROWS = 200_000
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"

# (name, SQLAlchemy type, Arrow type name) of every exported column, as in abtest/tables.py.
EVENT_COLUMNS: tuple[tuple[str, Any, str], ...] = (
    ("id", sa.BigInteger, "int64"),
    ("client_event_id", sa.String, "string"),
    ("type", sa.String, "string"),
    ("project_id", sa.String, "string"),
    ("experiment_id", sa.Integer, "int32"),
    ("arm_id", sa.Integer, "int32"),
    ("occurred_at", TIMESTAMP, "timestamp"),
    ("received_at", TIMESTAMP, "timestamp"),
    ("latency_ms", sa.Float, "float64"),
    ("served_by", sa.String, "string"),
    ("fallback", sa.Boolean, "bool"),
    ("error", sa.Text, "string"),
    ("cache_hit", sa.Boolean, "bool"),
    ("cost_usd", sa.Float, "float64"),
    ("tokens", sa.Integer, "int32"),
    ("intent", sa.Text, "string"),
    ("output", JSON_TYPE, "json"),
    ("attributes", JSON_TYPE, "json"),
)
ASSIGNMENT_COLUMNS: tuple[tuple[str, Any, str], ...] = (
    ("id", sa.BigInteger, "int64"),
    ("experiment_id", sa.Integer, "int32"),
    ("project_id", sa.String, "string"),
    ("arm_id", sa.Integer, "int32"),
    ("source", sa.String, "string"),
    ("assigned_at", TIMESTAMP, "timestamp"),
)


@dataclass(frozen=True)
class Source:
    name: str
    columns: tuple[tuple[str, Any, str], ...]
    by_day: bool  # also partitioned by the UTC day of occurred_at

    @property
    def table(self) -> sa.TableClause:
        return table(self.name, *(column(name, kind) for name, kind, _ in self.columns))


SOURCES = (Source("events", EVENT_COLUMNS, True), Source("assignments", ASSIGNMENT_COLUMNS, False))
PARTITION_COLUMNS = {"events": ("experiment_id", "day"), "assignments": ("experiment_id",)}


class ExportError(ValueError):
    """The export cannot run (bad folder, another export running, changed --since)."""


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    rows: dict[str, int]  # new rows per table
    files: list[str]  # new files, relative to the folder
    removed: list[str]  # files no manifest listed (a crashed run), deleted

    @property
    def changed(self) -> bool:
        return bool(self.files or self.removed)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the warehouse extra is a dev dependency
        raise ExportError("pyarrow is not installed: pip install 'abtest[warehouse]'") from exc
    return pyarrow


def arrow_schema(source: Source) -> Any:
    """The Arrow schema of the files (partition columns excluded)."""
    pa = _pyarrow()
    kinds = {
        "int64": pa.int64(),
        "int32": pa.int32(),
        "string": pa.string(),
        "json": pa.string(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    skip = PARTITION_COLUMNS[source.name]
    return pa.schema([(n, kinds[k]) for n, _, k in source.columns if n not in skip])


# --- manifest ----------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.exists():
        return {"version": MANIFEST_VERSION, "since": None, "tables": {}, "runs": 0}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable export manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise ExportError(f"{path}: not an abtest export manifest (version {MANIFEST_VERSION})")
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    temporary = folder / f".{MANIFEST}.{uuid.uuid4().hex}"
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MANIFEST)


def manifest_files(folder: Path, name: str) -> list[Path]:
    """The files of one table that the manifest lists (what readers must read)."""
    state = read_manifest(folder)["tables"].get(name, {})
    return [folder / entry["path"] for entry in state.get("files", [])]


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / ".export.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ExportError(f"another export into {folder} is running") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- rows --------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _exported_ids(folder: Path, files: list[dict[str, Any]], low: int, high: int) -> set[int]:
    """Ids in (low, high] already in the listed files (only files whose range overlaps)."""
    pq = _pyarrow().parquet
    ids: set[int] = set()
    for entry in files:
        if entry["max_id"] <= low or entry["min_id"] > high:
            continue
        values = pq.read_table(folder / entry["path"], columns=["id"]).column("id").to_pylist()
        ids.update(i for i in values if low < i <= high)
    return ids


def exported_id_array(folder: Path, name: str, low: int, high: int) -> Any:
    """The ids in (low, high] of the table `name` that the export in `folder` holds (per its
    manifest; none without one), as a sorted numpy int64 array (8 bytes an id, not a set)."""
    return exported_rows(folder, name, low, high)[0]


def exported_rows(
    folder: Path, name: str, low: int, high: int, stamp: str | None = None
) -> tuple[Any, Any]:
    """`exported_id_array`, and beside each id its row's `stamp` column (a timestamp, as int64
    microseconds since the epoch; an empty array without `stamp`): an id the database handed
    out again (a restored backup) is then not taken for the exported row it once was."""
    import numpy as np

    pq = _pyarrow().parquet
    columns = ["id", stamp] if stamp else ["id"]
    ids_parts = [np.empty(0, dtype=np.int64)]
    stamp_parts = [np.empty(0, dtype=np.int64)]
    try:  # a listed file deleted or overwritten, an entry without its ids: not an export
        for entry in read_manifest(folder)["tables"].get(name, {}).get("files", []):
            if entry["max_id"] <= low or entry["min_id"] > high:
                continue
            read = pq.read_table(folder / entry["path"], columns=columns)
            ids = read.column("id").to_numpy()
            keep = (ids > low) & (ids <= high)
            ids_parts.append(ids[keep].astype(np.int64))
            if stamp:
                times = read.column(stamp).to_numpy().astype("datetime64[us]").astype(np.int64)
                stamp_parts.append(times[keep])
    except ExportError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(
            f"{folder}: the export's {name} files do not match its manifest "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    ids, first = np.unique(np.concatenate(ids_parts), return_index=True)
    stamps = np.concatenate(stamp_parts)[first] if stamp else np.empty(0, dtype=np.int64)
    return ids, stamps


def _selection(
    connection: Connection, source: Source, state: dict[str, Any], since: datetime | None
) -> tuple[sa.Select | None, int]:
    """The rows to export now (None: nothing) and the new last id."""
    t = source.table
    last = int(state.get("last_id", 0))
    window = int(state.get("window_ids", WINDOW_IDS))
    top = int(connection.scalar(sa.select(func.max(t.c.id))) or 0)
    conditions: list[Any] = []
    if since is not None and source.by_day:
        conditions.append(t.c.occurred_at >= since)
    low = max(0, last - window)
    pick: list[Any] = []
    if top > last:
        pick.append(t.c.id > last)
    if last > 0:
        in_window = sa.and_(t.c.id > low, t.c.id <= last, *conditions)
        in_database = int(connection.scalar(sa.select(func.count()).where(in_window)) or 0)
        exported = _exported_ids(Path(state["folder"]), state.get("files", []), low, last)
        if in_database != len(exported):
            late = set(connection.execute(sa.select(t.c.id).where(in_window)).scalars())
            late -= exported
            if late:
                pick.append(t.c.id.in_(sorted(late)))
    if not pick:
        return None, max(last, top)
    columns = [
        sa.cast(t.c[name], sa.Text).label(name) if kind == "json" else t.c[name]
        for name, _, kind in source.columns
    ]  # JSON as the database's text: no parse and re-dump per row
    query = sa.select(*columns).where(sa.or_(*pick), t.c.id <= top, *conditions).order_by(t.c.id)
    return query, max(last, top)


def _partition_keys(source: Source, columns: Mapping[str, Sequence[Any]]) -> list[tuple[str, ...]]:
    experiment = (NULL_PARTITION if e is None else str(int(e)) for e in columns["experiment_id"])
    if not source.by_day:
        return [(f"experiment_id={e}",) for e in experiment]
    days = (_utc(at).date().isoformat() for at in columns["occurred_at"])  # type: ignore[union-attr]
    return [(f"experiment_id={e}", f"day={d}") for e, d in zip(experiment, days, strict=True)]


def _write_batch(
    folder: Path, source: Source, rows: Sequence[Sequence[Any]], run: int, batch: int
) -> list[dict[str, Any]]:
    """One Parquet file per partition of the rows (tuples in `source.columns` order)."""
    pa = _pyarrow()
    schema = arrow_schema(source)
    columns = dict(zip((n for n, _, _ in source.columns), zip(*rows, strict=True), strict=True))
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, key in enumerate(_partition_keys(source, columns)):
        groups.setdefault(key, []).append(index)
    # Naive timestamps (SQLite) are UTC: Arrow reads naive values of a UTC type as UTC.
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema})
    ids = table.column("id")
    entries = []
    for index, (parts, members) in enumerate(sorted(groups.items())):
        relative = Path(source.name, *parts, f"part-{run:06d}-{batch:04d}-{index:04d}.parquet")
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        picked = pa.array(members, type=pa.int64())
        temporary = target.with_name(f".{target.name}.tmp")
        pa.parquet.write_table(table.take(picked), temporary)
        os.replace(temporary, target)
        member_ids = ids.take(picked).to_pylist()
        entries.append(
            {
                "path": relative.as_posix(),
                "rows": len(members),
                "min_id": min(member_ids),
                "max_id": max(member_ids),
            }
        )
    return entries


def _remove_strays(folder: Path, manifest: dict[str, Any]) -> list[str]:
    listed = {e["path"] for s in manifest["tables"].values() for e in s.get("files", [])}
    removed = []
    for source in SOURCES:
        base = folder / source.name
        if not base.exists():
            continue
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and relative not in listed:
                path.unlink()
                removed.append(relative)
    return removed


def export(
    connection: Connection, folder: Path, since: date | None = None, batch_rows: int = BATCH_ROWS
) -> ExportResult:
    """Export the rows not yet in `folder` (see the module docstring). Reads only."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"to: {folder} is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        manifest = read_manifest(folder)
        wanted = since.isoformat() if since is not None else None
        if manifest["runs"] and wanted is not None and wanted != manifest["since"]:
            raise ExportError(
                f"since: {folder} was exported with --since {manifest['since']}; "
                "use a new folder for another start day"
            )
        if not manifest["runs"]:
            manifest["since"] = wanted
        start = (
            datetime.fromisoformat(manifest["since"]).replace(tzinfo=UTC)
            if manifest["since"]
            else None
        )
        removed = _remove_strays(folder, manifest)
        run = int(manifest["runs"]) + 1
        rows: dict[str, int] = {}
        new_files: list[str] = []
        for source in SOURCES:
            state = manifest["tables"].setdefault(
                source.name, {"last_id": 0, "window_ids": WINDOW_IDS, "files": []}
            )
            query, last = _selection(connection, source, {**state, "folder": folder}, start)
            rows[source.name] = 0
            if query is not None:
                result = connection.execution_options(stream_results=True).execute(query)
                for batch, chunk in enumerate(result.partitions(batch_rows)):
                    entries = _write_batch(folder, source, chunk, run, batch)
                    state["files"].extend(entries)
                    new_files.extend(e["path"] for e in entries)
                    rows[source.name] += len(chunk)
            state["last_id"] = last
        changed_marks = _marks(manifest) != _marks(read_manifest(folder))
        if new_files or changed_marks:
            manifest["runs"] = run
            manifest["exported_at"] = datetime.now(UTC).isoformat()
            _write_manifest(folder, manifest)
        return ExportResult(folder, rows, new_files, removed)


def _marks(manifest: dict[str, Any]) -> dict[str, int]:
    return {name: int(state.get("last_id", 0)) for name, state in manifest["tables"].items()}
