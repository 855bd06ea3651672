"""RTSTRUCT structure sets rasterized on their source series (``xds ingest dicom``)."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.phantoms import generate_world


def _xds(catalog: Path, *args):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def _classes(values: np.ndarray, names: dict) -> np.ndarray:
    return np.vectorize(names.get, otypes=[object])(values.astype(int))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    manifest = generate_world(root / "w", format="dicom", centers=1, subjects_per_center=2,
                              shape=(24, 24, 8), sequences=("T1W", "T2W"), seed=5,
                              broken=False)  # fmt: skip
    return root, manifest["centers"][0]


def _label_maps(cat: Catalog) -> dict:
    return {r["label_map_id"]: dict(zip(r["indices"], r["names"], strict=True))
            for r in cat.read("label_maps").to_pylist()}  # fmt: skip


def test_structure_sets_give_the_generators_organs(world, tmp_path, values_in_world, find_leaks):
    root, info = world
    notes = root / "w" / info["annotations"]["path"]
    folder = root / "w" / info["annotations"]["rtstruct"]
    truth_map = {int(k): v for k, v in json.loads((notes / "label_map.json").read_text()).items()}
    # the ROIs are named by the TG-263 standard, not by xds' class names
    rois = {r.ROIName for f in folder.glob("*.dcm")
            for r in pydicom.dcmread(f).StructureSetROISequence}  # fmt: skip
    assert {"Kidney_L", "A_Aorta", "V_Venacava_I"} <= rois
    catalog = tmp_path / "c"
    early = _xds(catalog, "ingest", "dicom", str(folder), "--center", "A", "--json")
    assert early["labels_added"] == 0
    assert all("RTSTRUCT: its source series is not in the catalog" in p["error"]
               for p in early["problems"])  # fmt: skip
    _xds(catalog, "ingest", "dicom", str(root / "w" / info["path"]), "--center", "A")
    report = _xds(catalog, "ingest", "dicom", str(folder), "--center", "A", "--json")
    assert report["labels_added"] == report["files_in_labels"] == len(info["series"])
    assert report["quarantined"] == 0
    assert report["rois_left_out"] == []
    cat = Catalog.open(catalog)
    maps = _label_maps(cat)
    scans = {s["scan_id"]: s for s in cat.read("scans").to_pylist()}
    series_of = {s["scan_id"]: s for s in cat.read("scans").to_pylist()}
    truths = {Path(r["mask"]).name: r for r in info["series"]}
    labels = cat.read("labels").to_pylist()
    assert len({lab["scan_id"] for lab in labels}) == len(info["series"])
    worst = 1.0
    for label in labels:
        path = cat.resolve(label["uri"])
        image = nib.load(cat.resolve(scans[label["scan_id"]]["image_uri"]))
        assert nib.load(path).shape == image.shape
        # the truth of this scan: the mask of the series with the same description
        pairs = [values_in_world(path, notes / name) for name in truths]
        pairs = [p for p in pairs if p is not None]
        assert pairs, "the label lies on no generator grid"
        got = _classes(pairs[0][0], maps[label["label_map"]])
        want = _classes(pairs[0][1], truth_map)
        for organ in set(truth_map.values()) - {"background"}:
            if (want == organ).any():
                worst = min(worst, _dice(got == organ, want == organ))
        assert label["origin"] == "manual"
        assert set(label["classes_annotated"]) == set(truth_map.values()) - {"background"}
        assert series_of[label["scan_id"]]["center"] == "A"
    print(f"phantom RTSTRUCT: lowest Dice per organ {worst:.4f} (goal >= 0.97)")
    assert worst >= 0.97, f"lowest Dice per organ {worst:.4f} (goal >= 0.97)"
    again = _xds(catalog, "ingest", "dicom", str(folder), "--center", "A", "--json")
    assert again["labels_added"] == 0
    assert find_leaks(catalog, [p for p in info["phi"] if len(p) > 3]) == []
    # downstream they are labels like any other
    _xds(catalog, "build-cohort", "--where", "has_label", "--name", "contoured")
    _xds(catalog, "harmonize", "contoured", "--classes", "liver,kidney")
    _xds(catalog, "split", "contoured", "--ratios", "50,0,50", "--stratify", "")
    _xds(catalog, "export", "datalist", "contoured", "--split", "contoured-holdout-s0",
         "--class-set", "liver,kidney", "--out", str(tmp_path / "list.json"))  # fmt: skip
    listed = json.loads((tmp_path / "list.json").read_text())
    assert sum(len(listed.get(k, [])) for k in ("training", "test")) == len(info["series"])


def _broken_copy(src: Path, dst: Path, change) -> None:
    ds = pydicom.dcmread(src)
    change(ds)
    ds.save_as(dst)


def test_bad_structure_sets_are_refused_and_the_rest_attached(world, tmp_path):
    root, info = world
    tree = tmp_path / "center"
    shutil.copytree(root / "w" / info["path"], tree)
    sets = sorted((root / "w" / info["annotations"]["rtstruct"]).glob("*.dcm"))

    def contour(ds, roi=0, n=0):
        return ds.ROIContourSequence[roi].ContourSequence[n]

    def open_contour(ds):
        contour(ds).ContourGeometricType = "OPEN_PLANAR"

    def crossing(ds):
        item = max(ds.ROIContourSequence[0].ContourSequence,
                   key=lambda c: int(c.NumberOfContourPoints))  # fmt: skip
        points = np.array(item.ContourData, float).reshape(-1, 3)
        half = len(points) // 2
        points[[0, half]] = points[[half, 0]]  # opposite vertices swapped: a bow tie
        item.ContourData = [f"{v:.4f}" for v in points.reshape(-1)]

    def off_slice(ds):
        item = contour(ds)
        points = np.array(item.ContourData, float).reshape(-1, 3)
        points[:, 2] += 0.4 * 20  # slices are 15-21 mm apart in this world
        item.ContourData = [f"{v:.4f}" for v in points.reshape(-1)]

    def overlap(ds):
        ds.ROIContourSequence[1].ContourSequence = ds.ROIContourSequence[0].ContourSequence

    def unknown_and_empty(ds):
        ds.StructureSetROISequence[0].ROIName = "Livr"
        del ds.ROIContourSequence[1].ContourSequence
        extra = Dataset()
        extra.ROINumber, extra.ROIName = 99, "Couch"
        ds.StructureSetROISequence.append(extra)

    def nothing_known(ds):
        for roi in ds.StructureSetROISequence:
            roi.ROIName = f"PTV_{roi.ROINumber}"

    shutil.copy(sets[0], tree / "good.dcm")  # in the images' own tree: same run
    changes = [open_contour, crossing, off_slice, overlap, unknown_and_empty, nothing_known]
    for n, change in enumerate(changes):
        _broken_copy(sets[1 + n % 3], tree / f"rt_{change.__name__}.dcm", change)
    catalog = tmp_path / "c"
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "ingest", "dicom", str(tree),
                                      "--center", "A", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    errors = {p["file"]: p["error"] for p in report["problems"]}
    assert report["quarantined"] == len(errors) == 5, errors
    assert all("\n" not in e and "Traceback" not in e for e in errors.values())
    joined = " | ".join(errors.values())
    assert "OPEN_PLANAR, not a closed planar contour" in joined
    assert "crosses itself" in joined
    assert "does not lie on a slice of its series" in joined
    assert "overlap" in joined
    assert "no ROI the vocabulary knows" in joined
    assert "PTV_1" in joined
    # the good set and the one with an unknown and an empty ROI are labels; each ROI left
    # out is one line on stderr, with a suggestion for the misspelt name
    assert report["files_in_labels"] == 2
    left = " | ".join(report["rois_left_out"])
    assert "'Livr' left out" in left
    assert "did you mean liver" in left
    assert "'Couch' left out" in left
    assert "has no contours" in left
    assert "Livr" in result.stderr
    cat = Catalog.open(catalog)
    annotated = sorted(len(r["classes_annotated"]) for r in cat.read("labels").to_pylist())
    names = json.loads((root / "w" / info["annotations"]["label_map"]).read_text())
    full = len(names) - 1
    assert annotated == [full - 2, full]  # the unknown and the empty ROI are not annotated


def _ct_series(folder: Path, *, n=40, slices=8, spacing=1.0, thickness=2.5, origin=(-20, -20, 0),
               series_uid=None, frame_uid=None) -> list[Dataset]:  # fmt: skip
    """A plain CT series written with pydicom (square pixels, axial)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), series_uid or generate_uid()
    frame = frame_uid or generate_uid()
    out = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = "RTMRN4711", "Roe^Richard"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "1", "CT", 2, k + 1
        ds.StudyDate, ds.StudyTime, ds.SeriesDescription = "20200101", "120000", "abdomen"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + thickness * k]
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], thickness
        ds.Rows = ds.Columns = n
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.full((n, n), 1000, np.uint16) + k).tobytes()
        pydicom.dcmwrite(folder / f"ct{k}.dcm", ds, enforce_file_format=True)
        out.append(ds)
    return out


