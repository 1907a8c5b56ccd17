"""A small but real student: nearest neighbours over character n-grams of the intent.

Fitted on the training split only; for a new intent it returns the teacher answer of the most
similar training intent (cosine similarity of TF-IDF character 2-4-grams). It is the baseline
every fine-tuned student should beat, and the demo's student until a trained one is registered.

Saved as JSON (the training intents and their teacher answers; loading refits, which is
deterministic). Nothing is ever unpickled: a file that is not this JSON format is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

from models.arms.base import Prediction
from models.dataset import DatasetError, IntentRecord, normalize_intent, parse_record
from models.tools import ToolConfig

FORMAT = "abtest-knn-student-v1"


class KnnStudent:
    def __init__(self, name: str = "knn-student") -> None:
        self.name = name
        self._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=1)
        self._index = NearestNeighbors(n_neighbors=1, metric="cosine")
        self._answers: list[ToolConfig] = []
        self._records: list[IntentRecord] = []

    def fit(self, records: Sequence[IntentRecord]) -> KnnStudent:
        self._records = list(records)
        texts = [normalize_intent(r.intent) for r in records]
        self._index.fit(self._vectorizer.fit_transform(texts))
        self._answers = [r.teacher for r in records]
        return self

    def predict_configs(self, intents: Sequence[str]) -> list[ToolConfig]:
        vectors = self._vectorizer.transform([normalize_intent(i) for i in intents])
        _, neighbours = self._index.kneighbors(vectors)
        return [self._answers[row[0]] for row in neighbours]

    async def predict(self, intent: str) -> Prediction:
        return (await self.predict_batch([intent]))[0]

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        started = time.perf_counter()
        configs = self.predict_configs(intents)
        per_item = (time.perf_counter() - started) * 1000 / max(len(intents), 1)
        return [Prediction(config, latency_ms=per_item) for config in configs]

    def save(self, path: str | Path) -> None:
        """Write the training records as JSON (`load` refits from them)."""
        rows = [r.to_json() for r in self._records]
        Path(path).write_text(json.dumps({"format": FORMAT, "records": rows}), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> KnnStudent:
        """Refit from a file written by `save`; anything else (a pickle...) is a ValueError."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not a kNN student file (JSON expected)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a kNN student file (format {FORMAT!r} expected)")
        rows = data.get("records")
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{path}: records must be a non-empty list")
        try:
            records = [parse_record(row) for row in rows]
        except (DatasetError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: bad record ({exc})") from None
        return cls().fit(records)
