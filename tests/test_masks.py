"""NIfTI masks drawn on a DICOM center's series (``xds ingest labels``)."""

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.phantoms import generate_world


def _xds(catalog: Path, *args, ok: bool = True):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def center(tmp_path_factory):
    """One DICOM center ingested, with its annotators' masks and manifest."""
    root = tmp_path_factory.mktemp("masks")
    manifest = generate_world(root / "w", format="dicom", centers=1, subjects_per_center=3,
                              shape=(16, 16, 8), sequences=("T1W", "T2W"), seed=3,
                              broken=False)  # fmt: skip
    info = manifest["centers"][0]
    catalog = root / "c"
    _xds(catalog, "ingest", "dicom", str(root / "w" / info["path"]), "--center", "A")
    return root, info, catalog


def test_masks_with_a_manifest_are_the_generators_truth(center, tmp_path, values_in_world,
                                                          find_leaks):
    root, info, catalog = center
    notes = info["annotations"]
    masks = root / "w" / notes["path"]
    ran = _xds(catalog, "ingest", "labels", str(masks), "--center", "A", "--label-map",
               str(root / "w" / notes["label_map"]), "--match", str(root / "w" / notes["manifest"]),
               "--json")  # fmt: skip
    report = json.loads(ran.output)
    assert report["labels_added"] == len(info["series"])
    assert report["quarantined"] == 0
    cat = Catalog.open(catalog)
    labels = cat.read("labels").to_pylist()
    scans = {s["scan_id"]: s for s in cat.read("scans").to_pylist()}
    assert len({lab["scan_id"] for lab in labels}) == len(info["series"])  # one per series
    truths = sorted(masks.glob("*.nii.gz"))
    reoriented = 0
    for label in labels:
        stored = nib.load(cat.resolve(label["uri"]))
        image = nib.load(cat.resolve(scans[label["scan_id"]]["image_uri"]))
        # on its scan's grid exactly, and voxel for voxel the generator's mask in the world
        assert stored.shape == image.shape
        assert np.allclose(stored.affine, image.affine, atol=1e-3)
        pairs = [values_in_world(cat.resolve(label["uri"]), truth) for truth in truths]
        assert any(p is not None and np.array_equal(*p) for p in pairs)
        reoriented += nib.aff2axcodes(stored.affine) != ("R", "A", "S")
        assert label["origin"] == "manual"
        assert "liver" in label["classes_present"] or "pancreas" in label["classes_present"]
    assert reoriented  # dcm2niix stored some series in another axis order than the masks
    # no source series UID in any stored byte
    uids = [row["series_uid"] for row in csv.DictReader(open(root / "w" / notes["manifest"]))]
    assert find_leaks(catalog, uids) == []
    # a re-run adds nothing; the labels work downstream like any others
    again = json.loads(_xds(catalog, "ingest", "labels", str(masks), "--center", "A",
                            "--label-map", str(root / "w" / notes["label_map"]), "--match",
                            str(root / "w" / notes["manifest"]), "--json").output)  # fmt: skip
    assert again["labels_added"] == 0
    _xds(catalog, "build-cohort", "--where", "has_label", "--name", "annotated")
    _xds(catalog, "harmonize", "annotated", "--classes", "liver,pancreas")
    _xds(catalog, "split", "annotated", "--ratios", "50,0,50", "--stratify", "")
    _xds(catalog, "export", "datalist", "annotated", "--split", "annotated-holdout-s0",
         "--class-set", "liver,pancreas", "--out", str(tmp_path / "list.json"))  # fmt: skip
    listed = json.loads((tmp_path / "list.json").read_text())
    assert sum(len(listed.get(k, [])) for k in ("training", "validation", "test")) == len(
        info["series"]
    )


