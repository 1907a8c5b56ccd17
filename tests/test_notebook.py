"""notebooks/analyst.ipynb runs top to bottom against a small database made here (no demo)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from abtest import db
from tests.online_data import create_experiment, simulate

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analyst.ipynb"


@pytest.mark.slow
def test_analyst_notebook_executes(tmp_path, monkeypatch):
    path = tmp_path / "demo.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    seeded = create_experiment(engine, key="notebook-exp")
    simulate(engine, seeded, {"control": 0.9, "treatment": 0.86}, 50, 3)
    engine.dispose()
    monkeypatch.setenv("DEMO_DATABASE", str(path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "showing notebook-exp" in text
    assert "control" in text and "treatment" in text
    assert "treatment: " in text  # the decision line
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2


@pytest.mark.slow
def test_notebook_fails_clearly_without_a_database(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_DATABASE", str(tmp_path / "missing.db"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    with pytest.raises(Exception, match="run `abtest demo` first"):
        client.execute()
