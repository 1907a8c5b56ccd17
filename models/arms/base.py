"""The arm interface shared by every model behind an experiment arm."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from models.tools import ToolConfig


class ArmError(RuntimeError):
    """The arm could not produce a usable answer (transport error, unusable output...)."""


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
