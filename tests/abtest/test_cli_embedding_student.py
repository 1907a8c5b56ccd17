"""`abtest train --embedding`: trains, scores and saves an embedding student; bad data fails."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from abtest.cli import app
from models.dataset import load_split, write_records
from models.distill.embedding_student import is_embedding_student

runner = CliRunner()


@pytest.mark.ml
@pytest.mark.slow
def test_train_embedding_writes_a_scored_student(tmp_path) -> None:
    write_records(load_split("train")[:40], tmp_path / "train.jsonl")
    write_records(load_split("test")[:20], tmp_path / "test.jsonl")
    out = tmp_path / "student"
    result = runner.invoke(
        app, ["train", "--embedding", "--data", str(tmp_path), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["path"] == str(out) and 0 <= summary["overall"] <= 1
    assert is_embedding_student(out)


@pytest.mark.ml
def test_train_embedding_with_one_row_fails_and_writes_nothing(tmp_path) -> None:
    write_records(load_split("train")[:1], tmp_path / "train.jsonl")
    write_records(load_split("test")[:2], tmp_path / "test.jsonl")
    out = tmp_path / "student"
    result = runner.invoke(
        app, ["train", "--embedding", "--data", str(tmp_path), "--out", str(out)]
    )
    assert result.exit_code != 0
    assert "records:" in result.output
    assert not out.exists()
