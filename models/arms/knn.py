"""A small but real student: nearest neighbours over character n-grams of the intent.

Fitted on the training split only; for a new intent it returns the teacher answer of the most
similar training intent (cosine similarity of TF-IDF character 2-4-grams). It is the baseline
every fine-tuned student should beat, and the demo's student until a trained one is registered.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

from models.arms.base import Prediction
from models.dataset import IntentRecord, normalize_intent
from models.tools import ToolConfig


class KnnStudent:
    def __init__(self, name: str = "knn-student") -> None:
        self.name = name
        self._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=1)
        self._index = NearestNeighbors(n_neighbors=1, metric="cosine")
        self._answers: list[ToolConfig] = []

    def fit(self, records: Sequence[IntentRecord]) -> KnnStudent:
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
        Path(path).write_bytes(pickle.dumps(self))

    @classmethod
    def load(cls, path: str | Path) -> KnnStudent:
        model = pickle.loads(Path(path).read_bytes())
        if not isinstance(model, cls):
            raise TypeError(f"{path} does not hold a KnnStudent")
        return model
