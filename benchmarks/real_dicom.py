"""Sequence classification on real DICOM that other projects ship, per vendor.

The truth table (tests/data/real_dicom_truth.csv) lists test files of pydicom, pydicom-data,
nibabel and heudiconv (Siemens, Philips and Toshiba MR; no GE MR ships in them), each with
what xds should make of it, checked by hand from its tags (the table's ``evidence``): a
sequence, or ``quarantine:<reason>`` (localizer, projection, truncated, not an image). Each
row (a file, or a folder holding whole series) is copied into a folder of its own,
``.gz`` files decompressed, and ingested into a fresh catalog with ``xds ingest dicom
--min-slices 1`` (single slices are what these packages ship; the default minimum of 5
would quarantine them all before classification). A row is right when every series it
holds ends as expected. The phantom world's figure (DICOM xds writes from its own vendor
tables: 8 centers, three vendors, four layouts) is reported beside it, apart.

    python -m benchmarks.real_dicom [--quick] [--truth FILE] [--verbose]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from xds.catalog import Catalog
from xds.ingest import ingest_dicom

from .timing import report

TRUTH = Path(__file__).resolve().parent.parent / "tests" / "data" / "real_dicom_truth.csv"
MODULES = {"pydicom": "pydicom", "pydicom-data": "data_store", "nibabel": "nibabel",
           "heudiconv": "heudiconv"}  # fmt: skip
REASONS = (  # quarantine message -> the truth table's reason
    ("localizer", "localizer"),
    ("projection", "projection"),
    ("truncated", "truncated"),
    ("not an image", "not an image"),
    ("modality sr", "not an image"),
    ("no pixel data", "no pixel data"),
    ("got 4d", "4D"),
)


def package_dir(package: str) -> Path | None:
    """Where an installed package's files lie (found without importing it), or None."""
    spec = importlib.util.find_spec(MODULES.get(package, package))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def read_truth(path: Path = TRUTH) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def reason_of(message: str) -> str:
    lowered = message.lower()
    for needle, reason in REASONS:
        if needle in lowered:
            return reason
    return message[:60]


def stage_row(row: dict, into: Path) -> bool:
    """Copy a truth row's file(s) into ``into`` (decompressing .gz); False when not installed."""
    base = package_dir(row["package"])
    source = base / row["path"] if base else None
    if source is None or not source.exists():
        return False
    into.mkdir(parents=True)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for i, f in enumerate(files):
        target = into / f"{i:04d}.dcm"  # neutral names, as a center's export might have
        if f.suffix == ".gz":
            target.write_bytes(gzip.decompress(f.read_bytes()))
        else:
            shutil.copyfile(f, target)
    return True


def outcome(row: dict, work: Path) -> str | None:
    """What xds made of one row: ``T1W`` / ``quarantine:localizer`` / a mix, or None."""
    source = work / "in"
    if not stage_row(row, source):
        return None
    catalog = Catalog.create(work / "catalog")
    result = ingest_dicom(catalog, source, center="real", min_slices=1, jobs=1)
    got = set()
    if result.scans_added:
        got.update(catalog.sql("SELECT DISTINCT sequence FROM scans").column(0).to_pylist())
    got.update(f"quarantine:{reason_of(message)}" for _, message in result.problems)
    return " + ".join(sorted(got)) or "nothing"


def evaluate(truth: list[dict], work: Path) -> list[dict]:
    """Each truth row with ``got`` (None: its package is not installed) and ``ok``."""
    rows = []
    for i, row in enumerate(truth):
        got = outcome(row, work / f"row{i:03d}")
        rows.append({**row, "got": got, "ok": got == row["expected"] if got else None})
    return rows


def phantom_accuracy(work: Path, subjects: int) -> tuple[int, int]:
    """(right, total) sequences on a phantom DICOM world of 8 centers."""
    from xds.io.deid import pseudonym
    from xds.phantoms import generate_world

    manifest = generate_world(work / "world", format="dicom", centers=8,
                              subjects_per_center=subjects, sequences=("T1W", "T2W", "OOP", "IP"),
                              shape=(24, 24, 12), seed=11, jobs=2, broken=False,
                              annotations=False)  # fmt: skip
    catalog = Catalog.create(work / "catalog")
    for c in manifest["centers"]:
        ingest_dicom(catalog, work / "world" / c["path"], center=c["name"], jobs=2)
    rows = catalog.sql("SELECT series_uid_hash, sequence FROM scans").to_pylist()
    got = {r["series_uid_hash"]: r["sequence"] for r in rows}
    secret = catalog.secret()
    truth = [s for c in manifest["centers"] for s in c["series"]]
    right = sum(
        got.get(pseudonym(secret, "series", s["series_uid"], prefix="ser")) == s["sequence"]
        for s in truth
    )
    return right, len(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", type=Path, default=TRUTH)
    parser.add_argument("--quick", action="store_true", help="a smaller phantom world")
    parser.add_argument("--verbose", action="store_true", help="one line per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xds-real-dicom-") as tmp:
        rows = evaluate(read_truth(args.truth), Path(tmp))
        right, series = phantom_accuracy(Path(tmp) / "phantom", 2 if args.quick else 4)
    by_vendor: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if r["ok"] is None:
            print(f"  not installed: {r['package']} ({r['path']})")
            continue
        by_vendor[r["vendor"]].append(r["ok"])
        if args.verbose or not r["ok"]:
            mark = "ok " if r["ok"] else "WRONG"
            print(f"  {mark} {r['package']}:{r['path']}: expected {r['expected']}, got {r['got']}")
    checked = [r for r in rows if r["ok"] is not None]
    for vendor, oks in sorted(by_vendor.items()):
        report("real_dicom", f"real DICOM, {vendor}: series classified or quarantined as the "
               f"truth table says ({sum(oks)} of {len(oks)})", ours="xds ingest dicom "
               "--min-slices 1", baseline="hand-checked truth table", value=sum(oks) / len(oks),
               goal=None, unit="")  # fmt: skip
    total = sum(r["ok"] for r in checked) / max(len(checked), 1)
    report("real_dicom", f"real DICOM, all vendors ({sum(r['ok'] for r in checked)} of "
           f"{len(checked)} rows)", ours="xds ingest dicom --min-slices 1",
           baseline="hand-checked truth table (tests/data/real_dicom_truth.csv)", value=total,
           goal=">= 0.99", unit="", note="the set that taught the rules: 17 of 22 before")
    report("real_dicom", f"phantom DICOM world, 8 centers, 3 vendors ({right} of {series} "
           "series)", ours="xds ingest dicom", baseline="the generator's manifest (xds's own "
           "vendor tables)", value=right / series, goal=">= 0.99", unit="")  # fmt: skip


if __name__ == "__main__":
    main()
