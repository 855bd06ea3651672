"""Printing for the CLI: JSON for machines, rich tables for people."""

from __future__ import annotations

import json
from datetime import date, datetime

import click


def _default(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


def emit_json(data) -> None:
    """Print ``data`` as JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=_default))


def print_table(rows: list[dict], title: str | None = None, columns: list[str] | None = None):
    """Print rows as a table on stdout."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Cells, titles and headers are data, never markup: "[/x]" prints as it is.
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=Text(title) if title else None, show_lines=False)
    for col in columns:
        table.add_column(Text(str(col)))
    for row in rows:
        table.add_row(*(Text("" if row.get(c) is None else str(row.get(c))) for c in columns))
    Console(soft_wrap=True).print(table)


def print_kv(data: dict, title: str | None = None) -> None:
    """Print a flat dict as a two-column table."""
    print_table([{"field": k, "value": v} for k, v in data.items()], title, ["field", "value"])


def warn(message: str) -> None:
    """One line on stderr."""
    click.echo(message, err=True)
