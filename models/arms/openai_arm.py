"""Arms over the official `openai` client: the teacher, and a student behind vLLM.

Teacher (`OpenAITeacherArm`): the paper's three chain-of-thought prompts (figures 3-5), one chat
request per tool, sent concurrently, temperature 0, top_p 1, max_tokens 1500 (appendix A.3).
The rationale (the TOOL part) is kept in `Prediction.raw`; tokens come from the API's usage and
cost from the list price of gpt-3.5-turbo. With an API key and no base URL it calls the real
OpenAI API; with a base URL it calls any OpenAI-compatible server (``abtest serve-recorded``).

Student (`OpenAIStudentArm`): the student prompts (figures 9-11, ``Parameters:`` output) sent to
an OpenAI-compatible server by base URL and model name. ``mode="completions"`` sends the three
prompts in ONE ``/v1/completions`` request (vLLM batches them); ``mode="chat"`` sends three
concurrent chat requests and lets the server apply the model's chat template.

Starting vLLM for a fine-tuned student (on a GPU machine)::

    pip install vllm
    # a merged model directory (FlanT5 or Llama-2 with the LoRA merged), or a base + adapter:
    vllm serve /models/student-llama2 --served-model-name student-llama2 \\
        --host 0.0.0.0 --port 8000 --dtype float16 --max-model-len 2048
    vllm serve meta-llama/Llama-2-7b-chat-hf --enable-lora \\
        --lora-modules student-llama2=/models/student-lora --max-lora-rank 64 --port 8000
    # then register the variant with kind "openai_student" and config
    # {"base_url": "http://gpu-host:8000/v1", "model": "student-llama2", "mode": "completions"}

The student prompt already carries the Llama-2 ``[INST] ... [/INST]`` markers, so use
``mode="completions"`` with Llama-2 (vLLM adds the ``<s>`` BOS token); use ``mode="chat"`` for a
model whose chat template should wrap the prompt (the markers are then stripped).

Transport: each request has `timeout_s`; 429, 5xx and connection errors are retried with
exponential back-off (`max_retries`, `backoff_s`, honouring a short Retry-After); a timeout or
any other error becomes an `ArmError`. Parse failures never raise: they are listed in
`Prediction.parse_failures` and counted in `arm.parse_failure_counts`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import openai

from models.arms.base import ArmError, BatchByGather, Prediction
from models.parsing import parse_outputs
from models.prompts import student_prompt, teacher_messages
from models.tools import TOOLS

T = TypeVar("T")

# gpt-3.5-turbo (0125) list price, USD per million tokens: input, output.
GPT35_TURBO_PRICE_PER_MTOK: tuple[float, float] = (0.50, 1.50)
TEACHER_MODEL = "gpt-3.5-turbo"
PLACEHOLDER_KEY = "not-needed"  # OpenAI-compatible servers (vLLM, recorded) ignore the key


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and 0 <= retry_after <= self.max_backoff_s:
            return retry_after
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)  # jitter: 50-100% of the step


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APITimeoutError):
        return False
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def call_with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str = "request"
) -> tuple[T, int]:
    """Run `call`, retrying 429/5xx/connection errors; returns (result, retries used)."""
    attempt = 0
    while True:
        try:
            return await call(), attempt
        except openai.APITimeoutError as exc:
            raise ArmError(f"{what} timed out") from exc
        except openai.OpenAIError as exc:
            if not _retryable(exc) or attempt >= policy.max_retries:
                status = getattr(exc, "status_code", None)
                detail = f"HTTP {status}" if status else type(exc).__name__
                tries = attempt + 1
                raise ArmError(f"{what} failed after {tries} attempt(s): {detail}") from exc
            await asyncio.sleep(policy.delay(attempt, _retry_after(exc)))
            attempt += 1


def _make_client(
    api_key: str | None, base_url: str | None, timeout_s: float, client: Any
) -> openai.AsyncOpenAI:
    if client is not None:
        return client
    if not api_key and not base_url:
        raise ValueError("openai_api_key: required to call the OpenAI API when no base URL is set")
    return openai.AsyncOpenAI(
        api_key=api_key or PLACEHOLDER_KEY, base_url=base_url, timeout=timeout_s, max_retries=0
    )


class _CountingArm(BatchByGather):
    name: str

    def _init_counts(self) -> None:
        self.parse_failure_counts: Counter[str] = Counter()
        self.requests = 0
        self.retries = 0

    def _finish(
        self,
        texts: dict[str, str],
        started: float,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
    ) -> Prediction:
        parsed = parse_outputs(texts)
        self.parse_failure_counts.update(parsed.failures)
        return Prediction(
            parsed.config,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            raw=texts,
            parse_failures=parsed.failures,
            repairs=parsed.repairs,
        )


def _usage(response: Any) -> tuple[int, int]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)


def cost_usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float]) -> float:
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


class OpenAITeacherArm(_CountingArm):
    """The teacher: three CoT prompts, concurrently, through the chat completions API."""

    def __init__(
        self,
        name: str = "teacher",
        *,
        model: str = TEACHER_MODEL,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        price_per_mtok: tuple[float, float] = GPT35_TURBO_PRICE_PER_MTOK,
        max_tokens: int = 1500,
        client: Any = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.price_per_mtok = price_per_mtok
        self.max_tokens = max_tokens
        self.extra_headers = extra_headers
        self.client = _make_client(api_key, base_url, timeout_s, client)
        self._init_counts()

    async def _ask(self, tool: str, intent: str) -> tuple[str, int, int]:
        async def call() -> Any:
            self.requests += 1
            return await self.client.chat.completions.create(
                model=self.model,
                messages=cast(Any, teacher_messages(tool, intent)),  # the SDK's TypedDicts
                temperature=0,
                top_p=1,
                max_tokens=self.max_tokens,
                timeout=self.timeout_s,
                extra_headers=self.extra_headers,
            )

        response, retries = await call_with_retries(call, self.retry, f"teacher {tool}")
        self.retries += retries
        text = response.choices[0].message.content or "" if response.choices else ""
        return (text, *_usage(response))

    async def predict(self, intent: str) -> Prediction:
        started = time.perf_counter()
        answers = await _all_settled(self._ask(tool, intent) for tool in TOOLS)
        texts = {tool: answer[0] for tool, answer in zip(TOOLS, answers, strict=True)}
        prompt_tokens = sum(a[1] for a in answers)
        completion_tokens = sum(a[2] for a in answers)
        cost = cost_usd(prompt_tokens, completion_tokens, self.price_per_mtok)
        return self._finish(texts, started, prompt_tokens, completion_tokens, cost)


async def _all_settled(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every call's answer; when one failed, its error, raised only after the others have
    settled: no call of a failed prediction keeps retrying in the background, unobserved."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


class OpenAIStudentArm(_CountingArm):
    """A student behind an OpenAI-compatible server (vLLM) by base URL and model name."""

    MODES = ("completions", "chat")

    def __init__(
        self,
        name: str,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        mode: str = "completions",
        timeout_s: float = 10.0,
        max_tokens: int = 512,
        retry: RetryPolicy | None = None,
        price_per_mtok: tuple[float, float] = (0.0, 0.0),
        client: Any = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode: must be one of {self.MODES}, got {mode!r}")
        if not model:
            raise ValueError("model: the served model name is required")
        self.name = name
        self.model = model
        self.mode = mode
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.retry = retry or RetryPolicy()
        self.price_per_mtok = price_per_mtok
        self.extra_headers = extra_headers
        self.client = _make_client(api_key, base_url, timeout_s, client)
        self._init_counts()

    async def _complete(self, prompts: list[str]) -> tuple[list[str], int, int]:
        async def call() -> Any:
            self.requests += 1
            return await self.client.completions.create(
                model=self.model,
                prompt=prompts,
                temperature=0,
                top_p=1,
                max_tokens=self.max_tokens,
                timeout=self.timeout_s,
                extra_headers=self.extra_headers,
            )

        response, retries = await call_with_retries(call, self.retry, "student completions")
        self.retries += retries
        texts = [""] * len(prompts)
        for position, choice in enumerate(response.choices):
            index = choice.index if choice.index is not None else position
            if 0 <= index < len(prompts):
                texts[index] = choice.text or ""
        return (texts, *_usage(response))

    async def _chat(self, prompt: str) -> tuple[str, int, int]:
        content = prompt.removeprefix("[INST]").removesuffix("[/INST]").strip()

        async def call() -> Any:
            self.requests += 1
            return await self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": content}],
                temperature=0,
                top_p=1,
                max_tokens=self.max_tokens,
                timeout=self.timeout_s,
                extra_headers=self.extra_headers,
            )

        response, retries = await call_with_retries(call, self.retry, "student chat")
        self.retries += retries
        text = response.choices[0].message.content or "" if response.choices else ""
        return (text, *_usage(response))

    async def predict(self, intent: str) -> Prediction:
        started = time.perf_counter()
        prompts = [student_prompt(tool, intent) for tool in TOOLS]
        if self.mode == "completions":
            outputs, prompt_tokens, completion_tokens = await self._complete(prompts)
        else:
            answers = await _all_settled(self._chat(p) for p in prompts)
            outputs = [a[0] for a in answers]
            prompt_tokens = sum(a[1] for a in answers)
            completion_tokens = sum(a[2] for a in answers)
        texts = dict(zip(TOOLS, outputs, strict=True))
        cost = cost_usd(prompt_tokens, completion_tokens, self.price_per_mtok)
        return self._finish(texts, started, prompt_tokens, completion_tokens, cost)

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        return await super().predict_batch(intents)
