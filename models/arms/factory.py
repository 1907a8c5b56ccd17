"""Build an arm from a variant's kind and config (the JSON stored with the variant).

`models` must not import `abtest`, so the OpenAI settings arrive as arguments. Every bad input is
a `ValueError` whose message starts with the offending field (``config.model: ...``).

Kinds and their config keys (all optional unless marked required):
- ``teacher``: model (default gpt-3.5-turbo), base_url (else `openai_base_url`; with neither,
  the real OpenAI API and `openai_api_key` is required), max_tokens, max_retries, backoff_s,
  price_per_mtok ([input, output] USD per million tokens).
- ``openai_student``: model (required), base_url (required unless `openai_base_url`), mode
  ("completions" | "chat"), max_tokens, max_retries, backoff_s, price_per_mtok.
- ``local_student``: path (required), adapter_path, kind ("auto" | "seq2seq" | "causal" |
  "embedding"; "auto" serves a directory whose model card says embedding with the embedding
  student arm of `models.distill.embedding_student`), device ("cpu" | "cuda" | "auto"),
  max_new_tokens, batch_size.
- ``recorded``: split ("train" | "test" | "both", default both).
- ``knn_student``: exactly one of path (a JSON file from `KnnStudent.save`; no pickle) or
  fit ("train").

`validate_config` checks a config without building anything (no model loaded, no file read):
the registration check. `build_arm` runs the same checks, then builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.arms.base import Arm
from models.dataset import SPLITS, load_split

KINDS = ("teacher", "openai_student", "local_student", "recorded", "knn_student")
_ALLOWED: dict[str, set[str]] = {
    "teacher": {"model", "base_url", "max_tokens", "max_retries", "backoff_s", "price_per_mtok"},
    "openai_student": {
        "model", "base_url", "mode", "max_tokens", "max_retries", "backoff_s", "price_per_mtok",
    },
    "local_student": {"path", "adapter_path", "kind", "device", "max_new_tokens", "batch_size"},
    "recorded": {"split"},
    "knn_student": {"path", "fit"},
}  # fmt: skip


def build_arm(
    kind: str,
    name: str,
    config: Mapping[str, Any] | None,
    *,
    openai_api_key: str | None = None,
    openai_base_url: str | None = None,
    timeout_s: float = 10.0,
) -> Arm:
    """The arm for a variant; `ValueError` naming the field for an unknown kind or bad config."""
    if kind not in KINDS:
        raise ValueError(f"kind: unknown arm kind {kind!r}; expected one of {KINDS}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name: must be a non-empty string")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ValueError("config: must be a JSON object")
    unknown = sorted(set(config) - _ALLOWED[kind])
    if unknown:
        allowed = ", ".join(sorted(_ALLOWED[kind]))
        raise ValueError(f"config.{unknown[0]}: unknown option for kind {kind!r} ({allowed})")
    if not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ValueError("timeout_s: must be a positive number")
    builder = {
        "teacher": _teacher,
        "openai_student": _openai_student,
        "local_student": _local_student,
        "recorded": _recorded,
        "knn_student": _knn,
    }[kind]
    return builder(name, dict(config), openai_api_key, openai_base_url, float(timeout_s))


def validate_config(
    kind: str, config: Mapping[str, Any] | None, *, openai_base_url: str | None = None
) -> dict[str, Any]:
    """The config checked for `kind` (unknown keys, types, required keys, allowed values);
    `ValueError` naming the field (``config.path: ...``). Touches no file and no network."""
    if kind not in KINDS:
        raise ValueError(f"kind: unknown arm kind {kind!r}; expected one of {KINDS}")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ValueError("config: must be a JSON object")
    config = dict(config)
    unknown = sorted(set(config) - _ALLOWED[kind])
    if unknown:
        allowed = ", ".join(sorted(_ALLOWED[kind]))
        raise ValueError(f"config.{unknown[0]}: unknown option for kind {kind!r} ({allowed})")
    if kind in ("teacher", "openai_student"):
        _get(config, "model", str, None)
        url = _url(config, None if kind == "teacher" else openai_base_url)
        _retry(config)
        _price(config, (0.0, 0.0))
        _positive(config, "max_tokens", 1, integer=True)
        if kind == "openai_student":
            if not config.get("model"):
                raise ValueError("config.model: the served model name is required")
            if url is None:
                raise ValueError(
                    "config.base_url: required (the OpenAI-compatible server, e.g. vLLM)"
                )
            mode = _get(config, "mode", str, "completions")
            if mode not in STUDENT_MODES:
                raise ValueError(f"config.mode: must be one of {STUDENT_MODES}, got {mode!r}")
    elif kind == "local_student":
        if not _get(config, "path", str, None):
            raise ValueError("config.path: the local model directory is required")
        _get(config, "adapter_path", str, None)
        model_kind = _get(config, "kind", str, "auto")
        if model_kind not in LOCAL_KINDS:
            raise ValueError(f"config.kind: must be one of {LOCAL_KINDS}, got {model_kind!r}")
        device = _get(config, "device", str, "cpu")
        if device not in ("cpu", "auto") and not device.startswith("cuda"):
            raise ValueError(f"config.device: must be cpu, cuda[:n] or auto, got {device!r}")
        _positive(config, "max_new_tokens", 1, integer=True)
        _positive(config, "batch_size", 1, integer=True)
    elif kind == "recorded":
        split = _get(config, "split", str, "both")
        if split not in (*SPLITS, "both"):
            raise ValueError(f"config.split: must be train, test or both, got {split!r}")
    else:
        path, fit = _get(config, "path", str, None), _get(config, "fit", str, None)
        if (path is None) == (fit is None):
            raise ValueError(
                'config.path: give exactly one of "path" (a JSON file) or "fit": "train"'
            )
        if fit is not None and fit != "train":
            raise ValueError(f'config.fit: only "train" is supported, got {fit!r}')
    return config


STUDENT_MODES = ("completions", "chat")
LOCAL_KINDS = ("auto", "seq2seq", "causal", "embedding")
# The config keys that name files or directories (resolved under the model directory).
PATH_KEYS: dict[str, tuple[str, ...]] = {
    "local_student": ("path", "adapter_path"),
    "knn_student": ("path",),
}


def _get(config: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = config.get(key, default)
    if value is default:
        return value
    numeric = kind in (int, float) or kind == (int, float)
    if isinstance(value, bool) and numeric or not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise ValueError(f"config.{key}: must be {expected}, got {value!r}")
    return value


def _positive(config: dict[str, Any], key: str, default: float, *, integer: bool) -> Any:
    value = _get(config, key, int if integer else (int, float), default)
    if value is not default and (value < 0 or (value == 0 and key != "max_retries")):
        raise ValueError(f"config.{key}: must be positive, got {value!r}")
    return value


def _retry(config: dict[str, Any]) -> Any:
    from models.arms.openai_arm import RetryPolicy

    return RetryPolicy(
        max_retries=_positive(config, "max_retries", 3, integer=True),
        backoff_s=float(_positive(config, "backoff_s", 0.5, integer=False)),
    )


def _price(config: dict[str, Any], default: tuple[float, float]) -> tuple[float, float]:
    value = config.get("price_per_mtok", default)
    if value is default:
        return default
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or min(value) < 0
    ):
        raise ValueError("config.price_per_mtok: must be [input, output] USD per million tokens")
    return float(value[0]), float(value[1])


def _url(config: dict[str, Any], fallback: str | None) -> str | None:
    url = _get(config, "base_url", str, None) or fallback
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError(f"config.base_url: must be an http(s) URL, got {url!r}")
    return url


def _teacher(
    name: str, config: dict[str, Any], api_key: str | None, base_url: str | None, timeout: float
) -> Arm:
    from models.arms.openai_arm import GPT35_TURBO_PRICE_PER_MTOK, TEACHER_MODEL, OpenAITeacherArm

    url = _url(config, base_url)
    if url is None and not api_key:
        raise ValueError(
            "openai_api_key: the teacher needs an OpenAI API key when no base URL is set"
        )
    return OpenAITeacherArm(
        name,
        model=_get(config, "model", str, TEACHER_MODEL),
        api_key=api_key,
        base_url=url,
        timeout_s=timeout,
        retry=_retry(config),
        price_per_mtok=_price(config, GPT35_TURBO_PRICE_PER_MTOK),
        max_tokens=_positive(config, "max_tokens", 1500, integer=True),
    )


def _openai_student(
    name: str, config: dict[str, Any], api_key: str | None, base_url: str | None, timeout: float
) -> Arm:
    from models.arms.openai_arm import OpenAIStudentArm

    model = _get(config, "model", str, None)
    if not model:
        raise ValueError("config.model: the served model name is required")
    url = _url(config, base_url)
    if url is None:
        raise ValueError("config.base_url: required (the OpenAI-compatible server, e.g. vLLM)")
    mode = _get(config, "mode", str, "completions")
    if mode not in OpenAIStudentArm.MODES:
        raise ValueError(f"config.mode: must be one of {OpenAIStudentArm.MODES}, got {mode!r}")
    return OpenAIStudentArm(
        name,
        model=model,
        base_url=url,
        api_key=api_key,
        mode=mode,
        timeout_s=timeout,
        max_tokens=_positive(config, "max_tokens", 512, integer=True),
        retry=_retry(config),
        price_per_mtok=_price(config, (0.0, 0.0)),
    )


def _local_student(
    name: str, config: dict[str, Any], api_key: str | None, base_url: str | None, timeout: float
) -> Arm:
    from models.arms.local import KINDS as MODEL_KINDS
    from models.arms.local import LocalStudentArm

    path = _get(config, "path", str, None)
    if not path:
        raise ValueError("config.path: the local model directory is required")
    if not Path(path).is_dir():
        raise ValueError(f"config.path: {path} is not a directory")
    adapter = _get(config, "adapter_path", str, None)
    if adapter is not None and not Path(adapter).is_dir():
        raise ValueError(f"config.adapter_path: {adapter} is not a directory")
    model_kind = _get(config, "kind", str, "auto")
    if model_kind not in (*MODEL_KINDS, "embedding"):
        raise ValueError(
            f"config.kind: must be one of {(*MODEL_KINDS, 'embedding')}, got {model_kind!r}"
        )
    from models.distill.embedding_student import is_embedding_student

    if model_kind == "embedding" or (model_kind == "auto" and is_embedding_student(path)):
        return _embedding_student(name, path)
    device = _get(config, "device", str, "cpu")
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise ValueError(f"config.device: must be cpu, cuda[:n] or auto, got {device!r}")
    try:
        return LocalStudentArm(
            path,
            name=name,
            kind=model_kind,
            adapter_path=adapter,
            device=device,
            max_new_tokens=_positive(config, "max_new_tokens", 256, integer=True),
            batch_size=_positive(config, "batch_size", 24, integer=True),
        )
    except (OSError, ValueError) as exc:
        message = str(exc)
        if message.split(":", 1)[0] in {"path", "device", "kind", "adapter_path"}:
            raise ValueError(f"config.{message}") from exc
        raise ValueError(f"config.path: cannot load a model from {path}: {exc}") from exc


def _embedding_student(name: str, path: str) -> Arm:
    from models.distill.embedding_student import EmbeddingStudentArm

    try:
        return EmbeddingStudentArm(path, name=name)
    except ValueError as exc:
        raise ValueError(f"config.{exc}") from exc
    except Exception as exc:  # noqa: BLE001 - an unreadable directory is a config error
        message = f"config.path: cannot load an embedding student from {path}: {exc}"
        raise ValueError(message) from exc


def _recorded(
    name: str, config: dict[str, Any], api_key: str | None, base_url: str | None, timeout: float
) -> Arm:
    from models.arms.recorded import RecordedTeacherArm

    split = _get(config, "split", str, "both")
    if split not in (*SPLITS, "both"):
        raise ValueError(f"config.split: must be train, test or both, got {split!r}")
    splits = SPLITS if split == "both" else (split,)
    return RecordedTeacherArm([r for s in splits for r in load_split(s)], name=name)


def _knn(
    name: str, config: dict[str, Any], api_key: str | None, base_url: str | None, timeout: float
) -> Arm:
    from models.arms.knn import KnnStudent

    path = _get(config, "path", str, None)
    fit = _get(config, "fit", str, None)
    if (path is None) == (fit is None):
        raise ValueError('config.path: give exactly one of "path" (a JSON file) or "fit": "train"')
    if fit is not None:
        if fit != "train":
            raise ValueError(f'config.fit: only "train" is supported, got {fit!r}')
        student = KnnStudent(name).fit(load_split("train"))
    else:
        if not Path(path).is_file():
            raise ValueError(f"config.path: {path} is not a file")
        try:
            student = KnnStudent.load(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
            raise ValueError(f"config.path: cannot load a kNN student from {path}: {exc}") from exc
        student.name = name
    return student
