"""Teacher and OpenAI-compatible student through real HTTP: the official `openai` client
against the recorded server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from models.arms.base import ArmError
from models.arms.openai_arm import (
    GPT35_TURBO_PRICE_PER_MTOK,
    OpenAIStudentArm,
    OpenAITeacherArm,
    RetryPolicy,
    cost_usd,
)
from models.dataset import load_split
from models.recorded_server import RecordedControl, serve_in_thread
from models.tools import TOOLS, ToolConfig

FAST_RETRY = RetryPolicy(max_retries=3, backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="module")
def server():
    control = RecordedControl()
    base_url, stop = serve_in_thread(control=control)
    yield base_url, control
    stop()


@pytest.fixture
def control(server):
    _, control = server
    control.fail_next(0)
    control.latency_ms = 0
    control.bodies.clear()
    control.prompts.clear()
    return control


@pytest.fixture(scope="module")
def records():
    test = load_split("test")
    train = load_split("train")
    return [test[3], test[10], train[0], train[2]]


def teacher(server, **kwargs) -> OpenAITeacherArm:
    kwargs.setdefault("retry", FAST_RETRY)
    return OpenAITeacherArm(base_url=server[0], **kwargs)


async def test_teacher_answers_recorded_intents_of_both_splits(server, control, records):
    arm = teacher(server)
    for record in records:
        prediction = await arm.predict(record.intent)
        assert prediction.config == record.teacher
        assert prediction.parse_failures == ()
        assert set(prediction.raw) == set(TOOLS)
        assert all(text.startswith("TOOL:") and "JSON:" in text for text in prediction.raw.values())
        assert prediction.prompt_tokens > 500 and prediction.completion_tokens > 0
        expected = cost_usd(
            prediction.prompt_tokens, prediction.completion_tokens, GPT35_TURBO_PRICE_PER_MTOK
        )
        assert prediction.cost_usd == pytest.approx(expected) and prediction.cost_usd > 0
        assert prediction.latency_ms > 0
    # the paper's sampling settings, one chat request per tool, the one-shot prompt included
    bodies = list(control.bodies)
    assert len(bodies) == 3 * len(records)
    for body in bodies:
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0, 1, 1500)
        assert body["model"] == "gpt-3.5-turbo"
        assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]


async def test_teacher_sends_the_three_prompts_concurrently(server, control, records):
    control.latency_ms = 300
    arm = teacher(server)
    started = time.perf_counter()
    prediction = await arm.predict(records[0].intent)
    elapsed = time.perf_counter() - started
    assert prediction.config == records[0].teacher
    assert elapsed < 0.85  # three sequential requests would take at least 0.9 s
    assert prediction.latency_ms >= 300


async def test_teacher_rationale_is_kept(server, control, records):
    prediction = await teacher(server).predict(records[0].intent)
    assert "LUT preset" in prediction.raw["filter"] or "none" in prediction.raw["filter"]
    assert prediction.to_output()["raw"] == prediction.raw


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_teacher_retries_server_errors_and_rate_limits(server, control, records, status):
    control.fail_next(2, status)
    arm = teacher(server)
    prediction = await arm.predict(records[1].intent)
    assert prediction.config == records[1].teacher
    assert arm.retries == 2
    assert arm.requests == 5


async def test_teacher_gives_up_after_max_retries(server, control, records):
    control.fail_next(100, 500)
    arm = teacher(server, retry=RetryPolicy(max_retries=2, backoff_s=0.01))
    with pytest.raises(ArmError, match="HTTP 500"):
        await arm.predict(records[1].intent)
    # three tools x (1 try + 2 retries): predict raises only once every tool call has settled
    assert arm.requests == 9


async def test_client_errors_are_not_retried(server, control, records):
    arm = teacher(server, extra_headers={"x-recorded-fail": "400"})
    with pytest.raises(ArmError, match="HTTP 400"):
        await arm.predict(records[1].intent)
    assert arm.requests == 3 and arm.retries == 0


async def test_teacher_times_out(server, control, records):
    arm = teacher(server, timeout_s=0.3, extra_headers={"x-recorded-latency-ms": "3000"})
    started = time.perf_counter()
    with pytest.raises(ArmError, match="timed out"):
        await arm.predict(records[0].intent)
    assert time.perf_counter() - started < 2.5


async def test_unknown_intent_means_no_tool_and_no_failure(server, control):
    prediction = await teacher(server).predict("a never recorded intent xyzzy")
    assert prediction.config == ToolConfig()
    assert prediction.parse_failures == ()


async def test_truncated_answers_are_parse_failures_not_errors(server, control, records):
    arm = teacher(server, max_tokens=8)
    prediction = await arm.predict(records[0].intent)
    assert set(prediction.parse_failures) == set(TOOLS)
    assert prediction.config == ToolConfig()
    assert arm.parse_failure_counts == {tool: 1 for tool in TOOLS}


async def test_student_completions_sends_three_prompts_in_one_request(server, control, records):
    arm = OpenAIStudentArm("student", model="student-llama2", base_url=server[0], retry=FAST_RETRY)
    for record in records:
        prediction = await arm.predict(record.intent)
        assert prediction.config == record.teacher
        assert prediction.parse_failures == ()
        assert all(not t or t.startswith("Parameters: ") for t in prediction.raw.values())
        assert prediction.cost_usd == 0 and prediction.tokens > 0
    assert arm.requests == len(records)
    body = control.bodies[-1]
    assert isinstance(body["prompt"], list) and len(body["prompt"]) == 3
    assert body["model"] == "student-llama2" and body["temperature"] == 0
    assert body["prompt"][0].startswith("[INST]")


async def test_student_chat_mode_strips_the_inst_markers(server, control, records):
    arm = OpenAIStudentArm("student", model="s", base_url=server[0], mode="chat", retry=FAST_RETRY)
    prediction = await arm.predict(records[2].intent)
    assert prediction.config == records[2].teacher
    assert arm.requests == 3
    content = control.bodies[-1]["messages"][0]["content"]
    assert "[INST]" not in content and "The user request is:" in content


async def test_student_retries_and_batches(server, control, records):
    control.fail_next(1, 502)
    arm = OpenAIStudentArm("student", model="s", base_url=server[0], retry=FAST_RETRY)
    batch = await arm.predict_batch([r.intent for r in records])
    assert [p.config for p in batch] == [r.teacher for r in records]
    assert arm.retries == 1


async def test_student_unknown_intent_is_not_used(server, control):
    arm = OpenAIStudentArm("student", model="s", base_url=server[0])
    prediction = await arm.predict("never recorded qwerty")
    assert prediction.config == ToolConfig() and prediction.parse_failures == ()


def test_student_arm_validates_its_options(server):
    with pytest.raises(ValueError, match="^mode: "):
        OpenAIStudentArm("s", model="m", base_url=server[0], mode="stream")
    with pytest.raises(ValueError, match="^model: "):
        OpenAIStudentArm("s", model="", base_url=server[0])


def test_teacher_needs_a_key_or_a_base_url():
    with pytest.raises(ValueError, match="^openai_api_key: "):
        OpenAITeacherArm()


def test_with_an_api_key_and_no_base_url_the_teacher_targets_the_real_api(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    arm = OpenAITeacherArm(api_key="sk-test")
    assert str(arm.client.base_url).startswith("https://api.openai.com/v1")
    assert arm.model == "gpt-3.5-turbo"


async def test_models_endpoint_and_bad_requests(server, control):
    client = openai.AsyncOpenAI(api_key="x", base_url=server[0], max_retries=0)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["recorded-teacher"]
    async with httpx.AsyncClient(base_url=server[0]) as http:
        bad = await http.post("/chat/completions", json={"model": "m", "messages": []})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        bad = await http.post("/completions", json={"model": "m", "prompt": 5})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
        foreign = await http.post(
            "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hello"}]},
        )
        text = foreign.json()["choices"][0]["message"]["content"]
        assert "JSON" not in text and "Parameters" not in text


async def test_concurrent_intents_share_the_server(server, control, records):
    arm = teacher(server)
    results = await asyncio.gather(*(arm.predict(r.intent) for r in records))
    assert [p.config for p in results] == [r.teacher for r in records]
