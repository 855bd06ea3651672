"""Bad input beside good input: each bad file is quarantined (or refused) with its reason in
one line, the good files beside it are still ingested, and nothing half-written remains."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.ingest import ingest_dicom, ingest_nifti
from xds.phantoms import generate_world
from xds.schemas import IngestError


@pytest.fixture
def folders_center(world, tmp_path):
    """A private copy of the phantom world's 'folders' center (subject/SEQUENCE/image)."""
    root, manifest = world
    c = next(c for c in manifest["centers"] if c["layout"] == "folders")
    folder = tmp_path / "center"
    shutil.copytree(root / c["path"], folder)
    return folder, c, sum(c["scans_per_sequence"].values())


def _ingest(cat, folder, **kw):
    return ingest_nifti(cat, folder, center="Bad", label_map=folder / "labels.csv", **kw)


def _subject_image(folder: Path) -> Path:
    return next(folder.glob("*/*/image.nii.gz"))


def _reasons(cat: Catalog) -> list[str]:
    return [r["error"] for r in cat.read("quarantine").to_pylist()]


def test_a_name_that_is_not_utf8_is_quarantined_escaped(folders_center, tmp_path):
    folder, _, n = folders_center
    odd = folder / os.fsdecode(b"M\xfcller") / "T2_HASTE"
    odd.mkdir(parents=True)
    shutil.copyfile(_subject_image(folder), odd / "image.nii.gz")
    cat = Catalog.create(tmp_path / "cat")
    report = _ingest(cat, folder)
    assert report.scans_added == n
    assert any("not valid UTF-8" in e for e in _reasons(cat))
    result = CliRunner().invoke(
        cli, ["--catalog", str(tmp_path / "c2"), "ingest", "nifti", str(folder), "--center",
              "Bad", "--label-map", str(folder / "labels.csv"), "--show-paths", "-j", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "M\\xfcller" in result.stderr  # shown escaped, on request only


def test_zero_spacing_is_quarantined_not_invented(folders_center, tmp_path):
    folder, _, n = folders_center
    target = _subject_image(folder)
    img = nib.load(target)
    raw = bytearray(img.header.binaryblock)
    raw[80:84] = np.float32(0).tobytes()  # pixdim[1]
    body = gzip.decompress(target.read_bytes())[348:]
    target.write_bytes(gzip.compress(bytes(raw) + body, mtime=0))
    cat = Catalog.create(tmp_path / "cat")
    report = _ingest(cat, folder)
    assert report.scans_added == n - 1
    assert any("invalid voxel spacing (0.0" in e for e in _reasons(cat))


def test_a_gzip_bomb_is_refused_before_it_is_decoded(folders_center, tmp_path):
    folder, _, n = folders_center
    bomb = folder / "bomb" / "T2_HASTE" / "image.nii.gz"
    bomb.parent.mkdir(parents=True)
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0, 1.0, 1.0))
    zeros = bytes(1 << 20)
    with gzip.open(bomb, "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\0" * 4)
        for _ in range(64):  # 64 MiB of a claimed 1 GiB, about 64 KB on disk
            fh.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    cat = Catalog.create(tmp_path / "cat")
    start = time.monotonic()
    report = _ingest(cat, folder, jobs=1)
    assert report.scans_added == n
    assert any("over the limit of 536,870,912" in e for e in _reasons(cat))
    from xds.io.images import read_volume

    start = time.monotonic()
    with pytest.raises(IngestError, match="over the limit"):
        read_volume(bomb)
    assert time.monotonic() - start < 1.0  # the header alone decides
    with pytest.raises(IngestError, match="over the limit of 1,000"):
        read_volume(_subject_image(folder), limit=1000)


