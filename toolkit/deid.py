"""De-identification: keyed pseudonyms and the rules that keep PHI out of the catalog.

Subject ids are HMAC-SHA256 pseudonyms of (dataset, center, source key) under the
catalog's secret key: stable across re-ingests of the same catalog, not reversible without
the key, and different in another catalog. Ages above 89 are capped (HIPAA Safe Harbor).
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Sheet columns that may identify a person (HIPAA's 18 identifiers): never stored.
_PHI_COLUMN = re.compile(
    r"name|birth|dob|address|street|city|zip|postal|phone|fax|e-?mail|mrn|ssn|social|"
    r"accession|physician|doctor|institution|hospital|insurance|licen[cs]e|serial|url|"
    r"(^|_)ip($|_)|date|contact|(^|_)id$|^id|uid",
    re.IGNORECASE,
)
AGE_CAP = 90.0


def pseudonym(secret: bytes, *parts: str, prefix: str = "sub") -> str:
    """A keyed pseudonym: ``prefix-`` and 16 hex digits of HMAC-SHA256 over ``parts``."""
    digest = hmac.new(secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:16]}"


# Technical columns whose names would otherwise match (AMOS's "Manufacturer's Model Name").
_TECHNICAL_COLUMN = re.compile(
    r"^(manufacturer|vendor|scanner|model|modality|kvp|study_type|split)|"
    r"(manufacturer|scanner)_?s?_?model_?name$",
    re.IGNORECASE,
)


def is_phi_column(name: str) -> bool:
    """True for a spreadsheet column that may hold a direct identifier or a date."""
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if _TECHNICAL_COLUMN.search(key) and not re.search(r"date|birth|id$", key):
        return False
    return bool(_PHI_COLUMN.search(name.strip()))


def cap_age(age: float | None) -> float | None:
    """Age in years with everything above 89 reported as 90."""
    if age is None:
        return None
    return min(float(age), AGE_CAP)


def age_bin(age: float | None) -> str | None:
    """Decade bin of an age in years: "40-49"; "90+" for capped ages; "0-17" for minors."""
    if age is None:
        return None
    if age >= AGE_CAP:
        return "90+"
    if age < 18:
        return "0-17"
    low = int(age // 10 * 10)
    return f"{max(low, 18)}-{low + 9}"


MAX_SHIFT_DAYS = 1095


def date_shift_days(secret: bytes, subject_id: str) -> int:
    """Days to add to every date of a subject: -1 to -1095, the same for all its studies.

    Intervals between a subject's studies are kept; the shift is keyed by the catalog's
    secret, so it cannot be undone without it.
    """
    digest = hmac.new(secret, f"date-shift\0{subject_id}".encode(), hashlib.sha256).digest()
    return -(1 + int.from_bytes(digest[:4], "little") % MAX_SHIFT_DAYS)


_DATE_LIKE = re.compile(r"(19|20)\d{2}[-./]?\d{2}[-./]?\d{2}")
_LONG_NUMBER = re.compile(r"\d{6,}")


def clean_text(text: str | None, phi: list[str] = (), limit: int = 64) -> str | None:
    """A free-text descriptor with known PHI, dates and long numbers removed.

    This is the DICOM PS3.15 "clean descriptors" option applied to a series description:
    any string of ``phi`` (the subject's names, IDs, accession numbers) is cut out, case
    insensitively, as are date-like and ID-like digit runs.
    """
    if not text:
        return None
    out = str(text)
    for value in sorted((p for p in phi if p and len(p) >= 2), key=len, reverse=True):
        out = re.sub(re.escape(value), "", out, flags=re.IGNORECASE)
    out = _LONG_NUMBER.sub("", _DATE_LIKE.sub("", out))
    out = re.sub(r"\s{2,}", " ", out).strip(" _-^")
    return out[:limit] or None


# BIDS sidecar fields (dcm2niix names) kept in the catalog: acquisition technique only, which
# the DICOM PS3.15 basic profile retains. Everything else (institution, station, device
# serial number, times, UIDs, names, comments) is dropped.
SIDECAR_KEEP = frozenset(
    """Modality MagneticFieldStrength ImagingFrequency Manufacturer ManufacturersModelName
    BodyPart PatientPosition MRAcquisitionType SeriesDescription ProtocolName
    ScanningSequence SequenceVariant ScanOptions SequenceName PulseSequenceType ImageType
    SeriesNumber SliceThickness SpacingBetweenSlices SAR EchoTime EchoNumber EchoTrainLength
    RepetitionTime InversionTime FlipAngle PartialFourier BaseResolution PhaseEncodingSteps
    AcquisitionMatrixPE ReconMatrixPE PixelBandwidth PhaseEncodingDirection
    ImageOrientationPatientDICOM InPlanePhaseEncodingDirectionDICOM ParallelReductionFactorInPlane
    SpoilingState MTState DiffusionScheme PercentPhaseFOV PercentSampling SliceTiming
    EffectiveEchoSpacing TotalReadoutTime WaterFatShift RawImage BidsGuess ConversionSoftware
    ConversionSoftwareVersion ImageTypeText NonlinearGradientCorrection Dcm2bidsVersion
    XRayExposure ExposureTime KVP Exposure TubeCurrent ConvolutionKernel ReconstructionKernel
    ContrastBolusIngredient""".split()
)


def clean_sidecar(sidecar: dict, phi: list[str] = ()) -> dict:
    """A dcm2niix BIDS sidecar reduced to :data:`SIDECAR_KEEP`, descriptions cleaned."""
    out = {k: v for k, v in sidecar.items() if k in SIDECAR_KEEP}
    for key in ("SeriesDescription", "ProtocolName"):
        if key in out:
            cleaned = clean_text(out[key], phi)
            if cleaned is None:
                del out[key]
            else:
                out[key] = cleaned
    return out
