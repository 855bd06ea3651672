"""The phantom world: a generated multi-center abdominal MRI collection (DESIGN §5).

Each center differs the way real ones do: vendor and field strength (so protocols and
relaxation times), grid spacing and size, orientation, noise and bias field, the label-index
convention (some centers label only the pancreas), the folder layout, and the spreadsheet of
demographics (column names, codings, and PHI-looking columns that ingest must drop).
Everything follows from ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from xds.ingest.layouts import LAYOUTS
from xds.io.parallel import progress_map
from xds.phantoms.anatomy import ORGANS, Anatomy, labels_from_tissues
from xds.phantoms.dicom import (
    DICOM_LAYOUTS,
    CenterTags,
    Person,
    Study,
    broken_items,
    file_name,
    make_person,
    make_studies,
    series_datasets,
    series_folder,
    uid,
    write_dataset,
    write_dicomdir,
)
from xds.phantoms.physics import Protocol, default_protocol, render
from xds.phantoms.records import (
    STYLES,
    demographics,
    hash_name,
    save_nifti,
    subject_key,
    write_annotations,
    write_clinical_sheet,
    write_label_map,
    write_mask_manifest,
    write_sheet,
)

CENTER_NAMES = ("Aurora", "Boreal", "Cedar", "Delta", "Ember", "Fjord", "Glen", "Harbor")
_VENDORS = (
    ("SIEMENS", "Aera", 1.5, 1.0),
    ("GE MEDICAL SYSTEMS", "Discovery MR750", 3.0, 2.2),
    ("Philips", "Ingenia", 3.0, 0.6),
    ("SIEMENS", "Skyra", 3.0, 1.4),
    ("GE MEDICAL SYSTEMS", "Signa HDxt", 1.5, 1.8),
    ("Philips", "Achieva", 1.5, 0.8),
)
# How each layout style spells the sequences in its paths.
_SEQUENCE_TOKENS = {
    "bids": {"T1W": "T1w", "T2W": "T2w", "OOP": "opp", "IP": "inp", "CT": "ct"},
    "nnunet": {"T1W": "T1W", "T2W": "T2W", "OOP": "OOP", "IP": "IP", "CT": "CT"},
    "folders": {
        "T1W": "T1_VIBE",
        "T2W": "T2_HASTE",
        "OOP": "OPP_PHASE",
        "IP": "IN_PHASE",
        "CT": "CT_ABD",
    },
    "flat": {"T1W": "t1", "T2W": "t2", "OOP": "oop", "IP": "ip", "CT": "ct"},
}
_ORIENTATIONS = ("RAS", "LPS", "LAS", "RPI", "LPI", "RAI", "LAI", "RPS")
_DIRECTION = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class CenterSpec:
    """Everything that makes one phantom center different from the others."""

    name: str
    style: str
    vendor: str
    scanner_model: str
    field_strength: float
    gain: float
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    noise: float
    bias: float
    classes: tuple[str, ...]  # label index i+1 -> classes[i]
    protocols: dict[str, Protocol] = field(default_factory=dict)

    @property
    def label_map(self) -> dict[int, str]:
        """Index -> class name of this center's label maps (0 is background)."""
        return {0: "background", **{i + 1: c for i, c in enumerate(self.classes)}}