def test_a_structure_set_written_by_rt_utils_lands_on_its_series(tmp_path, values_in_world,
                                                                  find_leaks):
    import rt_utils  # the dev extra installs it (opencv-python: libGL, which .ci/run installs)
    tree = tmp_path / "center"
    series = _ct_series(tree / "series")
    yy, xx = np.mgrid[:40, :40]
    liver = ((yy - 15) ** 2 / 81 + (xx - 14) ** 2 / 49) <= 1
    liver &= ~(((yy - 15) ** 2 + (xx - 14) ** 2) <= 4)  # with a hole: an inner contour
    kidney = ((yy - 30) ** 2 + (xx - 28) ** 2) <= 16
    masks = {"Liver": np.repeat(liver[:, :, None], 8, 2),
             "Kidney_L": np.repeat(kidney[:, :, None], 8, 2)}  # fmt: skip
    masks["Liver"][:, :, 0] = False
    masks["Kidney_L"][:, :, 5:] = False
    rt = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(tree / "series"))
    for name, mask in masks.items():
        rt.add_roi(mask=mask, name=name)
    rt.save(str(tree / "rt.dcm"))
    # the truth on the series' own pixel grid: voxel (column, row, slice), RAS millimetres
    truth = np.zeros((40, 40, 8), np.uint8)
    for value, mask in enumerate(masks.values(), start=1):
        truth[mask.transpose(1, 0, 2)] = value
    affine = np.diag([-1.0, -1.0, 2.5, 1.0])
    affine[:3, 3] = [20.0, 20.0, 0.0]
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "truth.nii.gz")
    catalog = tmp_path / "c"
    report = _xds(catalog, "ingest", "dicom", str(tree), "--center", "A", "--json")
    assert (report["scans_added"], report["files_in_labels"]) == (1, 1), report
    cat = Catalog.open(catalog)
    (label,) = cat.read("labels").to_pylist()
    names = _label_maps(cat)[label["label_map"]]
    pair = values_in_world(cat.resolve(label["uri"]), tmp_path / "truth.nii.gz")
    assert pair is not None
    got = _classes(pair[0], names)
    for value, (roi, organ) in enumerate([("Liver", "liver"), ("Kidney_L", "kidney_left")], 1):
        dice = _dice(got == organ, pair[1] == value)
        print(f"rt-utils RTSTRUCT {roi}: Dice {dice:.4f}")
        assert dice >= 0.97, roi
    assert find_leaks(catalog, [series[0].PatientID, "Roe^Richard", "Richard"]) == []


