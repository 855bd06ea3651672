"""DICOM output of the phantom world: real series with vendor-specific tags and fake PHI.

Each phantom center writes its series the way its vendor does: Siemens, GE and Philips name
their sequences differently (``t2_haste_tra_mbh``, ``AX SSFSE T2``, ``T2W_SPAIR``), fill
``ScanningSequence``/``SequenceVariant``/``ImageType`` their own way, and mark opposed- and
in-phase echoes either in ``ImageType`` (Dixon, mDIXON) or only through the echo time. About
one series in eight gets an uninformative description, so a classifier has to read the tags.

Every subject carries fake but realistic PHI (name, ID, birth date, address, accession
numbers, physicians, institution) in the headers and, for two layouts, in the folder names,
so tests can prove that none of it reaches the catalog. The four folder layouts are ``flat``
(one folder), ``dicomdir`` (a DICOMDIR file set), ``nested`` (patient/study/series folders
named from PHI) and ``series`` (patient-ID/series-number folders, files without extension).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

DICOM_LAYOUTS = ("flat", "dicomdir", "nested", "series")
_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_ROOT = "1.2.826.0.1.3680043.10.1117."  # UID prefix of the phantom world

_FIRST = ("Anna", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas")
_LAST = ("Albrecht", "Bergstrom", "Castellano", "Dubois", "Eriksen", "Fontaine", "Gallagher")
_STREETS = ("Linden Allee", "Harbour Road", "Kastanienweg", "Rue des Lilas", "Elm Street")
_CONTRAST = ("Gadovist", "Dotarem", "MultiHance", "ProHance")

# vendor -> sequence -> (descriptions, ScanningSequence, SequenceVariant, ScanOptions,
#                         MRAcquisitionType, SequenceName, ImageType tail)
_SERIES_STYLE = {
    "SIEMENS": {
        "T1W": (
            ("t1_vibe_fs_tra_bh_post", "t1_vibe_fs_tra_caipi_KM"),
            "GR",
            "SP\\OSP",
            "FS",
            "3D",
            "*fl3d1",
            ("M", "ND", "NORM"),
        ),
        "T2W": (
            ("t2_haste_tra_mbh", "t2_tse_tra_fs_trig"),
            "SE",
            "SK\\SP\\OSP",
            "SAT1",
            "2D",
            "*haste2d1",
            ("M", "ND", "NORM"),
        ),
        "OOP": (("t1_fl2d_opp-in_tra_bh",), "GR", "SP", "", "2D", "*fl2d2", ("M", "ND")),
        "IP": (("t1_fl2d_opp-in_tra_bh",), "GR", "SP", "", "2D", "*fl2d2", ("M", "ND")),
    },
    "SIEMENS-DIXON": {
        "OOP": (
            ("t1_vibe_dixon_tra_opp",),
            "GR",
            "SP\\OSP",
            "",
            "3D",
            "*fl3d2",
            ("DIXON", "OPP_PHASE"),
        ),
        "IP": (
            ("t1_vibe_dixon_tra_in",),
            "GR",
            "SP\\OSP",
            "",
            "3D",
            "*fl3d2",
            ("DIXON", "IN_PHASE"),
        ),
    },
    "GE MEDICAL SYSTEMS": {
        "T1W": (
            ("Ax LAVA-Flex +C", "AX LAVA MULTIPHASE"),
            "GR",
            "SS\\SK",
            "FAST_GEMS\\EDR_GEMS",
            "3D",
            "lava",
            ("OTHER",),
        ),
        "T2W": (
            ("AX SSFSE T2", "Ax T2 FRFSE FS"),
            "SE",
            "SK",
            "FAST_GEMS\\FS",
            "2D",
            "ssfse",
            ("OTHER",),
        ),
        "OOP": (("Ax T1 Dual Echo",), "GR", "SS\\SP", "FAST_GEMS", "2D", "fgre", ("OTHER",)),
        "IP": (("Ax T1 Dual Echo",), "GR", "SS\\SP", "FAST_GEMS", "2D", "fgre", ("OTHER",)),
    },
    "Philips": {
        "T1W": (
            ("THRIVE_post", "T1W_THRIVE_GD"),
            "GR",
            "SP",
            "FS",
            "3D",
            "T1FFE",
            ("M_FFE", "M", "FFE"),
        ),
        "T2W": (("T2W_SPAIR", "sT2W_TSE"), "SE", "SK", "FS", "2D", "TSE", ("M_SE", "M", "SE")),
        "OOP": (("mDIXON",), "GR", "SP", "", "3D", "T1FFE", ("M_OP", "M", "OP")),
        "IP": (("mDIXON",), "GR", "SP", "", "3D", "T1FFE", ("M_IP", "M", "IP")),
    },
}
_VAGUE = ("AX", "Series 3", "abd_bh", "research_seq", "tra")


@dataclass(frozen=True)
class Person:
    """A phantom patient's identity: every field is PHI that ingest must remove."""

    name: str  # DICOM person name, LAST^FIRST
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    address: str
    age: int

    def strings(self) -> list[str]:
        """The PHI strings a leak check should search for."""
        last, first = self.name.split("^")
        return [self.name, last, first, self.patient_id, self.birth_date, self.address]


