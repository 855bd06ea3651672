"""Clinical sheets keyed by MRN or accession number, joined to DICOM centers' subjects."""

import csv
import json
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.phantoms import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("clinical")
    manifest = generate_world(root / "w", format="dicom", centers=2, subjects_per_center=4,
                              shape=(16, 16, 8), sequences=("T1W", "T2W"), missing=0.3,
                              seed=11, broken=False)  # fmt: skip
    return root, manifest


def _xds(catalog: Path, *args, ok: bool = True):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _sheet(root: Path, center: dict) -> Path:
    return root / "w" / center["clinical"]["path"]


def test_the_phantom_sheets_reach_every_subject_by_pseudonym(world, tmp_path, find_leaks):
    root, manifest = world
    catalog = tmp_path / "c"
    first, second = manifest["centers"]
    assert (first["clinical"]["key"], second["clinical"]["key"]) == ("PatientID",
                                                                      "AccessionNumber")
    # at ingest, keyed by MRN; afterwards, keyed by accession number
    ran = _xds(catalog, "ingest", "dicom", str(root / "w" / first["path"]), "--center",
               first["name"], "--metadata", str(_sheet(root, first)), "--json")  # fmt: skip
    assert json.loads(ran.output)["sheet"]["matched"] == 4
    _xds(catalog, "ingest", "dicom", str(root / "w" / second["path"]), "--center", second["name"])
    before = Catalog.open(catalog).version
    ran = _xds(catalog, "ingest", "sheet", str(_sheet(root, second)), "--center", second["name"],
               "--key", "AccessionNumber", "--json")  # fmt: skip
    report = json.loads(ran.output)
    assert report["unmatched"] == 0
    assert report["subjects_updated"] == 4
    cat = Catalog.open(catalog)
    assert cat.version == before + 1
    # every subject has the sheet's diagnosis, queryable in scan_view
    rows = cat.sql("SELECT subject_id, any_value(diagnosis) AS dx, "
                   "string_agg(DISTINCT sequence, '+' ORDER BY sequence) AS seqs, "
                   "count(DISTINCT study_id) AS visits FROM scan_view GROUP BY ALL").to_pylist()
    assert len(rows) == 8
    assert all(r["dx"] for r in rows)
    # and the right one: what the catalog knows on its own (sequences, visits) agrees with
    # what the sheet said about the patient its row was keyed by
    extra = {r["subject_id"]: dict(r["extra"]) for r in cat.read("subjects").to_pylist()}
    for r in rows:
        assert extra[r["subject_id"]]["sequences"] == r["seqs"]
        assert int(extra[r["subject_id"]]["visits"]) == r["visits"]
    wanted = sorted(row["diagnosis"] for c in (first, second)
                    for row in csv.DictReader(open(_sheet(root, c))))  # fmt: skip
    by_subject = sorted({r["subject_id"]: r["dx"] for r in rows}.values())
    assert sorted(set(wanted)) == sorted(set(by_subject))
    # identifying columns never arrive; the earlier version still has no diagnosis
    assert not any("patient_name" in e or "mrn" in e for e in extra.values())
    earlier = Catalog.open(catalog, before)
    assert not earlier.read("subjects", "center = ? AND diagnosis IS NOT NULL",
                            [second["name"]]).num_rows  # fmt: skip
    # a re-run changes nothing and adds no version
    again = _xds(catalog, "ingest", "sheet", str(_sheet(root, second)), "--center",
                 second["name"], "--key", "AccessionNumber", "--json")  # fmt: skip
    again = json.loads(again.output)
    assert again["subjects_updated"] == 0
    assert Catalog.open(catalog).version == before + 1
    # no MRN, accession number or name from the sheets in any stored byte
    needles = {v for c in (first, second) for row in csv.DictReader(open(_sheet(root, c)))
               for k, v in row.items() if k in ("MRN", "Accession Number", "Patient Name")}
    assert find_leaks(catalog, needles) == []


def test_bad_sheets_are_one_line_and_the_rest_goes_on(world, tmp_path):
    root, manifest = world
    center = manifest["centers"][1]
    source = root / "w" / center["path"]
    # two patients' studies given one accession number (a re-used number)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    patients = sorted({str(h.PatientID) for h in heads if "PatientID" in h})
    copy = tmp_path / "src"
    for path, head in zip(files, heads, strict=True):
        ds = pydicom.dcmread(path)
        if str(head.get("PatientID")) in patients[:2]:
            ds.AccessionNumber = "REUSED123"
        target = copy / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
    catalog = tmp_path / "c"
    # an unusable sheet stops the ingest before anything is converted or written
    no_key = tmp_path / "no_key.csv"
    no_key.write_text("name,diagnosis\nX,pdac\n")
    ran = _xds(catalog, "ingest", "dicom", str(copy), "--center", "B", "--metadata",
               str(no_key), ok=False)  # fmt: skip
    assert ran.exit_code == 1
    assert "no key column" in ran.output
    assert len(ran.output.strip().splitlines()) == 1
    assert not (catalog / "scans").exists() or Catalog.open(catalog).count("scans") == 0
    _xds(catalog, "ingest", "dicom", str(copy), "--center", "B")
    accessions = sorted({str(h.AccessionNumber) for h in heads
                         if "PatientID" in h and str(h.PatientID) not in patients[:2]})  # fmt: skip
    sheet = tmp_path / "acc.csv"
    sheet.write_text("Accession,diagnosis\nREUSED123,pdac\nNOSUCHACC9,normal\n"
                     + "".join(f"{a},ipmn\n" for a in accessions))  # fmt: skip
    ran = _xds(catalog, "ingest", "sheet", str(sheet), "--center", "B", "--key",
               "AccessionNumber", "--json")  # fmt: skip
    report = json.loads(ran.stdout)
    assert report["unmatched"] == 1
    assert len(report["problems"]) == 1
    assert "matches 2 subjects" in report["problems"][0]
    assert report["subjects_updated"] == len(patients) - 2
    for secret in ("REUSED123", "NOSUCHACC9", *accessions):
        assert secret not in ran.output
    dx = [r["diagnosis"] for r in Catalog.open(catalog).read("subjects").to_pylist()]
    assert sorted(dx, key=str) == sorted([None, None] + ["ipmn"] * (len(patients) - 2), key=str)
    # one MRN on rows that disagree: refused, naming the subject the catalog knows, not the MRN
    sheet.write_text(f"MRN,diagnosis\n{patients[2]},pdac\n{patients[2]},normal\n")
    ran = _xds(catalog, "ingest", "sheet", str(sheet), "--center", "B", ok=False)
    assert ran.exit_code == 1
    assert patients[2] not in ran.output
    subjects = {r["subject_id"] for r in Catalog.open(catalog).read("subjects").to_pylist()}
    assert [s for s in subjects if s in ran.output], ran.output
