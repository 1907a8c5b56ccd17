"""The local SQLite spool: durable while the database is unreachable, with dead letters."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from routing.eventlog.schema import check_storable, row_from_json, row_to_json, utcnow


class EventSpool:
    """An append-only local queue in a SQLite file; `append` returns once the rows are fsynced.

    Only storable rows are accepted (`check_storable`). Entries that the database still
    refuses at replay (a bug, or a row spooled by an older version) are moved one by one to
    the file's `dead_letters` table with the error, so that they never hold back the rest;
    `dead_letters` counts them and `dead_letter_entries` lists them.
    The file is created on the first append, so a healthy server never writes to disk here.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "spool.sqlite3"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        self._dead = 0
        if self.path.exists():
            self._open()
            self._depth, self._dead = self._count()

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS spool ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS dead_letters ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, spool_id INTEGER NOT NULL, "
                "kind TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL, "
                "failed_at TEXT NOT NULL)"
            )
            self._conn = conn
        return self._conn

    def _count(self) -> tuple[int, int]:
        with self._lock:
            conn = self._open()
            depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])
            dead = int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
            return depth, dead

    def append(self, kind: str, rows: Sequence[dict[str, Any]]) -> None:
        """Durably append rows (kind 'event' or 'assignment'); UnstorableEvent (nothing
        appended) when an event row holds a value the database would refuse."""
        if kind == "event":
            for row in rows:
                check_storable(row)
        payloads = [(kind, row_to_json(row)) for row in rows]
        with self._lock:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO spool (kind, payload) VALUES (?, ?)", payloads)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._depth += len(payloads)

    def peek(self, limit: int = 5000) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            if self._conn is None:
                return []
            rows = self._conn.execute(
                "SELECT id, kind, payload FROM spool ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(row_id, kind, row_from_json(payload)) for row_id, kind, payload in rows]

    def remove_through(self, last_id: int) -> None:
        with self._lock:
            conn = self._open()
            conn.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
            self._depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def bury(self, spool_id: int, kind: str, row: dict[str, Any], error: str) -> None:
        """Move one spooled entry to the dead letters (one transaction, fsynced)."""
        with self._lock:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO dead_letters (spool_id, kind, payload, error, failed_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (spool_id, kind, _payload_text(row), error[:2000], utcnow().isoformat()),
                )
                conn.execute("DELETE FROM spool WHERE id = ?", (spool_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._dead += 1
            self._depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def dead_letter_entries(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The dead letters, oldest first: id, spool_id, kind, payload (JSON text), error."""
        with self._lock:
            if self._conn is None:
                return []
            rows = self._conn.execute(
                "SELECT id, spool_id, kind, payload, error, failed_at FROM dead_letters "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        names = ("id", "spool_id", "kind", "payload", "error", "failed_at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dead_letters(self) -> int:
        return self._dead

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _payload_text(row: dict[str, Any]) -> str:
    """A dead letter's row as JSON text that SQLite and any reader can take (a lone surrogate
    or NUL is written as its \\u escape)."""
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()},
        ensure_ascii=True,
        default=repr,
    )
