"""The pieces of xds' self-contained HTML pages (``xds report``, ``xds qc --report``).

Figures are embedded as base64 PNGs, tables sort by a click on their header, and the page
needs nothing from the network.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd


def embed_png(path: Path) -> str:
    """An ``<img>`` holding the PNG at ``path``."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def html_table(frame: pd.DataFrame) -> str:
    """A sortable HTML table of ``frame`` (numbers to 4 significant digits)."""
    if frame.empty:
        return "<p><em>nothing to compare</em></p>"
    return frame.to_html(
        index=False, classes="sortable", float_format=lambda v: f"{v:.4g}", na_rep="–",
        border=0, escape=True,
    )  # fmt: skip


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0 1rem}
th,td{padding:.2rem .5rem;border-bottom:1px solid #eee;text-align:right}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs img{max-width:100%;height:auto}
img{max-width:100%}.meta{color:#555;font-size:.85rem}
"""

# Click a column header to sort the table by it (numbers numerically, '–' last).
SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1;
      th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
        return dir * x.localeCompare(y);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


