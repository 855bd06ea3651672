"""``xds ingest dicom --jobs 2`` on one phantom center vs dcm2niix alone on the same files.

The baseline is what a user would run without xds: one ``dcm2niix -z y -b y`` over the
center's folder (compressed NIfTI and BIDS sidecars). xds does that work and more: reads
every header with pydicom, checks each series' geometry, classifies and de-identifies it,
hashes the voxels and commits the catalog rows. Runs alternate and medians are compared,
since this machine is noisy. Goal: ratio <= 1.25.

    python benchmarks/ingest_dicom.py [--subjects 8] [--shape 192,192,48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from xds.catalog import Catalog
from xds.ingest import ingest_dicom
from xds.ingest.dicom import dcm2niix_path
from xds.phantoms import generate_world


def run_xds(center: Path, work: Path, jobs: int) -> tuple[float, int]:
    catalog = Catalog.create(work / "catalog")
    start = time.perf_counter()
    report = ingest_dicom(catalog, center, center="bench", jobs=jobs)
    elapsed = time.perf_counter() - start
    shutil.rmtree(work / "catalog")
    return elapsed, report.scans_added


def run_dcm2niix(center: Path, work: Path) -> tuple[float, int]:
    out = work / "dcm2niix"
    out.mkdir()
    start = time.perf_counter()
    subprocess.run(
        [
            dcm2niix_path(),
            "-z",
            "y",
            "-b",
            "y",
            "-ba",
            "y",
            "-f",
            "%s_%d",
            "-o",
            str(out),
            str(center),
        ],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    n = len(list(out.glob("*.nii.gz")))
    shutil.rmtree(out)
    return elapsed, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--shape", default="192,192,48")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(args.out or tempfile.mkdtemp(prefix="xds-bench-dicom-"))
    world = work / "world"
    manifest = generate_world(
        world,
        format="dicom",
        centers=1,
        subjects_per_center=args.subjects,
        sequences=("T1W", "T2W", "OOP", "IP"),
        shape=shape,
        seed=0,
        jobs=args.jobs,
        broken=False,
    )
    center = world / manifest["centers"][0]["path"]
    files = sum(1 for p in center.rglob("*") if p.is_file())
    series = len(manifest["centers"][0]["series"])
    print(f"phantom center: {series} series, {files} files, grid about {shape}")
    xds_times, base_times = [], []
    for _ in range(args.repeats):
        t, n_xds = run_xds(center, work, args.jobs)
        xds_times.append(t)
        t, n_base = run_dcm2niix(center, work)
        base_times.append(t)
    xds_s, base_s = statistics.median(xds_times), statistics.median(base_times)
    print(f"dcm2niix alone      : {base_s:6.2f} s  ({n_base} volumes)")
    print(f"xds ingest --jobs {args.jobs} : {xds_s:6.2f} s  ({n_xds} scans registered)")
    print(f"ratio xds / dcm2niix: {xds_s / base_s:.2f}  (goal <= 1.25)")
    if not args.out:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
