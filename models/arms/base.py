"""The arm interface shared by every model behind an experiment arm."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from models.tools import ToolConfig


class ArmError(RuntimeError):
    """The arm could not produce a usable answer (transport error, unusable output...)."""


def is_transport_failure(exc: BaseException) -> bool:
    """Whether an arm call failed because its model could not be reached in time (a timeout,
    a refused or dropped connection, HTTP 429 or 5xx), looking through `ArmError` causes.
    Anything else (an intent a model cannot answer, a 4xx, unparseable text) is about that
    request or the arm's quality, not an outage: circuit breakers count only these."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError | asyncio.TimeoutError | OSError):
            return True
        status = getattr(current, "status_code", None)
        if isinstance(status, int) and (status == 429 or status >= 500):
            return True
        if _is_client_transport_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_client_transport_error(exc: BaseException) -> bool:
    """httpx transport errors and openai's connection errors (timeouts included). Only looked
    up when loaded: an exception of a library that was never imported cannot be one of its."""
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return True
    openai = sys.modules.get("openai")
    return openai is not None and isinstance(exc, openai.APIConnectionError)


@dataclass(frozen=True)
class Prediction:
    """What an arm returns for one intent."""

    config: ToolConfig
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    raw: dict[str, str] = field(default_factory=dict)  # per tool: the model's text (rationale)
    parse_failures: tuple[str, ...] = ()  # tools whose output could not be parsed
    cache_hit: bool = False
    repairs: tuple[str, ...] = ()  # clamped values, dropped keys, fixed names (models.parsing)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_output(self) -> dict[str, Any]:
        """The JSON stored with a start event."""
        return {
            **self.config.to_record(),
            "raw": self.raw,
            "parse_failures": list(self.parse_failures),
            "repairs": list(self.repairs),
        }


@runtime_checkable
class Arm(Protocol):
    name: str

    async def predict(self, intent: str) -> Prediction: ...

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]: ...


class BatchByGather:
    """Mixin: a batch form that runs `predict` concurrently, for arms without a native batch."""

    concurrency: int = 8

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(intent: str) -> Prediction:
            async with semaphore:
                return await self.predict(intent)  # type: ignore[attr-defined]

        return list(await asyncio.gather(*(one(i) for i in intents)))
