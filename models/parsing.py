"""Free model text -> tool configurations, forgiving of everything LLMs do to JSON.

Accepted answers, per tool:
- teacher: ``TOOL: <rationale> JSON: {...}`` (figures 3-5); student: ``Parameters: {...}``
  (figures 9-11); or just the JSON, possibly inside a Markdown code fence.
- JSON repairs: trailing commas, single quotes, unquoted keys, Python literals (True/None),
  numbers written as strings ("10", "+10", "10%"), a missing closing brace (truncated output),
  a wrapper object ({"adjust": {...}}, {"parameters": {...}}), case/spelling variants of keys
  ("Exposure", "linear_offset"), flattened selective keys ("red_saturation").
- Values are clamped to the ranges of `models.tools`; missing keys are 0; extra keys dropped; a
  near-miss filter name maps to the canonical one; an all-zero adjust / selective adjust and a
  ``none`` filter mean "tool not used". Each clamp, dropped key and name fix is a *repair*
  (`ParsedTool.notes`, counted by `ParsedOutputs.repairs`).
- An unknown filter name ("sepia_magic") is a parse failure of the filter tool, not "none".
- An empty answer, an empty JSON object, or ``none`` means "tool not used" and is NOT a failure
  (that is what the prompts ask for). Text with no recoverable JSON object is a parse failure:
  the tool counts as not used and `ParsedTool.ok` is False.

Nothing here raises for bad model text; only an unknown tool name is a `ValueError`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.tools import (
    ADJUST_ORDER,
    ADJUST_RANGES,
    COLOR_PARAMS,
    COLORS,
    INTENSITY_RANGE,
    NO_FILTER,
    SELECTIVE_RANGE,
    TOOLS,
    Adjust,
    Filter,
    SelectiveAdjust,
    ToolConfig,
    ToolValidationError,
    canonical_filter,
    parse_adjust,
    parse_filter,
    parse_selective,
)

ToolPart = Adjust | SelectiveAdjust | Filter | None


@dataclass(frozen=True)
class ParsedTool:
    """One tool's answer: the validated part (None = not used), the rationale, and whether the
    text could be parsed at all (`ok`), with `error` saying why not."""

    tool: str
    part: ToolPart
    ok: bool = True
    error: str | None = None
    rationale: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedOutputs:
    """The three tools parsed together."""

    config: ToolConfig
    failures: tuple[str, ...] = ()
    rationales: dict[str, str] = field(default_factory=dict)
    tools: dict[str, ParsedTool] = field(default_factory=dict)

    @property
    def repairs(self) -> tuple[str, ...]:
        """Every repair made, as `tool: note` (clamped values, dropped keys, fixed names)."""
        return tuple(f"{t}: {note}" for t, parsed in self.tools.items() for note in parsed.notes)


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


_ADJUST_KEYS = {_squash(k): k for k in ADJUST_ORDER}
_COLOR_KEYS = {_squash(c): c for c in COLORS}
_PARAM_KEYS = {"saturation": "saturation", "sat": "saturation", "luminance": "luminance",
               "lum": "luminance", "luminosity": "luminance", "lightness": "luminance"}  # fmt: skip
_NAME_KEYS = ("name", "filter", "preset", "lut", "lutpreset", "filtername", "presetname")
_INTENSITY_KEYS = ("intensity", "strength", "amount", "value", "opacity")
_WRAPPERS = {"json", "parameters", "params", "output", "result", "answer", "config"}
_WRAPPERS |= {"adjust", "globaladjust", "globalcolorgrading", "colorgrading", "selectiveadjust"}
_WRAPPERS |= {"selective", "selectivecolorgrading", "lutfilter", "lutpreset", "filter"}
_NONE_WORDS = {"", "none", "null", "no", "n/a", "na", "{}", "empty", "emptystring", '""', "''"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)


def parse_tool_output(tool: str, text: str | None) -> ParsedTool:
    """Parse one tool's answer; never raises for bad text (see the module doc)."""
    if tool not in TOOLS:
        raise ValueError(f"tool: unknown tool {tool!r}; expected one of {TOOLS}")
    try:
        return _parse(tool, "" if text is None else str(text))
    except Exception as exc:  # noqa: BLE001 - a parser bug must not fail a request
        return ParsedTool(tool, None, ok=False, error=f"unexpected parser error: {exc!r}")


