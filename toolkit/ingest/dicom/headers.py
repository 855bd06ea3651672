"""One DICOM file's header: the facts xds keeps, read without the pixels.

Also the two rules that set a series aside before conversion: localizers and projections.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from xds.ingest.sheets import parse_age

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
OTHER_PHI = ("InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "OperatorsName",
             "PerformingPhysicianName", "StationName", "DeviceSerialNumber", "PatientAddress",
             "OtherPatientIDs")  # fmt: skip
"""Identifying header fields besides the patient's name, IDs and dates."""


MODALITIES = ("MR", "CT", "PT")


_LOCALIZER = re.compile(
    r"locali[sz]er|scout|survey|topogram|surview|scanogram|pilot|3[ _-]?plane|"
    r"(^|[^a-z])loc([^a-z]|$)|aahead|aascout",
    re.IGNORECASE,
)


_PROJECTION = {"PROJECTION IMAGE", "MIP", "CSA MIP", "MINIP", "MNIP", "VOLUME RENDERING"}


def localizer_reason(head: dict) -> str | None:
    """Why a series is a localizer (the tag that says so), or None.

    ImageType's third value is LOCALIZER on Siemens and others; GE and Philips name them in
    the series description or protocol ("3-plane loc", "Survey", "SURVIEW", "Topogram").
    """
    image_type = [str(v).upper() for v in head.get("image_type") or []]
    if "LOCALIZER" in image_type:
        return "ImageType " + "\\".join(image_type)
    for key, tag in (("description", "SeriesDescription"), ("protocol_name", "ProtocolName")):
        if (text := head.get(key)) and _LOCALIZER.search(text):
            return f"{tag} names a localizer"
    return None


def projection_reason(head: dict) -> str | None:
    """Why a series is a projection (MIP, rendering), not slices of a volume, or None.

    ImageType says so (``DERIVED\\SECONDARY\\PROJECTION IMAGE``, Siemens ``CSA MIP``): each
    image sums or maxes a whole slab, so no voxel of it is a place in the body.
    """
    image_type = [str(v).upper().strip() for v in head.get("image_type") or []]
    if _PROJECTION & set(image_type):
        return "ImageType " + "\\".join(image_type)
    return None


def read_header(root: Path, rel: str, seen: set[str] | None = None) -> dict:
    """The facts of one file's header, or ``{"rel", "problem": (stage, reason)}``.

    Pixel data is not read: the file position after the header tells whether it is there
    and, for uncompressed transfer syntaxes, whether the file holds all of it. When
    ``seen`` holds the file's series UID, only the per-slice geometry is extracted (the
    series-level facts come from the first file of the series; converting every value of
    every header was two thirds of the header time).
    """
    try:
        return _read_header(root, rel, seen if seen is not None else set())
    except Exception as exc:  # a value pydicom read but cannot be interpreted
        return {"rel": rel, "problem": ("read", f"malformed header ({short_error(exc)})")}


def _read_header(root: Path, rel: str, seen: set[str]) -> dict:
    path = root / rel
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    return {"rel": rel, "problem": ("read", "not a DICOM file")}
            rest = size - fh.tell()
    except Exception as exc:  # pydicom raises many types for broken files
        return {"rel": rel, "problem": ("read", f"unreadable DICOM ({short_error(exc)})")}
    return _header(ds, rel, seen, rest)


def header_of_dataset(ds, rel: str, seen: set[str]) -> dict:
    """:func:`read_header`'s answer for a dataset already in memory, stored as ``rel``.

    For instances a PACS sent, parsed whole on arrival: the header is taken from the
    parsed dataset instead of reading the file written from it again.
    """
    try:
        return _header(ds, rel, seen, None if "PixelData" in ds else 0)
    except Exception as exc:  # a value pydicom read but cannot be interpreted
        return {"rel": rel, "problem": ("read", f"malformed header ({short_error(exc)})")}


