"""Pulling from a real PACS: Debian's Orthanc, over DICOMweb and DIMSE.

Each test starts its own Orthanc on free localhost ports (the ``orthanc`` fixture), loads it
through its REST API, and compares what ``xds pacs index`` + ``xds pull`` make with what
``xds ingest dicom`` makes of the same files.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.ingest import ingest_dicom
from xds.io.deid import pseudonym
from xds.pacs.store import STORE_FILE
from xds.phantoms import generate_world

WORLD = {"centers": 2, "subjects_per_center": 3, "shape": (24, 24, 12), "seed": 3}


def _xds(catalog: Path, *args, ok: bool = True, env: dict | None = None):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), *args], env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if ok and "--json" in args else result


@pytest.fixture(scope="session")
def pacs_world(tmp_path_factory):
    """A phantom DICOM world and, per center, its files grouped by series and study."""
    root = tmp_path_factory.mktemp("pacs") / "world"
    manifest = generate_world(root, format="dicom", sequences=("T1W", "T2W", "OOP", "IP"),
                              jobs=2, annotations=False, **WORLD)  # fmt: skip
    centers = {}
    for c in manifest["centers"]:
        by_series, by_study, phi = defaultdict(list), defaultdict(set), set(c["phi"])
        broken = {b["file"] for b in c["broken"]}  # made to be refused: not for a PACS
        for path in sorted(p for p in (root / c["path"]).rglob("*") if p.is_file()):
            if path.relative_to(root / c["path"]).as_posix() in broken:
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if "SeriesInstanceUID" not in ds:
                continue
            by_series[ds.SeriesInstanceUID].append(path)
            by_study[ds.StudyInstanceUID].add(ds.SeriesInstanceUID)
            for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID",
                        "AccessionNumber", "PatientBirthDate"):  # fmt: skip
                if ds.get(key):
                    phi.add(str(ds.get(key)))
            if ds.get("PatientName"):
                phi.update(p for p in str(ds.PatientName).split("^") if len(p) > 3)
        centers[c["name"]] = {**c, "by_series": dict(by_series), "by_study": dict(by_study),
                              "needles": phi}  # fmt: skip
    return root, centers


def _center(pacs_world, k: int = 0) -> dict:
    return list(pacs_world[1].values())[k]


def _series_of(center: dict, sequence: str) -> list[str]:
    return [s["series_uid"] for s in center["series"] if s["sequence"] == sequence]


def _scans(cat: Catalog) -> list[tuple]:
    rows = Catalog.open(cat.root).read("scans", "status = 'ok'").to_pylist()
    return sorted((r["subject_id"], r["study_id"], r["series_uid_hash"], r["image_hash"],
                   r["sequence"], r["modality"], tuple(r["shape"])) for r in rows)  # fmt: skip


def _reference(tmp_path: Path, center: dict, uids: list[str], secret: bytes) -> Catalog:
    """``xds ingest dicom`` of the files of ``uids``, in a catalog with ``secret``."""
    folder = tmp_path / "reference-files"
    for uid in uids:
        for path in center["by_series"][uid]:
            target = folder / pseudonym(secret, "f", uid) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    ref = Catalog.create(tmp_path / "reference")
    (ref.root / ".xds-secret").write_bytes(secret)
    ingest_dicom(ref, folder, center=center["name"], dataset="pd")
    return ref


def _loaded(orthanc, center: dict, **options):
    server = orthanc(**options)
    files = [p for paths in center["by_series"].values() for p in paths]
    assert server.upload(files) == len(files)
    return server


def _catalog(tmp_path: Path, name: str = "catalog") -> Catalog:
    return Catalog.create(tmp_path / name)


def test_index_t2w_cohort_pull_over_dicomweb_equals_ingest(pacs_world, orthanc, tmp_path,
                                                           find_leaks):  # fmt: skip
    center = _center(pacs_world)
    # a result cap far below the center's 5 studies and 15 series
    server = _loaded(orthanc, center, limit_find_results=2)
    cat = _catalog(tmp_path)
    _xds(cat.root, "pacs", "add", "web", "--dicomweb", server.dicomweb, "--center",
         center["name"], "--dataset", "pd")  # fmt: skip
    index = _xds(cat.root, "pacs", "index", "web", "--json")
    assert index["studies_found"] == len(server.get("/studies")) == len(center["by_study"])
    assert index["series_found"] == len(server.get("/series")) == len(center["by_series"])
    view = Catalog.open(cat.root).sql(
        "SELECT status, count(*) AS n, bool_and(image_uri IS NULL) AS no_image FROM scan_view "
        "GROUP BY ALL"
    ).to_pylist()
    assert view == [{"status": "remote", "n": index["series_registered"], "no_image": True}]

    t2 = _series_of(center, "T2W")
    _xds(cat.root, "build-cohort", "--name", "t2", "--where",
         "status = 'remote' AND sequence = 'T2W'")  # fmt: skip
    dry = _xds(cat.root, "pull", "t2", "--dry-run", "--json")
    assert dry["series_planned"] == len(t2)
    assert dry["instances_planned"] == sum(len(center["by_series"][u]) for u in t2)
    assert dry["estimated_bytes"] > 24 * 24 * 2 * dry["instances_planned"]
    assert not any((cat.root / "data").rglob("*.nii.gz")) if (cat.root / "data").exists() else True

    pulled = _xds(cat.root, "pull", "t2", "-j", "2", "--json")
    commands = (["pacs", "list"], ["pacs", "index", "web"], ["pull", "t2"])
    shown = [_xds(cat.root, *command, ok=False).output for command in commands]
    assert not [n for n in center["needles"] for out in shown if n in out]
    assert pulled["series_retrieved"] == len(t2)
    assert pulled["series_quarantined"] == 0
    ref = _reference(tmp_path, center, t2, Catalog.open(cat.root).secret())
    assert _scans(cat) == _scans(ref)
    assert {r[4] for r in _scans(cat)} == {"T2W"}
    subjects = lambda c: {(r["subject_id"], r["sex"], r["age"])  # noqa: E731
                          for r in Catalog.open(c.root).read("subjects").to_pylist()}  # fmt: skip
    assert subjects(ref) <= subjects(cat)  # the index registered every subject of the PACS
    again = _xds(cat.root, "pull", "t2", "--json")
    assert again["series_planned"] == 0
    assert again["already_here"] == len(t2)

    # No identifier in any byte of the catalog; the raw UIDs only in the private store.
    store = cat.root / STORE_FILE
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert not find_leaks(cat.root, center["needles"])
    verified = _xds(cat.root, "verify", "--json")  # every stored byte: UIDs, dates, names
    assert verified["ok"], verified["findings"]
    uid = t2[0]
    assert uid.encode() in store.read_bytes()  # the store is where they are, and only there


def test_dimse_find_and_get_or_move_give_the_same_scans(pacs_world, orthanc, tmp_path, free_port):
    center = _center(pacs_world)
    move_port = free_port()
    server = _loaded(orthanc, center, limit_find_results=2, move_port=move_port)
    t2 = _series_of(center, "T2W")
    results, secret = {}, None
    for retrieve in ("get", "move"):
        cat = _catalog(tmp_path, retrieve)
        if secret is not None:  # the same key: the same pseudonyms
            (cat.root / ".xds-secret").write_bytes(secret)
        secret = cat.secret()
        extra = ["--move-port", str(move_port)] if retrieve == "move" else []
        _xds(cat.root, "pacs", "add", "dimse", "--dimse", f"127.0.0.1:{server.dicom_port}",
             "--aet", server.aet, "--retrieve", retrieve, "--center", center["name"],
             "--dataset", "pd", *extra)  # fmt: skip
        index = _xds(cat.root, "pacs", "index", "dimse", "--json")
        assert index["series_found"] == len(center["by_series"])  # C-FIND capped at 2
        _xds(cat.root, "build-cohort", "--name", "t2", "--where",
             "status = 'remote' AND sequence = 'T2W'")  # fmt: skip
        pulled = _xds(cat.root, "pull", "t2", "-j", "2", "--json")
        assert pulled["series_retrieved"] == len(t2), pulled
        results[retrieve] = _scans(cat)
    assert results["get"] == results["move"]
    assert results["get"] == _scans(_reference(tmp_path, center, t2, secret))


def test_a_dropped_instance_quarantines_its_series_and_the_rest_lands(pacs_world, orthanc,
                                                                      tmp_path):  # fmt: skip
    center = _center(pacs_world)
    server = _loaded(orthanc, center)
    cat = _catalog(tmp_path)
    _xds(cat.root, "pacs", "add", "web", "--dicomweb", server.dicomweb, "--center",
         center["name"], "--dataset", "pd")  # fmt: skip
    _xds(cat.root, "pacs", "index", "web", "--json")
    t2 = _series_of(center, "T2W")
    # the PACS loses one instance of one series after the index listed it
    (victim,) = [s for s in server.get("/series?expand")
                 if s["MainDicomTags"]["SeriesInstanceUID"] == t2[0]]  # fmt: skip
    dropped = server.get(f"/instances/{victim['Instances'][3]}")["MainDicomTags"]
    server.delete(f"/instances/{victim['Instances'][3]}")
    _xds(cat.root, "build-cohort", "--name", "t2", "--where",
         "status = 'remote' AND sequence = 'T2W'")  # fmt: skip
    result = _xds(cat.root, "pull", "t2", "--json")
    n = len(center["by_series"][t2[0]])
    assert result["series_quarantined"] == 1
    assert result["scans_added"] == len(t2) - 1
    (problem,) = result["problems"]
    assert problem["error"] == (f"incomplete: 1 of {n} indexed instances did not arrive "
                                f"(InstanceNumber {dropped['InstanceNumber']})")  # fmt: skip
    latest = Catalog.open(cat.root)
    rows = latest.read("quarantine", "stage = 'retrieve'").to_pylist()
    assert [r["error"] for r in rows] == [problem["error"]]
    still = latest.read("scan_view", "status = 'remote' AND sequence = 'T2W'").to_pylist()
    assert [r["series_uid_hash"] for r in still] == [
        pseudonym(latest.secret(), "series", t2[0], prefix="ser")
    ]
    again = _xds(cat.root, "pull", "t2", "--json")  # still incomplete: nothing more, no duplicate
    assert again["series_quarantined"] == 1
    assert again["scans_added"] == 0
    assert Catalog.open(cat.root).count("quarantine") == len(rows)


def test_three_new_studies_are_exactly_what_the_next_index_and_pull_bring(pacs_world, orthanc,
                                                                          tmp_path):  # fmt: skip
    first, second = _center(pacs_world, 0), _center(pacs_world, 1)
    server = _loaded(orthanc, first)
    cat = _catalog(tmp_path)
    _xds(cat.root, "pacs", "add", "web", "--dicomweb", server.dicomweb, "--center", "Hosp",
         "--dataset", "pd")  # fmt: skip
    _xds(cat.root, "pacs", "index", "web", "--json")
    _xds(cat.root, "build-cohort", "--name", "all", "--where", "status = 'remote'")
    _xds(cat.root, "pull", "all", "--json")
    before = {r[2] for r in _scans(cat)}

    new = sorted(second["by_study"])[:3]
    files = [p for s in new for u in second["by_study"][s] for p in second["by_series"][u]]
    assert server.upload(files) == len(files)
    known = set(Catalog.open(cat.root).read("remote_series").column("scan_id").to_pylist())
    index = _xds(cat.root, "pacs", "index", "web", "--since", "last", "--json")
    assert index["since"] == "change feed"
    assert index["studies_found"] == 3
    secret = Catalog.open(cat.root).secret()
    expected = {pseudonym(secret, "study", s, prefix="stu") for s in new}
    fresh = [r for r in Catalog.open(cat.root).read("remote_series").to_pylist()
             if r["scan_id"] not in known]  # fmt: skip
    assert {r["study_id"] for r in fresh} == expected
    assert len(fresh) == index["series_registered"]
    _xds(cat.root, "build-cohort", "--name", "new", "--where", "status = 'remote'")
    pulled = _xds(cat.root, "pull", "new", "--json")
    assert pulled["series_planned"] == pulled["series_retrieved"] == len(fresh)
    added = {r[2]: r[1] for r in _scans(cat) if r[2] not in before}
    assert set(added) <= {r["series_uid_hash"] for r in fresh}
    assert set(added.values()) == expected
    # a full index finds nothing new, a pull after it moves nothing
    assert _xds(cat.root, "pacs", "index", "web", "--json")["series_registered"] == 0
    assert _xds(cat.root, "pull", "new", "--json")["series_retrieved"] == 0


def _snapshot(root: Path) -> dict:
    """What a pull leaves, without run ids and times; checks 0 missing and 0 duplicates."""
    cat = Catalog.open(root)
    scans = cat.read("scans").to_pylist()
    remote = {r["series_uid_hash"]: r for r in cat.read("remote_series").to_pylist()}
    per_series = defaultdict(list)
    for r in scans:
        per_series[r["series_uid_hash"]].append(r)
    for series, rows in per_series.items():
        assert len(rows) == 1, f"{series}: {len(rows)} scans (a duplicate)"
        assert rows[0]["shape"][2] == remote[series]["n_instances"], f"{series}: slices missing"
    return {
        "scans": sorted((r["scan_id"], r["subject_id"], r["series_uid_hash"], r["image_hash"],
                         r["sequence"], r["image_uri"]) for r in scans),  # fmt: skip
        "refused": sorted(h for h, r in remote.items() if r["pull_state"]),
        "quarantine": sorted({(r["uri"], r["stage"], r["error"])
                              for r in cat.read("quarantine").to_pylist()}),  # fmt: skip
        "subjects": sorted(cat.read("subjects").column("subject_id").to_pylist()),
        "files": sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*")
                        if p.is_file()),  # fmt: skip
        "work": sorted(p.name for p in (root / ".xds-tmp").glob("*/*")),
    }


@pytest.mark.slow
def test_twenty_kill_9_during_a_pull_each_end_as_the_uninterrupted_pull(pacs_world, orthanc,
                                                                        tmp_path):  # fmt: skip
    center = _center(pacs_world)
    server = _loaded(orthanc, center)
    base = _catalog(tmp_path, "indexed").root
    _xds(base, "pacs", "add", "web", "--dicomweb", server.dicomweb, "--center", center["name"])
    _xds(base, "pacs", "index", "web", "--json")
    _xds(base, "build-cohort", "--name", "some", "--where",
         "status = 'remote' AND sequence IN ('T2W', 'T1W')")  # fmt: skip

    def pull(root: Path) -> list[str]:
        return [sys.executable, "-m", "xds.cli.main", "--catalog", str(root), "pull", "some",
                "-j", "1", "--batch", "2", "--json"]  # fmt: skip

    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    start = time.monotonic()
    done = subprocess.run(pull(reference), check=True, capture_output=True, text=True)
    full = time.monotonic() - start
    assert json.loads(done.stdout)["series_retrieved"] >= 6
    expected = _snapshot(reference)
    assert expected["refused"]  # the center has series the ingest refuses: they count too
    rng, landed = random.Random(28), 0
    for k in range(20):
        root = tmp_path / f"killed-{k}"
        shutil.copytree(base, root)
        proc = subprocess.Popen(pull(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moment = rng.uniform(0.3, full)
        time.sleep(moment)
        landed += proc.poll() is None
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
        subprocess.run(pull(root), check=True, capture_output=True)
        assert _snapshot(root) == expected, f"kill {k} at {moment:.2f} s"
        again = subprocess.run(pull(root), check=True, capture_output=True, text=True)
        assert json.loads(again.stdout)["series_retrieved"] == 0
        shutil.rmtree(root)
    print(f"{landed} of 20 kills landed before the pull ended (full pull {full:.1f} s)")
    assert landed >= 15, f"only {landed} of 20 kills came before the pull ended"


def test_unreachable_silent_and_locked_pacs_fail_in_one_line(orthanc, tmp_path, free_port):
    cat = _catalog(tmp_path)
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    _xds(cat.root, "pacs", "add", "down", "--dicomweb", down, "--timeout", "1", "--retries", "1")
    result = _xds(cat.root, "pacs", "index", "down", ok=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: PACS down ({down}): study search failed after 2 tries: cannot connect to {down}"
    ]

    # a server that accepts connections and never answers (the hang users report)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(8)],
                     daemon=True).start()  # fmt: skip
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
    _xds(cat.root, "pacs", "add", "silent", "--dicomweb", url, "--timeout", "1", "--retries", "1")
    start = time.monotonic()
    result = _xds(cat.root, "pacs", "index", "silent", ok=False)
    assert time.monotonic() - start < 15
    assert result.exit_code == 1
    assert "study search failed after 2 tries: no answer within 1 s" in result.output
    assert "Traceback" not in result.output
    silent.close()

    dimse = f"127.0.0.1:{free_port()}"
    _xds(cat.root, "pacs", "add", "nodimse", "--dimse", dimse, "--aet", "PACS",
         "--timeout", "1", "--retries", "0")  # fmt: skip
    result = _xds(cat.root, "pacs", "index", "nodimse", ok=False)
    assert result.output.strip() == (f"Error: PACS nodimse (PACS@{dimse}): study search failed "
                                     f"after 1 tries: PACS@{dimse} did not answer")  # fmt: skip

    # credentials: from the environment, never stored or printed
    password = "canary-Pa55word"
    server = orthanc(users={"alice": password})
    with_password = server.dicomweb.replace("http://", f"http://alice:{password}@")
    refused = _xds(cat.root, "pacs", "add", "bad", "--dicomweb", with_password, ok=False)
    assert refused.exit_code == 1
    assert password not in refused.output
    _xds(cat.root, "pacs", "add", "locked", "--dicomweb", server.dicomweb, "--retries", "0")
    result = _xds(cat.root, "pacs", "index", "locked", ok=False)
    assert "refused (HTTP 401): check the credentials" in result.output
    env = {"XDS_PACS_LOCKED_USER": "alice", "XDS_PACS_LOCKED_PASSWORD": password}
    result = _xds(cat.root, "pacs", "index", "locked", "--json", env=env)
    assert result["studies_found"] == 0
    listing = _xds(cat.root, "pacs", "list", "--json")
    assert {c["pacs"] for c in listing} == {"down", "silent", "nodimse", "locked"}
    for path in cat.root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_series_not_pulled_yet_are_refused_by_what_needs_images(pacs_world, orthanc, tmp_path):
    center = _center(pacs_world)
    server = _loaded(orthanc, center)
    cat = _catalog(tmp_path)
    _xds(cat.root, "pacs", "add", "web", "--dicomweb", server.dicomweb, "--center", "H")
    _xds(cat.root, "pacs", "index", "web", "--json", "--where-tags", "Modality=MR")
    _xds(cat.root, "build-cohort", "--name", "t2", "--where", "sequence = 'T2W'")
    for command in (["split", "t2", "--name", "s"], ["qc", "t2"]):
        result = _xds(cat.root, *command, ok=False)
        assert result.exit_code == 1, command
        assert result.output.strip() == (
            "Error: cohort 't2' has 3 of 3 series not pulled from their PACS yet (status "
            "'remote', no image): run `xds pull t2`, then build the cohort again"
        )
    # the tables and views work on them: SQL over remote series, with their subjects
    rows = Catalog.open(cat.root).sql(
        "SELECT sequence, count(*) AS n, count(sex) AS with_sex, sum(n_instances) AS instances "
        "FROM scan_view WHERE status = 'remote' AND sequence = 'T2W' GROUP BY ALL"
    ).to_pylist()
    t2 = _series_of(center, "T2W")
    assert rows == [{"sequence": "T2W", "n": len(t2), "with_sex": len(t2),
                     "instances": sum(len(center["by_series"][u]) for u in t2)}]  # fmt: skip
    _xds(cat.root, "pull", "t2", "--json")
    _xds(cat.root, "build-cohort", "--name", "t2-pulled", "--where", "sequence = 'T2W'")
    _xds(cat.root, "split", "t2-pulled", "--name", "s")


REAL = [("pydicom-data", "data/emri_small.dcm"),
        ("nibabel", "nicom/tests/data/philips_mprage.dcm.gz"),
        ("nibabel", "nicom/tests/data/0.dcm"), ("heudiconv", "tests/data/01-fmap_acq-3mm"),
        ("pydicom", "data/test_files/MR_small.dcm")]  # fmt: skip
"""Real DICOM other projects ship: two enhanced multi-frame MR (a Philips MPRAGE of 176
frames, 10 frames without a vendor), and three single files the ingest refuses as no
volume (a Siemens DWI mosaic, a Siemens field map, a Toshiba slice)."""


def test_real_dicom_from_other_projects_through_orthanc_equals_their_ingest(orthanc, tmp_path):
    from benchmarks.real_dicom import package_dir

    files = tmp_path / "real"
    for package, rel in REAL:
        source = package_dir(package) / rel
        assert source.exists(), f"the dev extra installs {package}"
        for path in [source] if source.is_file() else sorted(source.rglob("*")):
            if path.is_file():
                target = files / package / path.name.removesuffix(".gz")
                target.parent.mkdir(parents=True, exist_ok=True)
                data = path.read_bytes()
                target.write_bytes(gzip.decompress(data) if path.suffix == ".gz" else data)
    server = orthanc()
    paths = sorted(p for p in files.rglob("*") if p.is_file())
    assert server.upload(paths) == len(paths)
    cat = _catalog(tmp_path)
    _xds(cat.root, "pacs", "add", "real", "--dicomweb", server.dicomweb, "--center", "Real")
    index = _xds(cat.root, "pacs", "index", "real", "--json")
    assert index["series_registered"] == len(server.get("/series"))
    _xds(cat.root, "build-cohort", "--name", "all", "--where", "status = 'remote'")
    pulled = _xds(cat.root, "pull", "all", "--json")
    ref = Catalog.create(tmp_path / "reference")
    (ref.root / ".xds-secret").write_bytes(Catalog.open(cat.root).secret())
    report = ingest_dicom(ref, files, center="Real")
    assert report.scans_added == pulled["scans_added"] == 2
    assert pulled["series_refused"] == len(report.problems) == 3
    assert pulled["series_retrieved"] == 5
    assert _scans(cat) == _scans(ref)
    reasons = lambda c: sorted(r["error"] for r in Catalog.open(c.root).read(  # noqa: E731
        "quarantine").to_pylist())  # fmt: skip
    assert reasons(cat) == reasons(ref)  # the same refusal, for the same reason
