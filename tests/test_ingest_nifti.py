import csv
import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.ingest import ingest_nifti
from xds.ingest.layouts import LAYOUTS
from xds.schemas import IngestError


def test_world_is_ingested_completely(ingested, world, world_counts):
    _, manifest = world
    cat = Catalog.open(ingested)
    rows = cat.sql(
        "SELECT center, sequence, count(*) AS n, sum(has_label::INT) AS labelled "
        "FROM scan_view GROUP BY ALL"
    ).to_pylist()
    got = {(r["center"], r["sequence"]): r["n"] for r in rows}
    assert got == world_counts
    assert all(r["labelled"] == r["n"] for r in rows)
    assert cat.count("subjects") == sum(c["n_subjects"] for c in manifest["centers"])
    assert cat.count("quarantine") == 0
    # Every center's own label convention was understood.
    classes = cat.sql(
        "SELECT center, list_sort(list_distinct(flatten(list(classes)))) AS c "
        "FROM scan_view GROUP BY center"
    ).to_pylist()
    assert all("pancreas" in r["c"] for r in classes)


def test_rerun_adds_nothing(catalog, world):
    root, manifest = world
    c = manifest["centers"][1]
    before = catalog.version
    report = ingest_nifti(
        catalog,
        root / c["path"],
        center=c["name"],
        dataset="pw",
        metadata=root / c["metadata"],
        label_map=root / c["label_map"],
    )
    assert report.scans_added == report.labels_added == report.subjects_added == 0
    assert report.already_present == sum(c["scans_per_sequence"].values())
    assert catalog.version == before


def test_no_phi_reaches_the_catalog(ingested, world):
    root, manifest = world
    secrets = set()
    for c in manifest["centers"]:
        delimiter = "\t" if c["metadata"].endswith(".tsv") else ","
        with open(root / c["metadata"]) as fh:
            for row in csv.DictReader(fh, delimiter=delimiter):
                for column in (
                    "participant_id",
                    "PatientID",
                    "patient",
                    "case",
                    "PatientName",
                    "BirthDate",
                    "Address",
                ):
                    if row.get(column):
                        secrets.add(
                            row[column].removeprefix("sub-")
                            if column == "participant_id"
                            else row[column]
                        )
    cat = Catalog.open(ingested)
    text = " ".join(
        str(cat.read(t).to_pylist())
        for t in ("subjects", "scans", "labels", "label_maps", "quarantine")
    )
    files = " ".join(str(p) for p in (ingested / "data").rglob("*"))
    leaked = [s for s in secrets if len(s) > 3 and (s in text or s in files)]
    assert not leaked
    assert "weight_kg" in text  # harmless sheet columns are kept in extra


def _bad_center(world, tmp_path):
    root, manifest = world
    c = next(c for c in manifest["centers"] if c["layout"] == "folders")
    folder = tmp_path / "center"
    shutil.copytree(root / c["path"], folder)
    layout = LAYOUTS["folders"]
    subjects = sorted(p.name for p in folder.iterdir() if p.is_dir())
    seqs = [sorted(p.name for p in (folder / s).iterdir()) for s in subjects[:3]]
    truncated = folder / layout.image_path(subjects[0], seqs[0][0])
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    four_d = folder / layout.image_path(subjects[1], seqs[1][0])
    img = nib.load(four_d, mmap=False)
    vol = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), img.affine), four_d)
    bad_label = folder / layout.label_path(subjects[2], seqs[2][0])
    lab = nib.load(bad_label, mmap=False)
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj)[:-3], lab.affine), bad_label)
    return c, folder, (truncated, four_d, bad_label)


