"""The package layers: ``agent`` and ``controlplane`` meet only in ``protos``, and ``protos`` imports neither.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "agent": {"controlplane", "edgefleet", "scripts", "tests"},
    "controlplane": {"agent", "edgefleet", "scripts", "tests"},
    "protos": {"agent", "controlplane", "edgefleet", "scripts", "tests"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        if "_pb2" not in path.name
        for name, line in sorted(imported_packages(path))
        if name in FORBIDDEN[package]
    ]
    assert crossings == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("import os\n\ndef lazy():\n    from agent.facts import collect_facts\n", encoding="utf-8")
    assert ("agent", 4) in imported_packages(source)
