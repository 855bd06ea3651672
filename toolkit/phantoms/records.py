"""What each phantom center writes beside its images: subject keys, metadata sheets, label maps.

Each center names its subjects and spells its sheet in its own style (BIDS, nnU-Net,
folders, flat), as real centers do; the ingest has to read them all.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from xds.phantoms.world import CenterSpec


STYLES = ("bids", "nnunet", "folders", "flat")


_DIAGNOSES = ("normal", "ipmn", "pdac", "pancreatitis")


_SYLLABLES = ("ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "de", "jo", "an", "el")


def subject_key(style: str, center: str, index: int, rng: np.random.Generator) -> str:
    """A subject's key as the center writes it in paths and sheets (identifier-like on purpose)."""
    # Keys look like what hospitals really put in paths (IDs, names): PHI to keep out.
    if style == "bids":
        return f"{index + 1:03d}"
    if style == "nnunet":
        return f"{center.upper()}_{int(rng.integers(10**6, 10**7))}"
    if style == "folders":
        return f"MRN{int(rng.integers(10**7, 10**8))}"
    first, last = ("".join(rng.choice(_SYLLABLES, 2)) for _ in range(2))
    return f"{last}_{first}{index}"


def hash_name(name: str) -> int:
    """A stable small integer for a name (Python's hash() is salted per process)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def demographics(style: str, key: str, rng: np.random.Generator) -> dict:
    """One subject's sheet row: sex, age, diagnosis, spelled in the center's style."""
    sex = str(rng.choice(["F", "M"]))
    age = int(rng.integers(22, 88))
    diagnosis = str(rng.choice(_DIAGNOSES, p=[0.4, 0.3, 0.2, 0.1]))
    if style == "bids":
        return {"participant_id": f"sub-{key}", "sex": sex, "age": age, "diagnosis": diagnosis}
    if style == "nnunet":
        year = 2024 - age
        return {
            "PatientID": key,
            "PatientName": f"DOE^{key[-4:]}",
            "BirthDate": f"{year}{int(rng.integers(1, 13)):02d}15",
            "Gender": {"F": "female", "M": "male"}[sex],
            "AgeYears": age,
            "Dx": diagnosis.upper(),
        }
    if style == "folders":
        return {
            "patient": key,
            "sex": sex.lower(),
            "age": age,
            "diagnosis": diagnosis,
            "weight_kg": round(float(rng.normal(75, 12)), 1),
        }
    return {
        "case": key,
        "Sex": {"F": "Female", "M": "Male"}[sex],
        "Age": age,
        "Indication": diagnosis,
        "Address": f"{int(rng.integers(1, 999))} Main Street",
    }


def write_sheet(folder: Path, style: str, rows: list[dict]) -> str:
    """Write the center's metadata sheet in its style; returns its file name."""
    name, delimiter = {
        "bids": ("participants.tsv", "\t"),
        "nnunet": ("clinical.csv", ","),
        "folders": ("metadata.csv", ","),
        "flat": ("demographics.csv", ","),
    }[style]
    with open(folder / name, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return name


def write_label_map(folder: Path, spec: CenterSpec) -> str:
    """Write the center's label-map file in its style; returns its file name."""
    # Four spellings of the same thing, as centers really send them.
    if spec.style == "nnunet":
        labels = {name: i for i, name in spec.label_map.items()}
        doc = {"channel_names": {"0": "MRI"}, "labels": labels, "file_ending": ".nii.gz"}
        (folder / "dataset.json").write_text(json.dumps(doc, indent=2))
        return "dataset.json"
    if spec.style == "folders":
        lines = ["index,name"] + [f"{i},{n}" for i, n in spec.label_map.items()]
        (folder / "labels.csv").write_text("\n".join(lines) + "\n")
        return "labels.csv"
    if spec.style == "flat":
        mapping = {name: i for i, name in spec.label_map.items() if i}
    else:
        mapping = {str(i): name for i, name in spec.label_map.items()}
    (folder / "label_map.json").write_text(json.dumps(mapping, indent=2))
    return "label_map.json"


CLINICAL_KEYS = ("PatientID", "AccessionNumber")
"""What a DICOM center's clinical sheet is keyed by, alternating over the centers."""


def write_clinical_sheet(folder: Path, center: str, index: int, subjects: list, seed: int):
    """Write a DICOM center's clinical sheet, keyed as hospitals key them; return its facts.

    ``subjects``: (person, studies, sequences) per subject. Even centers key the sheet by
    MRN (the PatientID in the headers), one row per patient; odd centers by accession
    number, one row per study. Each row carries the patient's name (identifying: ingest
    must drop it), a diagnosis and stage, and what the catalog can check independently:
    the sequences acquired and the number of visits.
    """
    key = CLINICAL_KEYS[index % len(CLINICAL_KEYS)]
    rng = np.random.default_rng([seed, 7, index])  # its own stream: the images stay as they were
    rows = []
    for person, studies, sequences in subjects:
        facts = {
            "Patient Name": person.name.replace("^", ", "),
            "diagnosis": str(rng.choice(_DIAGNOSES)),
            "stage": str(rng.choice(["I", "II", "III", "IV"])),
            "sequences": "+".join(sorted(sequences)),
            "visits": str(len(studies)),
        }
        if key == "PatientID":
            rows.append({"MRN": person.patient_id, **facts})
        else:
            rows.extend({"Accession Number": s.accession, **facts} for s in studies)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{center}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"path": f"{folder.name}/{path.name}", "key": key, "rows": len(rows)}


