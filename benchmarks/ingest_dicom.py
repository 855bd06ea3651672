"""``xds ingest dicom`` on one phantom center vs dcm2niix on the same files, equal processes.

The baseline is what a user would run without xds: ``dcm2niix -z y -b y`` (compressed
NIfTI and BIDS sidecars) over the center's series. xds does that work and more: reads every
header with pydicom, checks each series' geometry, classifies and de-identifies it, hashes
the voxels and commits the catalog rows. Two figures, each at equal parallelism:

- ``--jobs 1`` against one dcm2niix process over the whole folder;
- ``--jobs N`` against N dcm2niix processes at once, each over its share of the series
  (the series are dealt into N folders of hard links, balanced by file count, before any
  timing: how one would run dcm2niix in parallel).

Every side is warmed up and timed in alternating rounds (benchmarks/timing.py).
Goal: ratio <= 1.25 at equal processes.

    python -m benchmarks.ingest_dicom [--subjects 8] [--shape 192,192,48] [--rounds 5]
        [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import pydicom

from xds.catalog import Catalog
from xds.ingest import ingest_dicom
from xds.ingest.dicom import dcm2niix_path
from xds.phantoms import generate_world

from .timing import MIN_ROUNDS, Side, compare, timed_report


def run_xds(center: Path, work: Path, jobs: int) -> int:
    shutil.rmtree(work / "catalog", ignore_errors=True)
    catalog = Catalog.create(work / "catalog")
    return ingest_dicom(catalog, center, center="bench", jobs=jobs).scans_added


def deal_series(center: Path, into: Path, parts: int) -> list[Path]:
    """Hard-link each series' files into one of ``parts`` folders, balanced by file count."""
    series: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in center.rglob("*") if p.is_file()):
        try:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
        except Exception:  # not an image; dcm2niix would skip it too
            continue
        series[str(uid)].append(path)
    folders = [into / f"part{k}" for k in range(parts)]
    load = [0] * parts
    for n, (_, files) in enumerate(sorted(series.items(), key=lambda kv: -len(kv[1]))):
        k = load.index(min(load))
        load[k] += len(files)
        target = folders[k] / f"s{n:04d}"
        target.mkdir(parents=True)
        for i, f in enumerate(files):
            os.link(f, target / f"{i:05d}.dcm")
    return folders


def run_dcm2niix(folders: list[Path], work: Path) -> int:
    """One dcm2niix process per folder, all at once; the number of volumes written."""
    out = work / "dcm2niix"
    shutil.rmtree(out, ignore_errors=True)
    procs = []
    for k, folder in enumerate(folders):
        (out / str(k)).mkdir(parents=True)
        cmd = [dcm2niix_path(), "-z", "y", "-b", "y", "-ba", "y", "-f", "%s_%d",
               "-o", str(out / str(k)), str(folder)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("dcm2niix failed")
    return len(list(out.rglob("*.nii.gz")))


def dicom_center(doc: str, prefix: str):
    """The arguments of a benchmark over one phantom DICOM center, and that center.

    Returns (args, shape, work folder, center folder, manifest of the center).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--shape", default="192,192,48")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 subjects of 128x128x32")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.subjects, args.shape = min(args.subjects, 4), "128,128,32"
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(args.out or tempfile.mkdtemp(prefix=prefix))
    world = work / "world"
    manifest = generate_world(world, format="dicom", centers=1, subjects_per_center=args.subjects,
                              sequences=("T1W", "T2W", "OOP", "IP"), shape=shape, seed=0,
                              jobs=args.jobs, broken=False, annotations=False)  # fmt: skip
    return args, shape, work, world / manifest["centers"][0]["path"], manifest["centers"][0]


def main() -> None:
    args, shape, work, center, manifest = dicom_center(__doc__, "xds-bench-dicom-")
    files = sum(1 for p in center.rglob("*") if p.is_file())
    series = len(manifest["series"])
    what = f"{series} series, {files} files of about {shape[0]}x{shape[1]}"
    print(f"phantom center: {what}")
    whole = [center]
    dealt = deal_series(center, work / "dealt", args.jobs)
    sides = {
        "xds1": Side("xds ingest dicom --jobs 1: headers, checks, dcm2niix, classify, "
                     "de-identify, hash, commit", lambda: run_xds(center, work, 1)),
        "dcm1": Side("one dcm2niix -z y -b y over the folder", lambda: run_dcm2niix(whole, work)),
        "xdsN": Side(f"xds ingest dicom --jobs {args.jobs}: the same work",
                     lambda: run_xds(center, work, args.jobs)),
        "dcmN": Side(f"{args.jobs} dcm2niix -z y -b y at once, each over its share of the series",
                     lambda: run_dcm2niix(dealt, work)),
    }  # fmt: skip
    compare(sides, rounds=args.rounds)
    assert sides["xds1"].result == sides["xdsN"].result == sides["dcm1"].result, (
        "xds and dcm2niix made different numbers of volumes"
    )
    timed_report("ingest_dicom", f"ingest dicom vs dcm2niix, 1 process each ({what})",
                 sides["xds1"], sides["dcm1"], goal="<= 1.25",
                 parallelism="1 process each")  # fmt: skip
    timed_report("ingest_dicom", f"ingest dicom vs dcm2niix, {args.jobs} processes each ({what})",
                 sides["xdsN"], sides["dcmN"], goal="<= 1.25",
                 parallelism=f"{args.jobs} processes each")  # fmt: skip
    if not args.out:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
