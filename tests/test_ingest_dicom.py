"""DICOM ingest on the phantom DICOM world and on the DICOM files pydicom ships."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest

from xds.catalog import Catalog
from xds.ingest import ingest_dicom, set_sequence
from xds.ingest.dicom import check_series_geometry
from xds.io.deid import SIDECAR_KEEP, pseudonym
from xds.phantoms import generate_world
from xds.schemas import IngestError

SEQUENCES = ("T1W", "T2W", "OOP", "IP")
WORLD = {"centers": 4, "subjects_per_center": 6, "shape": (24, 24, 12), "seed": 3}


@pytest.fixture(scope="session")
def dicom_world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dicom") / "world"
    manifest = generate_world(root, format="dicom", sequences=SEQUENCES, jobs=2,
                              annotations=False, **WORLD)  # fmt: skip
    # A stray file inside a folder named after a patient: its quarantine row must not
    # carry the name.
    nested = next(c for c in manifest["centers"] if c["layout"] == "nested")
    patient = sorted(p for p in (root / nested["path"]).iterdir() if p.is_dir())[0]
    (patient / "notes.txt").write_text("scanned on a Tuesday\n")
    return root, manifest


@pytest.fixture(scope="session")
def dicom_catalog(tmp_path_factory, dicom_world) -> tuple[Catalog, dict]:
    root, manifest = dicom_world
    cat = Catalog.create(tmp_path_factory.mktemp("dcat") / "catalog")
    reports = {
        c["name"]: ingest_dicom(cat, root / c["path"], center=c["name"], dataset="pd", jobs=2)
        for c in manifest["centers"]
    }
    return cat, reports


def _series_hash(cat: Catalog, uid: str) -> str:
    return pseudonym(cat.secret(), "series", uid, prefix="ser")


def test_every_layout_is_walked_and_classified(dicom_world, dicom_catalog):
    _, manifest = dicom_world
    cat, reports = dicom_catalog
    got = {
        r["series_uid_hash"]: r["sequence"]
        for r in cat.read("scans").select(["series_uid_hash", "sequence"]).to_pylist()
    }
    truth = [(c["name"], s) for c in manifest["centers"] for s in c["series"]]
    assert len(truth) == manifest["n_scans"] > 60
    missing = [s["series_uid"] for _, s in truth if _series_hash(cat, s["series_uid"]) not in got]
    assert missing == []
    right = sum(got[_series_hash(cat, s["series_uid"])] == s["sequence"] for _, s in truth)
    assert right / len(truth) >= 0.99, f"{right}/{len(truth)} classified right"
    for c in manifest["centers"]:
        assert reports[c["name"]].scans_added == len(c["series"]), c["layout"]


def test_subjects_are_linked_across_sequences_and_studies(dicom_world, dicom_catalog):
    _, manifest = dicom_world
    cat, _ = dicom_catalog
    scans = cat.read("scans").to_pylist()
    for c in manifest["centers"]:
        by_patient: dict[str, set[str]] = {}
        for s in c["series"]:
            by_patient.setdefault(s["patient_id"], set()).add(s["sequence"])
        center_scans = [s for s in scans if s["center"] == c["name"]]
        assert len({s["subject_id"] for s in center_scans}) == len(by_patient)
        for patient, sequences in by_patient.items():
            sid = pseudonym(cat.secret(), "pd", c["name"], f"id:{patient}")
            assert {s["sequence"] for s in center_scans if s["subject_id"] == sid} == sequences
    # Subjects with a second visit: two studies, dates shifted by one amount per subject.
    studies = cat.read("studies").to_pylist()
    per_subject: dict[str, list] = {}
    for st in studies:
        per_subject.setdefault(st["subject_id"], []).append(st["study_date"])
    two = [sorted(d) for d in per_subject.values() if len(d) == 2]
    assert two, "the world should hold subjects with two visits"
    assert all((b - a).days == 21 for a, b in two)
    subjects = cat.read("subjects").to_pylist()
    assert all(22 <= s["age"] <= 88 and s["sex"] in ("F", "M") for s in subjects)


def test_no_phi_anywhere_in_the_catalog(dicom_world, dicom_catalog):
    _, manifest = dicom_world
    cat, _ = dicom_catalog
    phi = {s.lower().encode() for c in manifest["centers"] for s in c["phi"]}
    assert len(phi) > 100
    leaks = []
    for path in cat.root.rglob("*"):
        if not path.is_file() or path.name == ".xds-secret":
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        data = data.lower()
        leaks += [(path.name, s) for s in phi if s in data]
    assert leaks == []
    # Raw UIDs stay out too; images carry no header text; sidecars only technique.
    uids = [s["series_uid"].encode() for c in manifest["centers"] for s in c["series"]]
    table_bytes = b"".join(p.read_bytes() for p in (cat.root / "scans").rglob("*.parquet"))
    assert not any(u in table_bytes for u in uids)
    row = cat.read("scans").to_pylist()[0]
    image = nib.load(cat.resolve(row["image_uri"]))
    assert image.header["descrip"].tobytes().strip(b"\0 ") == b""
    sidecar = json.loads(cat.resolve(row["sidecar_uri"]).read_text())
    assert set(sidecar) <= SIDECAR_KEEP
    assert "EchoTime" in sidecar


def test_broken_files_are_quarantined_with_reasons(dicom_world, dicom_catalog):
    _, manifest = dicom_world
    cat, reports = dicom_catalog
    rows = cat.read("quarantine").to_pylist()
    first = manifest["centers"][0]
    errors = [r["error"] for r in rows if r["center"] == first["name"]]
    for item in first["broken"]:
        assert any(item["reason"] in e for e in errors), item
    dicomdir = next(c for c in manifest["centers"] if c["layout"] == "dicomdir")
    assert any(r["uri"] == "DICOMDIR" for r in rows if r["center"] == dicomdir["name"])
    # The stray file in a patient-named folder: quarantined, the folder name pseudonymized.
    nested = next(c for c in manifest["centers"] if c["layout"] == "nested")
    stray = [r for r in rows if r["center"] == nested["name"] and "notes.txt" in r["uri"]]
    assert len(stray) == 1
    assert stray[0]["uri"].startswith("sub-")
    for report in reports.values():
        assert _accounted(report)


def test_rerun_skips_what_is_there(dicom_world, dicom_catalog, tmp_path):
    root, manifest = dicom_world
    cat, _ = dicom_catalog
    copy = tmp_path / "catalog"
    shutil.copytree(cat.root, copy)
    again = Catalog.open(copy)
    before = again.version
    c = manifest["centers"][2]
    report = ingest_dicom(again, root / c["path"], center=c["name"], dataset="pd")
    assert report.scans_added == 0
    assert report.series_skipped == len(c["series"])
    assert again.version == before


def test_overrides_and_set_sequence(dicom_world, tmp_path):
    root, manifest = dicom_world
    c = next(c for c in manifest["centers"] if c["layout"] == "nested")
    target = c["series"][0]
    csv_path = tmp_path / "overrides.csv"
    csv_path.write_text(f"series_uid,sequence\n{target['series_uid']},flair\n")
    cat = Catalog.create(tmp_path / "catalog")
    ingest_dicom(cat, root / c["path"], center=c["name"], sequence_overrides=csv_path)
    rows = cat.read("scans").to_pylist()
    manual = [r for r in rows if r["sequence_source"] == "manual"]
    assert [r["sequence"] for r in manual] == ["FLAIR"]
    assert manual[0]["series_uid_hash"] == _series_hash(cat, target["series_uid"])
    assert manual[0]["sequence_rule"] == "manual:overrides.csv:2"
    other = next(r for r in rows if r["sequence_source"] == "rule")
    assert set_sequence(cat, [other["scan_id"]], "t2w", reason="read by a radiologist") == 1
    fixed = cat.read("scans", "scan_id = ?", [other["scan_id"]]).to_pylist()[0]
    assert (fixed["sequence"], fixed["sequence_source"]) == ("T2W", "manual")
    old = cat.at(cat.version - 1).read("scans", "scan_id = ?", [other["scan_id"]]).to_pylist()
    assert old[0]["sequence"] == other["sequence"]
    with pytest.raises(IngestError, match="unknown scan id"):
        set_sequence(cat, ["scn-nope"], "T2W")
    bad = tmp_path / "bad.csv"
    bad.write_text("series_uid,sequence\n1.2.3,T3W\n")
    with pytest.raises(IngestError, match=r"bad.csv:2: unknown sequence"):
        ingest_dicom(cat, root / c["path"], center=c["name"], sequence_overrides=bad)


def _geometry(positions, iop=(1, 0, 0, 0, 1, 0), size=(8, 8)):
    return [{"size": size, "frames": 1, "iop": list(iop), "ipp": [0, 0, z]} for z in positions]


def test_series_geometry_checks():
    assert check_series_geometry(_geometry([0, 2, 4, 6])) is None
    assert check_series_geometry(_geometry([0, 0, 2, 2, 4, 4])) is None  # two echoes
    assert "slice gap: 1" in check_series_geometry(_geometry([0, 2, 6, 8]))
    assert "inconsistent slice spacing" in check_series_geometry(_geometry([0, 2, 4.5, 6.5]))
    mixed = _geometry([0, 2]) + _geometry([4], iop=(0, 1, 0, 0, 0, -1))
    assert "mixed orientations" in check_series_geometry(mixed)
    sizes = _geometry([0, 2]) + _geometry([4], size=(8, 9))
    assert "mixed image sizes" in check_series_geometry(sizes)
    assert "unequal number" in check_series_geometry(_geometry([0, 0, 2, 4]))


def test_pydicom_test_files_each_end_in_a_scan_or_quarantine(tmp_path):
    from pydicom.data import get_testdata_files

    src = tmp_path / "pydicom"
    for i, path in enumerate(get_testdata_files()):
        folder = src / str(i % 5)
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / f"{i:03d}_{Path(path).name}")
    # Most of pydicom's files are single images: with a one-slice minimum they are scans...
    cat = Catalog.create(tmp_path / "catalog")
    report = ingest_dicom(cat, src, center="pydicom", jobs=2, min_slices=1)
    assert report.files_found > 250
    assert _accounted(report)
    assert report.scans_added >= 10
    assert cat.count("quarantine") == len(report.problems)
    assert all(r["error"] for r in cat.read("quarantine").to_pylist())
    modalities = set(cat.read("scans").column("modality").to_pylist())
    assert {"CT", "MR"} <= modalities
    # ...by default a series of fewer than five slices is no volume: quarantined as such,
    # and the multi-frame files and real volumes still become scans.
    strict = Catalog.create(tmp_path / "strict")
    again = ingest_dicom(strict, src, center="pydicom", jobs=2)
    assert _accounted(again)
    assert 0 < again.scans_added < report.scans_added
    reasons = [r["error"] for r in strict.read("quarantine").to_pylist()]
    not_volumes = [e for e in reasons if e.startswith(("not a volume", "localizer"))]
    assert len(not_volumes) >= report.scans_added - again.scans_added
    assert any(e.startswith("not a volume: 1 slice(s)") for e in reasons)
    # pydicom ships a real localizer: ImageType ORIGINAL\PRIMARY\LOCALIZER
    assert any(e.startswith("localizer") and "ImageType" in e for e in reasons)


def _snapshot(cat: Catalog) -> dict:
    drop = {"added_at", "source", "at", "created_at"}
    out = {}
    for table in ("subjects", "studies", "scans", "quarantine"):
        rows = cat.read(table).to_pylist()
        out[table] = sorted(
            json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True, default=str)
            for r in rows
        )
    out["files"] = sorted(
        p.relative_to(cat.root).as_posix() for p in (cat.root / "data").rglob("*") if p.is_file()
    )
    return out


@pytest.mark.slow
def test_kill_9_midway_then_rerun_gives_the_same_catalog(dicom_world, tmp_path):
    root, manifest = dicom_world
    c = manifest["centers"][1]
    reference = Catalog.create(tmp_path / "reference")
    ingest_dicom(reference, root / c["path"], center=c["name"], commit_every=2)
    killed = tmp_path / "killed"
    Catalog.create(killed)
    shutil.copyfile(reference.root / ".xds-secret", killed / ".xds-secret")  # same pseudonyms
    command = [
        sys.executable, "-m", "xds.cli.main", "--catalog", str(killed), "ingest", "dicom",
        str(root / c["path"]), "--center", c["name"], "--commit-every", "2", "-j", "1",
    ]  # fmt: skip
    log = killed.parent / "versions"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        commits = len(list((killed / "_versions" / "_delta_log").glob("*.json")))
        if commits >= 3:  # create, version 0 and at least one ingest batch
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the ingest ended before it could be killed"
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    partial = Catalog.open(killed).count("scans")
    log.write_text(str(partial))
    assert 0 < partial < len(c["series"])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _snapshot(Catalog.open(killed)) == _snapshot(Catalog.open(reference.root))
    assert not any((killed / ".xds-tmp").iterdir())


def test_half_written_files_of_dead_writers_are_swept(tmp_path):
    from xds.io.images import sweep_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"scn-1.{dead.pid}-abcd.part.nii.gz"
    live = tmp_path / f"scn-2.{os.getpid()}-abcd.part.nii.gz"
    stale.write_bytes(b"half")
    live.write_bytes(b"in progress")
    assert sweep_partials(tmp_path) == 1
    assert not stale.exists()
    assert live.exists()


def _accounted(report) -> bool:
    """Every file found is in a scan, in a label (a DICOM SEG) or quarantined."""
    total = report.files_in_scans + report.files_in_labels + report.files_quarantined
    return total == report.files_found
