"""API keys: created once (printed once), stored as SHA-256 hashes with a role, revocable.

Roles: `app` (projects and events), `engineer` (variants, experiments, gates), `analyst`
(read-only results). The API checks them when `settings.auth_enabled` is true; `abtest serve`
turns that on unless it is explicitly disabled.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from abtest.errors import Conflict, Invalid, NotFound
from abtest.services import _check_name
from abtest.tables import ROLES, ApiKey, utcnow

KEY_PREFIX = "abt_"
BOOTSTRAP_KEY_NAME = "bootstrap"


@lru_cache(maxsize=1024)  # every request hashes its key: the few keys in use hash once
def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    session: Session, name: str, role: str, key: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key for `role`; returns the row and the plaintext key (shown only now)."""
    _check_name(name, "name")
    if role not in ROLES:
        raise Invalid("role", f"{role!r} is not one of {', '.join(ROLES)}")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict("name", f"an API key named {name!r} already exists")
    plaintext = key or new_key()
    if len(plaintext) < 16:
        raise Invalid("key", "must be at least 16 characters")
    if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(plaintext))):
        raise Conflict("key", "this key is already registered")
    row = ApiKey(name=name, key_hash=hash_key(plaintext), role=role)
    session.add(row)
    session.flush()
    return row, plaintext


def list_keys(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.id)).all()


def revoke_key(session: Session, name: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise NotFound("name", f"no API key named {name!r}")
    if row.revoked_at is not None:
        raise Conflict("name", f"API key {name!r} is already revoked")
    row.revoked_at = utcnow()
    session.flush()
    return row


def role_of(session: Session, key: str) -> str | None:
    """The role of an active key, or None for an unknown or revoked key."""
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return row.role if row is not None else None


def ensure_bootstrap_key(session: Session, key: str) -> bool:
    """Create `key` as an engineer key named 'bootstrap' when no key exists; True if created."""
    if session.scalar(select(func.count()).select_from(ApiKey)):
        return False
    create_key(session, BOOTSTRAP_KEY_NAME, "engineer", key)
    return True


FINGERPRINT_CHARS = 12


def key_fingerprint(key: str) -> str:
    """What the audit trail records of the key that acted (the start of its stored hash, as
    `abtest keys list` shows it), never the key."""
    return hash_key(key)[:FINGERPRINT_CHARS]


def key_summary(row: ApiKey) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
        "fingerprint": row.key_hash[:FINGERPRINT_CHARS],
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


class RoleCache:
    """Key hash -> role, so a request does not hit the database each time.

    An entry is fresh for `ttl_s` seconds; after that it is stale: still answered while one
    background lookup refreshes it (expiry never sends every in-flight request to the database
    at once). Any API-key change bumps the catalog generation and every server clears this
    cache within about a quarter second (`abtest.generation`), so a revoked key stops working
    everywhere within a second.

    Valid keys and refused ones live apart: refused keys (unknown or revoked) go to a bounded
    LRU of their own, so a flood of random keys evicts only other refused keys, never a valid
    one. The valid keys seen (their hashes and roles, as the database stores them) are also
    kept in `snapshot` (a JSON file), so that a server restarted while the database is down
    still knows them (`last_known`).
    """

    def __init__(
        self,
        ttl_s: float = 5.0,
        maxsize: int = 10_000,
        refused_maxsize: int = 10_000,
        snapshot: Path | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.maxsize = maxsize
        self.refused_maxsize = refused_maxsize
        self.snapshot = snapshot
        self._valid: dict[str, tuple[str, float]] = {}  # hash -> (role, fresh until)
        self._refused: OrderedDict[str, float] = OrderedDict()  # hash -> fresh until
        self._last_known: dict[str, str] = self._read_snapshot()
        self.pending: dict[str, Any] = {}  # key hash -> the lookup in flight (an asyncio task)

    def peek(self, key: str) -> tuple[str, str | None]:
        """("fresh" | "stale" | "missing", role)."""
        digest = hash_key(key)
        entry = self._valid.get(digest)
        if entry is not None:
            return ("fresh" if entry[1] >= time.monotonic() else "stale"), entry[0]
        refused = self._refused.get(digest)
        if refused is not None:
            return ("fresh" if refused >= time.monotonic() else "stale"), None
        return "missing", None

    def clear(self) -> None:
        """Forget every cached answer (API keys changed somewhere: `abtest.generation`); the
        last known roles stay for an outage, and a refused lookup drops a key from them."""
        self._valid.clear()
        self._refused.clear()

    def put(self, key: str, role: str | None) -> None:
        digest = hash_key(key)
        until = time.monotonic() + self.ttl_s
        if role is None:
            self._valid.pop(digest, None)
            self._refused[digest] = until
            self._refused.move_to_end(digest)
            while len(self._refused) > self.refused_maxsize:
                self._refused.popitem(last=False)  # the oldest refused key, never a valid one
            if self._last_known.pop(digest, None) is not None:
                self._write_snapshot()
            return
        self._refused.pop(digest, None)
        if digest not in self._valid and len(self._valid) >= self.maxsize:
            self._valid.pop(next(iter(self._valid)))
        self._valid[digest] = (role, until)
        if self._last_known.get(digest) != role:
            self._last_known[digest] = role
            self._write_snapshot()

    def put_stale(self, key: str, role: str) -> None:
        """Answer `role` for `key` from now on, as stale (each use starts one background
        lookup): what the database could not confirm (it is unreachable) is never fresh."""
        digest = hash_key(key)
        if digest not in self._valid and len(self._valid) >= self.maxsize:
            self._valid.pop(next(iter(self._valid)))
        self._valid[digest] = (role, float("-inf"))

    def last_known(self, key: str) -> str | None:
        """The role `key` had when last checked (this process, or the snapshot), however old:
        what a server answers while the database cannot be asked."""
        digest = hash_key(key)
        entry = self._valid.get(digest)
        return entry[0] if entry is not None else self._last_known.get(digest)

    def _read_snapshot(self) -> dict[str, str]:
        if self.snapshot is None or not self.snapshot.exists():
            return {}
        try:
            data = json.loads(self.snapshot.read_text())
        except (OSError, ValueError):
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        )

    def _write_snapshot(self) -> None:
        if self.snapshot is None:
            return
        try:
            self.snapshot.parent.mkdir(parents=True, exist_ok=True)
            partial = self.snapshot.with_suffix(".tmp")
            partial.write_text(json.dumps(self._last_known))
            os.replace(partial, self.snapshot)
        except OSError:  # a read-only disk loses only the restart-during-outage case
            pass