def test_bad_files_are_quarantined_and_the_rest_ingested(world, tmp_path):
    c, folder, (truncated, four_d, bad_label) = _bad_center(world, tmp_path)
    cat = Catalog.create(tmp_path / "cat")
    report = ingest_nifti(
        cat, folder, center="Bad", metadata=folder / "metadata.csv", label_map=folder / "labels.csv"
    )
    n = sum(c["scans_per_sequence"].values())
    assert report.scans_added == n - 2
    assert report.labels_added == n - 3
    pairs = zip(report.sources, report.problems, strict=True)
    reasons = {real: error for real, (_, error) in pairs}
    assert len(reasons) == 3
    # Files are named relative to the source folder, the MRN folder hashed.
    assert all(not shown.startswith("/") and "MRN" not in shown for shown, _ in report.problems)
    assert "unreadable NIfTI" in reasons[str(truncated)]
    assert "expected a 3D image, got 4D" in reasons[str(four_d)]
    assert "differs from image shape" in reasons[str(bad_label)]
    rows = cat.read("quarantine").to_pylist()
    assert sorted(r["stage"] for r in rows) == ["label", "read", "read"]
    assert all(len(r["error"].splitlines()) == 1 for r in rows)
    # Quarantine URIs are pseudonymized: the MRN folder names do not appear.
    assert not any("MRN" in r["uri"] for r in rows)
    # A second run neither duplicates the quarantine nor the scans.
    again = ingest_nifti(
        cat, folder, center="Bad", metadata=folder / "metadata.csv", label_map=folder / "labels.csv"
    )
    assert again.scans_added == 0
    assert cat.count("quarantine") == 3


def test_cli_prints_one_line_per_quarantined_file(world, tmp_path):
    _, folder, bad = _bad_center(world, tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "--catalog",
            str(tmp_path / "cat"),
            "ingest",
            "nifti",
            str(folder),
            "--center",
            "Bad",
            "--label-map",
            str(folder / "labels.csv"),
            "--json",
            "-j",
            "1",
        ],
    )
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("quarantined")]
    assert len(lines) == 3
    # By default neither the source folder nor the MRN-named folders are printed...
    assert str(folder) not in result.stderr
    assert "MRN" not in result.stderr
    # ...--show-paths prints the real paths, for a user on their own machine.
    shown = CliRunner().invoke(
        cli,
        ["--catalog", str(tmp_path / "cat"), "ingest", "nifti", str(folder), "--center", "Bad",
         "--label-map", str(folder / "labels.csv"), "--show-paths", "-j", "1"],
    )  # fmt: skip
    assert shown.exit_code == 0
    assert all(str(p) in shown.stderr for p in bad)


def test_header_free_text_is_removed(tmp_path, world):
    root, manifest = world
    c = next(c for c in manifest["centers"] if c["layout"] == "flat")
    folder = tmp_path / "center"
    shutil.copytree(root / c["path"], folder)
    image_path = next(p for p in folder.glob("*.nii") if not p.name.endswith("_seg.nii"))
    img = nib.load(image_path, mmap=False)
    img.header["descrip"] = b"DOE^JANE 1961-02-03"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), image_path)
    cat = Catalog.create(tmp_path / "cat")
    ingest_nifti(cat, folder, center="Flat", label_map=folder / "label_map.json")
    for uri in cat.read("scans").column("image_uri").to_pylist():
        stored = cat.resolve(uri)
        assert b"DOE" not in gzip.decompress(stored.read_bytes())[:352]


def test_clear_errors_for_unusable_input(tmp_path, world):
    root, manifest = world
    cat = Catalog.create(tmp_path / "cat")
    with pytest.raises(IngestError, match="not a directory"):
        ingest_nifti(cat, tmp_path / "missing", center="X")
    with pytest.raises(IngestError, match="invalid center name"):
        ingest_nifti(cat, root, center="../etc")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(IngestError, match="no built-in layout"):
        ingest_nifti(cat, empty, center="X")


def test_concurrent_ingests_of_one_center_add_each_scan_once(world, tmp_path):
    import subprocess
    import sys

    root, manifest = world
    c = manifest["centers"][0]
    Catalog.create(tmp_path / "cat")
    command = [
        sys.executable,
        "-m",
        "xds.cli.main",
        "--catalog",
        str(tmp_path / "cat"),
        "ingest",
        "nifti",
        str(root / c["path"]),
        "--center",
        "Twice",
        "--label-map",
        str(root / c["label_map"]),
        "--json",
        "-j",
        "1",
    ]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    added = sorted(json.loads(run.communicate()[0])["scans_added"] for run in runs)
    assert all(run.returncode == 0 for run in runs)
    n = sum(c["scans_per_sequence"].values())
    assert added == [0, n]
    cat = Catalog.open(tmp_path / "cat")
    assert cat.count("scans") == n
    assert cat.count("labels") == n
    assert cat.count("subjects") == c["n_subjects"]