def write_mask_manifest(folder: Path, spec: CenterSpec, series: list[dict]) -> dict:
    """Write the manifest pairing a DICOM center's masks with their series, and its label map.

    ``series``: the generator's records (``mask``: the mask's path under the world folder,
    ``series_uid``: the source series). Returns where they are, relative to the world.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["mask", "series_uid"])
        for record in series:
            writer.writerow([Path(record["mask"]).name, record["series_uid"]])
    label_map = write_label_map(folder, spec)
    base = Path(folder.parent.name) / folder.name
    return {"path": base.as_posix(), "manifest": (base / "manifest.csv").as_posix(),
            "label_map": (base / label_map).as_posix(), "seg": (base / "seg").as_posix(),
            "rtstruct": (base / "rtstruct").as_posix()}  # fmt: skip


def write_segmentation(path: Path, datasets: list, labels: np.ndarray, names: dict[int, str]):
    """Write the DICOM SEG of one phantom series with highdicom, as an annotator's tool would.

    ``datasets``: the series' slices (slice k holds ``labels[:, :, k].T``, the generator's
    pixel order); ``names``: the center's label index -> class. Segments are numbered from
    1 in index order and coded with the vocabulary's SNOMED CT codes.
    """
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    from xds.schemas.vocabulary import vocabulary

    vocab = vocabulary()
    classes = [(i, n) for i, n in sorted(names.items()) if i and n != "background"]
    lut = np.zeros(max(names) + 1, np.uint8)
    descriptions = []
    for number, (index, name) in enumerate(classes, start=1):
        lut[index] = number
        code = vocab.code(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=CodedConcept("91723000", "SCT", "Anatomical structure"),
            segmented_property_type=CodedConcept(code, "SCT", name) if code
            else CodedConcept("85756007", "SCT", "Tissue"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        ))  # fmt: skip
    frames = np.stack([lut[labels[:, :, k].T] for k in range(labels.shape[2])])
    source = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900 + int(source.SeriesNumber),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="xds phantoms",
        manufacturer_model_name="annotator", software_versions="1", device_serial_number="1",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def write_annotations(folder: Path, name: str, labels, affine, datasets, names) -> str:
    """Write a series' annotations as a center sends them; return the mask's world path.

    The NIfTI mask an annotator drew, on the generator's grid, and the same labels as a
    DICOM SEG and as an RTSTRUCT, all beside (not in) the center's folder.
    """
    from xds.phantoms.rtstruct import write_structure_set

    save_nifti(labels.astype(np.uint8), affine, folder / f"mask_{name}.nii.gz")
    write_segmentation(folder / "seg" / f"seg_{name}.dcm", datasets, labels, names)
    write_structure_set(folder / "rtstruct" / f"rt_{name}.dcm", datasets, labels, names)
    return f"{folder.parent.name}/{folder.name}/mask_{name}.nii.gz"


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a generated volume as NIfTI (millimetres, scanner-anchored q/s-forms)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
