"""The README's CLI <-> Python table is true: every command and option exists, and every
function exists and accepts the arguments the table gives it."""

import ast
import importlib
import inspect
import re
import shlex
from pathlib import Path

import click
import pytest

from xds.catalog import Catalog
from xds.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _rows() -> list[tuple[str, str]]:
    block = README[README.index("<!-- api:start") : README.index("<!-- api:end -->")]
    rows = []
    for line in block.splitlines():
        cells = re.findall(r"\|\s*(.*?)\s*(?=\|)", line)
        if len(cells) == 2 and cells[0] not in ("CLI", "---"):
            rows.append((cells[0], cells[1]))
    return rows


ROWS = _rows()


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _resolve(dotted: str):
    """The object a dotted name in the table stands for (``cat.`` is a Catalog)."""
    head, *rest = dotted.split(".")
    if head == "cat":
        obj = Catalog
    elif head == "xds":
        for cut in range(len(rest), -1, -1):
            try:
                obj = importlib.import_module(".".join(["xds", *rest[:cut]]))
            except ModuleNotFoundError:
                continue
            rest = rest[cut:]
            break
    else:
        return None  # a local name of the example (r.fix, rows)
    for part in rest:
        obj = getattr(obj, part)
    return obj


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def test_the_table_is_there():
    assert len(ROWS) >= 25
    commands = {shlex.split(c)[1] for cli_cell, _ in ROWS for c in _code(cli_cell)}
    assert set(cli.commands) - {"labels"} <= commands, set(cli.commands) - commands


@pytest.mark.parametrize(("cli_cell", "py_cell"), ROWS, ids=[r[0][:60] for r in ROWS])
def test_cli_row(cli_cell, py_cell):
    for text in _code(cli_cell):
        words = shlex.split(text)
        assert words[0] == "xds"
        command: click.Command = cli
        words = words[1:]
        while isinstance(command, click.Group) and words and words[0] in command.commands:
            command, words = command.commands[words[0]], words[1:]
        assert command is not cli, f"{text}: unknown command"
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        flags = [w.split("=")[0] for w in words if w.startswith("-")]
        assert set(flags) <= known, f"{text}: unknown options {set(flags) - known}"


@pytest.mark.parametrize(("cli_cell", "py_cell"), ROWS, ids=[r[0][:60] for r in ROWS])
def test_python_row(cli_cell, py_cell):
    calls = 0
    for text in _code(py_cell):
        tree = ast.parse(text.replace("...", "None"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            target = _resolve(name) if name else None
            if target is None:
                continue
            calls += 1
            if inspect.isclass(target):
                target = target.__init__
            signature = inspect.signature(target)
            args = [None] * len(node.args)
            if name.startswith("cat."):
                args = [None, *args]  # self
            kwargs = {k.arg: None for k in node.keywords}
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                pytest.fail(f"{name}{signature}: the table calls it as {text!r}: {exc}")
    assert calls, f"{py_cell}: no xds function named"
