"""Clinical sheets keyed by the hospital's identifiers: PatientID (an MRN) or AccessionNumber.

A DICOM center's spreadsheet (diagnosis, stage, notes) is keyed by identifiers the catalog
must never hold. Each key is turned into the pseudonym the DICOM ingest gave the same
patient or study, under the catalog's key, and only then joined:

- ``PatientID``: the subject id itself (:func:`xds.io.deid.patient_key`), so no
  identifier needs to be stored to match it, now or later;
- ``AccessionNumber``: ``studies.accession_key`` (:func:`xds.io.deid.accession_key`),
  which the DICOM ingest records per study, then the study's subject.

Rows update their subject's ``sex``, ``age``/``age_bin``, ``diagnosis``, ``race``,
``ethnicity`` (where the sheet gives a value) and ``extra`` (merged) in one new catalog
version; earlier versions keep what was there. Identifying columns are dropped as for NIfTI
sheets; the key column is read only to compute the pseudonym. A row no subject matches is
counted, never printed; a key that matches two subjects, or two rows that give one subject
different values, is reported in one line naming pseudonyms and line numbers, and skipped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog
from xds.ingest.sheets import KEY_COLUMNS, _norm, read_sheet
from xds.io.deid import accession_key, patient_key
from xds.schemas.errors import IngestError

FIELDS = ("sex", "age", "age_bin", "diagnosis", "race", "ethnicity")
"""The ``subjects`` columns a sheet may set (besides ``extra``)."""


@dataclass
class SheetReport:
    """What a clinical sheet matched and changed (counts only: no key is ever shown)."""

    key: str
    rows: int = 0
    matched: int = 0
    unmatched: int = 0
    subjects_updated: int = 0
    catalog_version: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class KeyedSheet:
    """A sheet read and checked, its rows still under their raw keys (kept in memory only)."""

    key: str
    rows: dict[str, dict]


def read_keyed_sheet(
    path: str | Path,
    key: str,
    *,
    key_column: str | None = None,
    secret: bytes = b"",
    center: str = "",
    dataset: str | None = None,
) -> KeyedSheet:
    """Read a clinical sheet keyed by ``key`` (``PatientID`` or ``AccessionNumber``).

    Args:
        path: CSV or TSV, one row per patient (PatientID) or per study (AccessionNumber).
        key: the DICOM attribute the key column holds.
        key_column: the key column's name when it is none of the usual ones
            (:data:`xds.ingest.sheets.KEY_COLUMNS`).
        secret: the catalog's key, so that an error names a patient by its subject id.
        center: the sheet's center (for that subject id).
        dataset: the center's dataset (default: the center's name).

    Raises:
        IngestError: an unknown key, an unreadable sheet, no key column, a bad value, or
            one key on rows that disagree (named by pseudonym, never by the key).
    """
    if key not in KEY_COLUMNS:
        raise IngestError(f"--key must be one of {', '.join(KEY_COLUMNS)}, not {key!r}")
    columns = (_norm(key_column),) if key_column else KEY_COLUMNS[key]

    def shown(raw: str) -> str:
        if key == "PatientID":
            return patient_key(secret, dataset or center, center, raw)
        return accession_key(secret, raw) or "a row"

    return KeyedSheet(key, read_sheet(path, shown, key_columns=columns))


def apply_sheet(
    catalog: Catalog, sheet: KeyedSheet, *, center: str, dataset: str | None = None
) -> SheetReport:
    """Join a keyed sheet to the center's subjects and store what it says.

    Raises:
        IngestError: the catalog holds no subject of this center and dataset.
    """
    dataset = dataset or center
    report = SheetReport(sheet.key, rows=len(sheet.rows))
    stored = {
        r["subject_id"]: r
        for r in catalog.read("subjects", "dataset = ? AND center = ?", [dataset, center])
        .to_pylist()
    }
    if not stored:
        raise IngestError(f"no subject of center {center!r} in dataset {dataset!r} to join to")
    secret = catalog.secret()
    targets = _targets(catalog, sheet, secret, dataset, center, stored, report)
    by_subject: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for raw, (sid, row) in targets.items():
        by_subject[sid].append((row, sheet.rows[raw]))
    changed = []
    for sid, entries in sorted(by_subject.items()):
        values = [_values(r) for _, r in entries]
        if any(v != values[0] for v in values[1:]):
            lines = ", ".join(label for label, _ in entries)
            report.problems.append(f"{sid}: rows {lines} give this subject different values; "
                                   "skipped")  # fmt: skip
            continue
        row = _updated(stored[sid], entries[0][1])
        if row != _updated(stored[sid], {}):  # a re-run changes nothing, adds no version
            changed.append(row)
    report.matched = sum(len(v) for v in by_subject.values())
    if changed:
        with catalog.transaction(f"sheet {dataset}/{center} by {sheet.key}") as txn:
            txn.replace("subjects", "subject_id", changed, [*FIELDS, "extra"])
        report.subjects_updated = txn.written.get("subjects", 0)
    report.catalog_version = catalog.version
    return report


def _targets(catalog, sheet, secret, dataset, center, stored, report) -> dict[str, tuple]:
    """Raw key -> (its subject id, how to name its row in a message).

    Only keys that match exactly one subject are kept; the unmatched ones are counted and
    the ambiguous ones reported.
    """
    out: dict[str, tuple] = {}
    if sheet.key == "PatientID":
        for n, raw in enumerate(sheet.rows, start=1):
            sid = patient_key(secret, dataset, center, raw)
            if sid in stored:
                out[raw] = (sid, f"#{n}")
            else:
                report.unmatched += 1
        return out
    keys = {raw: accession_key(secret, raw) for raw in sheet.rows}
    studies = catalog.read(
        "studies", "dataset = ? AND center = ? AND list_contains(?, accession_key)",
        [dataset, center, sorted(k for k in keys.values() if k)],
    ).to_pylist()  # fmt: skip
    subjects_of: dict[str, set[str]] = defaultdict(set)
    for s in studies:
        subjects_of[s["accession_key"]].add(s["subject_id"])
    for n, (raw, akey) in enumerate(keys.items(), start=1):
        found = subjects_of.get(akey, set()) & set(stored)
        if not found:
            report.unmatched += 1
        elif len(found) > 1:
            report.problems.append(
                f"{akey}: this accession number matches {len(found)} subjects "
                f"({', '.join(sorted(found))}); row #{n} skipped"
            )
        else:
            out[raw] = (next(iter(found)), f"#{n}")
    return out


def _values(record: dict) -> tuple:
    return (*(record.get(f) for f in FIELDS), tuple(sorted((record.get("extra") or {}).items())))


def _updated(row: dict, record: dict) -> dict:
    """The subject's columns after the sheet: its values where it gives one, extra merged."""
    out = {"subject_id": row["subject_id"]}
    for f in FIELDS:
        given = record.get(f)
        if f == "sex" and given == "U":  # a blank or unknown cell never overwrites
            given = None
        out[f] = given if given is not None else row.get(f)
    if record.get("age") is None:
        out["age_bin"] = row.get("age_bin")
    extra = dict(row.get("extra") or {})
    extra.update(record.get("extra") or {})
    out["extra"] = extra or None
    return out
