"""The demo end to end (small), and its simulated-user model."""

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from abtest import demo
from models.dataset import load_split
from models.tools import ToolConfig


@pytest.fixture(scope="module")
def record():
    return next(r for r in load_split("test") if r.teacher.adjust and r.teacher.filter)


def test_agreement_is_one_for_the_reference_and_lower_otherwise(record):
    assert demo.agreement(record.teacher, record.teacher) == pytest.approx(1.0)
    assert demo.agreement(ToolConfig(), record.teacher) < 0.5
    assert demo.agreement(ToolConfig(), ToolConfig()) == 1.0


def test_export_probability_rises_with_quality_and_falls_with_latency():
    assert demo.export_probability(1.0, 0.1) > demo.export_probability(0.5, 0.1)
    assert demo.export_probability(1.0, 0.1) > demo.export_probability(1.0, 5.0)
    assert 0 < demo.export_probability(0.0, 1000.0) < demo.export_probability(1.0, 0.0) < 1


def test_projects_are_drawn_by_popularity():
    records = load_split("test")
    projects = demo.draw_projects(records, 5000, np.random.default_rng(0))
    popular = max(records, key=lambda r: r.calls)
    share = sum(p.record.intent == popular.intent for p in projects) / len(projects)
    assert share > 2 * popular.calls / sum(r.calls for r in records) * 0.4
    assert len({p.project_id for p in projects}) == 5000


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path):
    console = Console(record=True, width=120)
    rows = demo.run_demo(120, str(tmp_path / "demo.db"), seed=3, console=console)
    assert [r["arm"] for r in rows] == ["control", "student"]
    assert sum(r["starts"] for r in rows) == 120
    assert all(0 < r["exports"] <= r["starts"] for r in rows)
    assert all((r["fallbacks"] or 0) == 0 for r in rows)
    output = console.export_text()
    assert "offline gate" in output and "completion rate" in output
    assert (tmp_path / "demo.html").read_text().startswith("<!")
