"""``xds pull`` of a phantom center from a local Orthanc vs download-then-ingest, same work.

Both sides start from the same indexed catalog state (the index and the cohort are built
before any timing) and end with the center's series converted and committed:

- ours: ``xds pull`` with ``-j N``: N retrieval threads (WADO-RS through dicomweb-client's
  multipart reader, each instance written as sent), completeness checks, and each whole
  series planned and converted by N processes while the next ones arrive;
- baseline: what a user does without it: N threads retrieving every series with plain
  dicomweb-client to disk, then ``xds ingest dicom -j N`` on that folder.

Same Orthanc, same series, same parallelism, warmed up, alternating rounds
(benchmarks/timing.py). Goal: ratio <= 0.9 (retrieval and conversion overlap).

    python -m benchmarks.pacs_pull [--subjects 8] [--shape 192,192,48] [--rounds 5]
        [--jobs 2] [--quick]
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xds.catalog import Catalog, build_cohort
from xds.ingest import ingest_dicom
from xds.pacs import PacsStore, add_pacs, index_pacs, pull_cohort

from .ingest_dicom import dicom_center
from .orthanc import OrthancServer
from .timing import Side, compare, timed_report


def download_then_ingest(server: OrthancServer, uids: list[tuple[str, str]], secret: bytes,
                         work: Path, jobs: int) -> int:  # fmt: skip
    """The baseline: dicomweb-client to disk with ``jobs`` threads, then the ingest."""
    from dicomweb_client.api import DICOMwebClient

    folder = work / "downloaded"
    shutil.rmtree(folder, ignore_errors=True)

    def fetch(k: int) -> None:
        client = DICOMwebClient(server.dicomweb)
        study, series = uids[k]
        target = folder / f"s{k:04d}"
        target.mkdir(parents=True)
        as_stored = (("application/dicom", "*"),)
        for n, ds in enumerate(client.iter_series(study, series, media_types=as_stored)):
            ds.save_as(target / f"{n:06d}.dcm", enforce_file_format=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(fetch, range(len(uids))))
    shutil.rmtree(work / "baseline", ignore_errors=True)
    catalog = Catalog.create(work / "baseline")
    (catalog.root / ".xds-secret").write_bytes(secret)
    return ingest_dicom(catalog, folder, center="bench", jobs=jobs).scans_added


def main() -> None:
    args, shape, work, center, _ = dicom_center(__doc__, "xds-bench-pacs-")
    files = sorted(p for p in center.rglob("*") if p.is_file())
    server = OrthancServer(work / "orthanc")
    try:
        stored = server.upload(files)
        indexed = Catalog.create(work / "indexed")
        add_pacs(indexed.root, "bench", dicomweb=server.dicomweb, center="bench")
        index = index_pacs(indexed, "bench", jobs=2 * args.jobs)
        build_cohort(indexed, "status = 'remote'", "all")
        private = PacsStore(indexed.root).series(
            indexed.read("remote_series").column("series_uid_hash").to_pylist()
        )
        uids = sorted((p["study_uid"], p["series_uid"]) for p in private.values())
        what = (f"{index.series_registered} series, {stored} instances of about "
                f"{shape[0]}x{shape[1]}, from Orthanc on localhost")  # fmt: skip
        print(f"phantom center: {what}")
        ours_root = work / "pulled"

        def fresh_copy() -> None:
            shutil.rmtree(ours_root, ignore_errors=True)
            shutil.copytree(indexed.root, ours_root)

        sides = {
            "pull": Side(f"xds pull -j {args.jobs}: WADO-RS in {args.jobs} threads, "
                         "completeness checks, conversion in as many processes while the "
                         "next series arrive",
                         lambda: pull_cohort(Catalog.open(ours_root), "all",
                                             jobs=args.jobs).scans_added,
                         setup=fresh_copy),
            "base": Side(f"dicomweb-client iter_series to disk in {args.jobs} threads, then "
                         f"xds ingest dicom -j {args.jobs}",
                         lambda: download_then_ingest(server, uids, indexed.secret(), work,
                                                      args.jobs)),
        }  # fmt: skip
        compare(sides, rounds=args.rounds)
    finally:
        server.stop()
    assert sides["pull"].result == sides["base"].result == index.series_registered, (
        "the two sides made different numbers of scans"
    )
    timed_report("pacs_pull", f"pull from a PACS vs download then ingest ({what})",
                 sides["pull"], sides["base"], goal="<= 0.9",
                 parallelism=f"{args.jobs} threads + {args.jobs} processes each")  # fmt: skip
    if not args.out:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
