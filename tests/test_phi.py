"""No identifier in any byte: canaries planted everywhere a hospital export hides them.

Two centers are built from data xds did not generate where possible (nibabel's sample
images, pydicom's test DICOM) plus a phantom DICOM series re-tagged with canaries:

- folder and file names carrying names, MRNs and UIDs; a gzip header (FNAME, MTIME) naming
  the original file; NIfTI header text and an extension; a metadata sheet with a name and a
  birth date; DICOM patient, physician, institution and accession tags, dates and times;
  broken files named by their UIDs; files of each kind that ends in quarantine.

After ingest of both centers, a cohort, a split, two exports and the commands' console
output, no canary, no source UID and no unshifted date may appear in any raw byte under the
catalog or the exports (gzip streams are also searched decompressed, Parquet tables cell by
cell). ``xds verify`` passes, then finds a leak planted afterwards.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from xds.cli.main import cli
from xds.phantoms import generate_world

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
CANARIES = [
    "ZZCANARYSMITH", "MRN778899", "ZZCANARY^HIDDENPERSON", "ZZMRN-4417-CANARY",
    "ZZDESCRIPCANARY", "ZZEXTCANARY", "ZZSHEETNAME", "ZZDICOMPERSON", "ZZPID5512",
    "ZZACCESSION77", "ZZCANARY GENERAL HOSPITAL", "ZZDRWHO", "ZZSTATION9",
    "ZZTRUNCCANARY", "ZZCLINICALNAME", "ZZPIDUNMATCHED", "ZZACCUNMATCHED",
]  # fmt: skip
SHEET_DOB = "19610203"
UID_ROOT = "1.2.826.0.1.3680043.8.498.4417"  # source UIDs the test plants


def _gzip_with_name(data: bytes, path: Path, name: str) -> None:
    """Write ``data`` gzip-compressed with an FNAME and an MTIME, as gzip(1) would."""
    with open(path, "wb") as raw, gzip.GzipFile(name, "wb", fileobj=raw, mtime=1668600000) as fh:
        fh.write(data)


def _nifti_center(root: Path) -> Path:
    """A 'folders' layout center: canary-named subject folders, images from nibabel."""
    center = root / "nifti_center"
    sources = [NIB_DATA / "anatomical.nii", NIB_DATA / "reoriented_anat_moved.nii"]
    subjects = ["ZZCANARYSMITH_MRN778899", "ZZCANARY^HIDDENPERSON"]
    for subject, source in zip(subjects, sources, strict=True):
        img = nib.load(source)
        data = np.asanyarray(img.dataobj).astype(np.float32)
        image = nib.Nifti1Image(data, img.affine)
        image.header["descrip"] = b"ZZDESCRIPCANARY scanned 2022-11-16"
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"ZZEXTCANARY"))
        folder = center / subject / "T2_HASTE"
        folder.mkdir(parents=True)
        _gzip_with_name(image.to_bytes(), folder / "image.nii.gz", f"{subject}_t2.nii")
        label = (data > np.percentile(data, 70)).astype(np.uint8)
        plain = nib.Nifti1Image(label, img.affine)
        _gzip_with_name(plain.to_bytes(), folder / "mask.nii.gz", f"{subject}_t2_seg.nii")
    # Quarantine of each kind, named by identifiers and UIDs.
    empty = center / "ZZMRN-4417-CANARY" / "T1_VIBE"
    empty.mkdir(parents=True)
    (empty / "image.nii.gz").write_bytes(b"")  # read: empty file
    stray = center / "ZZCANARYSMITH_MRN778899" / f"{UID_ROOT}.1.nii.gz"
    shutil.copyfile(center / subjects[0] / "T2_HASTE" / "image.nii.gz", stray)  # layout
    zero = center / f"{UID_ROOT}.2" / "T1_VIBE"
    zero.mkdir(parents=True)
    bad = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4))
    raw = bytearray(bad.to_bytes())
    raw[80:84] = np.float32(0).tobytes()  # pixdim[1] = 0
    (zero / "image.nii").write_bytes(bytes(raw))  # read: zero spacing
    mismatch = center / subjects[1] / "OPP_PHASE"
    mismatch.mkdir(parents=True)
    shutil.copyfile(center / subjects[1] / "T2_HASTE" / "image.nii.gz", mismatch / "image.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), mismatch / "mask.nii.gz")
    odd = center / os.fsdecode(b"ZZCANARY\xe9caf\xe9") / "T2_HASTE"  # not UTF-8
    odd.mkdir(parents=True)
    shutil.copyfile(sources[0], odd / "image.nii")
    (center / "metadata.csv").write_text(
        "subject,PatientName,DOB,sex,age\n"
        f"ZZCANARYSMITH_MRN778899,ZZSHEETNAME,{SHEET_DOB},F,54\n"
        f"ZZCANARY^HIDDENPERSON,ZZSHEETNAME,{SHEET_DOB},M,61\n"
    )
    (center / "labels.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    return center


def _dicom_center(root: Path) -> tuple[Path, set[str], set[str]]:
    """Phantom series re-tagged with canaries, plus pydicom's real files; returns the folder,
    the source UIDs and the source dates."""
    world = root / "dicom_world"
    manifest = generate_world(world, format="dicom", centers=1, subjects_per_center=2,
                              shape=(16, 16, 8), sequences=("T2W",), seed=5,
                              broken=False)  # fmt: skip
    src = world / manifest["centers"][0]["path"]
    notes = world / manifest["centers"][0]["annotations"]["path"]
    center = root / "dicom_center"
    uids: set[str] = set()
    dates: set[str] = set()
    for n, path in enumerate(sorted(p for p in src.rglob("*") if p.is_file())):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        ds.PatientName = "ZZDICOMPERSON^ZZCANARY"
        ds.PatientID = "ZZPID5512"
        ds.AccessionNumber = "ZZACCESSION77"
        ds.InstitutionName = "ZZCANARY GENERAL HOSPITAL"
        ds.ReferringPhysicianName = "ZZDRWHO"
        ds.StationName = "ZZSTATION9"
        ds.SeriesDescription = f"t2_haste ZZDICOMPERSON {ds.get('SeriesDescription', '')}"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20221116"
        ds.AcquisitionTime = "101530"
        ds.PatientBirthDate = "19580412"
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
        folder = center / "ZZDICOMPERSON^ZZCANARY" / str(ds.SeriesInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
        if n == 0:  # a broken copy named by a UID: truncated in its pixel data
            broken = center / "ZZTRUNCCANARY" / f"{UID_ROOT}.3.dcm"
            broken.parent.mkdir(parents=True, exist_ok=True)
            data = (folder / f"{ds.SOPInstanceUID}.dcm").read_bytes()
            broken.write_bytes(data[: len(data) - 100])
    # the series' annotations as a SEG and as an RTSTRUCT, carrying the same patient
    for path in sorted([*notes.glob("seg/*.dcm"), *notes.glob("rtstruct/*.dcm")]):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "ZZDICOMPERSON^ZZCANARY", "ZZPID5512"
        ds.AccessionNumber, ds.StudyDate = "ZZACCESSION77", "20221116"
        ds.PatientBirthDate = "19580412"
        if ds.Modality == "RTSTRUCT":  # a planning system's free text naming the patient
            extra = pydicom.Dataset()
            extra.ROINumber, extra.ROIName = 99, "ZZDICOMPERSON ZZPID5512 markers"
            ds.StructureSetROISequence.append(extra)
        uids |= {str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
        folder = center / "ZZDICOMPERSON^ZZCANARY" / "annotations"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
    dates |= {"20221116", "19580412", "2022-11-16", "1958-04-12"}
    # Real files other tools wrote, in a folder named after their own patients.
    from pydicom.data import get_testdata_file

    for name in ("MR_small.dcm", "CT_small.dcm", "emri_small.dcm"):
        path = get_testdata_file(name)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids |= {str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                          "SOPInstanceUID") if ds.get(k)}  # fmt: skip
        for key in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                    "PatientBirthDate"):  # fmt: skip
            if len(str(ds.get(key) or "")) == 8:
                value = str(ds.get(key))
                dates |= {value, f"{value[:4]}-{value[4:6]}-{value[6:]}"}
        target = center / f"{ds.get('PatientID') or 'real'}" / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return center, uids, dates


@pytest.fixture(scope="module")
def phi_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi")
    nifti = _nifti_center(root)
    dicom, uids, dates = _dicom_center(root)
    catalog = root / "catalog"
    runner = CliRunner()
    outputs = []

    def xds(*args, ok=True):
        result = runner.invoke(cli, ["--catalog", str(catalog), *args])
        outputs.append(result.output + (result.stderr if result.stderr_bytes else ""))
        if ok:
            assert result.exit_code == 0, result.output
        return result

    xds("ingest", "nifti", str(nifti), "--center", "Nif", "--dataset", "phi", "--layout",
        "folders", "--metadata", str(nifti / "metadata.csv"), "--label-map",
        str(nifti / "labels.json"), "-j", "2")  # fmt: skip
    # the center's clinical sheets, keyed by MRN (at ingest) and by accession (afterwards)
    by_mrn, by_accession = root / "clinical_mrn.csv", root / "clinical_acc.tsv"
    by_mrn.write_text("MRN,Patient Name,diagnosis,notes\n"
                      "ZZPID5512,ZZCLINICALNAME,pdac,seen twice\n"
                      "ZZPIDUNMATCHED,ZZCLINICALNAME,normal,\n")  # fmt: skip
    by_accession.write_text(
        "AccessionNumber\tPatientID\tstage\n"
        "ZZACCESSION77\tZZPID5512\tIII\nZZACCUNMATCHED\tZZPID5512\tI\n"
    )
    xds("ingest", "dicom", str(dicom), "--center", "Dcm", "--dataset", "phi", "-j", "2",
        "--min-slices", "1", "--metadata", str(by_mrn), "--key", "PatientID")  # fmt: skip
    xds("ingest", "sheet", str(by_accession), "--center", "Dcm", "--dataset", "phi", "--key",
        "AccessionNumber")  # fmt: skip
    xds("build-cohort", "--where", "dataset = 'phi' AND has_label", "--name", "all")
    xds("split", "all", "--ratios", "50,0,50", "--stratify", "")
    exports = root / "exports"
    xds("export", "datalist", "all", "--split", "all-holdout-s0", "--out",
        str(exports / "list.json"))  # fmt: skip
    xds("export", "nnunet", "all", "--split", "all-holdout-s0", "--dataset-id", "577",
        "--out", str(exports / "nnunet"))  # fmt: skip
    xds("sql", "SELECT * FROM quarantine")
    xds("sql", "SELECT * FROM scan_view")
    return {"root": root, "catalog": catalog, "exports": exports, "outputs": outputs,
            "uids": uids, "dates": dates, "xds": xds}  # fmt: skip


def _stored_files(run) -> list[Path]:
    files = []
    for root in (run["catalog"], run["exports"]):
        files += [p for p in root.rglob("*") if p.is_file() and p.name != ".xds-secret"]
    return files


def test_every_kind_of_input_was_exercised(phi_run):
    from xds.catalog import Catalog

    cat = Catalog.open(phi_run["catalog"])
    stages = {r["stage"] for r in cat.read("quarantine").to_pylist()}
    assert {"read", "layout", "label"} <= stages
    errors = " ".join(r["error"] for r in cat.read("quarantine").to_pylist())
    for reason in ("not valid UTF-8", "invalid voxel spacing", "truncated", "does not match"):
        assert reason in errors
    assert cat.count("scans") >= 5  # both NIfTI subjects, phantom series and pydicom's
    assert {r["modality"] for r in cat.read("scans").to_pylist()} >= {"MR", "CT"}
    # both clinical sheets reached the subject of the canary patient, by pseudonyms only
    sheets = [r for r in cat.read("subjects", "center = 'Dcm'").to_pylist() if r["diagnosis"]]
    assert [r["diagnosis"] for r in sheets] == ["pdac"]
    assert dict(sheets[0]["extra"]) == {"notes": "seen twice", "stage": "III"}
    # the canary patient's SEG and RTSTRUCT objects became labels of the DICOM center (the
    # two of one series give the same voxels, so one label: its id is the scan's and theirs)
    scans = {r["scan_id"]: r["center"] for r in cat.read("scans").to_pylist()}
    labelled = {
        r["scan_id"] for r in cat.read("labels").to_pylist() if scans[r["scan_id"]] == "Dcm"
    }
    assert len(labelled) == 2
    assert "annotation" not in stages


def test_no_canary_uid_or_date_in_any_stored_byte(phi_run, find_leaks):
    needles = set(CANARIES) | phi_run["uids"] | phi_run["dates"] | {SHEET_DOB, UID_ROOT}
    assert len(_stored_files(phi_run)) > 50
    assert find_leaks([phi_run["catalog"], phi_run["exports"]], needles, phi_run["root"]) == []


def test_no_canary_uid_or_date_in_the_console(phi_run):
    text = "\n".join(phi_run["outputs"]).lower()
    needles = set(CANARIES) | phi_run["uids"] | {SHEET_DOB, UID_ROOT, "20221116"}
    assert [n for n in needles if n.lower() in text] == []
    assert "quarantined" in text  # the problems were printed, by their scrubbed names
    for source in ("nifti_center", "dicom_center"):
        assert str(phi_run["root"] / source).lower() not in text


def test_stored_gzip_streams_carry_no_name_or_time(phi_run):
    from xds.io.images import gzip_members

    for path in _stored_files(phi_run):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            for flags, mtime, _, _ in gzip_members(data):
                assert flags & (4 | 8 | 16) == 0, path
                assert mtime == 0, path


def test_verify_passes_then_finds_planted_leaks(phi_run, tmp_path):
    xds = phi_run["xds"]
    clean = xds("verify", str(phi_run["exports"]), "--deny", "ZZDICOMPERSON", "--deny",
                "ZZSHEETNAME")  # fmt: skip
    assert "ok" in clean.output
    # Plant: a stored image replaced by the source file with its gzip FNAME, a sidecar
    # holding a source UID, and a folder named after a patient in the export.
    copy = tmp_path / "catalog"
    shutil.copytree(phi_run["catalog"], copy)
    from xds.catalog import Catalog

    cat = Catalog.open(copy)
    scan = next(r for r in cat.read("scans").to_pylist() if r["dataset"] == "phi"
                and r["center"] == "Nif")  # fmt: skip
    source = next((phi_run["root"] / "nifti_center").rglob("image.nii.gz"))
    target = cat.resolve(scan["image_uri"])
    target.unlink()
    shutil.copyfile(source, target)
    sidecar = next(r for r in cat.read("scans").to_pylist() if r["sidecar_uri"])
    path = cat.resolve(sidecar["sidecar_uri"])
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "Note": f"{UID_ROOT}.12.99"}))  # fmt: skip
    label = cat.read("labels").to_pylist()[0]
    moved = nib.load(cat.resolve(label["uri"]))
    nib.save(nib.Nifti1Image(np.roll(np.asanyarray(moved.dataobj), 2, 0), moved.affine),
             cat.resolve(label["uri"]))  # fmt: skip
    export = tmp_path / "export"
    shutil.copytree(phi_run["exports"] / "nnunet", export)
    (export / "ZZCANARY^HIDDENPERSON").mkdir()
    result = CliRunner().invoke(
        cli, ["--catalog", str(copy), "verify", str(export), "--deny", "zzdescripcanary"]
    )
    assert result.exit_code == 1
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    joined = "\n".join(lines)
    assert "gzip header keeps a file name" in joined
    assert "modification time" in joined
    assert "NIfTI header text field descrip" in joined
    assert "extension" in joined
    assert "deny list" in joined
    assert "DICOM UID" in joined
    assert "changed" in joined  # the label edited after ingest
    # findings name files and problems, never the identifier they found
    for needle in ("ZZCANARY", "zzdescripcanary", UID_ROOT, "SMITH"):
        assert needle.lower() not in result.output.lower()
    # --fix-gzip repairs what a catalog of an older xds holds: the gzip name and time go
    fixed = CliRunner().invoke(cli, ["--catalog", str(copy), "verify", "--fix-gzip"])
    assert "rewrote the gzip header of 1 file(s)" in fixed.stderr
    assert "gzip header" not in fixed.stdout
    assert b"ZZCANARY" not in target.read_bytes()[:64]  # the gzip header region
    assert gzip.decompress(target.read_bytes()) == gzip.decompress(source.read_bytes())


def test_verify_finds_a_source_folder_name(phi_run, tmp_path):
    """A hidden source folder name written into a table cell is found by its keyed hash."""
    copy = tmp_path / "catalog"
    shutil.copytree(phi_run["catalog"], copy)
    from xds.catalog import Catalog

    cat = Catalog.open(copy)
    with cat.transaction("plant") as txn:
        txn.append("quarantine", [{"uri": "ZZMRN-4417-CANARY/x.nii", "stage": "read",
                                   "error": "planted", "at": cat.history()[0]["at"],
                                   "source": "test"}])  # fmt: skip
    result = CliRunner().invoke(cli, ["--catalog", str(copy), "verify", "--no-hashes"])
    assert result.exit_code == 1
    assert "source folder or file name" in result.output
    assert "ZZMRN" not in result.output


@pytest.mark.parametrize(
    ("rel", "kept"),
    [
        ("imagesTr/amos_0001_0000.nii.gz", True),
        ("sub-0123456789abcdef/anat/sub-0123456789abcdef_T2w.nii.gz", True),
        ("DICOM/PA000000/ST000000/SE000000/IM000000", True),
        ("case_0042/T2_HASTE/image.nii.gz", True),
        ("SMITH_JOHN_MRN778899_t2.nii", False),
        ("P1234567", False),
        ("Chen_Matthews_1.3.1.2022.11.16.dcm", False),
        ("1.2.840.113619.2.55.3.604688.dcm", False),
        ("scan_20221116.nii.gz", False),
    ],
)
def test_structural_names_are_kept_identifying_ones_hashed(rel, kept):
    from xds.io.deid import scrub_path

    shown = scrub_path(b"key", rel)
    assert (shown == rel) is kept
    if not kept:
        last = shown.rsplit("/", 1)[-1]
        assert last.startswith("x-")
        for ext in (".nii.gz", ".nii", ".dcm"):
            if rel.endswith(ext):
                assert last.endswith(ext)
                break


def test_quarantined_files_are_found_again_in_their_source_folder(phi_run):
    """Rows store hashes; with the folder and the catalog's key the real paths come back."""
    root = phi_run["root"]
    result = CliRunner().invoke(
        cli, ["--catalog", str(phi_run["catalog"]), "quarantine", "--center", "Nif",
              "--source", str(root / "nifti_center"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows
    assert all(r["source_path"] != "(not found)" for r in rows), rows
    found = {Path(p).relative_to(root / "nifti_center").as_posix()
             for r in rows for p in r["source_path"].split(", ")}  # fmt: skip
    assert "ZZMRN-4417-CANARY/T1_VIBE/image.nii.gz" in found
    assert f"{UID_ROOT}.2/T1_VIBE/image.nii" in found
    assert f"ZZCANARYSMITH_MRN778899/{UID_ROOT}.1.nii.gz" in found
    assert "ZZCANARY^HIDDENPERSON/OPP_PHASE/mask.nii.gz" in found
    # The DICOM center's broken file, named by a UID in a canary-named folder:
    dicom = CliRunner().invoke(
        cli, ["--catalog", str(phi_run["catalog"]), "quarantine", "--center", "Dcm",
              "--source", str(root / "dicom_center"), "--json"],
    )  # fmt: skip
    paths = " ".join(r["source_path"] for r in json.loads(dicom.stdout))
    assert f"ZZTRUNCCANARY/{UID_ROOT}.3.dcm" in paths
