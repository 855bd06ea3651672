"""Which label of a scan to use when it has several."""

from __future__ import annotations

from xds.catalog import Catalog
from xds.schemas.tables import LABEL_ORIGINS

ORIGIN_PRIORITY = {origin: rank for rank, origin in enumerate(LABEL_ORIGINS)}
"""Merge rule of DESIGN §3: manual > revised > pseudo (then synthetic, prediction), the
order of :data:`xds.schemas.tables.LABEL_ORIGINS`."""

REFERENCE_ORIGINS = ("manual", "revised", "synthetic")
"""Origins a score may be measured against: a human's label, or the exact label an image
was generated from. Never a pseudo-label or a model's prediction."""


def best_labels(
    catalog: Catalog,
    scan_ids: list[str],
    *,
    derived: bool | None = None,
    class_set: str | None = None,
    origins: tuple[str, ...] | None = None,
) -> dict[str, dict]:
    """The label row to use per scan: manual > revised > pseudo, newest first within one.

    Args:
        catalog: the catalog version to read.
        scan_ids: the scans.
        derived: None for any label; False for source labels only (not harmonized ones);
            True for harmonized labels only.
        class_set: only labels harmonized to this class set (its recorded name).
        origins: only labels of these origins (e.g. :data:`REFERENCE_ORIGINS`).
    """
    best: dict[str, dict] = {}
    for row in catalog.rows_for("labels", scan_ids).to_pylist():
        if derived is not None and (row.get("derived_from") is not None) != derived:
            continue
        if class_set is not None and row.get("class_set") != class_set:
            continue
        if origins is not None and row["origin"] not in origins:
            continue
        key = (ORIGIN_PRIORITY.get(row["origin"], 9), -row["created_at"].timestamp())
        current = best.get(row["scan_id"])
        if current is None or key < current["_key"]:
            best[row["scan_id"]] = {**row, "_key": key}
    return best


def label_maps(catalog: Catalog, ids) -> dict[str, dict[int, str]]:
    """Index -> class name of each stored label map whose id is in ``ids``.

    Ids the catalog does not hold are left out; the caller says what that means.
    """
    rows = catalog.read("label_maps", "list_contains(?, label_map_id)", [sorted(ids)])
    return {
        r["label_map_id"]: dict(zip(r["indices"], r["names"], strict=True))
        for r in rows.to_pylist()
    }
