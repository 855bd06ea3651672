"""The leakage audit on a planted-leak world, and no false alarm on the clean one."""

import shutil
from collections import defaultdict

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog, build_cohort
from xds.cli.main import cli
from xds.ingest import ingest_dicom, ingest_nifti
from xds.io.deid import pseudonym
from xds.io.fingerprint import THRESHOLD, correlate, prepare
from xds.phantoms import generate_world
from xds.phantoms.leaks import KINDS, copy_dicom_study, plant_leaks
from xds.splits.audit import apply_fix, audit_cohort, audit_split, duplicate_pairs
from xds.splits.store import _store, split_cohort


def _one_series(root, tmp):
    """Copy the files of one DICOM series (the first T1-like one found) into ``tmp``."""
    series = defaultdict(list)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the world's debris
                continue
            if getattr(ds, "Modality", "") == "MR" and "SeriesInstanceUID" in ds:
                series[(ds.PatientID, ds.SeriesNumber, ds.SeriesInstanceUID)].append(path)
    key = sorted(k for k, v in series.items() if len(v) > 4)[0]
    tmp.mkdir(parents=True)
    for n, path in enumerate(series[key]):
        shutil.copy(path, tmp / f"{n:04d}.dcm")
    return key[0], tmp


@pytest.fixture(scope="module")
def planted(ingested, tmp_path_factory):
    """The clean phantom catalog plus every kind of planted leak."""
    root = tmp_path_factory.mktemp("planted")
    shutil.copytree(ingested, root / "catalog")
    cat = Catalog.open(root / "catalog")
    scans = cat.sql("SELECT scan_id, subject_id, image_uri FROM scan_view ORDER BY scan_id")
    chosen, seen = [], set()
    for row in scans.to_pylist():
        if row["subject_id"] not in seen:
            seen.add(row["subject_id"])
            chosen.append(row)
    records = plant_leaks(
        [(kind, cat.resolve(row["image_uri"])) for kind, row in zip(KINDS, chosen, strict=False)],
        root / "planted_nifti",
    )
    ingest_nifti(cat, root / "planted_nifti", center="Planted",
                 layout="{subject}/{sequence}/image.nii.gz",
                 label_layout="{subject}/{sequence}/label.nii.gz")  # fmt: skip
    secret = cat.secret()
    expected = [
        (r["kind"], row["subject_id"], pseudonym(secret, "Planted", "Planted", r["subject"]))
        for r, row in zip(records, chosen, strict=False)
    ]
    # one study under two subject ids: same study UID, then a regenerated one
    world = generate_world(root / "dicom", format="dicom", centers=1, subjects_per_center=2,
                           shape=(24, 24, 12), sequences=("T1W", "T2W"), broken=False,
                           annotations=False)  # fmt: skip
    center = world["centers"][0]
    ingest_dicom(cat, root / "dicom" / center["path"], center="DicomA", dataset="dcm")
    patient, series = _one_series(root / "dicom" / center["path"], root / "one_series")
    source = pseudonym(secret, "dcm", "DicomA", f"id:{patient}")
    for name, new_uid in (("COPYSAMEUID", False), ("COPYNEWUID", True)):
        copy_dicom_study(series, root / f"copy_{name}", name, new_study_uid=new_uid)
        ingest_dicom(cat, root / f"copy_{name}", center="DicomA", dataset="dcm")
        copy = pseudonym(secret, "dcm", "DicomA", f"id:{name}")
        expected.append((f"study:{name}", source, copy))
    return Catalog.open(root / "catalog"), expected


def _connects(leak, a, b) -> bool:
    subjects = set(leak.get("subjects", []))
    return {a, b} <= subjects


def test_every_planted_leak_is_found_in_the_cohort(planted):
    cat, expected = planted
    build_cohort(cat, "true", "everything")
    report = audit_cohort(cat, "everything")
    kinds = {
        "exact": "same_image_under_two_subjects",
        "study:COPYSAMEUID": "study_under_two_subjects",
        "study:COPYNEWUID": "study_under_two_subjects",
    }
    for kind, source, copy in expected:
        found = [leak for leak in report.leaks if _connects(leak, source, copy)]
        assert found, (kind, report.leaks)
        want = kinds.get(kind, "near_duplicate_under_two_subjects")
        assert want in {leak["kind"] for leak in found}, (kind, found)
    pairs = {frozenset(leak["subjects"]) for leak in report.leaks}
    planted_pairs = {frozenset((s, c)) for _, s, c in expected}
    assert pairs <= planted_pairs | {frozenset(p) for p in _same_study_extra(expected)}


def _same_study_extra(expected):
    """The two DICOM copies are also each other's duplicate."""
    copies = [c for kind, _, c in expected if kind.startswith("study:")]
    return [tuple(copies)]


