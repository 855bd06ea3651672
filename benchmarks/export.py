"""Exporting the demo cohort vs ``cp -rl`` and ``cp -r`` of the same files, in one run.

The demo world (4 centers x 12 subjects x 3 sequences, 124 pancreas scans) is built once and
its cohort harmonized to CrossPan's class set (``xds harmonize pancreas --classes crosspan``),
the step that turns every center's label map into the shared one. Then every side is warmed
up and timed in alternating rounds (benchmarks/timing.py), the target removed before each run:

- ``cp -rl``: hard links to the cohort's images and harmonized labels in an empty folder
  (what the linking exports do with the files, so their like-for-like baseline);
- ``cp -r``: copies of the same files (what ``--embed`` and ``--copy`` are compared with);
- xds: each exporter as a library call, writing the same files plus its index (datalist
  JSON; Arrow + Parquet + card; dataset.json + splits_final.json).

Goal: the linking exports <= 1.5x ``cp -rl``. ``--embed`` puts the bytes in the dataset, so
it is set against ``cp -r``; an export of the raw source labels, which remaps them in worker
processes, shows what the harmonize step saves. One process for cp; xds with ``--jobs``
workers where it has any (the linking exports start none).

    python -m benchmarks.export [--rounds 5] [--jobs 2] [--subjects-per-center 12] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from xds.catalog import Catalog
from xds.export import export_datalist, export_hf, export_nnunet
from xds.labels.cases import plan_export
from xds.labels.harmonization import harmonize
from xds.trainers.demo import run_demo

from .timing import MIN_ROUNDS, Side, compare, ratio, timed_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--subjects-per-center", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="6 subjects per center")
    args = parser.parse_args()
    if args.quick:
        args.subjects_per_center = min(args.subjects_per_center, 6)

    root = Path(tempfile.mkdtemp(prefix="xds-bench-export-"))
    try:
        summary = run_demo(root / "demo", subjects_per_center=args.subjects_per_center, epochs=0)
        catalog = Catalog.open(summary["catalog"])
        cohort, split = summary["cohort"]["name"], summary["split"]["name"]
        harmonize(catalog, cohort, classes="crosspan", jobs=args.jobs)
        plan = plan_export(catalog, cohort, split=split, class_set="crosspan")
        files = [c.image for c in plan.cases] + [c.label for c in plan.cases if c.label]
        size = sum(Path(f).stat().st_size for f in files) / 1e6
        what = f"{len(plan.cases)} scans, {len(files)} files, {size:.1f} MB"
        print(f"demo cohort: {what}")

        out = root / "out"

        def clear():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def cp(*flags):
            return lambda: subprocess.run(["cp", *flags, *files, str(out)], check=True)

        common = {"split": split, "jobs": args.jobs}
        sides = {
            "cp -rl": Side("cp -rl: hard-link the images and labels into one folder", cp("-rl")),
            "cp -r": Side("cp -r: copy the images and labels into one folder", cp("-r")),
            "datalist": Side("xds export datalist: link the files, write the JSON index",
                             lambda: export_datalist(catalog, cohort, out=out / "d.json",
                                                     class_set="crosspan", **common)),
            "hf": Side("xds export hf: link the files, write Arrow + Parquet + card",
                       lambda: export_hf(catalog, cohort, out=out / "hf", class_set="crosspan",
                                         **common)),
            "nnunet": Side("xds export nnunet: link into imagesTr/labelsTr, dataset.json, "
                           "splits_final.json",
                           lambda: export_nnunet(catalog, cohort, dataset_id=1, out=out,
                                                 class_set="crosspan", **common)),
            "embed": Side("xds export hf --embed: the bytes inside the Parquet files",
                          lambda: export_hf(catalog, cohort, out=out / "hf",
                                            class_set="crosspan", embed=True, **common)),
            "raw": Side(f"xds export datalist of raw source labels: remap each in "
                        f"{args.jobs} worker processes",
                        lambda: export_datalist(catalog, cohort, out=out / "d.json",
                                                classes=["pancreas"], **common)),
        }  # fmt: skip
        for side in sides.values():
            side.setup = clear
        compare(sides, rounds=args.rounds)
        par = f"cp: one process; xds: --jobs {args.jobs}"
        for name in ("datalist", "hf", "nnunet"):
            against_copy = ratio(sides[name], sides["cp -r"]).text()
            timed_report("export", f"export {name} vs cp -rl ({what})", sides[name],
                         sides["cp -rl"], goal="<= 1.5", parallelism=par,
                         note=f"{against_copy}x cp -r")  # fmt: skip
        timed_report("export", f"export hf --embed vs cp -r ({what})", sides["embed"],
                     sides["cp -r"], goal=None, parallelism=par)  # fmt: skip
        timed_report("export", f"export of raw labels (remapped) vs cp -r ({what})",
                     sides["raw"], sides["cp -r"], goal=None, parallelism=par)  # fmt: skip
        timed_report("export", "cp -rl vs cp -r (the two baselines)", sides["cp -rl"],
                     sides["cp -r"], goal=None, parallelism="one process each")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
