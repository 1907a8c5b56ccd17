"""The one schema of the three color tools: parameters, ranges, LUT names, vector order.

Every package reads tool structure from here: parsing clamps with it, metrics build vectors in
`ADJUST_ORDER` / `SELECTIVE_ORDER`, storage serialises `ToolConfig.to_record()`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ADJUST_RANGES: dict[str, tuple[float, float]] = {
    "exposure": (-100, 100),
    "contrast": (-100, 100),
    "brightness": (-100, 100),
    "highlights": (-100, 100),
    "shadows": (-100, 100),
    "saturation": (-100, 100),
    "vibrance": (-100, 100),
    "temperature": (-100, 100),
    "tint": (-100, 100),
    "linearOffset": (-100, 100),
    "hue": (0, 360),
    "bloom": (0, 100),
    "sharpen": (0, 100),
    "structure": (0, 100),
}
ADJUST_ORDER: tuple[str, ...] = tuple(ADJUST_RANGES)

COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue")
COLOR_PARAMS: tuple[str, ...] = ("saturation", "luminance")
SELECTIVE_RANGE: tuple[float, float] = (-100, 100)
SELECTIVE_ORDER: tuple[tuple[str, str], ...] = tuple((c, p) for c in COLORS for p in COLOR_PARAMS)

INTENSITY_RANGE: tuple[float, float] = (0, 100)
NO_FILTER = "none"
# Canonical spelling. The paper's prompts write "faded AL2" and "teal and orange 1" in places;
# those are spelling slips of the names below and are mapped onto them by `canonical_filter`.
FILTER_NAMES: tuple[str, ...] = (
    "none", "lovely_day", "action", "vivid", "north", "purple_rain", "winter",
    "faded_Retro", "faded_HighNoon", "faded_Mist", "faded_Terra", "faded_Vista", "faded_C1",
    "faded_AL2", "teal_and_orange_1", "teal_and_orange_2", "teal_and_orange_3",
    "teal_and_orange_4", "teal_and_orange_5", "teal_and_orange_6", "fortune", "duotone_red",
    "spring", "duotone_pink", "enchanted", "duotone_green", "ultra", "duotone_yellow",
    "firecracker", "duotone_orange", "cyberpunk", "darkness", "night_vision", "negative",
)  # fmt: skip
TOOLS: tuple[str, ...] = ("adjust", "selective_adjust", "filter")


class ToolValidationError(ValueError):
    """A tool configuration that breaks the schema; `field` names the offending path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_SQUASHED = {_squash(n): n for n in FILTER_NAMES}


def canonical_filter(name: str | None, *, fuzzy: bool = True) -> str:
    """Map a filter name to its canonical spelling; unknown names become `none`.

    Case, spaces, dashes and underscores are ignored ("faded AL2" -> "faded_AL2"); with `fuzzy`,
    a near miss ("cyberpunck") maps to the closest preset.
    """
    if not name:
        return NO_FILTER
    key = _squash(str(name))
    if key in _SQUASHED:
        return _SQUASHED[key]
    if fuzzy:
        close = difflib.get_close_matches(key, list(_SQUASHED), n=1, cutoff=0.8)
        if close:
            return _SQUASHED[close[0]]
    return NO_FILTER