def test_pydicoms_structure_set_is_read_where_its_contours_lie(tmp_path):
    """pydicom's own RTSTRUCT (a 400 x 300 mm box on three slices, two isocentre points)."""
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    frame = source.ReferencedFrameOfReferenceSequence[0]
    ref = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    tree = tmp_path / "center"
    tree.mkdir()
    shutil.copy(get_testdata_file("rtstruct.dcm"), tree / "as_shipped.dcm")
    catalog = tmp_path / "c"
    early = _xds(catalog, "ingest", "dicom", str(tree), "--center", "A", "--json")
    assert "source series is not in the catalog" in early["problems"][0]["error"]
    # the series it references, 5 mm pixels over 420 x 320 mm, slices 10 mm apart
    _ct_series(tree / "series", n=85, slices=6, spacing=5.0, thickness=10.0,
               origin=(-210.0, -210.0, -210.0), series_uid=ref.SeriesInstanceUID,
               frame_uid=frame.FrameOfReferenceUID)  # fmt: skip
    # its body outline is named 'patient': as an organ the vocabulary knows, it is placed
    source.StructureSetROISequence[0].ROIName = "Liver"
    source.save_as(tree / "as_shipped.dcm")
    report = _xds(catalog, "ingest", "dicom", str(tree), "--center", "A", "--json")
    assert report["files_in_labels"] == 1, report
    assert sum("Isocenter" in line for line in report["rois_left_out"]) == 2
    cat = Catalog.open(catalog)
    (label,) = cat.read("labels").to_pylist()
    image = nib.load(cat.resolve(label["uri"]))
    data = np.asanyarray(image.dataobj) > 0
    # each slice's area against the polygon's own (shoelace formula, 5 x 5 mm pixels)
    ijk = np.argwhere(data)
    z = nib.affines.apply_affine(image.affine, ijk)[:, 2]
    contours = {}
    for item in source.ROIContourSequence[0].ContourSequence:
        p = np.array(item.ContourData, float).reshape(-1, 3)
        x, y = p[:, 0], p[:, 1]
        contours[round(p[0, 2])] = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert sorted({round(v) for v in z}) == sorted(contours)
    for height, area in contours.items():
        voxels = int((np.round(z) == height).sum())
        assert abs(voxels * 25.0 - area) / area < 0.05, (height, voxels * 25.0, area)


