"""Dataset adapters on miniature replicas of each public dataset's layout (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xds.catalog import Catalog
from xds.ingest.datasets.ingest import ingest_dataset
from xds.schemas import IngestError
from xds.schemas.vocabulary import builtin_label_map

SHAPE = (8, 8, 4)


def _nii(path: Path, data: np.ndarray, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path
    )


def _pair(root: Path, image: str, label: str | None, classes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    _nii(root / image, rng.normal(0, 100, SHAPE).astype(np.int16))
    if label:
        data = np.zeros(SHAPE, np.uint8)
        for k, value in enumerate(classes):
            data[k % 8, :, k % 4] = value
        _nii(root / label, data)


def _ingest(tmp_path, name, root) -> tuple[Catalog, object]:
    cat = Catalog.create(tmp_path / "catalog")
    return cat, ingest_dataset(cat, name, root)


def _rows(cat: Catalog) -> list[dict]:
    rows = cat.sql(
        "SELECT v.*, s.extra FROM scan_view v JOIN subjects s USING (subject_id) ORDER BY image_uri"
    ).to_pylist()
    return [{**r, "extra": dict(r["extra"] or [])} for r in rows]


def test_amos(tmp_path):
    root = tmp_path / "amos22"
    _pair(root, "imagesTr/amos_0001.nii.gz", "labelsTr/amos_0001.nii.gz", [6, 9, 10], 1)
    _pair(root, "imagesVa/amos_0510.nii.gz", "labelsVa/amos_0510.nii.gz", [1, 15], 2)
    _pair(root, "imagesTs/amos_0600.nii.gz", None, [], 3)
    (root / "labeled_data_meta_0000_0599.csv").write_text(
        "amos_id,Patient's Birth Date,Patient's Sex,Patient's Age,Manufacturer,"
        "Manufacturer's Model Name,Acquisition Date\n"
        "1,19600101,M,063Y,SIEMENS,SOMATOM Force,20200101\n"
        "510,19700101,F,051Y,Philips,Ingenia,20210101\n"
    )
    cat, report = _ingest(tmp_path, "amos", root)
    assert (report.scans_added, report.labels_added) == (3, 2)
    rows = {r["modality"] + (r["sex"] or "?"): r for r in _rows(cat)}
    ct, mr = rows["CTM"], rows["MRF"]
    assert (ct["sequence"], ct["age"], ct["scanner_model"]) == ("CT", 63.0, "SOMATOM Force")
    assert ct["classes"] == ["inferior_vena_cava", "liver", "pancreas"]
    assert (mr["sequence"], mr["age"], mr["extra"]["official_split"]) == ("UNKNOWN", 51.0, "val")
    assert mr["classes"] == ["prostate_or_uterus", "spleen"]
    assert mr["annotated_classes"] == sorted(builtin_label_map("amos").classes.values())
    text = b"".join(p.read_bytes() for p in cat.root.rglob("*.parquet"))
    assert b"19600101" not in text  # the birth date column was dropped


def test_flare22_word_btcv(tmp_path):
    flare = tmp_path / "flare"
    _pair(flare, "FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz",
          "FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz", [1, 13], 1)  # fmt: skip
    cat, report = _ingest(tmp_path, "flare22", flare)
    assert report.labels_added == 1
    assert _rows(cat)[0]["classes"] == ["kidney_left", "liver"]
    word = tmp_path / "word"
    _pair(
        word,
        "WORD-V0.1.0/imagesTr/word_0001.nii.gz",
        "WORD-V0.1.0/labelsTr/word_0001.nii.gz",
        [11, 12],
        1,
    )
    _pair(
        word,
        "WORD-V0.1.0/imagesVal/word_0101.nii.gz",
        "WORD-V0.1.0/labelsVal/word_0101.nii.gz",
        [3],
        2,
    )
    cat = Catalog.create(tmp_path / "c2")
    ingest_dataset(cat, "word", word)
    by_split = {r["extra"]["official_split"]: r["classes"] for r in _rows(cat)}
    assert by_split == {"train": ["adrenal_gland", "small_bowel"], "val": ["kidney_left"]}
    btcv = tmp_path / "btcv"
    _pair(
        btcv,
        "RawData/Training/img/img0001.nii.gz",
        "RawData/Training/label/label0001.nii.gz",
        [9, 10],
        1,
    )
    _pair(btcv, "RawData/Testing/img/img0061.nii.gz", None, [], 2)
    cat = Catalog.create(tmp_path / "c3")
    report = ingest_dataset(cat, "btcv", btcv)
    assert (report.scans_added, report.labels_added) == (2, 1)
    labelled = [r for r in _rows(cat) if r["has_label"]]
    assert labelled[0]["classes"] == ["inferior_vena_cava", "portal_vein_and_splenic_vein"]


def test_msd_skips_macos_debris_and_checks_dataset_json(tmp_path):
    root = tmp_path / "Task07_Pancreas"
    _pair(root, "imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_001.nii.gz", [1, 2], 1)
    _pair(root, "imagesTs/pancreas_002.nii.gz", None, [], 2)
    (root / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac junk")
    doc = {"labels": {"0": "background", "1": "pancreas", "2": "cancer"}, "modality": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps(doc))
    cat, report = _ingest(tmp_path, "msd", root)
    assert (report.scans_added, report.labels_added, report.quarantined) == (2, 1, 0)
    assert [r["classes"] for r in _rows(cat) if r["has_label"]] == [["pancreas", "pancreas_tumor"]]
    doc["labels"]["2"] = "liver"
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(IngestError, match="dataset.json: labels"):
        ingest_dataset(cat, "msd", root)


def test_totalsegmentator_combines_per_class_masks(tmp_path):
    root = tmp_path / "Totalsegmentator_dataset_v201"
    rng = np.random.default_rng(0)
    cases = (
        ("s0000", "ct.nii.gz", ("liver", "inferior_vena_cava", "vertebrae_L1")),
        ("s0001", "mri.nii.gz", ("liver", "intervertebral_discs")),
    )
    for case, image, masks in cases:
        _nii(root / case / image, rng.normal(0, 100, SHAPE).astype(np.int16))
        for k, name in enumerate(masks):
            mask = np.zeros(SHAPE, np.uint8)
            mask[k, :, :] = 1
            _nii(root / case / "segmentations" / f"{name}.nii.gz", mask)
    (root / "meta.csv").write_text(
        "image_id;age;gender;institute;study_type;split;manufacturer;scanner_model\n"
        "s0000;71;m;A;ct abdomen;train;Siemens;SOMATOM\ns0001;45;f;B;mr;test;GE;SIGNA\n"
    )
    cat, report = _ingest(tmp_path, "totalsegmentator", root)
    assert (report.scans_added, report.labels_added) == (2, 2)
    rows = {r["modality"]: r for r in _rows(cat)}
    assert rows["CT"]["classes"] == ["inferior_vena_cava", "liver", "vertebrae_L1"]
    assert (rows["CT"]["center"], rows["CT"]["sex"], rows["CT"]["age"]) == ("A", "M", 71.0)
    assert (rows["CT"]["vendor"], rows["CT"]["extra"]["official_split"]) == ("Siemens", "train")
    assert rows["MR"]["classes"] == ["intervertebral_discs", "liver"]
    assert (rows["MR"]["center"], rows["MR"]["sequence"]) == ("B", "UNKNOWN")
    ct_label = cat.sql(
        "SELECT l.uri FROM labels l JOIN scans s USING (scan_id) WHERE s.modality='CT'"
    )
    data = np.asarray(nib.load(cat.resolve(ct_label.to_pylist()[0]["uri"])).dataobj)
    total = builtin_label_map("totalsegmentator").index_of()
    assert data[0, 0, 0] == total["liver"] == 5
    assert data[1, 0, 0] == total["inferior_vena_cava"] == 63
    assert data[2, 0, 0] == total["vertebrae_L1"]


def test_crosspan_centers_and_sequences_from_folders(tmp_path):
    root = tmp_path / "crosspan"
    _pair(root, "NYU/T2W/images/case1.nii.gz", "NYU/T2W/labels/case1.nii.gz", [1], 1)
    _pair(root, "MCF/T1W/images/case2.nii.gz", "MCF/T1W/labels/case2.nii.gz", [1], 2)
    _pair(root, "MCF/OOP/images/case2.nii.gz", "MCF/OOP/labels/case2.nii.gz", [1], 3)
    cat, report = _ingest(tmp_path, "crosspan", root)
    rows = _rows(cat)
    assert sorted((r["center"], r["sequence"]) for r in rows) == [
        ("MCF", "OOP"), ("MCF", "T1W"), ("NYU", "T2W")
    ]  # fmt: skip
    assert all(r["modality"] == "MR" and r["classes"] == ["pancreas"] for r in rows)
    mcf = {r["subject_id"] for r in rows if r["center"] == "MCF"}
    assert len(mcf) == 1  # one patient, two sequences
    again = ingest_dataset(cat, "crosspan", root)
    assert again.scans_added == 0


def _chaos_series(folder: Path, image: np.ndarray, sequence: str, series: int, modality: str):
    from xds.phantoms.dicom import CenterTags, Person, Study, series_datasets, write_dataset
    from xds.phantoms.physics import Protocol

    protocol = Protocol(sequence, 1.5, 180.0, 2.3 if sequence == "OOP" else 4.6, 70.0)
    tags = CenterTags("Philips", "Achieva", 1.5, "anon", "anon", "anon", "anon", dixon=False)
    person = Person("ANON^ANON", "ANON", "19000101", "O", "anon", 50)
    study = Study(f"1.2.3.{series}", "20000101", "0", (sequence,))
    affine = np.diag([1.6, 1.6, 5.0, 1.0])
    datasets = series_datasets(
        image=image, affine=affine, sequence="CT" if modality == "CT" else sequence,
        protocol=protocol, center=tags, person=person, study=study,
        series_uid=f"1.2.3.4.{series}", series_number=series, rng=np.random.default_rng(series),
    )  # fmt: skip
    for k, ds in enumerate(datasets):
        write_dataset(ds, folder / f"IMG-{series:04d}-{k + 1:05d}.dcm")


def test_chaos_dicom_and_png_ground_truth(tmp_path):
    from PIL import Image

    root = tmp_path / "CHAOS_Train_Sets" / "Train_Sets"
    shape = (12, 10, 5)
    organ = np.zeros(shape, bool)
    organ[3:8, 2:6, 1:4] = True  # the "liver"
    image = np.where(organ, 400, 40).astype(np.int16)
    mr = root / "MR" / "1"
    series_folders = (
        ("T1DUAL/DICOM_anon/InPhase", "IP", 3),
        ("T1DUAL/DICOM_anon/OutPhase", "OOP", 4),
        ("T2SPIR/DICOM_anon", "T2W", 5),
    )
    for sub, sequence, series in series_folders:  # distinct voxels: identical ones are one scan
        _chaos_series(mr / sub, image + series, sequence, series, "MR")
    _chaos_series(root / "CT" / "2" / "DICOM_anon", image, "CT", 6, "CT")
    for ground, value in ((mr / "T1DUAL" / "Ground", 63), (mr / "T2SPIR" / "Ground", 60),
                          (root / "CT" / "2" / "Ground", 255)):  # fmt: skip
        ground.mkdir(parents=True)
        for k in range(shape[2]):
            png = np.where(organ[:, :, k].T, value, 0).astype(np.uint8)  # rows follow axis 1
            Image.fromarray(png).save(ground / f"IMG-{k + 1:05d}.png")
    cat, report = _ingest(tmp_path, "chaos", root)
    assert report.scans_added == 4
    assert report.labels_added == 4
    assert report.quarantined == 0  # the PNGs are not mistaken for broken DICOM
    rows = _rows(cat)
    assert sorted(r["sequence"] for r in rows) == ["CT", "IP", "OOP", "T2W"]
    mr_subjects = {r["subject_id"] for r in rows if r["modality"] == "MR"}
    assert len(mr_subjects) == 1  # linked by the patient folder, not the anonymized headers
    assert all(r["classes"] == ["liver"] for r in rows)
    for r in cat.sql(
        "SELECT s.image_uri, l.uri FROM labels l JOIN scans s USING (scan_id)"
    ).to_pylist():
        img = np.asarray(nib.load(cat.resolve(r["image_uri"])).dataobj)
        lab = np.asarray(nib.load(cat.resolve(r["uri"])).dataobj)
        assert img.shape == lab.shape
        assert np.array_equal(lab > 0, img > img.min() + (img.max() - img.min()) / 2), r["uri"]
