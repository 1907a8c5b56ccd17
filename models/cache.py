"""Response cache: normalized intent -> an arm's output, per variant name and version.

Popular intents dominate traffic, so a cache in front of an expensive arm (the teacher over the
API, a GPU student) saves cost and latency. Keys are ``<prefix><variant_key>:<sha1(intent)>``
where `variant_key` names the variant AND its version (``"student-flan@3"``), so a new version
never sees its predecessor's answers.

Backends: a redis-py client (sync ``redis.Redis`` or ``redis.asyncio.Redis``) with a key prefix,
or an in-process LRU dict when no client is given. Entries expire after `ttl_s`. A Redis error
or a command slower than `timeout_s` is counted and treated as a miss (on read) or ignored
(on write): the cache never fails or stalls a request. Predictions with parse failures are not
stored (a retry may do better). A hit is returned with no tokens and no cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from models.arms.base import Prediction
from models.dataset import normalize_intent
from models.tools import ToolConfig


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    writes: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Hits over lookups; 0.0 before the first lookup."""
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "writes": self.writes,
            "hit_rate": self.hit_rate,
        }


class ResponseCache:
    """Cache of arm outputs; Redis when `redis_client` is given, else in-process."""

    def __init__(
        self,
        redis_client: Any = None,
        *,
        prefix: str = "abtest:llm-cache:",
        ttl_s: float = 7 * 24 * 3600,
        max_entries: int = 100_000,
        timeout_s: float = 0.25,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s: must be positive")
        if ttl_s <= 0:
            raise ValueError("ttl_s: must be positive")
        if max_entries < 1:
            raise ValueError("max_entries: must be at least 1")
        self.redis = redis_client
        self.prefix = prefix
        self.ttl_s = float(ttl_s)
        self.max_entries = max_entries
        self.timeout_s = float(timeout_s)
        self.stats = CacheStats()
        self.by_variant: dict[str, CacheStats] = {}
        self._memory: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "memory"

    def key(self, variant_key: str, intent: str) -> str:
        digest = hashlib.sha1(normalize_intent(intent).encode()).hexdigest()
        return f"{self.prefix}{variant_key}:{digest}"

    def hit_rate(self, variant_key: str | None = None) -> float:
        if variant_key is None:
            return self.stats.hit_rate
        return self.by_variant.get(variant_key, CacheStats()).hit_rate

    async def get(self, variant_key: str, intent: str) -> dict[str, Any] | None:
        """The cached payload for this variant and intent, or None (a miss, or a Redis error)."""
        key = self.key(variant_key, intent)
        try:
            raw = await self._read(key)
            payload = json.loads(raw) if raw is not None else None
        except Exception:  # noqa: BLE001 - any cache trouble is a miss
            self._count(variant_key, errors=1)
            payload = None
        self._count(variant_key, hits=payload is not None, misses=payload is None)
        return payload

    async def set(self, variant_key: str, intent: str, payload: dict[str, Any]) -> bool:
        """Store a payload; False (and an error counted) when the backend failed."""
        key = self.key(variant_key, intent)
        try:
            await self._write(key, json.dumps(payload, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - a failed write must not fail the request
            self._count(variant_key, errors=1)
            return False
        self._count(variant_key, writes=1)
        return True

    async def clear(self, variant_key: str) -> int:
        """Drop every entry of one variant version; returns how many were dropped."""
        pattern = f"{self.prefix}{variant_key}:"
        if self.redis is None:
            with self._lock:
                keys = [k for k in self._memory if k.startswith(pattern)]
                for k in keys:
                    del self._memory[k]
            return len(keys)
        keys = list(self.redis.scan_iter(match=f"{pattern}*", count=1000))
        if keys:
            self.redis.delete(*keys)
        return len(keys)

    async def _read(self, key: str) -> str | None:
        if self.redis is None:
            with self._lock:
                entry = self._memory.get(key)
                if entry is None:
                    return None
                expires, value = entry
                if expires < time.monotonic():
                    del self._memory[key]
                    return None
                self._memory.move_to_end(key)
                return value
        value = await self._redis_call(self.redis.get, key)
        return value.decode() if isinstance(value, bytes) else value

    async def _write(self, key: str, value: str) -> None:
        if self.redis is None:
            with self._lock:
                self._memory[key] = (time.monotonic() + self.ttl_s, value)
                self._memory.move_to_end(key)
                while len(self._memory) > self.max_entries:
                    self._memory.popitem(last=False)
            return
        await self._redis_call(self.redis.set, key, value, px=max(1, int(self.ttl_s * 1000)))

    async def _redis_call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """One Redis command, bounded by `timeout_s` (a sync client runs in a worker thread,
        so a hung or reconnecting Redis cannot stall the event loop)."""
        if inspect.iscoroutinefunction(method):
            return await asyncio.wait_for(method(*args, **kwargs), self.timeout_s)
        result = await asyncio.wait_for(asyncio.to_thread(method, *args, **kwargs), self.timeout_s)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, self.timeout_s)
        return result

    def _count(self, variant_key: str, **deltas: int) -> None:
        per_variant = self.by_variant.setdefault(variant_key, CacheStats())
        with self._lock:
            for stats in (self.stats, per_variant):
                for name, delta in deltas.items():
                    setattr(stats, name, getattr(stats, name) + int(delta))


def prediction_payload(prediction: Prediction) -> dict[str, Any]:
    return {
        "config": prediction.config.to_record(),
        "raw": prediction.raw,
        "prompt_tokens": prediction.prompt_tokens,
        "completion_tokens": prediction.completion_tokens,
    }


def prediction_from_payload(payload: dict[str, Any], latency_ms: float) -> Prediction:
    """A cache hit: no tokens were spent and no money either (the original counts are dropped)."""
    config = ToolConfig.from_record(payload["config"], strict=False)
    raw = {str(k): str(v) for k, v in (payload.get("raw") or {}).items()}
    return Prediction(config, latency_ms=latency_ms, raw=raw, cache_hit=True)


class CachedArm:
    """Wraps an arm with a `ResponseCache`; `enabled=False` passes every call through."""

    def __init__(
        self, arm: Any, cache: ResponseCache, variant_key: str, *, enabled: bool = True
    ) -> None:
        self.arm = arm
        self.cache = cache
        self.variant_key = variant_key
        self.enabled = enabled
        self.name = getattr(arm, "name", variant_key)

    async def predict(self, intent: str) -> Prediction:
        if not self.enabled:
            return await self.arm.predict(intent)
        started = time.perf_counter()
        payload = await self.cache.get(self.variant_key, intent)
        if payload is not None:
            try:
                return prediction_from_payload(payload, (time.perf_counter() - started) * 1000)
            except Exception:  # noqa: BLE001 - a corrupt entry is a miss
                self.cache._count(self.variant_key, errors=1)
        prediction = await self.arm.predict(intent)
        if not prediction.parse_failures:
            await self.cache.set(self.variant_key, intent, prediction_payload(prediction))
        return replace(prediction, cache_hit=False)

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        """Cached intents are answered from the cache; the rest go to the arm in one batch."""
        if not self.enabled:
            return list(await self.arm.predict_batch(intents))
        results: list[Prediction | None] = [None] * len(intents)
        missing: list[int] = []
        for index, intent in enumerate(intents):
            started = time.perf_counter()
            payload = await self.cache.get(self.variant_key, intent)
            if payload is not None:
                try:
                    elapsed = (time.perf_counter() - started) * 1000
                    results[index] = prediction_from_payload(payload, elapsed)
                    continue
                except Exception:  # noqa: BLE001
                    self.cache._count(self.variant_key, errors=1)
            missing.append(index)
        if missing:
            fresh = await self.arm.predict_batch([intents[i] for i in missing])
            for index, prediction in zip(missing, fresh, strict=True):
                if not prediction.parse_failures:
                    payload = prediction_payload(prediction)
                    await self.cache.set(self.variant_key, intents[index], payload)
                results[index] = prediction
        return [r for r in results if r is not None]