@dataclass(frozen=True)
class Study:
    """One imaging visit: its date, accession number and the sequences acquired."""

    uid: str
    date: str  # YYYYMMDD
    accession: str
    sequences: tuple[str, ...]

    @property
    def start_seconds(self) -> int:
        """When the visit began, seconds after midnight (07:00-17:00, fixed by the UID)."""
        return 7 * 3600 + int(hashlib.sha256(self.uid.encode()).hexdigest(), 16) % (10 * 3600)


def _tm(seconds: int) -> str:
    """Seconds after midnight as a DICOM TM value (HHMMSS)."""
    seconds %= 24 * 3600
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def make_person(rng: np.random.Generator, age: int, sex: str, study_year: int) -> Person:
    """A fake identity whose birth date agrees with ``age`` at a study in ``study_year``."""
    first, last = str(rng.choice(_FIRST)), str(rng.choice(_LAST))
    birth = dt.date(study_year - age - 1, int(rng.integers(1, 13)), int(rng.integers(1, 28)))
    return Person(
        name=f"{last.upper()}^{first}",
        patient_id=f"PID{int(rng.integers(10**7, 10**8))}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        address=f"{int(rng.integers(1, 200))} {rng.choice(_STREETS)}",
        age=age,
    )


def make_studies(
    rng: np.random.Generator, sequences: tuple[str, ...], year: int, key: str
) -> list[Study]:
    """One study, or (one subject in five) T2W acquired at a second visit weeks later."""
    day = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, 330)))
    split = "T2W" in sequences and len(sequences) > 1 and rng.random() < 0.2
    groups = [tuple(s for s in sequences if s != "T2W"), ("T2W",)] if split else [tuple(sequences)]
    studies = []
    for g, group in enumerate(groups):
        date = day + dt.timedelta(days=21 * g)
        studies.append(
            Study(
                uid=uid(key, "study", g),
                date=date.strftime("%Y%m%d"),
                accession=f"ACC{int(rng.integers(10**6, 10**7))}",
                sequences=group,
            )
        )
    return studies


def uid(*parts) -> str:
    """A deterministic DICOM UID under the phantom world's root."""
    digest = int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return (_ROOT + str(digest))[:64]


@dataclass(frozen=True)
class CenterTags:
    """What a center writes into every header besides the subject's own data."""

    vendor: str
    model: str
    field_strength: float
    institution: str
    institution_address: str
    station: str
    serial: str
    dixon: bool  # opposed/in-phase as a Dixon series (ImageType says so) or echo time only


def series_style(center: CenterTags, sequence: str) -> tuple:
    """The vendor's naming and tags for ``sequence`` at this center."""
    if center.dixon and center.vendor == "SIEMENS" and sequence in ("OOP", "IP"):
        return _SERIES_STYLE["SIEMENS-DIXON"][sequence]
    return _SERIES_STYLE[center.vendor][sequence]


