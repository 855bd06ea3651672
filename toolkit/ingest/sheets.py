"""Metadata sheets and label-map files as centers send them.

A sheet (CSV or TSV) has one row per subject. Columns are recognised by name, whatever the
spelling ("PatientID", "participant_id", "case"...); codings are normalised (sex "female",
"f", "F" -> "F"); columns that may identify a person are dropped; the rest goes to ``extra``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

from xds.io.deid import age_bin, cap_age, is_phi_column
from xds.schemas.errors import IngestError, SchemaError
from xds.schemas.vocabulary import canonical_map

_SUBJECT = (
    "subject",
    "subject_id",
    "participant_id",
    "participant",
    "patient",
    "patient_id",
    "patientid",
    "case",
    "case_id",
    "caseid",
    "pid",
    "amos_id",  # AMOS labeled_data_meta_0000_0599.csv
    "image_id",  # TotalSegmentator meta.csv
)
KEY_COLUMNS = {
    "PatientID": ("patientid", "patient_id", "mrn", "medical_record_number", "patient_number",
                  "pid", "patient"),
    "AccessionNumber": ("accessionnumber", "accession_number", "accession", "accession_no",
                        "acc"),
}  # fmt: skip
"""Column names of a clinical sheet's key, per DICOM attribute it holds (normalized)."""

