"""The bundled intents dataset: one record per unique intent with the teacher's three outputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from models.tools import ToolConfig, ToolValidationError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class IntentRecord:
    intent: str
    calls: int
    teacher: ToolConfig

    def to_json(self) -> dict[str, Any]:
        return {"intent": self.intent, "calls": self.calls, **self.teacher.to_record()}


class DatasetError(ValueError):
    """A dataset file that cannot be read; the message names the file and line."""


def normalize_intent(text: str) -> str:
    """Case- and whitespace-insensitive key for grouping and matching intents."""
    return " ".join(str(text).lower().split())


def bundled_path(split: str) -> Path:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(str(resources.files("models") / "data" / f"intents-{split}.jsonl"))


def parse_record(row: dict[str, Any], *, strict: bool = True) -> IntentRecord:
    intent = row.get("intent")
    if not isinstance(intent, str) or not intent.strip():
        raise ToolValidationError("intent", "must be a non-empty string")
    calls = row.get("calls", 1)
    if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
        raise ToolValidationError("calls", f"must be a positive integer, got {calls!r}")
    return IntentRecord(intent, calls, ToolConfig.from_record(row, strict=strict))


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    for _, row in iter_numbered_jsonl(path):
        yield row


def iter_numbered_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file line number, object) for each non-blank line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: expected a JSON object")
            yield number, row


def load_records(path: str | Path, *, strict: bool = True) -> list[IntentRecord]:
    records = []
    for number, row in iter_numbered_jsonl(path):
        try:
            records.append(parse_record(row, strict=strict))
        except ToolValidationError as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from None
    return records


def load_split(split: str) -> list[IntentRecord]:
    """The bundled train or test split as typed records."""
    return load_records(bundled_path(split))


def write_records(records: Iterable[IntentRecord], path: str | Path) -> str:
    """Write JSON Lines and return the content's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            line = json.dumps(record.to_json(), sort_keys=False) + "\n"
            digest.update(line.encode())
            handle.write(line)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
