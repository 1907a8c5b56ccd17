"""Mistake-driven data augmentation (paper section 3.4, appendix A.9 and A.10).

One iteration: predict a seeded random sample (1,000 by default) of the training set with the
current student, mark the rows with a mistake in at least one tool (the injected
`find_mistakes`; the CLI passes `analysis.offline_metrics.mistakes`: wrong filter name, cosine below
the tool's mean), ask an LLM for a similar intent with the 3-shot prompt of figure 14
(temperature 0, max_tokens 1500, top_p 1), and add each new intent with the teacher's ORIGINAL
answer. New intents are deduplicated (normalised) against the training set and each other.
More iterations need a retrained student in between; callers loop (see `abtest augment`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.dataset import IntentRecord, normalize_intent
from models.tools import TOOLS, ToolConfig

DEFAULT_SAMPLE_SIZE = 1000
LLM_PARAMETERS: dict[str, Any] = {"temperature": 0, "max_tokens": 1500, "top_p": 1}

# Figure 14, verbatim apart from line breaks.
AUGMENTATION_PROMPT = (
    "You are given an input user request (INPUT_USER_REQUEST) for a filter look vibe of an "
    "image or video. Your task is to write a suggestion (SIMILAR_USER_REQUEST) for a user "
    "request which is different from INPUT_USER_REQUEST, but share many similar "
    "characteristics.\n\n"
    "Inputs: INPUT_USER_REQUEST\nOutputs: SIMILAR_USER_REQUEST\n\n"
    "Inputs: INPUT_USER_REQUEST: cool morning\nOutputs: SIMILAR_USER_REQUEST: cold tone\n\n"
    "Inputs: INPUT_USER_REQUEST: dark atmosphere\nOutputs: SIMILAR_USER_REQUEST: dark night\n\n"
    "Inputs: INPUT_USER_REQUEST: vintage film\nOutputs: SIMILAR_USER_REQUEST: retro cinema\n\n"
    "Inputs: INPUT_USER_REQUEST: {intent}\nOutputs:"
)

Predictor = Callable[[Sequence[str]], Sequence[ToolConfig]]
# find_mistakes(predictions, truth) -> {"any": bools per row, optionally per tool}
MistakeFinder = Callable[[Sequence[ToolConfig], Sequence[ToolConfig]], Mapping[str, Sequence[bool]]]
IntentWriter = Callable[[str], "str | None"]


class AugmentError(RuntimeError):
    """The augmentation LLM could not be used; the message says why."""


def augmentation_messages(intent: str) -> list[dict[str, str]]:
    """The chat messages for one intent: the 3-shot prompt with the intent filled in."""
    return [
        {"role": "user", "content": AUGMENTATION_PROMPT.format(intent=" ".join(intent.split()))}
    ]


def parse_similar_intent(text: str | None) -> str | None:
    """The new intent from the LLM's answer (after ``SIMILAR_USER_REQUEST:``), or None."""
    if not text:
        return None
    marker = "SIMILAR_USER_REQUEST:"
    if marker in text:
        text = text.split(marker, 1)[1]
    for line in text.strip().splitlines():
        cleaned = line.strip().strip("\"'`").strip()
        if cleaned.lower().startswith(("inputs:", "outputs:")):
            break
        if cleaned:
            return " ".join(cleaned.split())
    return None


class OpenAIIntentWriter:
    """Asks an OpenAI-compatible chat endpoint for a similar intent (appendix A.9 settings)."""

    def __init__(self, client: Any, model: str) -> None:
        self.client = client
        self.model = model
        self.calls = 0

    def __call__(self, intent: str) -> str | None:
        self.calls += 1
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=augmentation_messages(intent), **LLM_PARAMETERS
            )
        except Exception as exc:  # noqa: BLE001 - the openai client raises many types
            raise AugmentError(f"augmentation LLM call failed: {exc}") from exc
        return parse_similar_intent(response.choices[0].message.content)


@dataclass
class AugmentReport:
    sample_size: int
    mistakes: int
    mistakes_by_tool: dict[str, int]
    added: int
    duplicates: int
    unusable_answers: int
    examples: list[dict[str, str]] = field(default_factory=list)  # a few (source, new) pairs

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_size": self.sample_size,
            "mistakes": self.mistakes,
            "mistakes_by_tool": self.mistakes_by_tool,
            "added": self.added,
            "duplicates": self.duplicates,
            "unusable_answers": self.unusable_answers,
            "examples": self.examples,
        }


def sample_records(
    records: Sequence[IntentRecord], size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0
) -> list[IntentRecord]:
    """A seeded random sample (all rows when there are fewer than `size`)."""
    if size < 1:
        raise ValueError(f"sample_size: must be at least 1, got {size}")
    if len(records) <= size:
        return list(records)
    return random.Random(seed).sample(list(records), size)


def augment_once(
    train: Sequence[IntentRecord],
    predict: Predictor,
    find_mistakes: MistakeFinder,
    write_similar: IntentWriter,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[IntentRecord], AugmentReport]:
    """One augmentation iteration: (new records to add, report). `train` is not modified."""
    sample = sample_records(train, sample_size, seed)
    predictions = list(predict([r.intent for r in sample]))
    if len(predictions) != len(sample):
        raise ValueError(f"predict: returned {len(predictions)} configs for {len(sample)} intents")
    flags = find_mistakes(predictions, [r.teacher for r in sample])
    if "any" not in flags:
        raise ValueError("find_mistakes: must return an 'any' entry")
    wrong = [record for record, bad in zip(sample, flags["any"], strict=True) if bad]
    by_tool = {t: int(sum(bool(x) for x in flags[t])) for t in TOOLS if t in flags}

    seen = {normalize_intent(r.intent) for r in train}
    added: list[IntentRecord] = []
    duplicates = unusable = 0
    examples: list[dict[str, str]] = []
    for done, record in enumerate(wrong, start=1):
        new_intent = write_similar(record.intent)
        if on_progress:
            on_progress("llm", done, len(wrong))
        if not new_intent:
            unusable += 1
            continue
        key = normalize_intent(new_intent)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        added.append(IntentRecord(new_intent, 1, record.teacher))
        if len(examples) < 10:
            examples.append({"source": record.intent, "new": new_intent})
    report = AugmentReport(
        len(sample), len(wrong), by_tool, len(added), duplicates, unusable, examples
    )
    return added, report
