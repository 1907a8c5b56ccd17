"""Predictions and truth from JSON Lines files in the dataset's record format, matched by intent.

Truth files must be valid (a bad row is an error naming the file and line). Prediction files are
model output and may be broken. Each row goes through `models.parsing.validate_record`, the
rules the gate and serving use: out-of-range values are clamped and unknown keys dropped (each
a *repair*, counted), an unknown filter name or a tool that is not an object makes that tool
"not used" and the row a parse failure; an unreadable line, or a truth intent with no
prediction, is a missing prediction (also "not used" and a parse failure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.dataset import DatasetError, IntentRecord, load_records, normalize_intent
from models.parsing import validate_record
from models.tools import ToolConfig


@dataclass(frozen=True)
class ParsedPrediction:
    config: ToolConfig
    failed_tools: tuple[str, ...] = ()
    repairs: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchedRows:
    """Truth rows in file order with the prediction for each (None: missing)."""

    truth: list[IntentRecord]
    predictions: list[ToolConfig | None]
    parse_failures: list[bool]
    unreadable_lines: list[int] = field(default_factory=list)
    unmatched_predictions: int = 0
    duplicate_predictions: int = 0
    repairs: list[int] = field(default_factory=list)  # per truth row: repairs made

    @property
    def repair_rate(self) -> float:
        """Share of rows whose prediction needed at least one repair."""
        return sum(r > 0 for r in self.repairs) / len(self.repairs) if self.repairs else 0.0

    @property
    def calls(self) -> list[int]:
        return [r.calls for r in self.truth]

    @property
    def missing(self) -> int:
        return sum(p is None for p in self.predictions)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": len(self.truth),
            "missing_predictions": self.missing,
            "unreadable_lines": len(self.unreadable_lines),
            "unmatched_predictions": self.unmatched_predictions,
            "duplicate_predictions": self.duplicate_predictions,
            "repaired_rows": sum(r > 0 for r in self.repairs),
            "repair_rate": self.repair_rate,
        }


def parse_prediction(row: dict[str, Any]) -> ParsedPrediction:
    """Validate each tool by the shared rules (`models.parsing.validate_record`)."""
    parsed = validate_record(row)
    return ParsedPrediction(parsed.config, parsed.failures, parsed.repairs)


def read_predictions(path: str | Path) -> tuple[dict[str, ParsedPrediction], list[int], int]:
    """Predictions keyed by normalized intent, unreadable line numbers, duplicate count."""
    out: dict[str, ParsedPrediction] = {}
    unreadable: list[int] = []
    duplicates = 0
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                unreadable.append(number)
                continue
            intent = row.get("intent") if isinstance(row, dict) else None
            if not isinstance(intent, str) or not intent.strip():
                unreadable.append(number)
                continue
            key = normalize_intent(intent)
            if key in out:
                duplicates += 1
                continue
            out[key] = parse_prediction(row)
    return out, unreadable, duplicates


def read_truth(path: str | Path) -> list[IntentRecord]:
    """Ground-truth records (strict); duplicate intents are an error."""
    if not Path(path).is_file():
        raise DatasetError(f"{path}: no such file")
    records = load_records(path)
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        key = normalize_intent(record.intent)
        if key in seen:
            raise DatasetError(f"{path}: record {number}: duplicate intent {record.intent!r}")
        seen.add(key)
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


def match_files(predictions_path: str | Path, truth_path: str | Path) -> MatchedRows:
    truth = read_truth(truth_path)
    predicted, unreadable, duplicates = read_predictions(predictions_path)
    configs: list[ToolConfig | None] = []
    failures: list[bool] = []
    repairs: list[int] = []
    used_keys: set[str] = set()
    for record in truth:
        key = normalize_intent(record.intent)
        parsed = predicted.get(key)
        if parsed is None:
            configs.append(None)
            failures.append(True)
            repairs.append(0)
            continue
        used_keys.add(key)
        configs.append(parsed.config)
        failures.append(bool(parsed.failed_tools))
        repairs.append(len(parsed.repairs))
    return MatchedRows(
        truth=truth,
        predictions=configs,
        parse_failures=failures,
        unreadable_lines=unreadable,
        unmatched_predictions=len(set(predicted) - used_keys),
        duplicate_predictions=duplicates,
        repairs=repairs,
    )
