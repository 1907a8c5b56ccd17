"""An OpenAI-compatible server that answers the paper's prompts from recorded teacher outputs.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (a string or a list of
prompts, like vLLM), ``GET /v1/models``. The prompt is recognised with
`models.prompts.detect_tool`; the answer is the dataset's teacher output for that intent (both
splits), written as the teacher would (``TOOL: <rationale> JSON: {...}``) for teacher prompts
and as the student target (``Parameters: {...}``, see `models.prompts`) for student prompts.
An intent with no recording gets the "tool not used" answer (empty JSON / ``none`` filter); a
prompt that is not one of ours gets a short refusal, which the parser counts as a failure.

Knobs, for demos and tests:
- `latency_ms`: added to every request (header ``x-recorded-latency-ms`` overrides it).
- ``x-recorded-fail: 500`` (or 429, 503...): answer that status instead.
- `RecordedControl.fail_next(n, status)`: the next n requests fail (for retry tests).
- ``max_tokens`` is honoured: a longer answer is cut (about 4 characters per token) with
  ``finish_reason="length"``, which exercises the parser's truncation repair.

`serve_in_thread()` runs it with uvicorn on 127.0.0.1 and a free port and returns
``(base_url, stop)``; ``abtest serve-recorded`` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from models.dataset import SPLITS, IntentRecord, load_split, normalize_intent
from models.prompts import detect_tool, student_target
from models.tools import ADJUST_ORDER, COLORS, NO_FILTER, ToolConfig

DEFAULT_MODEL = "recorded-teacher"
UNKNOWN_PROMPT_ANSWER = "I can only answer the color tool prompts of this project."
CHARS_PER_TOKEN = 4


@dataclass
class RecordedControl:
    """Mutable knobs of a running server (shared with the test that started it)."""

    latency_ms: float = 0.0
    fail_remaining: int = 0
    fail_status: int = 500
    requests: int = 0
    prompts: deque[str] = field(default_factory=lambda: deque(maxlen=200))  # the latest
    bodies: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self.fail_remaining = count
            self.fail_status = status

    def _take_failure(self) -> int | None:
        with self._lock:
            self.requests += 1
            if self.fail_remaining > 0:
                self.fail_remaining -= 1
                return self.fail_status
            return None


def estimate_tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 1)


def teacher_answer(tool: str, config: ToolConfig | None) -> str:
    """The teacher-format answer (figures 3-5) for a recorded config (None: not recorded)."""
    part = getattr(config, tool) if config is not None else None
    if tool == "filter":
        if part is None:
            why = (
                "No LUT preset is a close match for the requested look, so the default "
                '"none" preset is used.'
            )
            return f'TOOL:\n{why}\nJSON:\n{{"name": "{NO_FILTER}", "intensity": 0}}'
        body = json.dumps({"name": part.name, "intensity": _num(part.intensity)})
        why = f'The "{part.name}" LUT preset seems the most appropriate for the requested look.'
        return f"TOOL:\n{why}\nJSON:\n{body}"
    label = "global color grading" if tool == "adjust" else "selective color grading"
    if part is None:
        return f"TOOL:\nNo, the {label} tool is not needed for this look.\nJSON:\n{{}}"
    if tool == "adjust":
        values = dict(zip(ADJUST_ORDER, (_num(v) for v in part.values), strict=True))
        changes = [f"{k} {'+' if v > 0 else ''}{v}" for k, v in values.items() if v]
        body = json.dumps(values)
    else:
        nested = part.as_dict()
        curves: dict[str, dict[str, int | float]] = {
            c: {p: _num(v) for p, v in nested[c].items()} for c in COLORS
        }
        changes = [
            f"{c} {p} {'+' if v > 0 else ''}{v}" for c in COLORS for p, v in curves[c].items() if v
        ]
        body = json.dumps(curves)
    why = f"Yes, the {label} tool should be used: " + ", ".join(changes) + "."
    return f"TOOL:\n{why}\nJSON:\n{body}"


def student_answer(tool: str, config: ToolConfig | None) -> str:
    return student_target(tool, config if config is not None else ToolConfig())


def create_app(
    records: Iterable[IntentRecord] | None = None,
    *,
    latency_ms: float = 0.0,
    model: str = DEFAULT_MODEL,
    control: RecordedControl | None = None,
) -> FastAPI:
    """The server over `records` (default: both bundled splits)."""
    if records is None:
        records = [r for split in SPLITS for r in load_split(split)]
    answers = {normalize_intent(r.intent): r.teacher for r in records}
    state = control or RecordedControl(latency_ms=latency_ms)
    if control is not None and latency_ms:
        state.latency_ms = latency_ms
    app = FastAPI(title="abtest recorded teacher", version="1")
    app.state.control = state

    def answer(prompt: str) -> str:
        tool, intent = detect_tool(prompt)
        if tool is None:
            return UNKNOWN_PROMPT_ANSWER
        state.prompts.append(prompt)
        config = answers.get(normalize_intent(intent)) if intent else None
        is_student = "[INST]" in prompt or "The user request is:" in prompt
        return student_answer(tool, config) if is_student else teacher_answer(tool, config)

    async def preamble(request: Request) -> JSONResponse | None:
        status = state._take_failure()
        header = request.headers.get("x-recorded-fail")
        if header and header.isdigit():
            status = int(header)
        delay = request.headers.get("x-recorded-latency-ms")
        delay_ms = float(delay) if delay and _is_number(delay) else state.latency_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if status is not None:
            return _error(status, f"simulated failure {status}")
        return None

    async def accepted_body(request: Request) -> dict[str, Any] | JSONResponse:
        """The request's JSON object (recorded in `state.bodies`), or the answer to give
        instead: a simulated failure, or a 400 for a body that is not a JSON object."""
        failed = await preamble(request)
        if failed is not None:
            return failed
        body = await _json_body(request)
        if not isinstance(body, JSONResponse):
            state.bodies.append(body)
        return body

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 0, "owned_by": "abtest"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | dict[str, Any]:
        body = await accepted_body(request)
        if isinstance(body, JSONResponse):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages: must be a non-empty list", param="messages")
        prompt = "\n".join(_content(m) for m in messages if isinstance(m, dict))
        text, finish = _truncate(answer(prompt), body.get("max_tokens"))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": _usage([prompt], [text]),
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | dict[str, Any]:
        body = await accepted_body(request)
        if isinstance(body, JSONResponse):
            return body
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            return _error(400, "prompt: must be a string or a list of strings", param="prompt")
        choices, texts = [], []
        for index, text in enumerate(prompts):
            out, finish = _truncate(answer(text), body.get("max_tokens"))
            texts.append(out)
            choices.append({"index": index, "text": out, "finish_reason": finish, "logprobs": None})
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or model,
            "choices": choices,
            "usage": _usage(prompts, texts),
        }

    return app


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _truncate(text: str, max_tokens: Any) -> tuple[str, str]:
    if isinstance(max_tokens, int) and max_tokens > 0 and estimate_tokens(text) > max_tokens:
        return text[: max_tokens * CHARS_PER_TOKEN], "length"
    return text, "stop"


def _usage(prompts: list[str], texts: list[str]) -> dict[str, int]:
    prompt_tokens = sum(estimate_tokens(p) for p in prompts)
    completion_tokens = sum(estimate_tokens(t) for t in texts)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _json_body(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body: not JSON")
    if not isinstance(body, dict):
        return _error(400, "body: must be a JSON object")
    return body


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}},
        status_code=status,
    )


def serve_in_thread(
    app: FastAPI | None = None, *, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any
) -> tuple[str, Callable[[], None]]:
    """Run the server (default: `create_app(**app_kwargs)`) in a background thread.

    Returns the OpenAI base URL (``http://127.0.0.1:<port>/v1``) and a `stop()` function.
    """
    import uvicorn

    app = app or create_app(**app_kwargs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    actual_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="recorded-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the recorded server did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return f"http://{host}:{actual_port}/v1", stop