def test_conflicting_sheet_rows_are_refused_identical_ones_kept(folders_center, tmp_path):
    folder, _, n = folders_center
    sheet = folder / "metadata.csv"
    lines = sheet.read_text().splitlines()
    cat = Catalog.create(tmp_path / "cat")
    (folder / "same.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    assert _ingest(cat, folder, metadata=folder / "same.csv").scans_added == n
    header = lines[0].split(",")
    row = lines[1].split(",")
    age = header.index(next(h for h in header if h.lower().startswith("age")))
    row[age] = str(float(row[age]) + 7)
    (folder / "conflict.csv").write_text("\n".join([*lines, ",".join(row)]) + "\n")
    fresh = Catalog.create(tmp_path / "fresh")
    with pytest.raises(IngestError, match=r"sub-[0-9a-f]{16} is on lines 2 and \d+ with "
                       r"different age") as exc:  # fmt: skip
        _ingest(fresh, folder, metadata=folder / "conflict.csv")
    assert row[0] not in str(exc.value)  # the subject is named by its pseudonym only
    assert Catalog.open(fresh.root).version == 0


def test_reruns_leave_no_partial_files(folders_center, tmp_path):
    folder, _, n = folders_center
    cat = Catalog.create(tmp_path / "cat")
    for _ in range(3):
        _ingest(cat, folder)
    assert cat.count("scans") == n
    assert not list((cat.root / "data").rglob("*.part*"))


# -- DICOM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_center(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_dicom") / "world"
    manifest = generate_world(root, format="dicom", centers=1, subjects_per_center=6,
                              sequences=("T1W", "T2W", "OOP"), shape=(24, 24, 12), seed=11,
                              broken=False, annotations=False)  # fmt: skip
    return root / manifest["centers"][0]["path"], manifest["centers"][0]


def _series_copy(center: Path, dest: Path, edit, keep: int | None = None) -> int:
    """Copy the first series of ``center`` to ``dest`` under a new UID, ``edit``-ing each."""
    files = sorted(p for p in center.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    series = [p for p in files
              if pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
              == first.SeriesInstanceUID]  # fmt: skip
    uid = pydicom.uid.generate_uid()
    dest.mkdir(parents=True)
    for k, path in enumerate(series[:keep]):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        edit(ds)
        ds.save_as(dest / f"{k:04d}.dcm")
    return len(series[:keep])


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # the 'nan' the test writes
def test_dicom_without_geometry_localizers_and_single_slices(dicom_center, tmp_path):
    center, manifest = dicom_center
    src = tmp_path / "src"
    shutil.copytree(center, src / "good")

    def no_position(ds):
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient

    def nan_position(ds):
        ds.ImagePositionPatient = ["nan", "0", "0"]

    def localizer(ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    _series_copy(center, src / "bad" / "nopos", no_position)
    _series_copy(center, src / "bad" / "nanpos", nan_position)
    _series_copy(center, src / "bad" / "loc", localizer)
    _series_copy(center, src / "bad" / "one", lambda ds: None, keep=1)
    def other_voxels(ds):
        ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()

    odd = src / os.fsdecode(b"Patient_J\xf6rg")  # a name that is not UTF-8: still a series
    _series_copy(center, odd, other_voxels)
    cat = Catalog.create(tmp_path / "cat")
    report = ingest_dicom(cat, src, center="D", jobs=2)
    assert report.scans_added == len(manifest["series"]) + 1
    reasons = _reasons(cat)
    assert sum("no geometry" in e for e in reasons) == 2
    assert any("localizer" in e and "ImageType" in e for e in reasons)
    assert any(e.startswith("not a volume: 1 slice(s)") for e in reasons)
    assert all(len(e.splitlines()) == 1 for e in reasons)
    assert not any("J\\xf6rg" in r["uri"] or "Patient_J" in r["uri"]
                   for r in cat.read("quarantine").to_pylist())  # fmt: skip


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_kill_9_of_a_parallel_ingest_takes_its_workers_with_it(dicom_center, tmp_path):
    center, _ = dicom_center
    command = [sys.executable, "-m", "xds.cli.main", "--catalog", str(tmp_path / "cat"),
               "ingest", "dicom", str(center), "--center", "D", "-j", "2"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        seen |= _descendants(proc.pid)
        if len(seen) >= 3:  # the fork server and two workers
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the ingest ended before its workers could be seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seen |= _descendants(proc.pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.05)
    assert [p for p in seen if _alive(p)] == []


# -- exports -------------------------------------------------------------------------------------


def test_a_killed_exports_target_is_replaced_by_its_rerun(catalog, tmp_path):
    from xds.catalog import build_cohort
    from xds.export import export_datalist
    from xds.schemas import ExportError
    from xds.splits.store import split_cohort

    build_cohort(catalog, "has_label AND sequence = 'T1W'", "t1")
    split = split_cohort(catalog, "t1").name
    out = tmp_path / "nn"
    # A killed run: some files, and the marker naming a writer that is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = out / "Dataset580_T1"
    (target / "imagesTr").mkdir(parents=True)
    (target / "imagesTr" / "half.nii.gz").write_bytes(b"half")
    (out / ".Dataset580_T1.xds-incomplete").write_text(f"{dead.pid}\n")
    result = CliRunner().invoke(
        cli, ["--catalog", str(catalog.root), "export", "nnunet", "t1", "--split", split,
              "--dataset-id", "580", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (target / "imagesTr" / "half.nii.gz").exists()
    assert (target / "dataset.json").exists()
    assert not (out / ".Dataset580_T1.xds-incomplete").exists()
    # A finished export is someone's data: refused without --force.
    again = CliRunner().invoke(
        cli, ["--catalog", str(catalog.root), "export", "nnunet", "t1", "--split", split,
              "--dataset-id", "580", "--out", str(out)],
    )  # fmt: skip
    assert again.exit_code == 1
    assert "--force" in again.output
    # A target another live export is writing: refused even with --force.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".list.json.xds-incomplete").write_text(f"{live.pid}\n")
        with pytest.raises(ExportError, match="being written by another export"):
            export_datalist(catalog, "t1", split=split, out=tmp_path / "list.json", force=True)
    finally:
        live.kill()
        live.wait()
    assert target.is_dir()


def test_a_header_claiming_more_voxels_than_int64_holds_is_refused(tmp_path):
    """np.prod would wrap 32767^7 to a small number; the check must not."""
    from xds.io.images import read_volume

    raw = bytearray(nib.Nifti1Header().binaryblock)
    raw[40:56] = np.array([7, *[32767] * 7], "<i2").tobytes()
    path = tmp_path / "forged.nii"
    path.write_bytes(bytes(raw) + bytes(68))
    with pytest.raises(IngestError, match="over the limit"):
        read_volume(path)