def test_planted_leaks_across_roles_are_found_and_fixed(planted):
    cat, expected = planted
    build_cohort(cat, "true", "all-scans")
    base = split_cohort(cat, "all-scans", seed=0, name="base")
    # put every copy on the other side of its source
    copies = {c: s for _, s, c in expected}
    rows = base.rows.to_pylist()
    role_of = {r["subject_id"]: r["role"] for r in rows}
    assignments = []
    for r in rows:
        role = r["role"]
        if r["subject_id"] in copies:
            role = "test" if role_of[copies[r["subject_id"]]] != "test" else "train"
        assignments.append((r["scan_id"], r["subject_id"], 0, role))
    leaky = _store(cat, "leaky", base.cohort_id, "holdout", base.params, 0, assignments)
    report = audit_split(cat, leaky.name)
    for kind, source, copy in expected:
        assert any(_connects(leak, source, copy) or _roles_hold(leak, cat, source, copy)
                   for leak in report.leaks), kind  # fmt: skip
    assert report.fix
    fixed = apply_fix(cat, leaky.name, report.fix, "fixed")
    assert audit_split(cat, fixed.name).clean
    base_args = ["--catalog", str(cat.root), "audit"]
    result = CliRunner().invoke(cli, [*base_args, "leaky", "--fix", "--save-as", "fixed-cli"])
    assert result.exit_code == 1
    assert "saved as fixed-cli" in result.output
    assert CliRunner().invoke(cli, [*base_args, "fixed-cli"]).exit_code == 0
    cohort = CliRunner().invoke(cli, [*base_args, "all-scans", "--cohort", "--json"])
    assert cohort.exit_code == 1


def _roles_hold(leak, cat, a, b):
    scans = [s for group in leak["roles"].values() for s in group]
    subjects = {r["subject_id"] for r in cat.rows_for("scans", scans, ["subject_id"]).to_pylist()}
    return {a, b} <= subjects


def test_no_false_alarm_on_the_clean_world_and_the_threshold_has_room(catalog):
    build_cohort(catalog, "true", "clean")
    report = audit_cohort(catalog, "clean")
    assert report.leaks == []
    split = split_cohort(catalog, "clean", seed=4)
    assert audit_split(catalog, split.name).clean
    # the closest two different subjects stay well below the threshold
    meta = catalog.sql("SELECT subject_id, modality, fingerprint FROM scans").to_pylist()
    prepared = [prepare(m["fingerprint"]) for m in meta]
    scores = [
        correlate(prepared[i], prepared[j])[0]
        for i in range(len(meta)) for j in range(i + 1, len(meta))
        if meta[i]["subject_id"] != meta[j]["subject_id"]
    ]  # fmt: skip
    best = np.nanmax(scores)
    assert best < THRESHOLD - 0.05
    assert duplicate_pairs(meta) == []


def test_teacher_trained_on_a_test_case_is_reported(catalog):
    build_cohort(catalog, "has_label", "lab")
    teacher = split_cohort(catalog, "lab", seed=1, name="teacher-split")
    student = split_cohort(catalog, "lab", seed=2, name="student-split")
    t_roles, s_roles = teacher.roles(), student.roles()
    seen = sorted((set(t_roles["train"]) | set(t_roles.get("val", []))) & set(s_roles["test"]))
    assert seen  # two random splits overlap
    target = s_roles["train"][0]
    label = catalog.rows_for("labels", [target]).to_pylist()[0]
    pseudo = {**label, "label_id": "lbl-pseudo-1", "origin": "pseudo",
              "teacher_run": "teacher-split@0", "round": 1}  # fmt: skip
    with catalog.transaction("plant pseudo label") as txn:
        txn.append("labels", [pseudo])
    report = audit_split(catalog, "student-split", images=False)
    leaks = [leak for leak in report.leaks if leak["kind"] == "teacher_trained_on_test"]
    assert len(leaks) == 1
    assert leaks[0]["roles"]["test"] == seen
    moved = {m["scan_id"] for m in report.fix if m["to"] == "train"}
    assert set(seen) <= moved


def test_fingerprints_an_older_catalog_lacks_are_computed_for_the_audit(catalog):
    stored = {
        r["scan_id"]: r["fingerprint"]
        for r in catalog.sql("SELECT scan_id, fingerprint FROM scans").to_pylist()
    }
    with catalog.transaction("forget fingerprints (as a migrated catalog)") as txn:
        txn.update("scans", "scan_id", sorted(stored), {"fingerprint": None})
    assert catalog.sql("SELECT count(fingerprint) AS n FROM scans").to_pylist() == [{"n": 0}]
    build_cohort(catalog, "true", "old")
    report = audit_cohort(catalog, "old", jobs=2)
    assert report.checks["fingerprints_computed_now"] == len(stored)
    assert report.clean
    from xds.splits.audit import fill_fingerprints

    meta = catalog.rows_for("scans", sorted(stored), ["scan_id", "image_uri"]).to_pylist()
    fill_fingerprints(catalog, meta)
    assert all(m["fingerprint"] == stored[m["scan_id"]] for m in meta)