def make_centers(
    n_centers: int, sequences: tuple[str, ...], shape: tuple[int, int, int], seed: int
) -> list[CenterSpec]:
    """Draw ``n_centers`` centers; each style, vendor and orientation appears in turn."""
    centers = []
    for c in range(n_centers):
        rng = np.random.default_rng([seed, 1, c])
        vendor, model, b0, gain = _VENDORS[c % len(_VENDORS)]
        style = STYLES[c % len(STYLES)]
        grid = tuple(int(n * rng.uniform(0.9, 1.1)) for n in shape)
        fov = (rng.uniform(320, 380), rng.uniform(300, 360), rng.uniform(150, 190))
        spacing = tuple(round(f / n, 3) for f, n in zip(fov, grid, strict=True))
        if style == "flat":
            classes = ("pancreas",)  # CrossPan-style: only the pancreas is labelled
        elif style == "folders":
            classes = tuple(o for o in ORGANS if o not in ("inferior_vena_cava", "aorta"))
        elif style == "nnunet":
            classes = tuple(reversed(ORGANS))
        else:
            classes = tuple(ORGANS)
        name = CENTER_NAMES[c % len(CENTER_NAMES)] + ("" if c < len(CENTER_NAMES) else str(c))
        centers.append(
            CenterSpec(
                name=name,
                style=style,
                vendor=vendor,
                scanner_model=model,
                field_strength=b0,
                gain=gain * 1000,
                shape=grid,
                spacing=spacing,
                orientation=_ORIENTATIONS[c % len(_ORIENTATIONS)],
                noise=float(rng.uniform(0.03, 0.08)),
                bias=float(rng.uniform(0.1, 0.35)),
                classes=classes,
                protocols={s: default_protocol(s, b0, rng) for s in sequences},
            )
        )
    return centers


def affine_for(center: CenterSpec, offset_mm: np.ndarray) -> np.ndarray:
    """Voxel -> RAS+ mm affine of a center's grid, centered on the abdomen plus an offset."""
    affine = np.eye(4)
    for axis, code in enumerate(center.orientation):
        world_axis, sign = _DIRECTION[code]
        affine[:3, axis] = 0.0
        affine[world_axis, axis] = sign * center.spacing[axis]
    half = (np.asarray(center.shape) - 1) / 2
    affine[:3, 3] = np.array((0.0, -5.0, 10.0)) + offset_mm - affine[:3, :3] @ half
    return affine


@dataclass(frozen=True)
class _SubjectJob:
    root: str
    center: CenterSpec
    index: int
    key: str
    seed: int
    sequences: tuple[str, ...]
    variability: float = 1.0  # see Anatomy
    # DICOM output only: the identity, visits and tags written into every header.
    person: Person | None = None
    studies: tuple[Study, ...] = ()
    tags: CenterTags | None = None
    dicom_layout: str = ""
    annotations: bool = False  # write each series' NIfTI mask and DICOM SEG too


def _render_subject(job: _SubjectJob):
    """A subject's anatomy rendered by every sequence: (affine, labels, {sequence: image})."""
    center = job.center
    rng = np.random.default_rng([job.seed, 2, hash_name(center.name), job.index])
    anatomy = Anatomy(
        rng,
        scale=float(rng.uniform(0.9, 1.08)),
        subcutaneous_fat_mm=float(rng.uniform(8, 30)),
        lesion=str(rng.choice(["none", "none", "cyst", "tumour"])),
        variability=job.variability,
    )
    liver_fat = float(rng.choice([0.02, 0.05, 0.15, 0.25], p=[0.5, 0.2, 0.2, 0.1]))
    affine = affine_for(center, rng.uniform(-10, 10, 3))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in center.shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    tissues = anatomy.tissue_map(world)
    labels = labels_from_tissues(tissues, {n: i for i, n in center.label_map.items() if i})
    images = {}
    for sequence in job.sequences:
        protocol = center.protocols[sequence]
        image = render(
            tissues,
            protocol,
            center.spacing,
            rng,
            noise=center.noise,
            bias=center.bias,
            fat_fraction_liver=liver_fat,
        )
        if sequence != "CT":
            image = image / max(float(np.percentile(image, 99.5)), 1e-6)
            image = image * center.gain * rng.uniform(0.8, 1.2)
        images[sequence] = np.round(image).astype(np.int16)
    return affine, labels, images


