"""Sequences set by hand: an override CSV at ingest, ``xds set-sequence`` afterwards."""

from __future__ import annotations

import csv
from pathlib import Path

from xds.catalog import Catalog
from xds.schemas.errors import IngestError
from xds.schemas.tables import SEQUENCES


def read_overrides(path: str | Path) -> list[tuple[str, str, str, str]]:
    """Rows of a sequence-override CSV as (column, value, sequence, rule).

    Raises:
        IngestError: unreadable file, no ``sequence`` column, no key column, or an unknown
            sequence (the message names the file and line).
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"{path}: unreadable override file ({exc})") from None
    keys = [c for c in ("series_uid", "path", "series_description") if c in columns]
    if "sequence" not in columns or not keys:
        raise IngestError(
            f"{path}: needs a 'sequence' column and one of series_uid, path, series_description"
        )
    out = []
    for line, row in enumerate(rows, start=2):
        sequence = (row.get("sequence") or "").strip().upper()
        if sequence not in SEQUENCES:
            raise IngestError(
                f"{path}:{line}: unknown sequence {row.get('sequence')!r}; known: "
                f"{', '.join(SEQUENCES)}"
            )
        for key in keys:
            if value := (row.get(key) or "").strip():
                out.append((key, value, sequence, f"manual:{path.name}:{line}"))
                break
        else:
            raise IngestError(f"{path}:{line}: no series_uid, path or series_description value")
    return out


def match_override(overrides, uid: str, files: list[dict], first: dict):
    """The (sequence, rule) of the first override naming this series, else (None, None).

    A series UID match wins over a path match, which wins over a description match.
    """
    for column, value, sequence, rule in overrides:
        if column == "series_uid" and value == uid:
            return sequence, rule
    for column, value, sequence, rule in overrides:
        if column == "path" and any(
            h["rel"] == value or h["rel"].startswith(value.rstrip("/") + "/") for h in files
        ):
            return sequence, rule
    for column, value, sequence, rule in overrides:
        if column == "series_description" and value == (first.get("description") or ""):
            return sequence, rule
    return None, None


def set_sequence(catalog: Catalog, scan_ids: list[str], sequence: str, *, reason: str = "") -> int:
    """Correct the sequence of scans by hand (``xds set-sequence``); returns scans changed.

    The change is a new catalog version: ``sequence_source`` becomes ``manual`` and
    ``sequence_rule`` records ``manual:set-sequence`` (and the reason), so the classifier's
    answer stays visible in earlier versions. Re-ingesting the series does not undo it.

    Raises:
        IngestError: unknown sequence or scan ids (nothing is changed).
    """
    sequence = sequence.strip().upper()
    if sequence not in SEQUENCES:
        raise IngestError(f"unknown sequence {sequence!r}; known: {', '.join(SEQUENCES)}")
    ids = sorted(set(scan_ids))
    if not ids:
        raise IngestError("no scan ids given")
    latest = catalog.latest()
    found = set(latest.rows_for("scans", ids, ["scan_id"]).column("scan_id").to_pylist())
    unknown = [s for s in ids if s not in found]
    if unknown:
        raise IngestError(f"unknown scan id(s): {', '.join(unknown[:5])}")
    rule = "manual:set-sequence" + (f" ({reason})" if reason else "")
    with catalog.transaction(f"set-sequence {sequence} on {len(ids)} scan(s)") as txn:
        txn.update(
            "scans",
            "scan_id",
            ids,
            {
                "sequence": sequence,
                "sequence_source": "manual",
                "sequence_rule": rule,
                "sequence_confidence": 1.0,
            },
        )
    return txn.written.get("scans", 0)
