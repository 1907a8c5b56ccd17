"""The paper's offline metrics written the straightforward way: a Python loop over rows.

Slow on purpose and easy to read against section 3.3; the tests check
`analysis.offline_metrics` (the
vectorised version) against it, and `bench/bench_offline.py` measures the speed-up. The edge-case
conventions are the same as documented in `analysis.offline_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from models.tools import TOOLS, ToolConfig


def _vector(config: ToolConfig | None, tool: str) -> list[float] | None:
    part = getattr(config, tool) if config is not None else None
    return list(part.values) if part is not None else None


def _filter_name(config: ToolConfig | None) -> str | None:
    return config.filter.name if config is not None and config.filter is not None else None


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm > 0 else 0.0


def reference_scores(
    predictions: Sequence[ToolConfig | None], truth: Sequence[ToolConfig]
) -> dict[str, dict[str, float]]:
    """Per tool: precision, recall, selection, quality, final; plus `{"overall": {"final": x}}`."""
    out: dict[str, dict[str, float]] = {}
    for tool in TOOLS:
        tp = fp = fn = 0
        quality_terms: list[float] = []
        p_value: Any
        t_value: Any
        for pred, true in zip(predictions, truth, strict=True):
            if tool == "filter":
                p_value, t_value = _filter_name(pred), _filter_name(true)
            else:
                p_value, t_value = _vector(pred, tool), _vector(true, tool)
            p_used, t_used = p_value is not None, t_value is not None
            if p_used and t_used:
                tp += 1
                if tool == "filter":
                    quality_terms.append(1.0 if p_value == t_value else 0.0)
                else:
                    quality_terms.append(_cosine(p_value, t_value))
            elif p_used:
                fp += 1
            elif t_used:
                fn += 1
        precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
        selection = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        if quality_terms:
            quality = min(max(sum(quality_terms) / len(quality_terms), 0.0), 1.0)
        else:
            quality = 1.0 if tp + fp + fn == 0 else 0.0
        total = selection + quality
        final = 2 * selection * quality / total if total else 0.0
        out[tool] = {
            "precision": precision,
            "recall": recall,
            "selection": selection,
            "quality": quality,
            "final": final,
        }
    out["overall"] = {"final": sum(out[t]["final"] for t in TOOLS) / len(TOOLS)}
    return out