def clamp(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(min(max(value, low), high))


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise ToolValidationError(path, "must be a number, not a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ToolValidationError(path, f"must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise ToolValidationError(path, "must be finite")
    return number


@dataclass(frozen=True)
class Adjust:
    """Global adjust: all 14 parameters, in `ADJUST_ORDER`."""

    values: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(ADJUST_ORDER, self.values, strict=True))

    def vector(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float)


@dataclass(frozen=True)
class SelectiveAdjust:
    """Selective adjust: saturation and luminance per color, in `SELECTIVE_ORDER`."""

    values: tuple[float, ...]

    def as_dict(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {c: {} for c in COLORS}
        for (color, param), v in zip(SELECTIVE_ORDER, self.values, strict=True):
            out[color][param] = v
        return out

    def vector(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float)


@dataclass(frozen=True)
class Filter:
    name: str
    intensity: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "intensity": self.intensity}


@dataclass(frozen=True)
class ToolConfig:
    """The three tools for one intent; `None` means the tool is not used."""

    adjust: Adjust | None = None
    selective_adjust: SelectiveAdjust | None = None
    filter: Filter | None = field(default=None)

    def uses(self, tool: str) -> bool:
        return getattr(self, tool) is not None

    def to_record(self) -> dict[str, Any]:
        """The dataset's record shape: `{}` for an unused adjust tool, `none` filter."""
        return {
            "adjust": self.adjust.as_dict() if self.adjust else {},
            "selective_adjust": self.selective_adjust.as_dict() if self.selective_adjust else {},
            "filter": self.filter.as_dict() if self.filter else {"name": NO_FILTER, "intensity": 0},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, strict: bool = True) -> ToolConfig:
        """Build from the dataset's record shape.

        `strict` rejects out-of-range values, unknown keys and unknown filter names with a
        `ToolValidationError`; otherwise values are clamped, unknown keys dropped and names
        mapped with `canonical_filter`.
        """
        return cls(
            adjust=parse_adjust(record.get("adjust") or {}, strict=strict),
            selective_adjust=parse_selective(record.get("selective_adjust") or {}, strict=strict),
            filter=parse_filter(record.get("filter") or {}, strict=strict),
        )


def _check(value: float, bounds: tuple[float, float], path: str, strict: bool) -> float:
    if strict and not bounds[0] <= value <= bounds[1]:
        raise ToolValidationError(path, f"{value:g} is outside {bounds[0]:g}..{bounds[1]:g}")
    return clamp(value, bounds)


def _unknown_keys(given: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise ToolValidationError(f"{path}.{extra[0]}", f"unknown parameter (known: {known})")


def parse_adjust(raw: Mapping[str, Any], *, strict: bool = True) -> Adjust | None:
    """Missing parameters are 0; an empty or all-zero adjust means the tool is not used."""
    if not isinstance(raw, Mapping):
        raise ToolValidationError("adjust", "must be an object")
    if strict:
        _unknown_keys(raw, ADJUST_ORDER, "adjust")
    values = tuple(
        _check(_number(raw.get(p, 0), f"adjust.{p}"), ADJUST_RANGES[p], f"adjust.{p}", strict)
        for p in ADJUST_ORDER
    )
    return Adjust(values) if any(values) else None


def parse_selective(raw: Mapping[str, Any], *, strict: bool = True) -> SelectiveAdjust | None:
    if not isinstance(raw, Mapping):
        raise ToolValidationError("selective_adjust", "must be an object")
    if strict:
        _unknown_keys(raw, COLORS, "selective_adjust")
    values: list[float] = []
    for color, param in SELECTIVE_ORDER:
        entry = raw.get(color) or {}
        path = f"selective_adjust.{color}"
        if not isinstance(entry, Mapping):
            raise ToolValidationError(path, "must be an object with saturation and luminance")
        if strict:
            _unknown_keys(entry, COLOR_PARAMS, path)
        number = _number(entry.get(param, 0), f"{path}.{param}")
        values.append(_check(number, SELECTIVE_RANGE, f"{path}.{param}", strict))
    return SelectiveAdjust(tuple(values)) if any(values) else None


def parse_filter(raw: Mapping[str, Any], *, strict: bool = True) -> Filter | None:
    if not isinstance(raw, Mapping):
        raise ToolValidationError("filter", "must be an object with name and intensity")
    given = raw.get("name", NO_FILTER)
    name = canonical_filter(given, fuzzy=not strict)
    if strict and _squash(str(given)) not in _SQUASHED:
        raise ToolValidationError("filter.name", f"unknown preset {given!r}")
    intensity = _check(
        _number(raw.get("intensity", 0), "filter.intensity"),
        INTENSITY_RANGE,
        "filter.intensity",
        strict,
    )
    if name == NO_FILTER:
        return None
    return Filter(name, intensity)
