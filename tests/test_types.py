"""mypy over abtest, routing, analysis and models ([tool.mypy] in pyproject.toml) passes, so
`.ci/run` (pytest) type-checks the code. The cache lives in the temp dir: a warm run takes a
few seconds, a cold one about half a minute."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_mypy_passes_on_the_four_packages():
    cache = Path(tempfile.gettempdir()) / "abtest-mypy-cache"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