def _write_subject(job: _SubjectJob) -> list[dict]:
    if job.person is not None:
        return _write_dicom_subject(job)
    center = job.center
    affine, labels, images = _render_subject(job)
    layout = LAYOUTS[center.style]
    root = Path(job.root)
    written = []
    for sequence, image in images.items():
        token = _SEQUENCE_TOKENS[center.style][sequence]
        image_path = root / layout.image_path(job.key, token)
        label_path = root / layout.label_path(job.key, token)
        save_nifti(image, affine, image_path)
        save_nifti(labels, affine, label_path)
        written.append(
            {
                "image": str(image_path.relative_to(root)),
                "label": str(label_path.relative_to(root)),
                "sequence": sequence,
            }
        )
    return written


def _write_dicom_subject(job: _SubjectJob) -> list[dict]:
    """Write a subject's series as DICOM; return one record per series (with its truth)."""
    affine, labels, images = _render_subject(job)
    rng = np.random.default_rng([job.seed, 5, hash_name(job.center.name), job.index])
    root = Path(job.root)
    written = []
    number = 1
    for study in job.studies:
        for sequence in study.sequences:
            number += 1
            series_uid = uid(job.key, study.uid, sequence)
            datasets = series_datasets(
                image=images[sequence],
                affine=affine,
                sequence=sequence,
                protocol=job.center.protocols[sequence],
                center=job.tags,
                person=job.person,
                study=study,
                series_uid=series_uid,
                series_number=number,
                rng=rng,
            )
            folder = root / series_folder(job.dicom_layout, job.person, study, datasets[0])
            first = None
            for k, ds in enumerate(datasets):
                path = folder / file_name(
                    job.dicom_layout, ds, job.index * 10**4 + number * 100 + k
                )
                write_dataset(ds, path)
                first = first or path
            mask = write_annotations(
                root.parent / "annotations" / job.center.name, f"{job.index}_{number}",
                labels, affine, datasets, job.center.label_map,
            ) if job.annotations else None  # fmt: skip
            written.append(
                {
                    "series_uid": series_uid,
                    "mask": mask,
                    "sequence": sequence,
                    "patient_id": job.person.patient_id,
                    "description": str(datasets[0].SeriesDescription),
                    "files": len(datasets),
                    "first_file": str(first.relative_to(root)),
                }
            )
    return written