@pytest.mark.slow
def test_kill_9_while_attaching_then_rerun_gives_the_same_labels(tmp_path):
    import subprocess
    import sys
    import time

    manifest = generate_world(tmp_path / "w", format="dicom", centers=1, subjects_per_center=4,
                              shape=(48, 48, 16), sequences=("T1W", "T2W"), seed=6,
                              broken=False)  # fmt: skip
    info = manifest["centers"][0]
    folder = tmp_path / "w" / info["annotations"]["rtstruct"]
    reference = tmp_path / "reference"
    _xds(reference, "ingest", "dicom", str(tmp_path / "w" / info["path"]), "--center", "A")
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)  # the same scans and key, no labels yet
    _xds(reference, "ingest", "dicom", str(folder), "--center", "A")
    command = [sys.executable, "-m", "xds.cli.main", "--catalog", str(killed), "ingest",
               "dicom", str(folder), "--center", "A"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any((killed / ".xds-tmp").glob("*/annotations/*.nii.gz")):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the ingest ended before it could be killed"
    proc.kill()  # SIGKILL midway through the structure sets: nothing is committed
    proc.wait()
    assert Catalog.open(killed).count("labels") == 0
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def labels(root):
        rows = Catalog.open(root).read("labels").to_pylist()
        return sorted((r["label_id"], r["scan_id"], r["hash"], r["label_map"]) for r in rows)

    assert labels(killed) == labels(reference)
    assert len(labels(killed)) == len(info["series"])
    assert not any((killed / ".xds-tmp").iterdir())