def test_series_uid_names_grid_and_bad_masks(center, tmp_path):
    root, info, _ = center
    catalog = tmp_path / "c"
    shutil.copytree(center[2], catalog)
    notes = info["annotations"]
    rows = list(csv.DictReader(open(root / "w" / notes["manifest"])))
    folder = tmp_path / "masks"
    folder.mkdir()
    src = root / "w" / notes["path"]
    # named by their series UIDs (what some exports do): matched without a manifest
    for row in rows[:2]:
        shutil.copy(src / row["mask"], folder / f"{row['series_uid']}.nii.gz")
    # a cropped mask, a mask of a series the catalog lacks, a value the map does not name
    image = nib.load(src / rows[2]["mask"])
    data = np.asanyarray(image.dataobj)
    nib.save(nib.Nifti1Image(data[2:], image.affine), folder / "cropped.nii.gz")
    shutil.copy(src / rows[2]["mask"], folder / "1.2.3.4.5.6.7.nii.gz")
    odd = data.copy()
    odd[0, 0, 0] = 77
    nib.save(nib.Nifti1Image(odd, image.affine), folder / f"{rows[2]['series_uid']}.nii.gz")
    ran = _xds(catalog, "ingest", "labels", str(folder), "--center", "A", "--label-map",
               str(root / "w" / notes["label_map"]), "--json")  # fmt: skip
    report = json.loads(ran.stdout)
    # the first two (already stored by the manifest run, so present, not added)
    assert report["labels_added"] + report["already_present"] == 2
    errors = " | ".join(p["error"] for p in report["problems"])
    assert "no scan of the center has its grid" in errors  # the cropped one
    assert "not in the catalog" in errors
    assert "[77] are not in the label map" in errors
    assert report["quarantined"] == 3
    for row in rows:  # quarantine rows and the console name no UID
        assert row["series_uid"] not in ran.output
    # by grid: each subject's two series share one grid, so a bare mask is ambiguous
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(src / rows[0]["mask"], bare / "mask.nii.gz")
    ran = _xds(catalog, "ingest", "labels", str(bare), "--center", "A", "--match", "grid",
               "--json")  # fmt: skip
    assert "fits 2 scans" in json.loads(ran.stdout)["problems"][0]["error"]


def test_a_manifest_by_accession_and_series_number(center, tmp_path, values_in_world,
                                                   find_leaks):  # fmt: skip
    """What a PACS worklist names: the study's accession number and the series number."""
    import pydicom

    root, info, _ = center
    notes = info["annotations"]
    catalog = tmp_path / "c"
    _xds(catalog, "ingest", "dicom", str(root / "w" / info["path"]), "--center", "A")
    rows, accessions = [], []
    for record in info["series"]:
        ds = pydicom.dcmread(root / "w" / info["path"] / record["first_file"],
                             stop_before_pixels=True)  # fmt: skip
        rows.append({"mask": Path(record["mask"]).name, "accession": ds.AccessionNumber,
                     "series_number": str(ds.SeriesNumber)})  # fmt: skip
        accessions.append(str(ds.AccessionNumber))
    folder = tmp_path / "masks"
    shutil.copytree(root / "w" / notes["path"], folder)
    # a study the catalog lacks, a series number its study does not have
    shutil.copy(folder / rows[0]["mask"], folder / "other_study.nii.gz")
    shutil.copy(folder / rows[0]["mask"], folder / "other_series.nii.gz")
    rows += [{"mask": "other_study.nii.gz", "accession": "ZZ0000001", "series_number": "2"},
             {**rows[0], "mask": "other_series.nii.gz", "series_number": "97"}]  # fmt: skip
    with open(tmp_path / "worklist.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["mask", "accession", "series_number"])
        writer.writeheader()
        writer.writerows(rows)
    report = json.loads(_xds(catalog, "ingest", "labels", str(folder), "--center", "A",
                             "--label-map", str(folder / "label_map.json"), "--match",
                             str(tmp_path / "worklist.csv"), "--json").stdout)  # fmt: skip
    assert report["labels_added"] == len(info["series"])
    errors = sorted(p["error"] for p in report["problems"])
    assert len(errors) == 2
    assert "its study has 0 series numbered 97" in errors[0]
    assert "no study of the catalog has its accession number" in errors[1]
    cat = Catalog.open(catalog)
    truths = sorted(folder.glob("mask_*.nii.gz"))
    for label in cat.read("labels").to_pylist():
        pairs = [values_in_world(cat.resolve(label["uri"]), truth) for truth in truths]
        assert any(p is not None and np.array_equal(*p) for p in pairs)
    assert find_leaks(catalog, accessions + ["ZZ0000001"]) == []