_FIELDS = {
    "sex": ("sex", "gender", "patient_s_sex", "patientsex"),
    "age": ("age", "age_years", "ageyears", "age_at_scan", "patientage", "patient_s_age"),
    "diagnosis": ("diagnosis", "dx", "indication", "condition"),
    "race": ("race",),
    "ethnicity": ("ethnicity",),
}
_SEX = {
    "f": "F",
    "female": "F",
    "w": "F",
    "woman": "F",
    "m": "M",
    "male": "M",
    "man": "M",
    "o": "O",
    "other": "O",
    "u": "U",
    "unknown": "U",
    "": "U",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def read_sheet(
    path: str | Path,
    shown: Callable[[str], str] | None = None,
    key_columns: tuple[str, ...] | None = None,
) -> dict[str, dict]:
    """Subject rows of a sheet, keyed by the subject key as it appears in paths.

    With ``key_columns`` (normalized names; the first one present is the key) the sheet
    is keyed by a hospital identifier such as an MRN: no column naming a subject, patient
    or accession goes to ``extra``, whatever its name.

    A subject may appear on several rows only when they agree: rows that give one subject
    different values are refused, naming the subject by ``shown(key)`` (its pseudonym; the
    line numbers when not given), the lines and the columns that differ.

    Returns:
        key -> {"sex", "age", "age_bin", "diagnosis", "race", "ethnicity", "extra"}.

    Raises:
        IngestError: unreadable sheet, no recognisable subject column, a bad value, or one
            subject with conflicting rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{path}: cannot read sheet ({exc})") from None
    header = text.splitlines()[0] if text.strip() else ""
    delimiter = next((d for d in ("\t", ";") if d in header), ",")
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows:
        return {}
    columns = {_norm(c): c for c in rows[0]}
    candidates = key_columns or _SUBJECT
    subject_col = next((columns[c] for c in candidates if c in columns), None)
    if subject_col is None:
        what = "key" if key_columns else "subject"
        raise IngestError(
            f"{path}: no {what} column (expected one of: {', '.join(candidates)})"
        )
    identifying = {*_SUBJECT, *(c for names in KEY_COLUMNS.values() for c in names)}
    field_cols = {
        f: next((columns[c] for c in names if c in columns), None) for f, names in _FIELDS.items()
    }
    used = {subject_col, *filter(None, field_cols.values())}
    out = {}
    line_of: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        key = (row.get(subject_col) or "").strip()
        if not key:
            continue
        if key in line_of:
            first = rows[line_of[key] - 2]
            differ = sorted(c for c in row if c is not None and (row.get(c) or "").strip()
                            != (first.get(c) or "").strip())  # fmt: skip
            if differ:
                who = shown(key) if shown else "one subject"
                raise IngestError(
                    f"{path}: {who} is on lines {line_of[key]} and {i} with different "
                    f"{', '.join(_norm(c) for c in differ)}; keep one row per subject"
                )
            continue
        line_of[key] = i
        record = {
            f: (row.get(c) or "").strip() or None if c else None for f, c in field_cols.items()
        }
        sex = (record["sex"] or "").lower()
        if sex not in _SEX:
            raise IngestError(f"{path}:{i}: unknown sex {record['sex']!r}")
        record["sex"] = _SEX[sex]
        try:
            age = parse_age(record["age"])
        except ValueError:
            raise IngestError(f"{path}:{i}: age {record['age']!r} is not a number") from None
        record["age"] = cap_age(age)
        record["age_bin"] = age_bin(record["age"])
        if record["diagnosis"]:
            record["diagnosis"] = record["diagnosis"].lower()
        record["extra"] = {
            _norm(c): v
            for c, v in row.items()
            if c not in used and c is not None and v not in (None, "") and not is_phi_column(c)
            and not (key_columns and _norm(c) in identifying)
        }
        for alias in _aliases(key):
            out[alias] = record
    return out


def parse_age(text: str | None) -> float | None:
    """Years from ``"54"``, ``"54.5"`` or a DICOM age string (``"054Y"``, ``"018M"``).

    Raises:
        ValueError: anything else.
    """
    if text is None or str(text).strip() in ("", "nan", "NaN"):
        return None
    value = str(text).strip().upper()
    if m := re.fullmatch(r"(\d{1,3})([DWMY])", value):
        return int(m.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[m.group(2)]
    return float(value)


def _aliases(key: str) -> list[str]:
    # BIDS sheets write "sub-001" where paths hold "001" after the "sub-" prefix.
    return [key, key[4:]] if key.startswith("sub-") else [key]


def read_label_map(path: str | Path) -> dict[int, str]:
    """Index -> class name from a label-map file; background (0) included.

    Accepted: JSON ``{"1": "liver"}``, ``{"liver": 1}``, nnU-Net's dataset.json
    (``{"labels": {...}}``), or a CSV/TSV with ``index,name`` columns.

    Raises:
        IngestError: unreadable file, or indices that are not non-negative integers.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json":
            doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            doc = doc.get("labels", doc) if isinstance(doc, dict) else doc
            pairs = [(v, k) if isinstance(v, int) else (k, v) for k, v in doc.items()]
        else:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
            cols = {_norm(c): c for c in reader.fieldnames or []}
            idx = cols.get("index") or cols.get("label")
            name = cols.get("name") or cols.get("class")
            if not idx or not name:
                raise IngestError(f"{path}: label-map CSV needs 'index' and 'name' columns")
            pairs = [(r[idx], r[name]) for r in reader]
        mapping: dict[int, str] = {}
        for i, n in pairs:
            if int(i) in mapping:
                raise IngestError(f"{path}: duplicate label index {int(i)}")
            mapping[int(i)] = str(n).strip()
    except IngestError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise IngestError(f"{path}: {exc}") from None
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise IngestError(f"{path}: not a label map ({_first(exc)})") from None
    if any(i < 0 for i in mapping):
        raise IngestError(f"{path}: label indices must be >= 0")
    mapping.setdefault(0, "background")
    return dict(sorted(mapping.items()))


def canonical_label_map(path: str | Path) -> dict[int, str]:
    """:func:`read_label_map` with every name resolved to the vocabulary's canonical class.

    Raises:
        IngestError: the file is unusable, names a class the vocabulary does not know, or
            gives one index or one class twice (the message names the file and the value).
    """
    mapping = read_label_map(path)
    try:
        return {0: "background", **canonical_map(mapping, str(path))}
    except SchemaError as exc:
        raise IngestError(str(exc)) from None


def _no_duplicate_keys(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise IngestError(f"duplicate entry {key!r}")
    return dict(pairs)


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