def _header(ds, rel: str, seen: set[str], rest: int | None) -> dict:
    """The header facts of ``ds``.

    ``rest`` is the number of bytes after the header in its file, or None when the pixel
    data was read whole.
    """
    sop = str(
        ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "")
    )
    if sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return {
            "rel": rel,
            "problem": ("read", "DICOMDIR index (its images are read from the tree)"),
        }
    if sop == SEG_SOP:  # an annotation: placed on its series once the series is a scan
        return {"rel": rel, "annotation": "seg"}
    if sop == pydicom.uid.RTStructureSetStorage:
        return {"rel": rel, "annotation": "rtstruct"}
    sop_name = pydicom.uid.UID(sop).name if sop else "unknown SOP class"
    if "Rows" not in ds or "Columns" not in ds:
        if "Image" in sop_name:
            return {
                "rel": rel,
                "problem": ("read", f"image header without Rows/Columns ({sop_name})"),
            }
        return {"rel": rel, "problem": ("read", f"not an image ({sop_name})")}
    if rest is not None and rest < 8:
        return {"rel": rel, "problem": ("read", "no pixel data (an image header only)")}
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if rest is not None and syntax is not None and not syntax.is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("BitsAllocated", 16))
            // 8
            * frames
        )
        if rest - 8 < expected and rest - 12 < expected:
            return {
                "rel": rel,
                "problem": ("read", f"truncated: {rest} bytes of pixel data, expected {expected}"),
            }
    series_uid = str(ds.get("SeriesInstanceUID") or "") or _series_key(rel, ds)
    geometry = {
        "series_uid": series_uid,
        "iop": [round(float(v), 4) for v in ds.ImageOrientationPatient]
        if "ImageOrientationPatient" in ds
        else None,
        "ipp": [float(v) for v in ds.ImagePositionPatient]
        if "ImagePositionPatient" in ds
        else None,
        "size": (int(ds.Rows), int(ds.Columns)),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "sop_uid": str(ds.get("SOPInstanceUID") or ""),  # checked by a pull, never stored
    }
    if series_uid in seen:
        return {"rel": rel, **geometry}
    seen.add(series_uid)
    return {"rel": rel, **geometry, **_header_facts(ds, sop_name)}


def dataset_facts(ds) -> dict:
    """The facts :func:`read_header` gives of a file's first header, from a dataset in memory.

    For headers that arrive without a file: a PACS's instance metadata (DICOM JSON read by
    pydicom). ``rel`` is left for the caller to set.
    """
    sop = str(ds.get("SOPClassUID", "") or "")
    sop_name = pydicom.uid.UID(sop).name if sop else "unknown SOP class"
    return {"series_uid": str(ds.get("SeriesInstanceUID") or ""), **_header_facts(ds, sop_name)}


def _series_key(rel: str, ds) -> str:
    """A stand-in series UID for files whose SeriesInstanceUID was stripped.

    Careless anonymizers do that. The key is the folder, study, series number, description,
    image size and echo time, which files of one series share; it is hashed like any UID and
    never stored.
    """
    parts = [
        str(Path(rel).parent),
        *(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesNumber", "SeriesDescription",
                                         "Rows", "Columns", "EchoTime")),
    ]  # fmt: skip
    return "no-uid:" + "|".join(parts)


def _enhanced(ds, sequence: str, keyword: str):
    """A value of an enhanced (multi-frame) object's functional groups: shared, else frame 1."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            value = ds[groups][0][sequence][0].get(keyword)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
        if value not in (None, ""):
            return value
    return None


def _header_facts(ds, sop_name: str) -> dict:
    def text(keyword):
        value = ds.get(keyword)
        return None if value is None or value == "" else str(value).strip()

    def number(keyword, sequence=None):
        value = ds.get(keyword)
        if (value is None or value == "") and sequence:
            value = _enhanced(ds, sequence, keyword)
        try:
            return None if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            return None

    def values(keyword):
        value = ds.get(keyword)
        if value is None or value == "":
            return []
        if isinstance(value, str | bytes):
            return [str(value).strip()]
        return [str(v).strip() for v in value]

    b_value = number("DiffusionBValue")
    for private in ((0x0019, 0x100C), (0x0043, 0x1039)):  # Siemens, GE
        if b_value is None and private in ds:
            try:
                raw = ds[private].value
                raw = raw[0] if isinstance(raw, list | tuple | pydicom.multival.MultiValue) else raw
                b_value = float(raw.decode() if isinstance(raw, bytes) else raw)
            except (TypeError, ValueError, IndexError, UnicodeDecodeError):
                pass
    return {
        "sop_class": sop_name,
        "study_uid": text("StudyInstanceUID"),
        "patient_id": text("PatientID"),
        "patient_name": text("PatientName"),
        "birth_date": text("PatientBirthDate"),
        "sex": text("PatientSex"),
        "age": text("PatientAge"),
        "study_date": text("StudyDate"),
        "series_date": text("SeriesDate") or text("AcquisitionDate"),
        "acquisition_time": text("AcquisitionTime") or text("SeriesTime"),
        "accession": text("AccessionNumber"),
        "other_phi": [v for k in OTHER_PHI if (v := text(k))],
        "modality": text("Modality"),
        "manufacturer": text("Manufacturer"),
        "model": text("ManufacturerModelName"),
        "field_strength": number("MagneticFieldStrength"),
        "description": text("SeriesDescription"),
        "protocol_name": text("ProtocolName"),
        "sequence_name": text("SequenceName") or text("PulseSequenceName"),
        "body_part": text("BodyPartExamined"),
        "image_type": values("ImageType"),
        "acquisition_contrast": text("AcquisitionContrast")
        or _enhanced(ds, "MRImageFrameTypeSequence", "AcquisitionContrast"),
        "scanning_sequence": values("ScanningSequence")
        or {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["SE", "GR"]}.get(
            str(ds.get("EchoPulseSequence") or "").upper(), []
        ),
        "sequence_variant": values("SequenceVariant"),
        "scan_options": values("ScanOptions"),
        "mr_acquisition_type": text("MRAcquisitionType"),
        "te": number("EchoTime") or number("EffectiveEchoTime", "MREchoSequence"),
        "tr": number("RepetitionTime", "MRTimingAndRelatedParametersSequence"),
        "ti": number("InversionTime"),
        "flip": number("FlipAngle", "MRTimingAndRelatedParametersSequence"),
        "b_value": b_value,
        "contrast_agent": text("ContrastBolusAgent"),
        "series_number": text("SeriesNumber"),
    }


def subject_key(h: dict) -> str:
    """What links a subject's series: the patient ID, else name + birth date, else the study."""
    if h.get("patient_id"):
        return "id:" + h["patient_id"]
    if h.get("patient_name") or h.get("birth_date"):
        return f"name:{h.get('patient_name')}|{h.get('birth_date')}"
    return "study:" + str(h.get("study_uid") or h["series_uid"])


