"""Build the fine-tuning dataset from logged teacher outputs and export signals (paper 3.1).

Input is plain records, one per logged call (`LoggedCall`: intent, the output's tool records,
whether the project was exported); the abtest layer reads them from the events table. For every
intent (normalised: case and whitespace) and every tool, identical outputs are grouped, outputs
with zero exports are dropped, and the output with the highest export rate (exports / calls)
becomes the ground truth. `calls` counts every logged call of the intent (for the r_i subsets).
The result is split with a seed into train and test JSON Lines plus a manifest with counts and
SHA-256 content hashes.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.dataset import IntentRecord, load_split, normalize_intent, write_records
from models.tools import TOOLS, ToolConfig, ToolValidationError

MANIFEST_NAME = "manifest.json"
DEFAULT_TEST_SIZE = 1000


class DatasetBuildError(ValueError):
    """The logs or options cannot produce a dataset; the message says why."""


@dataclass(frozen=True)
class LoggedCall:
    """One logged teacher call: the intent as typed, the output record, and whether it exported."""

    intent: str
    output: Mapping[str, Any]
    exported: bool


@dataclass
class BuildStats:
    calls: int = 0
    exported_calls: int = 0
    skipped_calls: int = 0  # unusable output or empty intent
    intents_seen: int = 0
    intents_without_exports: int = 0
    outputs_seen: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TOOLS})
    outputs_dropped_zero_exports: dict[str, int] = field(
        default_factory=lambda: {t: 0 for t in TOOLS}
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "exported_calls": self.exported_calls,
            "skipped_calls": self.skipped_calls,
            "intents_seen": self.intents_seen,
            "intents_without_exports": self.intents_without_exports,
            "outputs_seen": dict(self.outputs_seen),
            "outputs_dropped_zero_exports": dict(self.outputs_dropped_zero_exports),
        }


def _tool_key(config: ToolConfig, tool: str) -> str:
    """A canonical JSON text of one tool's part of a config (identical outputs group together)."""
    return json.dumps(config.to_record()[tool], sort_keys=True)


@dataclass
class _OutputTally:
    config: ToolConfig
    calls: int = 0
    exports: int = 0

    @property
    def export_rate(self) -> float:
        return self.exports / self.calls


def select_best_outputs(calls: Iterable[LoggedCall]) -> tuple[list[IntentRecord], BuildStats]:
    """Per normalised intent and tool keep the exported output with the highest export rate.

    Ties go to more exports, then to the output seen first. An intent whose calls were never
    exported is dropped. The intent's text is its most frequent spelling (first seen on ties).
    """
    stats = BuildStats()  # outputs with a parse failure are skipped: not a real answer
    spellings: dict[str, dict[str, int]] = defaultdict(dict)
    totals: dict[str, int] = defaultdict(int)
    tallies: dict[str, dict[str, dict[str, _OutputTally]]] = defaultdict(
        lambda: {t: {} for t in TOOLS}
    )
    for call in calls:
        stats.calls += 1
        key = normalize_intent(call.intent or "")
        config = None
        if isinstance(call.output, Mapping) and not call.output.get("parse_failures"):
            try:
                config = ToolConfig.from_record(call.output, strict=False)
            except (ToolValidationError, AttributeError, TypeError):
                config = None
        if not key or config is None:
            stats.skipped_calls += 1
            continue
        stats.exported_calls += int(call.exported)
        spelled = " ".join(call.intent.split())
        spellings[key][spelled] = spellings[key].get(spelled, 0) + 1
        totals[key] += 1
        for tool in TOOLS:
            tally = tallies[key][tool].setdefault(_tool_key(config, tool), _OutputTally(config))
            tally.calls += 1
            tally.exports += int(call.exported)

    records: list[IntentRecord] = []
    stats.intents_seen = len(totals)
    for key, per_tool in tallies.items():
        best: dict[str, ToolConfig] = {}
        for tool in TOOLS:
            outputs = list(per_tool[tool].values())
            stats.outputs_seen[tool] += len(outputs)
            exported = [o for o in outputs if o.exports > 0]
            stats.outputs_dropped_zero_exports[tool] += len(outputs) - len(exported)
            if exported:
                # max() keeps the first of equals, so ties go to the output seen first.
                best[tool] = max(exported, key=lambda o: (o.export_rate, o.exports)).config
        if len(best) < len(TOOLS):
            stats.intents_without_exports += 1
            continue
        config = ToolConfig(
            adjust=best["adjust"].adjust,
            selective_adjust=best["selective_adjust"].selective_adjust,
            filter=best["filter"].filter,
        )
        names = spellings[key]
        intent = max(names, key=lambda n: names[n])
        records.append(IntentRecord(intent, totals[key], config))
    return records, stats