def series_datasets(
    *,
    image: np.ndarray,
    affine: np.ndarray,
    sequence: str,
    protocol,
    center: CenterTags,
    person: Person,
    study: Study,
    series_uid: str,
    series_number: int,
    rng: np.random.Generator,
) -> list[Dataset]:
    """One DICOM dataset per slice (along the image's third axis) of an MR or CT series."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    row_dir, col_dir = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    ct = sequence == "CT"
    if ct:
        description, scanning, variant, options, acq, seq_name, tail = (
            ("ABD PV 1.0 B30f",),
            None,
            None,
            None,
            None,
            None,
            ("AXIAL",),
        )
    else:
        description, scanning, variant, options, acq, seq_name, tail = series_style(
            center, sequence
        )
    text = str(rng.choice(description))
    if rng.random() < 0.125:
        text = str(rng.choice(_VAGUE))
    contrast = str(rng.choice(_CONTRAST)) if protocol.contrast_agent else None
    out = []
    for k in range(image.shape[2]):
        ds = Dataset()
        sop = uid(series_uid, k)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = _CT_STORAGE if ct else _MR_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", *tail]
        ds.Modality = "CT" if ct else "MR"
        ds.Manufacturer = center.vendor
        ds.ManufacturerModelName = center.model
        ds.InstitutionName = center.institution
        ds.InstitutionAddress = center.institution_address
        ds.StationName = center.station
        ds.DeviceSerialNumber = center.serial
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.OperatorsName = "NURSE^JACKIE"
        ds.PatientName = person.name
        ds.PatientID = person.patient_id
        ds.PatientBirthDate = person.birth_date
        ds.PatientSex = person.sex
        ds.PatientAge = f"{person.age:03d}Y"
        ds.PatientAddress = person.address
        ds.StudyInstanceUID = study.uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = uid(study.uid, "frame-of-reference")  # one per visit
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.date
        ds.StudyTime = _tm(study.start_seconds)
        # each series some minutes after the last, so visits differ in time of day too
        ds.SeriesTime = ds.AcquisitionTime = _tm(study.start_seconds + 240 * series_number)
        ds.AccessionNumber = study.accession
        ds.StudyID = study.accession[-4:]
        ds.StudyDescription = "MR ABDOMEN PANCREAS" if not ct else "CT ABDOMEN"
        ds.SeriesDescription = text
        ds.ProtocolName = text
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "FFS"
        if ct:
            ds.KVP = 120
            ds.ConvolutionKernel = "B30f"
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
        else:
            ds.MagneticFieldStrength = center.field_strength
            ds.ScanningSequence = scanning
            ds.SequenceVariant = variant
            if options:
                ds.ScanOptions = options
            ds.MRAcquisitionType = acq
            ds.SequenceName = seq_name
            ds.RepetitionTime = round(protocol.tr_ms, 2)
            ds.EchoTime = round(protocol.te_ms, 2)
            ds.FlipAngle = round(protocol.flip_deg, 1)
            ds.EchoTrainLength = 1 if scanning == "GR" else 128
            ds.ImagingFrequency = round(42.577 * center.field_strength, 4)
            ds.ImagedNucleus = "1H"
        if contrast:
            ds.ContrastBolusAgent = contrast
        ds.SliceThickness = round(float(spacing[2]), 4)
        ds.SpacingBetweenSlices = round(float(spacing[2]), 4)
        ds.PixelSpacing = [round(float(spacing[1]), 5), round(float(spacing[0]), 5)]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.SliceLocation = round(float(position[2]), 4)
        pixels = image[:, :, k].T  # rows follow the second voxel axis, columns the first
        pixels = np.clip(pixels + (1024 if ct else 0), 0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write one dataset as a DICOM Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def series_folder(layout: str, person: Person, study: Study, ds: Dataset) -> Path:
    """Where a center's layout puts a series (relative to the center folder)."""
    if layout == "nested":
        last, first = person.name.split("^")
        name = "".join(c if c.isalnum() else "_" for c in ds.SeriesDescription)
        return (
            Path(f"{last}_{first}")
            / f"{study.date}_{study.accession}"
            / f"{int(ds.SeriesNumber):03d}_{name}"
        )
    if layout == "series":
        return Path(person.patient_id) / f"S{int(ds.SeriesNumber):04d}"
    return Path("staging" if layout == "dicomdir" else "")


