"""The QC page of a cohort or center (``xds qc --report DIR``).

Writes into one folder::

    qc.html          self-contained: distributions, mosaic, flagged list (sortable)
    qc.json          the run's summary and every scan's measures and flags
    figures/*.png    one strip/box plot per measure, per center (every scan a dot)
    mosaic/*.png     one slice per scan with its label's outline, highest scores first

Nothing is cut off: the plots' axes span every value, outliers included, and flagged scans
are drawn in red. The mosaic shows the :data:`MOSAIC_LIMIT` highest-scoring scans.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from xds.catalog import Catalog
from xds.evaluation.html import SORT_SCRIPT, STYLE, embed_png, html_table
from xds.evaluation.plots import pyplot
from xds.labels.selection import best_labels
from xds.qc.run import QcReport

MOSAIC_LIMIT = 120
PLOTTED = ("p50", "snr", "efc", "bias", "extent_x", "extent_z", "edge_contrast", "shift_gain",
           "mirror_gain", "far_gap_mm", "label_offset_mm", "body_at_border")  # fmt: skip


def _strip(frame: pd.DataFrame, measure: str, path: Path) -> Path:
    """Box and strip plot of one measure per center; flagged scans in red."""
    plt = pyplot()
    centers = sorted(frame["center"].unique())
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(centers) + 1.5), 3.0))
    rng = np.random.default_rng(0)
    data = [frame.loc[frame["center"] == c, measure].dropna() for c in centers]
    keep = [i for i, d in enumerate(data) if len(d)]
    if keep:
        ax.boxplot([data[i].to_numpy() for i in keep], positions=keep, widths=0.6,
                   showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#1f77b4", "alpha": 0.2})  # fmt: skip
    for i in keep:
        part = frame.loc[data[i].index]
        x = i + rng.uniform(-0.2, 0.2, len(part))
        flagged = part["flagged"].to_numpy()
        ax.scatter(x[~flagged], part[measure][~flagged], s=10, color="#1f77b4", alpha=0.8)
        ax.scatter(x[flagged], part[measure][flagged], s=16, color="#d62728", label="flagged")
    ax.set_xticks(range(len(centers)), centers, rotation=30, ha="right")
    ax.set_title(measure)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _slice(image_path: Path, label_path: Path | None, path: Path, title: str, bad: bool) -> Path:
    """The axial slice through the label's centre (else the middle), label outlined."""
    plt = pyplot()
    image = nib.as_closest_canonical(nib.load(str(image_path)))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    label = None
    if label_path is not None:
        lab_img = nib.load(str(label_path))
        if lab_img.shape[:3] == nib.load(str(image_path)).shape[:3]:
            label = np.asanyarray(nib.as_closest_canonical(lab_img).dataobj) > 0
    k = data.shape[2] // 2
    if label is not None and label.any():
        k = int(np.argwhere(label)[:, 2].mean())
    shown = data[:, :, k].T  # rows: anterior-posterior, columns: left-right (RAS)
    low, high = np.percentile(shown, [1, 99]) if shown.size else (0, 1)
    fig, ax = plt.subplots(figsize=(2.2, 2.2))
    ax.imshow(shown, cmap="gray", origin="lower", vmin=low, vmax=max(high, low + 1e-6))
    if label is not None and label[:, :, k].any():
        ax.contour(label[:, :, k].T.astype(float), levels=[0.5], colors=["#ffcc00"],
                   linewidths=0.8, origin="lower")  # fmt: skip
    ax.invert_xaxis()  # radiological view: the patient's right on the left
    ax.set_title(title, fontsize=6, color="#d62728" if bad else "#222")
    ax.axis("off")
    fig.tight_layout(pad=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_qc_page(catalog: Catalog, report: QcReport, out: str | Path) -> str:
    """Write the QC page of the scans ``report`` checked; return the HTML file's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(report.scan_ids)
    scans = {r["scan_id"]: r for r in catalog.rows_for("scan_view", ids).to_pylist()}
    rows = {r["scan_id"]: r for r in catalog.rows_for("qc", ids).to_pylist()}
    records = []
    for scan_id in ids:
        if scan_id not in rows:
            continue
        row, scan = rows[scan_id], scans[scan_id]
        records.append({"scan_id": scan_id, "center": scan["center"],
                        "sequence": scan["sequence"], "score": row["score"],
                        "flags": ", ".join(row["flags"] or []),
                        "reasons": "; ".join(row["reasons"] or []),
                        "flagged": bool(row["flags"]), **dict(row["measures"])})  # fmt: skip
    frame = pd.DataFrame.from_records(records)
    plotted = [m for m in PLOTTED if m in frame.columns and frame[m].notna().any()]
    figures = [_strip(frame, m, out / "figures" / f"{m}.png") for m in plotted]
    labels = best_labels(catalog, list(frame["scan_id"]))
    ordered = frame.sort_values(["score", "scan_id"], ascending=[False, True]).head(MOSAIC_LIMIT)
    tiles = []
    for rec in ordered.to_dict("records"):
        scan = scans[rec["scan_id"]]
        label = labels.get(rec["scan_id"])
        title = f"{rec['scan_id'][-8:]} {rec['center']} {rec['sequence']}" + (
            f"\n{rec['flags']}" if rec["flags"] else "")  # fmt: skip
        png = _slice(catalog.resolve(scan["image_uri"]),
                     catalog.resolve(label["uri"]) if label else None,
                     out / "mosaic" / f"{rec['scan_id']}.png", title, rec["flagged"])  # fmt: skip
        tiles.append(f'<figure>{embed_png(png)}</figure>')
    listed = ["scan_id", "center", "sequence", "score", "flags", "reasons"]
    flagged = frame[frame["flagged"]][listed].sort_values("score", ascending=False)
    counts = pd.DataFrame([{"flag": k, "scans": v} for k, v in report.by_flag.items()])
    sections = [
        ("Flags", html_table(counts) if not counts.empty else "<p>No scan stands out.</p>"),
        ("Flagged scans", html_table(flagged) if not flagged.empty else "<p>None.</p>"),
        ("Measures per center", '<div class="figs">'
         + "".join(embed_png(f) for f in figures) + "</div>"),
        (f"Mosaic (highest scores first, {len(tiles)} of {len(frame)})",
         '<div class="mosaic">' + "".join(tiles) + "</div>"),
        ("Every scan (the plotted measures; qc.json holds them all)",
         '<div class="wide">' + html_table(frame[["scan_id", "center", "sequence", "score",
                                                   "flags", *plotted]].round(4)) + "</div>"),
    ]  # fmt: skip
    page = out / "qc.html"
    page.write_text(_html(f"QC: {report.scope}", report, sections, catalog))
    (out / "qc.json").write_text(json.dumps({"summary": report.summary(),
                                             "scans": records}, indent=1, default=str))  # fmt: skip
    return str(page)


def _html(title: str, report: QcReport, sections: list[tuple[str, str]], catalog) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    css = STYLE + ".mosaic{display:flex;flex-wrap:wrap;gap:.3rem}figure{margin:0}" \
        ".wide{overflow-x:auto}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{css}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="meta">catalog {html.escape(catalog.root.name)}, version {catalog.version};
{report.scans} scans, {report.flagged} flagged. Peers: the scans of the same center and
sequence. Red: flagged. Mosaic slices in radiological view (patient's right on the left),
label outlined in yellow.</p>
{body}
<script>{SORT_SCRIPT}</script>
</body></html>
"""