def generate_world(
    out: str | Path,
    *,
    centers: int = 4,
    subjects_per_center: int = 12,
    sequences: tuple[str, ...] = ("T1W", "T2W", "OOP"),
    shape: tuple[int, int, int] = (64, 64, 32),
    missing: float = 0.1,
    seed: int = 0,
    jobs: int = 1,
    format: str = "nifti",
    broken: bool = True,
    annotations: bool = True,
    variability: float = 1.0,
    scanner_shift: float = 0.0,
    protocol_shift: bool = False,
) -> dict:
    """Write a phantom world under ``out`` and return its manifest (also ``out/world.json``).

    Args:
        out: a new or empty directory.
        centers: number of centers; layouts, vendors and orientations cycle through them.
        subjects_per_center: subjects per center.
        missing: probability that a subject lacks a given sequence (never all of them).
        sequences: among T1W, T2W, OOP, IP and CT.
        shape: nominal grid (voxels); each center varies it by up to 10 %.
        seed: the same seed writes the same world, byte for byte.
        jobs: worker processes.
        format: ``nifti`` (images, label maps and sheets) or ``dicom`` (DICOM series with
            vendor tags and fake PHI; see :mod:`xds.phantoms.dicom`).
        broken: DICOM only: the first center also gets the files real exports contain
            besides good series (text, a report, broken and inconsistent series).
        annotations: DICOM only: beside each center's folder, each series' labels as a
            NIfTI mask (with a manifest) and as a DICOM SEG (writing them takes time: turn
            it off where they are not read).
        variability: how much subjects' anatomy differs (see :class:`Anatomy`); 1 is the
            default world, larger values make labelled subjects cover less of the rest.
        scanner_shift: how far the last center's scanner departs from the others': its
            noise is multiplied by 1 + 3 x shift and its bias field by 1 + 2 x shift (at 1, a
            body-coil scanner with 3-4 times the others' noise), which intensity
            normalization does not undo. 0 leaves the world as it always was.
        protocol_shift: the last center acquires its T1W scans native, without the contrast
            agent every other center gives: the kidneys, vessels and pancreas then lose more
            signal than the liver, which outshines the body around it instead of matching it
            (the DICOM tags say no contrast too). A protocol no other center's labels show.
    """
    out = Path(out)
    if format not in ("nifti", "dicom"):
        raise ValueError(f"unknown format {format!r}: nifti or dicom")
    if not 0 <= variability <= 5:
        raise ValueError(f"variability must be between 0 and 5, not {variability}")
    if not 0 <= scanner_shift <= 3:
        raise ValueError(f"scanner_shift must be between 0 and 3, not {scanner_shift}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: directory is not empty")
    specs = make_centers(centers, tuple(sequences), tuple(shape), seed)
    if scanner_shift:
        last = specs[-1]
        specs[-1] = replace(last, noise=last.noise * (1 + 3 * scanner_shift),
                            bias=last.bias * (1 + 2 * scanner_shift))  # fmt: skip
    if protocol_shift:
        protocols = dict(specs[-1].protocols)
        if "T1W" in protocols:
            protocols["T1W"] = replace(protocols["T1W"], contrast_agent=False)
        specs[-1] = replace(specs[-1], protocols=protocols)
    if format == "dicom":
        return _generate_dicom(out, specs, subjects_per_center, sequences, missing, seed, jobs,
                               broken, annotations, variability, scanner_shift,
                               protocol_shift)  # fmt: skip
    jobs_list, manifest_centers = [], []
    for spec in specs:
        rng = np.random.default_rng([seed, 3, hash_name(spec.name)])
        subjects = []
        for i in range(subjects_per_center):
            key = subject_key(spec.style, spec.name, i, rng)
            present = tuple(s for s in sequences if rng.random() >= missing) or (sequences[0],)
            subjects.append(demographics(spec.style, key, rng))
            jobs_list.append(
                _SubjectJob(str(out / spec.name), spec, i, key, seed, present, variability)
            )
        folder = out / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        sheet = write_sheet(folder, spec.style, subjects)
        label_map = write_label_map(folder, spec)
        manifest_centers.append(
            {
                "name": spec.name,
                "path": spec.name,
                "layout": spec.style,
                "metadata": f"{spec.name}/{sheet}",
                "label_map": f"{spec.name}/{label_map}",
                "vendor": spec.vendor,
                "scanner_model": spec.scanner_model,
                "field_strength": spec.field_strength,
                "orientation": spec.orientation,
                "noise": spec.noise,
                "bias": spec.bias,
                "spacing": list(spec.spacing),
                "shape": list(spec.shape),
                "classes": list(spec.classes),
                "n_subjects": subjects_per_center,
                "protocols": {k: asdict(v) for k, v in spec.protocols.items()},
            }
        )
    results = progress_map(_write_subject, jobs_list, jobs=jobs, description="phantoms")
    counts: dict[str, dict[str, int]] = {c["name"]: {} for c in manifest_centers}
    for job, written in zip(jobs_list, results, strict=True):
        for item in written:
            per = counts[job.center.name]
            per[item["sequence"]] = per.get(item["sequence"], 0) + 1
    for c in manifest_centers:
        c["scans_per_sequence"] = counts[c["name"]]
    manifest = {
        "seed": seed,
        "variability": variability,
        "scanner_shift": scanner_shift,
        "protocol_shift": protocol_shift,
        "sequences": list(sequences),
        "shape": list(shape),
        "n_scans": sum(sum(v.values()) for v in counts.values()),
        "centers": manifest_centers,
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _generate_dicom(
    out, specs, subjects_per_center, sequences, missing, seed, jobs, broken, annotations,
    variability, scanner_shift, protocol_shift,
):  # fmt: skip
    jobs_list, manifest_centers, people = [], [], {}
    for c, spec in enumerate(specs):
        rng = np.random.default_rng([seed, 6, hash_name(spec.name)])
        layout = DICOM_LAYOUTS[c % len(DICOM_LAYOUTS)]
        tags = CenterTags(
            vendor=spec.vendor,
            model=spec.scanner_model,
            field_strength=spec.field_strength,
            institution=f"{spec.name} University Hospital",
            institution_address=f"{int(rng.integers(1, 99))} Hospital Road, {spec.name}ville",
            station=f"STATION{int(rng.integers(1000, 9999))}",
            serial=f"SN{int(rng.integers(10**6, 10**7))}",
            dixon=spec.scanner_model == "Skyra",
        )
        phi = {tags.institution, tags.institution_address, tags.station, tags.serial}
        phi |= {"HOUSE^GREGORY", "NURSE^JACKIE"}
        (out / spec.name).mkdir(parents=True, exist_ok=True)
        for i in range(subjects_per_center):
            present = tuple(s for s in sequences if rng.random() >= missing) or (sequences[0],)
            year = int(rng.integers(2016, 2025))
            person = make_person(rng, int(rng.integers(22, 88)), str(rng.choice(["F", "M"])), year)
            studies = tuple(make_studies(rng, present, year, f"{spec.name}-{seed}-{i}"))
            people[(spec.name, i)] = person
            phi |= (
                set(person.strings()) | {s.accession for s in studies} | {s.date for s in studies}
            )
            jobs_list.append(
                _SubjectJob(
                    str(out / spec.name),
                    spec,
                    i,
                    f"{spec.name}-{seed}-{i}",
                    seed,
                    present,
                    variability,
                    person=person,
                    studies=studies,
                    tags=tags,
                    dicom_layout=layout,
                    annotations=annotations,
                )
            )
        manifest_centers.append(
            {
                "name": spec.name,
                "path": spec.name,
                "layout": layout,
                "vendor": spec.vendor,
                "scanner_model": spec.scanner_model,
                "field_strength": spec.field_strength,
                "dixon": tags.dixon,
                "n_subjects": subjects_per_center,
                "protocols": {k: asdict(v) for k, v in spec.protocols.items()},
                "phi": sorted(phi),
            }
        )
    results = progress_map(_write_subject, jobs_list, jobs=jobs, description="phantoms (DICOM)")
    for c, center in enumerate(manifest_centers):
        mine = [(job, written) for job, written in zip(jobs_list, results, strict=True)
                if job.center.name == center["name"]]  # fmt: skip
        series = [r for _, written in mine for r in written]
        subjects = [(job.person, job.studies, job.sequences) for job, _ in mine]
        center["clinical"] = write_clinical_sheet(out / "clinical", center["name"], c, subjects,
                                                  seed)  # fmt: skip
        if annotations:
            center["annotations"] = write_mask_manifest(out / "annotations" / center["name"],
                                                        specs[c], series)  # fmt: skip
        center["series"] = series
        center["scans_per_sequence"] = {
            s: sum(r["sequence"] == s for r in series) for s in sequences
        }
        folder = out / center["path"]
        center["broken"] = []
        if broken and c == 0 and series:
            person = people[(center["name"], 0)]
            center["broken"] = broken_items(folder, folder / series[0]["first_file"], person)
        if center["layout"] == "dicomdir":
            write_dicomdir(folder)
            for r in series:
                r.pop("first_file")
    manifest = {
        "format": "dicom",
        "seed": seed,
        "variability": variability,
        "scanner_shift": scanner_shift,
        "protocol_shift": protocol_shift,
        "sequences": list(sequences),
        "n_scans": sum(len(c["series"]) for c in manifest_centers),
        "centers": manifest_centers,
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
