"""De-identification: keyed pseudonyms and the rules that keep PHI out of the catalog.

Subject ids are HMAC-SHA256 pseudonyms of (dataset, center, source key) under the
catalog's secret key: stable across re-ingests of the same catalog, not reversible without
the key, and different in another catalog. Ages above 89 are capped (HIPAA Safe Harbor).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from xds.catalog import Catalog

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


# -- source paths and messages -----------------------------------------------------------------
#
# Folder and file names of a hospital export carry identifiers (``SMITH_JOHN_MRN778899_t2.nii``,
# files named by their SOP instance UIDs). What is shown or stored of a source path keeps a
# component only when every word of it is known to be structural; any other component becomes
# a keyed hash with its extension kept ("when in doubt, hash").

_PSEUDONYM = re.compile(
    r"(?<![A-Za-z0-9])(?:sub|stu|ser|scn|rmt|lbl|x)-[0-9a-f]{16}(?![0-9a-f])"
)
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){3,}(?![\w])")
_ABS_PATH = re.compile(r"(?<![\w.<>{}()\]])(?:[A-Za-z]:\\|/)[^\s'\"`,;()\[\]{}<>]*")
_EXTENSIONS = (
    ".nii.gz", ".nii", ".dcm", ".ima", ".json", ".csv", ".tsv", ".txt", ".png", ".jpg",
    ".jpeg", ".mha", ".mhd", ".nrrd", ".xml", ".pdf", ".zip", ".gz", ".img", ".hdr",
)  # fmt: skip
# Words of folder layouts, dataset conventions, sequences, vendors and file kinds: a path
# component made only of these (and of pseudonyms and numbers of up to four digits) is kept.
SAFE_WORDS = frozenset(
    """
    anat func dwi fmap perf derivatives sourcedata rawdata raw data labels label labelstr
    labelsts labelsva labelsval images image imagestr imagests imagesva imagesval img imgs
    mask masks seg segs segmentation segmentations dseg gt ground truth groundtruth manual
    train training test testing val valid validation tr ts va case cases subject subjects
    sub patient patients study studies series scan scans volume volumes session ses run
    acq rec dicom dicomdir dcm nii gz json csv tsv txt png jpg notes readme report
    localizer scout survey secondary derived original primary other misc unknown ct mr mri
    pet pt t1 t1w t2 t2w t1wi t2wi pd flair oop opp ip inp in out of phase opposed dual
    echo haste vibe lava thrive flash gre space ssfse fse tse fs fat water sat dixon adc
    trace ax cor sag tra axial coronal sagittal pre post art arterial ven venous portal
    delayed del native contrast ce gd enhanced phase1 phase2 phase3 abdomen abdominal
    pancreas liver kidney kidneys spleen siemens ge philips toshiba canon hitachi uih
    healthcare medical systems center centre site source crosspan amos flare flare22 word
    totalsegmentator btcv chaos msd task07 task anon inphase outphase t1dual t2spir spir
    bids nnunet folders flat world phantoms metadata clinical sheet map lut dataset
    datasets im se st ser file files slice slices export exports cd dvd annotation annotations
    rtstruct rtss structure structures contour contours worklist manifest
    """.split()
)
_COUNTER = re.compile(
    r"^(im|img|i|mr|ct|pa|p|st|se|ser|s|sr|slice|file|image|series|run|echo|e|t|b)?(\d{1,8})$"
)


def _safe_token(token: str) -> bool:
    """True for a structural word or a counter.

    A counter is up to four digits, or a file-kind prefix and a zero-padded number below
    100000 (``IM000123``, ``PA000000``, ``SE12``); ``P1234567`` (an MRN's shape) is not.
    """
    if token in SAFE_WORDS:
        return True
    found = _COUNTER.match(token)
    if not found:
        return False
    prefix, digits = found.groups()
    return len(digits) <= 4 if not prefix else int(digits) < 100000


def _tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[^A-Za-z0-9]+", _PSEUDONYM.sub(" ", stem)) if t]


def valid_utf8(name: str) -> bool:
    """False for a name the file system gave as bytes that are not UTF-8 (surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_safe_name(component: str, keep: frozenset[str]) -> bool:
    if not valid_utf8(component):
        return False
    stem, _ = split_extension(component)
    if _UID.search(stem) or _DATE_LIKE.search(stem):
        return False
    return all(t.lower() in keep or _safe_token(t.lower()) for t in _tokens(stem))


def split_extension(name: str) -> tuple[str, str]:
    """``name`` as (stem, known extension); ``("1.2.840.113", "")`` for a dotted UID."""
    lowered = name.lower()
    for ext in _EXTENSIONS:
        if lowered.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return name, ""


def scrub_name(
    secret: bytes, component: str, keep: frozenset[str] = frozenset(), *, source: str | None = None
) -> str:
    """One path component as it may be shown or stored.

    It is kept when every word of it is structural (:data:`SAFE_WORDS`, pseudonyms, short
    numbers, ``keep``), else replaced by :func:`hashed_name` of ``source`` (the component as
    the folder holds it, before subject keys became pseudonyms; ``component`` itself when
    not given), so the file can be found again from the folder and the key alone.

    >>> scrub_name(b"k", "SMITH_JOHN_MRN778899_t2.nii.gz")[-7:]
    '.nii.gz'
    >>> scrub_name(b"k", "imagesTr")
    'imagesTr'
    """
    if component in ("", ".", ".."):
        return component
    if _is_safe_name(component, keep):
        return component
    return hashed_name(secret, source or component)


def hashed_name(secret: bytes, component: str) -> str:
    """``x-`` and 16 hex digits of HMAC-SHA256 of a path component, its extension kept."""
    raw = component.encode("utf-8", "surrogateescape")
    _, ext = split_extension(component)
    digest = hmac.new(secret, b"path-name\0" + raw, hashlib.sha256).hexdigest()[:16]
    return f"x-{digest}{ext if _is_safe_name(ext, frozenset()) else ''}"


def scrub_path(
    secret: bytes, rel: str, keep: frozenset[str] = frozenset(), *, source: str | None = None
) -> str:
    """A relative path with every component passed through :func:`scrub_name`.

    ``source`` is the same path as found in the folder (``rel`` may have subject keys
    replaced by pseudonyms); hashed components are hashes of its components.
    """
    parts = rel.split("/")
    found = source.split("/") if source is not None else []
    if len(found) != len(parts):
        found = [""] * len(parts)
    return "/".join(
        scrub_name(secret, part, keep, source=raw) for part, raw in zip(parts, found, strict=True)
    )


def matches_scrubbed(secret: bytes, stored: str, found: str) -> bool:
    """True when a folder's path component ``found`` is what ``stored`` shows of it."""
    if stored == found or stored == hashed_name(secret, found):
        return True
    if not _PSEUDONYM.search(stored):
        return False
    pattern = "".join(
        ".+" if _PSEUDONYM.fullmatch(piece) else re.escape(piece)
        for piece in re.split(f"({_PSEUDONYM.pattern})", stored)
        if piece
    )
    return re.fullmatch(pattern, found) is not None


def hidden_names(rel: str, keep: frozenset[str] = frozenset()) -> set[str]:
    """The source path components :func:`scrub_name` hides, as they could reappear (lower case).

    Each hidden component counts whole, without a ``.gz`` (what a gzip header's FNAME keeps)
    and, when its stem is compound (``SMITH_JOHN_MRN7788``, not a plain word such as
    ``notes``), without its extension.
    """
    out = set()
    for part in rel.split("/"):
        if part in ("", ".", "..") or not part.strip() or not valid_utf8(part):
            continue
        if _is_safe_name(part, keep):
            continue
        low = part.lower()
        out.add(low)
        if low.endswith(".gz"):
            out.add(low[:-3])
        stem, ext = split_extension(low)
        if ext and not stem.isalpha():
            out.add(stem)
    return {n for n in out if len(n) >= 4}


def scrub_message(text: str, replacements: dict[str, str] | None = None) -> str:
    """An error message safe to store and print.

    The given source strings are replaced by their scrubbed forms (longest first), then
    any other absolute path, DICOM UID and date-like string by ``<path>``, ``<uid>`` and
    ``<date>``; bytes that are not UTF-8 are escaped.
    """
    out = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    for raw, shown in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
        if raw:
            safe = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            out = out.replace(safe, shown)
    out = _ABS_PATH.sub("<path>", out)
    out = _UID.sub("<uid>", out)
    return _DATE_LIKE.sub("<date>", out)


_NAMES = ".xds-names"


def record_source_names(catalog: Catalog, relpaths: Iterable[str], keep: frozenset[str]) -> None:
    """Remember, as keyed hashes, the source folder and file names that scrubbing hides.

    ``xds verify`` looks for them in every stored byte: a folder named after a patient
    must never reappear. Only HMACs under the catalog's secret are kept, in a file beside
    it (mode 0600), so the file itself holds no name.
    """
    secret = catalog.secret()
    tokens: set[str] = set()
    for rel in relpaths:
        tokens |= hidden_names(rel, keep)
    digests = {name_digest(secret, t) for t in tokens}
    if not digests:  # nothing hidden (a PACS pull's folders are pseudonyms): no lock, no read
        return
    path = catalog.root / _NAMES
    with FileLock(str(catalog.root / f"{_NAMES}.lock")):
        known = set(path.read_text().split()) if path.exists() else set()
        if digests <= known:
            return
        tmp = path.with_name(f"{_NAMES}.{os.getpid()}.part")
        tmp.write_text("".join(f"{d}\n" for d in sorted(known | digests)))
        tmp.chmod(0o600)
        os.replace(tmp, path)


def source_name_digests(catalog_root: Path) -> set[str]:
    """The keyed hashes :func:`record_source_names` kept."""
    path = Path(catalog_root) / _NAMES
    return set(path.read_text().split()) if path.exists() else set()


def name_digest(secret: bytes, name: str) -> str:
    """The keyed hash of one lower-case source path component."""
    return hmac.new(secret, b"source-name\0" + name.encode(), hashlib.sha256).hexdigest()[:24]


def patient_key(secret: bytes, dataset: str, center: str, patient_id: str) -> str:
    """The subject id ``xds ingest dicom`` gives a DICOM patient ID.

    A clinical sheet keyed by PatientID (an MRN) joins on it.
    """
    return pseudonym(secret, dataset, center, "id:" + patient_id.strip())


def accession_key(secret: bytes, accession: str | None) -> str | None:
    """The keyed pseudonym of an accession number (``studies.accession_key``), or None."""
    accession = (accession or "").strip()
    return pseudonym(secret, "accession", accession, prefix="acc") if accession else None
