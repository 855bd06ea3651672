"""DICOM SEG annotations placed on their source series (``xds ingest dicom``)."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.phantoms import generate_world


def _xds(catalog: Path, *args):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result


def _same_classes(pair, label_map: dict, truth_map: dict) -> bool:
    """Paired voxels (label, truth) name the same classes, though their values differ
    (segment numbers vs the center's indices)."""
    if pair is None:
        return False
    got, want = (np.vectorize(m.get, otypes=[object])(values.astype(int))
                 for values, m in zip(pair, (label_map, truth_map), strict=True))  # fmt: skip
    return bool((got == want).all())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    manifest = generate_world(root / "w", format="dicom", centers=1, subjects_per_center=2,
                              shape=(16, 16, 8), sequences=("T1W", "T2W"), seed=4,
                              broken=False)  # fmt: skip
    return root, manifest["centers"][0]


def test_seg_files_are_the_generators_truth_on_the_converted_grid(world, tmp_path,
                                                                   values_in_world, find_leaks):
    root, info = world
    notes = root / "w" / info["annotations"]["path"]
    truth_map = {int(k): v for k, v in json.loads((notes / "label_map.json").read_text()).items()}
    catalog = tmp_path / "c"
    # a SEG whose series is not in the catalog yet: quarantined with that reason
    early = _xds(catalog, "ingest", "dicom", str(notes / "seg"), "--center", "A", "--json")
    assert early["labels_added"] == 0
    assert all("series is not in the catalog" in p["error"] for p in early["problems"])
    _xds(catalog, "ingest", "dicom", str(root / "w" / info["path"]), "--center", "A")
    # a later run over a folder holding only annotations attaches them
    report = _xds(catalog, "ingest", "dicom", str(notes / "seg"), "--center", "A", "--json")
    assert report["labels_added"] == len(info["series"])
    assert report["quarantined"] == 0
    cat = Catalog.open(catalog)
    maps = {r["label_map_id"]: dict(zip(r["indices"], r["names"], strict=True))
            for r in cat.read("label_maps").to_pylist()}  # fmt: skip
    scans = {s["scan_id"]: s for s in cat.read("scans").to_pylist()}
    truths = sorted(notes.glob("mask_*.nii.gz"))
    labels = cat.read("labels").to_pylist()
    assert len({lab["scan_id"] for lab in labels}) == len(info["series"])
    for label in labels:
        path = cat.resolve(label["uri"])
        image = nib.load(cat.resolve(scans[label["scan_id"]]["image_uri"]))
        assert nib.load(path).shape == image.shape
        assert np.allclose(nib.load(path).affine, image.affine, atol=1e-3)
        assert any(_same_classes(values_in_world(path, t), maps[label["label_map"]], truth_map)
                   for t in truths)  # fmt: skip
        assert label["origin"] == "manual"
        assert set(label["classes_annotated"]) == set(truth_map.values()) - {"background"}
    # a re-run adds nothing; no identifier the SEG headers carry reaches a stored byte
    again = _xds(catalog, "ingest", "dicom", str(notes / "seg"), "--center", "A", "--json")
    assert again["labels_added"] == 0
    assert find_leaks(catalog, [p for p in info["phi"] if len(p) > 3]) == []


def test_bad_seg_files_are_quarantined_and_the_rest_attached(world, tmp_path):
    root, info = world
    notes = root / "w" / info["annotations"]["path"]
    tree = tmp_path / "center"
    shutil.copytree(root / "w" / info["path"], tree)
    segs = sorted((notes / "seg").glob("*.dcm"))
    # SEG files inside the center's own tree are attached in the same run ...
    shutil.copy(segs[0], tree / "good.dcm")
    # ... a frame moved off the voxel grid, an unknown segment, overlapping segments
    off = pydicom.dcmread(segs[1])
    step = float(off.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
    position = off.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    moved = [float(v) for v in position.ImagePositionPatient]
    moved[0] += 0.4 * step  # four tenths of a pixel sideways
    position.ImagePositionPatient = moved
    off.save_as(tree / "off_grid.dcm")
    unknown = pydicom.dcmread(segs[2])
    unknown.SegmentSequence[0].SegmentLabel = "zzfrobnicator"
    unknown.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = "123456789"
    unknown.save_as(tree / "unknown.dcm")
    overlap = pydicom.dcmread(segs[3])
    groups = overlap.PerFrameFunctionalGroupsSequence
    ident = groups[0].SegmentIdentificationSequence[0]
    twin = next(g for g in groups
                if g.PlanePositionSequence[0].ImagePositionPatient
                == groups[0].PlanePositionSequence[0].ImagePositionPatient
                and g.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                != ident.ReferencedSegmentNumber)  # fmt: skip
    # the first frame's segment also covers the pixels of another segment in that plane
    frames = overlap.pixel_array
    other = list(groups).index(twin)
    frames[0] = np.maximum(frames[0], frames[other])
    overlap.PixelData = pydicom.pixels.pack_bits(frames.astype(np.uint8))
    overlap.save_as(tree / "overlap.dcm")
    catalog = tmp_path / "c"
    report = _xds(catalog, "ingest", "dicom", str(tree), "--center", "A", "--json")
    errors = " | ".join(p["error"] for p in report["problems"])
    assert "does not lie on its series' voxel grid" in errors
    assert "unknown class name 'zzfrobnicator'" in errors
    assert "overlap" in errors
    assert report["quarantined"] == 3
    assert report["labels_added"] == 1  # the good SEG, in the same run as its series


def _source_series(seg: pydicom.Dataset, folder: Path) -> None:
    """The CT series a real SEG references, rebuilt from the SEG's own references and frame
    geometry (the SEG ships without it): same UIDs, positions, orientation and spacing."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    shared = seg.SharedFunctionalGroupsSequence[0]
    ref = seg.ReferencedSeriesSequence[0]
    by_sop = {}
    for group in seg.PerFrameFunctionalGroupsSequence:
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        by_sop[source.ReferencedSOPInstanceUID] = group.PlanePositionSequence[0]
    folder.mkdir(parents=True)
    for n, (sop, plane) in enumerate(sorted(by_sop.items(), key=lambda kv: float(
            kv[1].ImagePositionPatient[2])), start=1):  # fmt: skip
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop
        ds.Modality, ds.PatientID, ds.PatientName = "CT", seg.PatientID, seg.PatientName
        ds.StudyInstanceUID, ds.SeriesInstanceUID = seg.StudyInstanceUID, ref.SeriesInstanceUID
        ds.FrameOfReferenceUID, ds.SeriesNumber, ds.InstanceNumber = seg.FrameOfReferenceUID, 1, n
        ds.ImagePositionPatient = plane.ImagePositionPatient
        ds.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        ds.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
        ds.SliceThickness = shared.PixelMeasuresSequence[0].SliceThickness
        ds.Rows, ds.Columns = seg.Rows, seg.Columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.full((seg.Rows, seg.Columns), 1000 + n, np.int16).tobytes()
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)


def test_a_real_seg_lands_where_its_frames_say(tmp_path):
    """pydicom-data's liver.dcm, a SEG other tools wrote (SRT code T-62000, SEMIAUTOMATIC)."""
    data_store = pytest.importorskip("data_store")
    real = Path(data_store.__file__).parent / "data" / "liver.dcm"
    seg = pydicom.dcmread(real)
    tree = tmp_path / "center"
    _source_series(seg, tree / "ct")
    shutil.copy(real, tree / "liver_seg.dcm")
    catalog = tmp_path / "c"
    report = _xds(catalog, "ingest", "dicom", str(tree), "--center", "R", "--min-slices", "1",
                  "--json")  # fmt: skip
    assert report["scans_added"] == 1
    assert report["files_in_labels"] == 1
    cat = Catalog.open(catalog)
    (label,) = cat.read("labels").to_pylist()
    assert label["origin"] == "revised"  # SEMIAUTOMATIC
    assert label["classes_present"] == ["liver"]  # by its label: T-62000 is an SRT code
    # every segmented pixel, placed by the DICOM formula from the SEG's own frame geometry,
    # is a liver voxel of the stored label, and nothing else is
    image = nib.load(cat.resolve(label["uri"]))
    stored = np.asanyarray(image.dataobj)
    world = np.round(nib.affines.apply_affine(image.affine, np.argwhere(stored > 0)), 1)
    shared = seg.SharedFunctionalGroupsSequence[0]
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    expected = []
    for frame, group in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True):
        r, c = np.nonzero(frame)
        origin = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        lps = origin + np.outer(c * dx, iop[:3]) + np.outer(r * dy, iop[3:])
        expected.append(lps * [-1, -1, 1])  # DICOM LPS -> NIfTI RAS
    expected = np.round(np.concatenate(expected), 1)
    assert len(world) == len(expected) == int((seg.pixel_array > 0).sum())
    assert set(map(tuple, world)) == set(map(tuple, expected))
