"""The README's walkthrough, run from the README itself on SQLite and PostgreSQL.

The bash blocks between `<!-- walkthrough:start -->` and `<!-- walkthrough:end -->` are split
into commands (a trailing backslash joins lines) and run one at a time, in order, in one bash
process from the repository root, as a reader pasting them would. Each command must succeed,
except a command whose comment says "refused", which must fail. The only changes made to the
text: the `export ABTEST_DATABASE_URL=` line gets the test's database, and the ports 8000 and
8100 become free ports (other tests run in parallel). `abtest` and `python` are this checkout's.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"

pytestmark = pytest.mark.slow


def walkthrough_commands(text: str) -> list[str]:
    """The commands of the walkthrough's bash blocks, continuation lines joined."""
    if START not in text or END not in text:
        raise AssertionError(f"README.md lacks the {START} ... {END} markers")
    section = text.split(START, 1)[1].split(END, 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "no ```bash block between the walkthrough markers"
    commands: list[str] = []
    pending = ""
    for line in "\n".join(blocks).splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def expects_refusal(command: str) -> bool:
    _, _, comment = command.partition(" #")
    return "refused" in comment.lower()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_script(commands: list[str], database_url: str, ports: dict[str, int]) -> str:
    """A bash script running each command and stopping at the first unexpected outcome."""
    lines = ["set -u", f"cd {shlex.quote(str(ROOT))}", "trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
    for number, command in enumerate(commands, 1):
        if command.startswith("export ABTEST_DATABASE_URL="):
            command = f"export ABTEST_DATABASE_URL={shlex.quote(database_url)}"
        for old, new in ports.items():
            command = re.sub(rf"\b{old}\b", str(new), command)
        lines.append(f"echo {shlex.quote(f'>>> [{number}] {command}')}")
        lines.append(command)
        if command.rstrip().endswith("&"):
            continue
        if expects_refusal(command):
            check = f"[ $? -ne 0 ] || {{ echo 'UNEXPECTED SUCCESS of command {number}'; exit 97; }}"
        else:
            check = f"[ $? -eq 0 ] || {{ echo 'FAILED: command {number}'; exit 98; }}"
        lines.append(check)
    lines.append("echo WALKTHROUGH-DONE")
    return "\n".join(lines) + "\n"


def _shims(bin_dir: Path) -> None:
    """`abtest` and `python` in PATH run this checkout with this interpreter."""
    bin_dir.mkdir()
    for name, target in (("abtest", f"{sys.executable} -m abtest"), ("python", sys.executable)):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)


def test_walkthrough_commands_are_parsed_from_the_readme():
    commands = walkthrough_commands(README.read_text(encoding="utf-8"))
    assert commands[0].startswith("export ABTEST_DATABASE_URL=")
    assert any(c.startswith("abtest experiments create") and "--settings" in c for c in commands)
    refused = [c.split(" #")[0].strip() for c in commands if expects_refusal(c)]
    assert refused == ["abtest gate knn", "abtest variants promote knn"]
    assert any(c.startswith("python examples/traffic.py") for c in commands)


def test_build_script_checks_every_command():
    script = build_script(["true", "false   # refused", "sleep 1 &"], "sqlite://", {})
    assert "FAILED: command 1" in script and "UNEXPECTED SUCCESS of command 2" in script
    assert "command 3" not in script.split(">>> [3]")[1]  # background: nothing to check
    bad = subprocess.run(["bash", "-c", build_script(["false"], "x", {})], capture_output=True)
    assert bad.returncode == 98
    good = subprocess.run(["bash", "-c", build_script(["false  # refused"], "x", {})])
    assert good.returncode == 0


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_readme_walkthrough_runs_as_written(database_url, tmp_path):
    commands = walkthrough_commands(README.read_text(encoding="utf-8"))
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{tmp_path / 'walkthrough.db'}"
    script = build_script(commands, database_url, {"8000": _free_port(), "8100": _free_port()})
    _shims(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ABTEST_", "OPENAI_"))}
    env.update(
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}",
        PYTHONPATH=str(ROOT),
        ABTEST_SPOOL_DIR=str(tmp_path / "spool"),
    )
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "WALKTHROUGH-DONE" in result.stdout, output[-6000:]
    assert "gate run #1 for knn: FAILED" in output
    assert "PASSED" in output.split("abtest gate minilm")[1]
    assert "variant minilm is approved for traffic" in output
    assert '"sent": 300' in output
    assert "Decision:" in output
    assert "shipped control: teacher is the champion" in output
    # after the conclusion the champion answers a new project outside any experiment
    champion_answer = output.split("localhost:8000/v1/projects")[-1]
    assert '"route":"champion"' in champion_answer.replace(" ", "")
    assert '"served_by":"teacher"' in champion_answer.replace(" ", "")
    assert "Traceback" not in output


def test_readme_settings_table_lists_exactly_the_real_variables():
    from abtest.settings import variable_names

    table = README.read_text(encoding="utf-8").split("### Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`((?:ABTEST|OPENAI)_[A-Z0-9_]+)`", table))
    assert listed == set(variable_names())


def test_readme_and_serve_help_agree_on_the_auth_default():
    import typer.main

    from abtest.cli import app

    row = next(
        line for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `ABTEST_AUTH_ENABLED`")
    )  # fmt: skip
    assert "`true` in `abtest serve`" in row
    serve = typer.main.get_command(app).commands["serve"]
    (auth,) = [p for p in serve.params if p.name == "auth"]
    assert "Default: on, unless ABTEST_AUTH_ENABLED=false" in auth.help
