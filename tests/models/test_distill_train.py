"""Student fine-tuning on tiny models: seq2seq from scratch, causal + LoRA on a base directory,
best-of-last-three selection, model card, loading through the local student arm, the CLI."""

import json

import pytest
from typer.testing import CliRunner

from abtest.cli import app
from abtest.settings import get_settings
from models.dataset import load_split, write_records
from models.distill.train import (
    TinyModelSpec,
    TrainError,
    TrainSettings,
    build_tokenizer,
    fixed_pieces,
    load_student,
    predict_configs,
    read_model_card,
    records_hash,
    tokenizer_corpus,
    train_student,
    training_examples,
)
from models.prompts import student_prompt, student_target
from models.tools import TOOLS
from tests.models.tiny_models import make_llama

pytestmark = pytest.mark.ml

TINY = TinyModelSpec(vocab_size=400, d_model=32, d_ff=64, layers=1, heads=2)
TRAIN = load_split("train")[:12]
TEST = load_split("test")[:4]


def quick(**overrides):
    base = dict(tiny=TINY, epochs=2, batch_size=8, learning_rate=3e-3, eval_batch_size=12,
                max_new_tokens=40, threads=1)  # fmt: skip
    return TrainSettings(**{**base, **overrides})


def scripted(scores):
    """An evaluator returning a fixed overall per call (epoch order), recording its inputs."""
    calls = []

    def evaluate(configs, records, failures):
        calls.append((len(configs), len(records), len(failures)))
        return {"overall": scores[len(calls) - 1]}

    evaluate.calls = calls
    return evaluate


def test_examples_are_three_per_intent_with_paper_prompts():
    examples = training_examples(TRAIN[:2])
    assert len(examples) == 6
    assert examples[0] == (student_prompt("adjust", TRAIN[0].intent),
                           student_target("adjust", TRAIN[0].teacher))  # fmt: skip
    assert [e[0] for e in examples[:3]] == [student_prompt(t, TRAIN[0].intent) for t in TOOLS]


def test_tokenizer_is_lossless_and_keeps_fixed_text_in_single_tokens():
    tokenizer = build_tokenizer(tokenizer_corpus(TRAIN), 400)
    for prompt, target in training_examples(TEST):  # intents the tokenizer never saw
        for text in (prompt, target):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
    prompt_ids = tokenizer(student_prompt("filter", "a rainy tokyo night"))["input_ids"]
    assert len(prompt_ids) < 20  # the template is two tokens; only the intent is spelled out
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) == 1
               for p in fixed_pieces())  # fmt: skip


def test_seq2seq_from_scratch_keeps_best_of_last_three(tmp_path):
    # Epoch 1 scores best but is not among the last three; of epochs 2-4, epoch 3 wins.
    evaluate = scripted([0.9, 0.1, 0.5, 0.3])
    settings = quick(epochs=4, max_new_tokens=8)
    result = train_student(TRAIN[:6], TEST, tmp_path / "m", settings, evaluate,
                           show_progress=False)  # fmt: skip
    assert result.best_epoch == 3 and result.metrics == {"overall": 0.5}
    assert evaluate.calls == [(4, 4, 4)] * 4  # every epoch scored on the 4 test rows
    out = tmp_path / "m"
    assert {"config.json", "model.safetensors", "tokenizer.json", "model_card.json",
            "README.md"} <= {p.name for p in out.iterdir()}  # fmt: skip
    assert not (out / "checkpoints").exists()
    card = read_model_card(out)
    assert card["data"]["train_sha256"] == records_hash(TRAIN[:6])
    assert card["data"]["train_rows"] == 6 and card["best_epoch"] == 3
    assert card["settings"]["learning_rate"] == 3e-3 and card["settings"]["max_grad_norm"] == 0.3
    assert [e["metrics"]["overall"] for e in card["epochs"]] == [0.9, 0.1, 0.5, 0.3]
    assert "| 3 |" in (out / "README.md").read_text()


def test_only_competing_epochs_are_scored_when_asked(tmp_path):
    evaluate = scripted([0.2, 0.2, 0.2])
    settings = quick(epochs=4, evaluate_every_epoch=False, eval_limit=2, max_new_tokens=8)
    result = train_student(TRAIN[:6], TEST, tmp_path / "m", settings, evaluate, show_progress=False)
    assert evaluate.calls == [(2, 2, 2)] * 3  # epochs 2-4, first two test rows
    assert result.epochs[0].metrics is None
    assert result.best_epoch == 4  # ties go to the later epoch


@pytest.mark.slow
def test_training_learns_and_the_local_arm_serves_the_result(tmp_path):
    from models.arms.local import LocalStudentArm

    records = TRAIN[:4]
    spec = TinyModelSpec(vocab_size=400, d_model=64, d_ff=128, layers=1, heads=2)
    settings = quick(tiny=spec, epochs=40, batch_size=12, learning_rate=1e-2, max_new_tokens=40)
    result = train_student(records, records, tmp_path / "m", settings, None, show_progress=False)
    losses = [e.train_loss for e in result.epochs]
    assert losses[-1] < losses[0] / 3
    model, tokenizer, architecture = load_student(result.path)
    intents = [r.intent for r in records]
    configs, _ = predict_configs(
        model, tokenizer, intents, architecture=architecture, max_new_tokens=40
    )
    # Partly memorised: filter names of training intents come back (34 presets to choose from).
    assert sum(c.filter == r.teacher.filter for c, r in zip(configs, records, strict=True)) >= 2
    arm = LocalStudentArm(result.path, kind="seq2seq", max_new_tokens=40)
    served = arm.predict_sync(intents)
    assert [p.config for p in served] == configs


