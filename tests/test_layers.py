"""The design's import rules, checked on the source: arrows point one way."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dfd"


def _imports(path: Path) -> set[str]:
    """Every ``dfd.*`` module a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return {name for name in found if name == "dfd" or name.startswith("dfd.")}


def _files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py")) if (PKG / sub).is_dir() else [PKG / f"{sub}.py"]


@pytest.mark.parametrize(
    "layer, allowed",
    [
        ("distill", ("dfd.distill",)),  # the method library imports nothing else of dfd
        ("models", ("dfd.models", "dfd.errors")),
        ("data", ("dfd.data", "dfd.errors")),
        ("results", ("dfd.results", "dfd.rundir")),
        ("rundir", ()),
        ("errors", ()),
        ("engine", ("dfd.engine", "dfd.models", "dfd.data", "dfd.distill", "dfd.rundir", "dfd.errors")),
    ],
)
def test_layers_import_only_what_the_design_allows(layer: str, allowed: tuple[str, ...]) -> None:
    for path in _files(layer):
        bad = sorted(m for m in _imports(path) if not m.startswith(allowed))
        assert not bad, f"{path.relative_to(PKG.parent)} imports {bad}"


def test_nothing_but_the_command_line_imports_the_command_line() -> None:
    for path in PKG.rglob("*.py"):
        if "cli" not in path.relative_to(PKG).parts:
            assert not any(m.startswith("dfd.cli") for m in _imports(path)), path