def parse_outputs(texts: Mapping[str, str | None]) -> ParsedOutputs:
    """Parse the answers of all three tools (a missing tool is "not used", not a failure)."""
    return _combine({tool: parse_tool_output(tool, texts.get(tool)) for tool in TOOLS})


def validate_record(record: Mapping[str, Any]) -> ParsedOutputs:
    """Validate tool configurations already in the record shape (`{"adjust": {...},
    "selective_adjust": {...}, "filter": {...}}`, e.g. a predictions file) by the same rules
    as model text: clamps and dropped keys are repairs, an unknown filter name or a tool that
    is not an object is a parse failure of that tool. The one path `evaluate` shares with the
    gate and serving."""
    tools: dict[str, ParsedTool] = {}
    for tool in TOOLS:
        raw = record.get(tool)
        if raw is None or raw == {}:
            tools[tool] = ParsedTool(tool, None)
            continue
        if not isinstance(raw, Mapping):
            tools[tool] = ParsedTool(tool, None, ok=False, error=f"{tool}: must be an object")
            continue
        notes: list[str] = []
        try:
            tools[tool] = ParsedTool(tool, _to_part(tool, raw, notes), notes=tuple(notes))
        except Exception as exc:  # noqa: BLE001 - bad values are a failure, never a crash
            tools[tool] = ParsedTool(tool, None, ok=False, error=str(exc))
    return _combine(tools)


def _combine(tools: dict[str, ParsedTool]) -> ParsedOutputs:
    config = ToolConfig(
        adjust=tools["adjust"].part,  # type: ignore[arg-type]
        selective_adjust=tools["selective_adjust"].part,  # type: ignore[arg-type]
        filter=tools["filter"].part,  # type: ignore[arg-type]
    )
    failures = tuple(t for t in TOOLS if not tools[t].ok)
    rationales = {t: tools[t].rationale for t in TOOLS if tools[t].rationale}
    return ParsedOutputs(config, failures, rationales, tools)


def _parse(tool: str, text: str) -> ParsedTool:
    rationale, body = split_answer(text)
    if _squash(body) in {_squash(w) for w in _NONE_WORDS} or body.strip() in _NONE_WORDS:
        return ParsedTool(tool, None, rationale=rationale)
    obj = extract_object(body)
    if obj is None and tool == "filter":
        name = body.strip().strip("\"'`.").strip()
        if name and len(name) <= 40 and canonical_filter(name) != NO_FILTER:
            obj = {"name": name}
    if obj is None:
        return ParsedTool(tool, None, ok=False, error="no JSON object found", rationale=rationale)
    notes: list[str] = []
    try:
        part = _to_part(tool, obj, notes)
    except (ToolValidationError, TypeError, ValueError) as exc:
        return ParsedTool(tool, None, ok=False, error=str(exc), rationale=rationale)
    return ParsedTool(tool, part, rationale=rationale, notes=tuple(notes))


def split_answer(text: str) -> tuple[str, str]:
    """Split an answer into (rationale, the part holding the parameters).

    The parameters follow the last ``JSON:`` or ``Parameters:`` marker; without a marker the
    whole text is searched. The rationale is the text before it, without the ``TOOL:`` label.
    """
    markers = list(re.finditer(r"\b(JSON|Parameters|PARAMETERS|parameters|Json)\s*:", text))
    if markers:
        # the last marker followed by an object (a note after the JSON may say "parameters:")
        with_object = [m for m in markers if "{" in text[m.end() :]]
        last = with_object[-1] if with_object else markers[-1]
        before, body = text[: last.start()], text[last.end() :]
    else:
        before, body = "", text
    rationale = re.sub(r"^\s*TOOL\s*:\s*", "", before.strip(), flags=re.IGNORECASE).strip()
    if not markers and re.match(r"^\s*TOOL\s*:", text, re.IGNORECASE):
        brace = text.find("{")
        fence = text.find("```")
        cut = min(i for i in (brace, fence, len(text)) if i >= 0)
        rationale = re.sub(r"^\s*TOOL\s*:\s*", "", text[:cut].strip(), flags=re.IGNORECASE)
        rationale = rationale.strip()
    return rationale, body.strip()