def test_causal_lora_on_a_base_directory(tmp_path):
    from models.arms.local import LocalStudentArm

    base = make_llama(tmp_path / "base")
    settings = quick(architecture="causal", base_model=str(base), epochs=1, lora_r=4,
                     lora_alpha=8, max_new_tokens=8)  # fmt: skip
    evaluate = scripted([0.4])
    result = train_student(TRAIN[:4], TEST[:2], tmp_path / "m", settings, evaluate,
                           show_progress=False)  # fmt: skip
    out = result.path
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(base)
    card = read_model_card(out)
    assert card["lora"] is True and card["architecture"] == "causal"
    assert card["parameters"] > 0
    arm = LocalStudentArm(out, max_new_tokens=8)
    assert arm.kind == "causal" and len(arm.predict_sync(["x"])) == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"architecture": "rnn"}, "architecture"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"base_model": "/no/such/model"}, "base_model"),
        ({"load_in_4bit": True, "architecture": "causal"}, None),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, field):
    if overrides.get("load_in_4bit"):
        overrides["base_model"] = str(make_llama(tmp_path / "base"))
        field = "load_in_4bit"
    with pytest.raises(TrainError, match=field):
        train_student(TRAIN, TEST, tmp_path / "m", quick(**overrides), None, show_progress=False)
    assert not (tmp_path / "m").exists()


def test_empty_data_and_used_output_dir_are_rejected(tmp_path):
    with pytest.raises(TrainError, match="train"):
        train_student([], TEST, tmp_path / "a", quick(), None, show_progress=False)
    with pytest.raises(TrainError, match="test"):
        train_student(TRAIN, [], tmp_path / "b", quick(), scripted([1]), show_progress=False)
    used = tmp_path / "c"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    with pytest.raises(TrainError, match="not empty"):
        train_student(TRAIN, TEST, used, quick(), None, show_progress=False)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]


@pytest.fixture
def cli(database_url, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", database_url)
    get_settings.cache_clear()
    return lambda *args: CliRunner().invoke(app, list(args))


@pytest.mark.slow
def test_cli_trains_scores_and_registers(cli, engine, tmp_path, monkeypatch):
    outside = cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--register", "x")
    assert outside.exit_code == 1 and "ABTEST_MODEL_DIR" in outside.output  # before training
    monkeypatch.setenv("ABTEST_MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    data = tmp_path / "data"
    data.mkdir()
    write_records(TRAIN[:6], data / "train.jsonl")
    write_records(TEST[:3], data / "test.jsonl")
    out = tmp_path / "student"
    result = cli("train", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--lr", "1e-3", "--batch-size", "8", "--threads", "1", "--max-new-tokens", "12",
                 "--register", "tiny-student", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["variant"] == "tiny-student" and 0 <= summary["overall"] <= 1
    card = read_model_card(out)
    assert set(card["metrics"]) >= {"overall", "all", "r3", "r5"}  # the offline suite
    assert card["metrics"]["all"]["n"] == 3
    shown = json.loads(cli("variants", "show", "tiny-student", "--json").output)
    assert shown["kind"] == "local_student"
    assert shown["config"] == {"path": str(out.resolve()), "kind": "seq2seq"}
    # The registered config builds a working arm through the factory.
    from models.arms.factory import build_arm

    arm = build_arm("local_student", "tiny-student", shown["config"])
    assert len(arm.predict_sync(["sunset"])) == 1


def test_cli_train_errors(cli, engine, tmp_path):
    result = cli("train", "--out", str(tmp_path / "m"))
    assert result.exit_code == 1 and "--data" in result.output
    result = cli("train", "--bundled", "--data", str(tmp_path), "--out", str(tmp_path / "m"))
    assert result.exit_code == 1 and "--bundled" in result.output
    result = cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert result.exit_code == 1 and "does not exist" in result.output
    data = tmp_path / "data"
    data.mkdir()
    write_records(TRAIN[:3], data / "train.jsonl")
    write_records(TEST[:2], data / "test.jsonl")
    result = cli("train", "--data", str(data), "--out", str(tmp_path / "m"),
                 "--architecture", "rnn")  # fmt: skip
    assert result.exit_code == 1 and "architecture" in result.output
    assert not (tmp_path / "m").exists()


def test_demo_student_uses_a_matching_card_and_never_a_stale_one(tmp_path, monkeypatch):
    import json as _json
    from dataclasses import asdict, replace

    from models.distill import demo_student

    settings = replace(demo_student.DEMO_SETTINGS, epochs=1)
    card = {
        "data": {"train_sha256": records_hash(load_split("train"))},
        "settings": _json.loads(_json.dumps(asdict(settings), default=str)),
    }
    assert demo_student.card_matches(card, settings)
    assert not demo_student.card_matches(card, demo_student.DEMO_SETTINGS)
    assert not demo_student.card_matches({**card, "data": {"train_sha256": "0" * 64}}, settings)
    # A cached directory for exactly these settings is returned without training.
    monkeypatch.setattr(demo_student, "bundled_demo_path", lambda: tmp_path / "none")
    cached = tmp_path / f"demo-student-{demo_student.demo_key(settings)}"
    cached.mkdir()
    (cached / "model_card.json").write_text(_json.dumps(card))
    monkeypatch.setattr(demo_student, "train_student", lambda *a, **k: pytest.fail("trained"))
    assert demo_student.ensure_demo_student(tmp_path, settings=settings) == cached
    # A bundled copy wins when its card matches.
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "model_card.json").write_text(_json.dumps(card))
    monkeypatch.setattr(demo_student, "bundled_demo_path", lambda: bundled)
    assert demo_student.ensure_demo_student(tmp_path / "other", settings=settings) == bundled
