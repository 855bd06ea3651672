"""The layers import one way: schemas <- catalog <- toolkit <- trainers <- cli."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> xds modules it may import (prefixes)
ALLOWED = {
    "schemas": ("xds.schemas",),
    "catalog": ("xds.schemas", "xds.catalog"),
    "toolkit": ("xds.schemas", "xds.catalog", "xds."),
    "trainers": ("xds.",),
    "cli": ("xds.",),
}
FORBIDDEN_IN_TOOLKIT = ("xds.trainers", "xds.cli")
HEAVY = ("torch", "torchio", "nnunetv2")


def _imports(path: Path, top_level: bool = False) -> list[str]:
    """Modules ``path`` imports; with ``top_level``, only those imported when it is imported
    (not inside a function)."""
    tree = ast.parse(path.read_text())
    names = []
    nodes = ast.walk(tree)
    if top_level:
        nodes = (
            n
            for stmt in tree.body
            if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            for n in ast.walk(stmt)
        )
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder):
    for path in (ROOT / folder).rglob("*.py"):
        for name in _imports(path):
            if name == "xds" or name.startswith("xds."):
                assert name.startswith(ALLOWED[folder]), f"{path}: imports {name}"
                if folder == "toolkit":
                    assert not name.startswith(FORBIDDEN_IN_TOOLKIT), f"{path}: imports {name}"
        if folder != "trainers":
            # torch & co. only inside functions outside trainers/: `import xds` stays light
            for name in _imports(path, top_level=True):
                assert name.split(".")[0] not in HEAVY, f"{path}: imports {name} at top level"


def test_code_imports_the_namespace_not_the_folders():
    for folder in ALLOWED:
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                assert name.split(".")[0] not in ALLOWED, f"{path}: imports {name}"
