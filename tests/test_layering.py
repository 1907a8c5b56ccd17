"""Dependencies point one way: abtest -> routing, analysis -> models (never back)."""

import ast
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