def dataset_phi(ds) -> set[str]:
    """:func:`phi_strings` of a dataset read by pydicom or highdicom (an annotation's)."""

    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    return phi_strings({
        "patient_id": text("PatientID"), "patient_name": text("PatientName"),
        "birth_date": text("PatientBirthDate"), "accession": text("AccessionNumber"),
        "study_date": text("StudyDate"), "other_phi": [v for k in OTHER_PHI if (v := text(k))],
    })  # fmt: skip


def phi_strings(h: dict) -> set[str]:
    """The identifiers of a header that must not survive in any stored text."""
    out = {h.get("patient_id"), h.get("birth_date"), h.get("accession"), h.get("study_date")}
    name = h.get("patient_name") or ""
    out |= {name, *re.split(r"[\^ ]+", name)}
    out |= set(h.get("other_phi") or ())
    return {v for v in out if v and len(v) >= 2}


def parse_date(text: str | None) -> dt.date | None:
    """A DICOM DA value as a date (None when absent or malformed)."""
    if not text:
        return None
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def seconds_of_day(text: str | None) -> int | None:
    """A DICOM TM value (HHMMSS.FFFFFF, or HH:MM:SS) as whole seconds after midnight.

    Only its keyed hash is stored (:func:`xds.schemas.ids.acquisition_time_key`): the
    audit matches it to find one study registered under two subject ids.
    """
    digits = (text or "").replace(":", "").split(".")[0]
    if len(digits) < 4 or not digits.isdigit():
        return None
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4]), int(digits[4:6] or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return hours * 3600 + minutes * 60 + min(seconds, 59)


def age_years(h: dict) -> float | None:
    """Age at the study: the PatientAge tag, else study date minus birth date."""
    try:
        age = parse_age(h.get("age"))
    except ValueError:
        age = None
    if age is not None:
        return age
    birth, study = parse_date(h.get("birth_date")), parse_date(h.get("study_date"))
    if birth and study and study >= birth:
        return round((study - birth).days / 365.25, 2)
    return None


def short_error(exc: BaseException) -> str:
    """An exception as one short line for a quarantine row."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def scrubber(phi_of: dict[str, set[str]]):
    """A function that replaces every identifier of ``phi_of`` in a text by its pseudonym.

    ``phi_of`` maps a subject id to the names, IDs and dates of that subject's headers. One
    pass of one regex (longest strings first), however many subjects the center has.
    """
    sid_of = {p.lower(): sid for sid, values in phi_of.items() for p in values if len(p) >= 3}
    if not sid_of:
        return lambda text: text
    pattern = re.compile(
        "|".join(re.escape(p) for p in sorted(sid_of, key=len, reverse=True)), re.I
    )
    return lambda text: pattern.sub(lambda m: sid_of[m.group(0).lower()], text)
