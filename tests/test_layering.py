"""Dependencies point one way: abtest -> routing, analysis -> models (never back), and no
modules import each other, however indirectly."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"abtest", "routing", "analysis"},
    "routing": {"abtest", "analysis"},
    "analysis": {"abtest", "routing"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upward(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package", ["abtest", "routing", "models", "analysis", "migrations"])
def test_every_package_opens_with_a_docstring(package):
    source = (ROOT / package / "__init__.py").read_text(encoding="utf-8")
    assert ast.get_docstring(ast.parse(source)), f"{package}/__init__.py needs a docstring"


PACKAGES = ("abtest", "routing", "analysis", "models")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, module: str) -> list[str]:
    """Every name `module` imports, at the top, inside functions or under TYPE_CHECKING;
    `from a import b` yields `a.b` (b may be a module), relative imports made absolute."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the four packages it imports (the longest existing prefix)."""
    paths = {
        module_name(path, root): path
        for package in PACKAGES
        if (root / package).is_dir()
        for path in (root / package).rglob("*.py")
    }

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = {resolve(name) for name in imported_names(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def import_cycle(root: Path) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(import_graph(root)).prepare()
    except graphlib.CycleError as cycle:
        return list(cycle.args[1])
    return None


def test_no_import_cycles_in_the_four_packages():
    assert import_cycle(ROOT) is None


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    package = tmp_path / "abtest"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api" / "__init__.py").write_text("")
    (package / "api" / "deps.py").write_text("def f():\n    from abtest.runtime import g\n")
    (package / "runtime.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .api import deps\n"
    )
    assert set(import_cycle(tmp_path) or ()) == {"abtest.api.deps", "abtest.runtime"}
    (package / "runtime.py").write_text("import abtest\n")
    assert import_cycle(tmp_path) is None
