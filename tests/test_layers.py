"""The house rules of the code: layers, circles, sizes, packaging.

- The layers import one way: schemas <- catalog <- toolkit <- trainers <- cli.
- torch & co. are imported by the trainers only; the toolkit asks ``xds.io.optional`` for
  them (a missing package is one line naming the extra), so ``import xds`` stays light.
- No import circle between modules; no module over 500 lines; every package is packaged.
"""

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# folder -> xds modules it may import (prefixes)
ALLOWED = {
    "schemas": ("xds.schemas",),
    "catalog": ("xds.schemas", "xds.catalog"),
    "toolkit": ("xds.schemas", "xds.catalog", "xds."),
    "trainers": ("xds.",),
    "cli": ("xds.",),
}
FOLDER_OF = {"xds.schemas": "schemas", "xds.catalog": "catalog", "xds.trainers": "trainers",
             "xds.cli": "cli", "xds": "toolkit"}  # fmt: skip
FORBIDDEN_IN_TOOLKIT = ("xds.trainers", "xds.cli")
HEAVY = ("torch", "torchio", "nnunetv2")
MAX_LINES = 500


def _files():
    return [p for folder in ALLOWED for p in sorted((ROOT / folder).rglob("*.py"))]


def _module_of(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    prefix = {v: k for k, v in FOLDER_OF.items()}[folder]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([prefix, *rest])


MODULES = {_module_of(p): p for p in _files()}


def _type_checking(stmt) -> bool:
    """``if TYPE_CHECKING:`` blocks: imports for annotations, never run."""
    return isinstance(stmt, ast.If) and getattr(stmt.test, "id", None) == "TYPE_CHECKING"


def _imports(path: Path, top_level: bool = False) -> list[str]:
    """Modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod`` when ``mod`` is
    a module); with ``top_level``, only those imported when it is imported (not inside a
    function or class body)."""
    tree = ast.parse(path.read_text())
    names = []
    nodes = ast.walk(tree)
    if top_level:
        nodes = (
            n
            for stmt in tree.body
            if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not _type_checking(stmt)
            for n in ast.walk(stmt)
        )
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found = [s for s in subs if s in MODULES]
            names += found if len(found) == len(subs) else [node.module, *found]
    return names


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder):
    for path in (ROOT / folder).rglob("*.py"):
        for name in _imports(path):
            if name == "xds" or name.startswith("xds."):
                assert name.startswith(ALLOWED[folder]), f"{path}: imports {name}"
                if folder == "toolkit":
                    assert not name.startswith(FORBIDDEN_IN_TOOLKIT), f"{path}: imports {name}"
        if folder == "trainers":
            continue
        # outside trainers/ torch & co. are never imported, at any level: the toolkit asks
        # xds.io.optional.optional() for them, the CLI calls the library
        for name in _imports(path):
            assert name.split(".")[0] not in HEAVY, f"{path}: imports {name}"


def test_optional_dependencies_are_asked_for_with_their_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for path in (ROOT / "toolkit").rglob("*.py"):
        for module, extra in re.findall(r'optional\(\s*"([\w.]+)",\s*"[^"]+",\s*"(\w+)"\)',
                                        path.read_text()):  # fmt: skip
            assert extra in extras, f"{path}: no extra {extra!r} in pyproject.toml"
            wanted = module.split(".")[0]
            assert any(dep.startswith(wanted) for dep in extras[extra]), (
                f"{path}: the {extra} extra does not install {wanted}"
            )


def test_code_imports_the_namespace_not_the_folders():
    for path in _files():
        for name in _imports(path):
            assert name.split(".")[0] not in ALLOWED, f"{path}: imports {name}"


def test_no_import_circle():
    """Module-level imports between xds modules form no cycle.

    ``import a.b.c`` also runs the packages' ``__init__``; those only re-export their own
    submodules, so the edges counted are the ones the code writes.
    """
    graph = {
        module: sorted({n for n in _imports(path, top_level=True) if n in MODULES} - {module})
        for module, path in MODULES.items()
        if not path.name == "__init__.py"
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_over_500_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in _files()}
    big = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_every_package_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {_module_of(p) for p in _files() if p.name == "__init__.py"}
    assert found == listed, f"missing: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_cli_mirrors_the_packages():
    """One CLI module per toolkit package (plus training, demo and the shared helpers)."""
    from xds.cli.main import MODULES as COMMAND_MODULES

    names = {m.__name__.rsplit(".", 1)[1] for m in COMMAND_MODULES}
    packages = {p.parent.name for p in (ROOT / "toolkit").glob("*/__init__.py")}
    assert packages - {"io", "pseudo"} <= names | {"catalog"}, packages - names
    helpers = {"main", "options", "output", "__init__"}
    on_disk = {p.stem for p in (ROOT / "cli").glob("*.py")} - helpers
    assert on_disk == names, f"cli modules not registered: {on_disk - names}"


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    import xds.io.optional as opt
    from xds.schemas.errors import MissingDependencyError, XdsError

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])

    monkeypatch.setattr(opt, "import_module", missing)
    with pytest.raises(MissingDependencyError, match=r"pip install 'xds-toolkit\[synth\]'") as err:
        opt.optional("torch.nn.functional", "Anatomix synthesis", "synth")
    assert isinstance(err.value, XdsError)  # the CLI prints it as one line, exit 1

    def broken(name):  # torch is there but one of its own imports fails: keep that error
        raise ModuleNotFoundError("No module named 'sympy'", name="sympy")

    monkeypatch.setattr(opt, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="sympy"):
        opt.optional("torch", "Anatomix synthesis", "synth")