def extract_object(text: str) -> dict[str, Any] | None:
    """The first JSON-like object in `text` (code fences, repairs, truncation), or None."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    for candidate in candidates:
        start = candidate.find("{")
        if start < 0:
            continue
        snippet = _balanced(candidate[start:])
        obj = _loads(snippet)
        if isinstance(obj, dict):
            return obj
    pairs = _key_values(text)
    return pairs or None


def _balanced(text: str) -> str:
    """The text up to the brace closing the first `{`; closes braces a truncation left open."""
    depth, quote, escaped = 0, "", False
    for index, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "\"'" and not _is_apostrophe(text, index):
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[: index + 1]
    trimmed = re.sub(r"[,:\s]*$", "", text)
    trimmed = re.sub(r',\s*"[^"]*"?$', "", trimmed)  # a dangling half-written key
    if quote:
        trimmed += quote
    return trimmed + "}" * max(depth, 0)


def _is_apostrophe(text: str, index: int) -> bool:
    return (
        text[index] == "'"
        and 0 < index < len(text) - 1
        and text[index - 1].isalpha()
        and text[index + 1].isalpha()
    )


def _loads(snippet: str) -> Any:
    attempts = [snippet]
    repaired = re.sub(r",\s*([}\]])", r"\1", snippet)  # trailing commas
    repaired = re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_ ]*?)\s*:", r'\1"\2":', repaired)  # keys
    attempts.append(repaired)
    attempts.append(re.sub(r"'", '"', repaired))  # single quotes
    pythonish = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", repaired))
    pythonish = re.sub(r"\bnull\b", "None", pythonish)
    for attempt in attempts:
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):
            pass
    for attempt in (snippet, pythonish):
        try:
            return ast.literal_eval(attempt)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


_PAIR = re.compile(
    r"[\"']?([A-Za-z][A-Za-z _]*?)[\"']?\s*[:=]\s*[\"']?([+-]?\d+(?:\.\d+)?|[A-Za-z][\w ]*?)[\"']?"
    r"\s*(?:[,;\n]|$)"
)


def _key_values(text: str) -> dict[str, Any]:
    """`key: value` pairs written without braces ("exposure: 10, contrast: 5")."""
    out: dict[str, Any] = {}
    for key, value in _PAIR.findall(text):
        squashed = _squash(key)
        known = squashed in _ADJUST_KEYS or squashed in _NAME_KEYS or squashed in _INTENSITY_KEYS
        if known or _split_flat_color(squashed):
            out[key.strip()] = value.strip()
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        cleaned = value.strip().rstrip("%").strip()
        if not _NUMBER.match(cleaned):
            return None
        number = float(cleaned)
    else:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number


_WRAPPER_WORDS: tuple[str, ...] = (
    "adjust",
    "grading",
    "param",
    "filter",
    "lut",
    "tool",
    "json",
    "output",
)
_WRAPPER_WORDS += ("config", "result", "answer", "settings", "values")


def _is_wrapper(key: str) -> bool:
    squashed = _squash(key)
    if squashed in _ADJUST_KEYS or squashed in _COLOR_KEYS:
        return False
    return squashed in _WRAPPERS or any(word in squashed for word in _WRAPPER_WORDS)


def _unwrap(obj: Mapping[str, Any], known: set[str]) -> Mapping[str, Any]:
    """Descend through wrapper objects such as {"parameters": {...}} or {"adjust": {...}}."""
    for _ in range(3):
        if any(_squash(k) in known for k in obj):
            return obj
        nested = [v for k, v in obj.items() if _is_wrapper(k) and isinstance(v, Mapping)]
        if len(nested) != 1:
            return obj
        obj = nested[0]
    return obj


def _to_part(tool: str, obj: Mapping[str, Any], notes: list[str]) -> ToolPart:
    if tool == "adjust":
        return _adjust(obj, notes)
    if tool == "selective_adjust":
        return _selective(obj, notes)
    return _filter(obj, notes)


def _adjust(obj: Mapping[str, Any], notes: list[str]) -> Adjust | None:
    obj = _unwrap(obj, set(_ADJUST_KEYS))
    clean: dict[str, float] = {}
    for key, value in obj.items():
        name = _ADJUST_KEYS.get(_squash(key))
        if name is None:
            notes.append(f"dropped unknown key {key!r}")
            continue
        number = _number(value)
        if number is None:
            notes.append(f"dropped non-numeric {name}={value!r}")
            continue
        clean[name] = number
    if obj and not clean and any(isinstance(v, Mapping) for v in obj.values()):
        raise ValueError("adjust: no known parameter in the JSON object")
    for name, number in clean.items():
        _note_clamp(notes, name, number, ADJUST_RANGES[name])
    return parse_adjust(clean, strict=False)


def _note_clamp(notes: list[str], name: str, number: float, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= number <= bounds[1]:
        notes.append(f"clamped {name}={number:g} to {bounds[0]:g}..{bounds[1]:g}")


def _split_flat_color(squashed: str) -> tuple[str, str] | None:
    for color_key, color in _COLOR_KEYS.items():
        if squashed.startswith(color_key):
            param = _PARAM_KEYS.get(squashed[len(color_key) :])
            if param:
                return color, param
    return None


def _selective(obj: Mapping[str, Any], notes: list[str]) -> SelectiveAdjust | None:
    known = set(_COLOR_KEYS) | {f"{c}{p}" for c in _COLOR_KEYS for p in _PARAM_KEYS}
    obj = _unwrap(obj, known)
    clean: dict[str, dict[str, float]] = {}
    for key, value in obj.items():
        squashed = _squash(key)
        color = _COLOR_KEYS.get(squashed)
        if color is not None and isinstance(value, Mapping):
            for param_key, raw in value.items():
                param = _PARAM_KEYS.get(_squash(param_key))
                number = _number(raw)
                if param is None or number is None:
                    notes.append(f"dropped {color}.{param_key}={raw!r}")
                    continue
                clean.setdefault(color, {})[param] = number
            continue
        flat = _split_flat_color(squashed)
        number = _number(value)
        if flat is not None and number is not None:
            clean.setdefault(flat[0], {})[flat[1]] = number
            continue
        notes.append(f"dropped unknown key {key!r}")
    if obj and not clean and any(isinstance(v, Mapping) for v in obj.values()):
        raise ValueError("selective_adjust: no known color in the JSON object")
    for color in clean:
        for param in COLOR_PARAMS:
            clean[color].setdefault(param, 0.0)
            _note_clamp(notes, f"{color}.{param}", clean[color][param], SELECTIVE_RANGE)
    return parse_selective(clean, strict=False)


def _filter(obj: Mapping[str, Any], notes: list[str]) -> Filter | None:
    obj = _unwrap(obj, set(_NAME_KEYS) | set(_INTENSITY_KEYS))
    by_key = {_squash(k): v for k, v in obj.items()}
    name = next((by_key[k] for k in _NAME_KEYS if k in by_key), None)
    if isinstance(name, Mapping):  # {"filter": {"name": ..., "intensity": ...}}
        return _filter(name, notes)
    intensity = next((by_key[k] for k in _INTENSITY_KEYS if k in by_key), None)
    number = _number(intensity)
    if intensity is not None and number is None:
        notes.append(f"dropped non-numeric intensity {intensity!r}")
    if name is None and obj:
        if number is None:
            raise ValueError("filter: no name in the JSON object")
        notes.append("no filter name given")
    if name is not None and not isinstance(name, str):
        notes.append(f"filter name {name!r} is not a string")
        name = str(name)
    if name and _squash(name) != NO_FILTER:
        canonical = canonical_filter(name)
        if canonical == NO_FILTER:
            raise ValueError(f"filter: unknown filter name {name!r}")
        if _squash(canonical) != _squash(name):
            notes.append(f"filter name {name!r} read as {canonical!r}")
    if number is not None:
        _note_clamp(notes, "intensity", number, INTENSITY_RANGE)
    return parse_filter({"name": name or NO_FILTER, "intensity": number or 0}, strict=False)
