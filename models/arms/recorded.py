"""An in-process arm that answers from recorded teacher outputs (no HTTP)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from models.arms.base import ArmError, BatchByGather, Prediction
from models.dataset import IntentRecord, normalize_intent


class RecordedTeacherArm(BatchByGather):
    """Looks the intent up in recorded teacher outputs; unknown intents are an `ArmError`."""

    def __init__(self, records: Iterable[IntentRecord], name: str = "recorded-teacher") -> None:
        self.name = name
        self._answers = {normalize_intent(r.intent): r.teacher for r in records}

    async def predict(self, intent: str) -> Prediction:
        started = time.perf_counter()
        config = self._answers.get(normalize_intent(intent))
        if config is None:
            raise ArmError(f"no recorded teacher answer for intent {intent!r}")
        return Prediction(config, latency_ms=(time.perf_counter() - started) * 1000)
