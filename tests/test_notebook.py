"""notebooks/analyst.ipynb runs top to bottom: against the demo's database (made by `abtest demo`,
small), found by default with ABTEST_DATABASE_URL unset; against a fixed-horizon experiment
(no always-valid interval) named by ABTEST_DATABASE_URL; and fails clearly without a database."""

from datetime import timedelta
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from abtest import db
from tests.online_data import create_experiment, simulate

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analyst.ipynb"


def _execute(tmp_path) -> str:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2
    return "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )


@pytest.mark.slow
def test_notebook_opens_the_demo_database_by_default(tmp_path):
    from rich.console import Console

    from abtest import demo

    demo.run_demo(140, str(tmp_path / "abtest-demo.db"), seed=5, console=Console(quiet=True))
    text = _execute(tmp_path)  # ABTEST_DATABASE_URL is unset (tests/conftest.py)
    assert f"database: sqlite:///{tmp_path / 'abtest-demo.db'}" in text
    assert f"showing {demo.EXPERIMENT_KEY}" in text
    decision = next(line for line in text.splitlines() if line.startswith("student: "))
    assert "always-valid [" in decision and "–" not in decision  # sequential: an interval
    first_day = demo.first_day()
    last_day = first_day + timedelta(days=demo.DAYS - 1)
    assert f"timeline: {first_day:%Y-%m-%d} to {last_day:%Y-%m-%d}, {demo.DAYS} days" in text


@pytest.mark.slow
def test_notebook_reads_abtest_database_url_and_survives_no_interval(tmp_path, monkeypatch):
    path = tmp_path / "other.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    seeded = create_experiment(engine, key="notebook-exp", settings={"sequential": False})
    simulate(engine, seeded, {"control": 0.9, "treatment": 0.86}, 50, 3)
    engine.dispose()
    monkeypatch.setenv("ABTEST_DATABASE_URL", f"sqlite:///{path}")
    text = _execute(tmp_path)
    assert "showing notebook-exp" in text
    assert "control" in text and "treatment" in text
    assert "always-valid [–, –]" in text  # None shown as a dash, not a crash


@pytest.mark.slow
def test_notebook_fails_clearly_without_a_database(tmp_path, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", f"sqlite:///{tmp_path / 'missing.db'}")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    with pytest.raises(Exception, match="run `abtest demo` first"):
        client.execute()
