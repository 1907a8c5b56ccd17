"""Mistake-driven augmentation (paper 3.4, A.9, A.10) against a local OpenAI-compatible stand-in."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from openai import OpenAI
from typer.testing import CliRunner

from abtest.cli import app
from abtest.settings import get_settings
from models.dataset import load_records, load_split, normalize_intent, write_records
from models.distill.augment import (
    AUGMENTATION_PROMPT,
    AugmentError,
    OpenAIIntentWriter,
    augment_once,
    augmentation_messages,
    parse_similar_intent,
    sample_records,
)
from models.tools import ToolConfig

TRAIN = load_split("train")[:30]


class StandIn:
    """A minimal /v1/chat/completions server on 127.0.0.1 that answers figure-14 prompts."""

    def __init__(self, answer=lambda intent: f"SIMILAR_USER_REQUEST: {intent} vibe", status=200):
        self.requests = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append((self.path, body))
                prompt = body["messages"][-1]["content"]
                intent = prompt.rsplit("INPUT_USER_REQUEST: ", 1)[1].split("\n", 1)[0]
                payload = {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": answer(intent)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }  # fmt: skip
                data = json.dumps(payload if status == 200 else {"error": {"message": "boom"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


def writer_for(server):
    return OpenAIIntentWriter(OpenAI(base_url=server.url, api_key="x", max_retries=0), "gpt-4")


def every_other_is_wrong(predictions, truth):
    flags = [i % 2 == 0 for i in range(len(truth))]
    return {"any": flags, "filter": flags}


def test_prompt_is_figure_14_with_the_intent():
    [message] = augmentation_messages("  cool   Morning ")
    assert message["role"] == "user"
    assert message["content"].startswith("You are given an input user request")
    assert (
        "INPUT_USER_REQUEST: vintage film\nOutputs: SIMILAR_USER_REQUEST: retro cinema"
        in (message["content"])
    )
    assert message["content"].endswith("INPUT_USER_REQUEST: cool Morning\nOutputs:")
    assert AUGMENTATION_PROMPT.count("SIMILAR_USER_REQUEST:") == 3 + 0  # three shots


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SIMILAR_USER_REQUEST: cold tone", "cold tone"),
        ('Outputs: SIMILAR_USER_REQUEST: "rainy  night"\nInputs: x', "rainy night"),
        ("  misty dawn  ", "misty dawn"),
        ("SIMILAR_USER_REQUEST:\n\nforest fog\n", "forest fog"),
        ("SIMILAR_USER_REQUEST: \nInputs: INPUT_USER_REQUEST: x", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_similar_intent(text, expected):
    assert parse_similar_intent(text) == expected


def test_sample_is_seeded_and_bounded():
    assert sample_records(TRAIN, 10, seed=1) == sample_records(TRAIN, 10, seed=1)
    assert sample_records(TRAIN, 10, seed=1) != sample_records(TRAIN, 10, seed=2)
    assert len(sample_records(TRAIN, 1000)) == len(TRAIN)
    with pytest.raises(ValueError, match="sample_size"):
        sample_records(TRAIN, 0)


def test_mistakes_get_llm_intents_with_the_teachers_original_answer(stand_in):
    added, report = augment_once(
        TRAIN, lambda intents: [ToolConfig()] * len(intents), every_other_is_wrong,
        writer_for(stand_in), sample_size=10, seed=0,
    )  # fmt: skip
    sample = sample_records(TRAIN, 10, seed=0)
    wrong = sample[::2]
    assert report.sample_size == 10 and report.mistakes == 5 == report.added
    assert report.mistakes_by_tool == {"filter": 5}
    assert [r.intent for r in added] == [f"{r.intent} vibe" for r in wrong]
    assert [r.teacher for r in added] == [r.teacher for r in wrong]
    assert all(r.calls == 1 for r in added)
    # Paper A.9 settings on every request.
    assert len(stand_in.requests) == 5
    for path, body in stand_in.requests:
        assert path == "/v1/chat/completions"
        assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0, 1500, 1)
        assert body["model"] == "gpt-4"


def test_duplicates_and_unusable_answers_are_dropped():
    existing = TRAIN[1].intent.upper()  # same as a training intent after normalisation
    answers = iter([existing, "new one", "New  One", "", "another"])
    added, report = augment_once(
        TRAIN, lambda intents: [ToolConfig()] * len(intents),
        lambda p, t: {"any": [True] * len(t)}, lambda intent: next(answers) or None,
        sample_size=5,
    )  # fmt: skip
    assert [normalize_intent(r.intent) for r in added] == ["new one", "another"]
    assert (report.duplicates, report.unusable_answers, report.added) == (2, 1, 2)


def test_llm_errors_are_augment_errors():
    server = StandIn(status=500)
    try:
        with pytest.raises(AugmentError, match="augmentation LLM call failed"):
            writer_for(server)("sunset")
    finally:
        server.close()


def test_bad_callables_are_reported():
    with pytest.raises(ValueError, match="predict"):
        augment_once(TRAIN, lambda i: [], every_other_is_wrong, lambda i: "x", sample_size=3)
    with pytest.raises(ValueError, match="any"):
        augment_once(TRAIN, lambda i: [ToolConfig()] * len(i), lambda p, t: {}, lambda i: "x",
                     sample_size=3)  # fmt: skip


# --- the CLI, with a real (tiny) trained student ------------------------------------------------


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from models.distill.train import TinyModelSpec, TrainSettings, train_student

    spec = TinyModelSpec(vocab_size=300, d_model=16, d_ff=32, layers=1, heads=2)
    settings = TrainSettings(tiny=spec, epochs=1, batch_size=8, learning_rate=1e-3,
                             max_new_tokens=6, threads=1)  # fmt: skip
    path = tmp_path_factory.mktemp("student") / "m"
    train_student(TRAIN[:6], TRAIN[:2], path, settings, None, show_progress=False)
    return path


@pytest.fixture
def cli(monkeypatch):
    get_settings.cache_clear()
    return lambda *args: CliRunner().invoke(app, list(args))


@pytest.mark.ml
@pytest.mark.slow
def test_cli_augments_with_a_trained_student(cli, student, stand_in, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    records = TRAIN[:8]
    write_records(records, data / "train.jsonl")
    write_records(TRAIN[8:10], data / "test.jsonl")
    out = tmp_path / "augmented.jsonl"
    result = cli("augment", "--model", str(student), "--data", str(data), "--out", str(out),
                 "--base-url", stand_in.url, "--sample-size", "4", "--iterations", "2",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    rows = load_records(out)
    assert rows[: len(records)] == records  # the original set first, unchanged
    new = rows[len(records) :]
    assert (
        len(new) == summary["rows"] - len(records) == sum(r["added"] for r in summary["iterations"])
    )
    assert new and all(r.intent.endswith(" vibe") for r in new)
    by_intent = {r.intent: r for r in rows}
    assert all(r.teacher == by_intent[r.intent[: -len(" vibe")]].teacher for r in new)
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2]
    assert (tmp_path / "augmented-student-1" / "model_card.json").is_file()  # retrained once
    assert json.loads(out.with_suffix(".report.json").read_text()) == summary


@pytest.mark.ml
def test_cli_augment_errors_change_nothing(cli, student, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_records(TRAIN[:4], data / "train.jsonl")
    out = tmp_path / "aug.jsonl"
    result = cli("augment", "--model", str(student), "--data", str(data), "--out", str(out))
    assert result.exit_code == 1 and "--base-url" in result.output  # no LLM configured
    result = cli("augment", "--model", str(tmp_path), "--data", str(data), "--out", str(out),
                 "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert result.exit_code == 1 and "model_card.json" in result.output
    result = cli("augment", "--model", str(student), "--train", str(data / "train.jsonl"),
                 "--out", str(out), "--iterations", "2",
                 "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert result.exit_code == 1 and "--test" in result.output
    result = cli("augment", "--model", str(student), "--data", str(data), "--out", str(out),
                 "--base-url", "http://127.0.0.1:9/v1", "--sample-size", "2")  # fmt: skip
    assert result.exit_code == 1 and "augmentation LLM call failed" in result.output
    assert not out.exists()
