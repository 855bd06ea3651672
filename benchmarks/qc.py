"""QC measures of a cohort: xds vs MONAI's Auto3DSeg DataAnalyzer, same cases, one run.

The cases are a phantom world's labelled scans (NIfTI image + label map, three MR
sequences, several centers). Both sides read every case from disk and compute per-case
statistics, one process, no worker pool, on the CPU:

- xds: :func:`xds.qc.scan_measures` per case (geometry and label-grid agreement, body mask,
  intensity range, SNR, CNR, EFC, FBER, bias field, per-class volume, pieces, place, border
  contrast, shift and mirror fits, side), then :func:`xds.qc.flag_scans` over the cohort;
- MONAI: ``DataAnalyzer(..., device="cpu", worker=0, do_ccp=True).get_all_case_stats()``
  (image intensity and shape statistics, foreground and per-label intensity, volume and
  connected-component shape statistics); it flags nothing.

Figure: xds' time over MONAI's, per round (goal <= 1: at least as fast while computing
more). Both sides are warmed up, then timed in alternating rounds (benchmarks/timing.py).

    python -m benchmarks.qc [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

from xds.catalog import Catalog
from xds.ingest import ingest_nifti
from xds.phantoms import generate_world
from xds.qc import flag_scans, scan_measures
from xds.qc.run import measure_items

from .timing import MIN_ROUNDS, Side, compare, timed_report


def make_cases(root: Path, shape: tuple[int, int, int], centers: int, subjects: int):
    """A phantom world ingested into a catalog; its labelled scans as (image, label, ...)."""
    manifest = generate_world(root / "w", centers=centers, subjects_per_center=subjects,
                              shape=shape, seed=11)  # fmt: skip
    cat = Catalog.create(root / "c")
    for c in manifest["centers"]:
        ingest_nifti(cat, root / "w" / c["path"], center=c["name"], dataset="bench",
                     metadata=root / "w" / c["metadata"],
                     label_map=root / "w" / c["label_map"])  # fmt: skip
    scans = [s for s in sorted(cat.read("scan_view").to_pylist(), key=lambda r: r["scan_id"])
             if s["has_label"]]  # fmt: skip
    return [{"item": item, "center": s["center"], "sequence": s["sequence"],
             "modality": s["modality"]}
            for s, item in zip(scans, measure_items(cat, scans), strict=True)]  # fmt: skip


def ours(cases: list[dict]) -> list[dict]:
    return flag_scans([{**c, "measures": scan_measures(*c["item"])} for c in cases])


def monai(cases: list[dict], out: Path):
    from monai.apps.auto3dseg import DataAnalyzer

    datalist = {"training": [{"image": c["item"][0], "label": c["item"][1]} for c in cases]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = DataAnalyzer(datalist, dataroot="", output_path=str(out / "datastats.yaml"),
                                device="cpu", worker=0, do_ccp=True)  # fmt: skip
        return analyzer.get_all_case_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--quick", action="store_true", help="smaller volumes, fewer cases")
    args = parser.parse_args()
    logging.getLogger("monai").setLevel(logging.ERROR)
    shape = (64, 64, 32) if args.quick else (160, 160, 48)
    centers, subjects = (2, 3) if args.quick else (3, 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = make_cases(root, shape, centers, subjects)
        print(f"{len(cases)} cases of about {shape} voxels")
        sides = {
            "xds": Side("xds scan_measures per case + flag_scans over the cohort, 1 process",
                        lambda: ours(cases)),
            "monai": Side("MONAI DataAnalyzer.get_all_case_stats (cpu, worker=0, do_ccp)",
                          lambda: monai(cases, root)),
        }  # fmt: skip
        compare(sides, rounds=args.rounds)
        flagged = sum(bool(f["flags"]) for f in sides["xds"].result)
        stats = sides["monai"].result
        measures = len(scan_measures(*cases[0]["item"]))
        monai_keys = len(json.dumps(stats["stats_by_cases"][0], default=str))  # its bytes
        timed_report("qc", f"QC of {len(cases)} cases vs MONAI DataAnalyzer", sides["xds"],
                     sides["monai"], goal="<= 1", parallelism="1 process each",
                     note=f"xds: {measures} measures per case and flags ({flagged} flagged); "
                          f"MONAI: {monai_keys} bytes of statistics per case, no flags")


if __name__ == "__main__":
    main()
