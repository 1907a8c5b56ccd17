"""The low-data study (shape of the paper's Table 3) on a tiny model and a handful of intents."""

import json
import math

import pytest
from typer.testing import CliRunner

from abtest.cli import app
from abtest.distill_service import offline_evaluator, offline_mistakes
from abtest.settings import get_settings
from models.dataset import load_split
from models.distill.lowdata import LowDataRow, run_lowdata, table_markdown, write_table
from models.distill.train import TinyModelSpec, TrainSettings
from tests.models.test_distill_augment import StandIn, writer_for

pytestmark = pytest.mark.ml

TINY = TrainSettings(
    tiny=TinyModelSpec(vocab_size=300, d_model=16, d_ff=32, layers=1, heads=2),
    epochs=1, batch_size=8, learning_rate=1e-3, max_new_tokens=6, threads=1,
    eval_limit=3, evaluate_every_epoch=False,
)  # fmt: skip


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


def test_rows_cover_fractions_with_and_without_augmentation(tmp_path, stand_in):
    seen = []
    rows = run_lowdata(
        load_split("train"), load_split("test"), tmp_path, offline_evaluator, offline_mistakes,
        writer_for(stand_in), settings=TINY, fractions=(1.0, 0.5), pool_size=8, sample_size=3,
        show_progress=False, on_row=seen.append,
    )  # fmt: skip
    assert seen == rows
    assert [(r.fraction, r.augmented) for r in rows] == [(1.0, False), (0.5, False), (0.5, True)]
    assert [r.train_size for r in rows[:2]] == [8, 4]
    augmented = rows[2]
    assert augmented.train_size == 4 + augmented.augmentations
    assert 0 < augmented.augmentations <= 3  # mistakes come from a sample of 3
    assert len(stand_in.requests) <= 3
    assert all(0 <= r.overall <= 1 for r in rows)
    for row in rows:
        assert (tmp_path / row.model_path.split("/")[-1] / "model_card.json").is_file()


def test_table_has_the_layout_of_table_3(tmp_path):
    rows = [LowDataRow(1.0, False, 0, 100, 0.72, "a"), LowDataRow(0.125, True, 8, 20, 0.5, "b")]
    text = table_markdown(rows)
    assert text.splitlines()[0] == "| Train % | Augmentations | Train size | Overall |"
    assert "| 100 |  | 100 | 0.72 |" in text and "| 12.5 | 8 (40.0%) | 20 | 0.50 |" in text
    write_table(rows, tmp_path, {"pool": 100})
    data = json.loads((tmp_path / "lowdata.json").read_text())
    assert data["pool"] == 100 and math.isclose(data["rows"][1]["augmentation_share"], 0.4)
    assert (tmp_path / "lowdata.md").read_text().endswith(text)


def test_bad_fractions_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        run_lowdata([], [], tmp_path, offline_evaluator, offline_mistakes, lambda i: None,
                    fractions=(0.0,))  # fmt: skip


@pytest.mark.slow
def test_cli_lowdata(tmp_path, stand_in):
    get_settings.cache_clear()
    runner = CliRunner()
    out = tmp_path / "study"
    args = ["lowdata", "--bundled", "--out", str(out), "--fractions", "1,0.5", "--pool", "6",
            "--epochs", "1", "--eval-limit", "2", "--sample-size", "2",
            "--base-url", stand_in.url, "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["train_size"] for r in data["rows"][:2]] == [6, 3]
    assert (out / "lowdata.md").is_file()
    bad = runner.invoke(app, ["lowdata", "--bundled", "--out", str(tmp_path / "x"),
                              "--fractions", "2", "--base-url", stand_in.url])  # fmt: skip
    assert bad.exit_code == 1 and "fractions" in bad.output
    both = runner.invoke(app, ["lowdata", "--out", str(tmp_path / "y"), "--base-url", stand_in.url])
    assert both.exit_code == 1 and "--bundled" in both.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
