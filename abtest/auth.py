"""API keys: created once (printed once), stored as SHA-256 hashes with a role, revocable.

Roles: `app` (projects and events), `engineer` (variants, experiments, gates), `analyst`
(read-only results). The API checks them when `settings.auth_enabled` is true; `abtest serve`
turns that on unless it is explicitly disabled.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from functools import lru_cache
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


def key_summary(row: ApiKey) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
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
    """

    def __init__(self, ttl_s: float = 5.0, maxsize: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.maxsize = maxsize
        self._data: dict[str, tuple[str | None, float]] = {}
        self.pending: dict[str, Any] = {}  # key hash -> the lookup in flight (an asyncio task)

    def peek(self, key: str) -> tuple[str, str | None]:
        """("fresh" | "stale" | "missing", role)."""
        entry = self._data.get(hash_key(key))
        if entry is None:
            return "missing", None
        return ("fresh" if entry[1] >= time.monotonic() else "stale"), entry[0]

    def clear(self) -> None:
        """Forget every role (API keys changed somewhere: `abtest.generation`)."""
        self._data.clear()

    def put(self, key: str, role: str | None) -> None:
        if len(self._data) >= self.maxsize:
            self._data.clear()
        self._data[hash_key(key)] = (role, time.monotonic() + self.ttl_s)