def file_name(layout: str, ds: Dataset, counter: int) -> str:
    """A file name in the layout's style."""
    if layout == "nested":
        return f"IMG{int(ds.InstanceNumber):04d}.dcm"
    if layout == "series":
        return f"{int(ds.InstanceNumber):05d}"  # no extension, as many PACS exports
    return f"IM_{counter:06d}.dcm"


def broken_items(folder: Path, template: Path, person: Person) -> list[dict]:
    """Write what real exports contain besides good series; return what ingest must report.

    A text file, a structured report (not an image), an image without pixel data, a file
    cut short in its pixel data, a series missing a slice in the middle, and a three-plane
    localizer (named so, with mixed orientations in one series).
    """
    items = []
    (folder / "README.txt").write_text("Exported from PACS. Contact radiology for questions.\n")
    items.append({"file": "README.txt", "reason": "not a DICOM file"})

    base = pydicom.dcmread(template)
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = _TEXT_SR
    sr.file_meta.MediaStorageSOPInstanceUID = uid(person.patient_id, "sr")
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID, sr.SOPInstanceUID = _TEXT_SR, sr.file_meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate"):
        setattr(sr, tag, getattr(base, tag))
    sr.SeriesInstanceUID = uid(person.patient_id, "sr-series")
    sr.ContentDate = base.StudyDate
    write_dataset(sr, folder / "report_sr.dcm")
    items.append({"file": "report_sr.dcm", "reason": "not an image"})

    nopix = copy.deepcopy(base)
    del nopix.PixelData
    nopix.SeriesInstanceUID = uid(person.patient_id, "nopix")
    nopix.SOPInstanceUID = nopix.file_meta.MediaStorageSOPInstanceUID = uid(person.patient_id, "np")
    nopix.SeriesNumber = 90
    write_dataset(nopix, folder / "no_pixels.dcm")
    items.append({"file": "no_pixels.dcm", "reason": "no pixel data"})

    cut = copy.deepcopy(base)
    cut.SeriesInstanceUID = uid(person.patient_id, "cut")
    cut.SOPInstanceUID = cut.file_meta.MediaStorageSOPInstanceUID = uid(person.patient_id, "ct1")
    cut.SeriesNumber = 91
    write_dataset(cut, folder / "truncated.dcm")
    data = (folder / "truncated.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - len(base.PixelData) // 2])
    items.append({"file": "truncated.dcm", "reason": "truncated"})

    gap_uid, loc_uid = uid(person.patient_id, "gap"), uid(person.patient_id, "loc")
    for k in range(6):
        if k == 3:
            continue  # the missing slice
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = gap_uid, 92, k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(gap_uid, k)
        ipp = np.array(base.ImagePositionPatient, float)
        ds.ImagePositionPatient = [*ipp[:2], float(ipp[2]) + 5.0 * k]
        write_dataset(ds, folder / "gap" / f"gap_{k}.dcm")
    items.append({"file": "gap/", "reason": "slice gap"})
    planes = ([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])
    for k, iop in enumerate(planes * 2):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = loc_uid, 1, k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(loc_uid, k)
        ds.ImageOrientationPatient = iop
        ds.SeriesDescription = "localizer"
        write_dataset(ds, folder / "localizer" / f"loc_{k}.dcm")
    items.append({"file": "localizer/", "reason": "localizer"})
    return items


def write_dicomdir(center_folder: Path) -> None:
    """Turn a center's staged files into a DICOM file set with a DICOMDIR index."""
    from pydicom.fileset import FileSet

    staging = center_folder / "staging"
    fs = FileSet()
    for path in sorted(staging.rglob("*.dcm")):
        fs.add(path)
    fs.write(center_folder)
    for path in sorted(staging.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    staging.rmdir()