def dedupe_records(records: Iterable[IntentRecord]) -> list[IntentRecord]:
    """Keep the first record per normalised intent."""
    seen: set[str] = set()
    out = []
    for record in records:
        key = normalize_intent(record.intent)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def split_records(
    records: Sequence[IntentRecord], *, test_size: int | None = None, seed: int = 0
) -> tuple[list[IntentRecord], list[IntentRecord]]:
    """A seeded random split into (train, test); intents are unique, so the sets are disjoint.

    `test_size` defaults to 1,000 (the paper's test set) but at most a fifth of the rows.
    """
    if len(records) < 2:
        raise DatasetBuildError(f"need at least 2 intents to split, got {len(records)}")
    if test_size is None:
        test_size = min(DEFAULT_TEST_SIZE, max(1, len(records) // 5))
    if not 1 <= test_size < len(records):
        raise DatasetBuildError(
            f"test size must be between 1 and {len(records) - 1} for {len(records)} intents, "
            f"got {test_size}"
        )
    order = sorted(records, key=lambda r: normalize_intent(r.intent))
    random.Random(seed).shuffle(order)
    return order[test_size:], order[:test_size]


def tool_usage(records: Sequence[IntentRecord]) -> dict[str, int]:
    """Rows per tool where the teacher used it, plus r3/r5 counts (calls >= 3, >= 5)."""
    return {
        "rows": len(records),
        **{tool: sum(r.teacher.uses(tool) for r in records) for tool in TOOLS},
        "r3": sum(r.calls >= 3 for r in records),
        "r5": sum(r.calls >= 5 for r in records),
    }


def write_dataset(
    train: Sequence[IntentRecord],
    test: Sequence[IntentRecord],
    out_dir: str | Path,
    *,
    source: str,
    seed: int | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `train.jsonl`, `test.jsonl` and `manifest.json`; return the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in (("train", train), ("test", test)):
        path = out / f"{split}.jsonl"
        files[split] = {"path": path.name, "rows": len(rows), "sha256": write_records(rows, path)}
    manifest = {
        "source": source,
        "seed": seed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
        "counts": {"train": tool_usage(train), "test": tool_usage(test)},
        **(dict(extra) if extra else {}),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def build_from_logs(
    calls: Iterable[LoggedCall],
    out_dir: str | Path,
    *,
    test_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Logged calls -> best output per intent and tool -> seeded split on disk; the manifest."""
    records, stats = select_best_outputs(calls)
    if len(records) < 2:
        raise DatasetBuildError(
            f"the logs give {len(records)} intent(s) with exported outputs "
            f"({stats.calls} calls, {stats.exported_calls} exported); need at least 2"
        )
    train, test = split_records(records, test_size=test_size, seed=seed)
    return write_dataset(
        train, test, out_dir, source="logs", seed=seed, extra={"logs": stats.to_json()}
    )


def build_from_bundled(out_dir: str | Path) -> dict[str, Any]:
    """The bundled curated dataset, deduplicated by normalised intent, keeping its own split.

    The bundled test split is the offline gate's test set, so it is kept as is; train rows whose
    intent also appears in test are dropped.
    """
    test = dedupe_records(load_split("test"))
    test_keys = {normalize_intent(r.intent) for r in test}
    train = [
        r
        for r in dedupe_records(load_split("train"))
        if normalize_intent(r.intent) not in test_keys
    ]
    return write_dataset(train, test, out_dir, source="bundled", seed=None)
