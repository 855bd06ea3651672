"""Exporting the demo cohort vs ``cp -r`` of the same files, timed in the same run.

The demo world (4 centers x 12 subjects x 3 sequences, 124 pancreas scans) is built once and
its cohort harmonized to CrossPan's class set (``xds harmonize pancreas --classes crosspan``),
the step that turns every center's label map into the shared one. Then, best of --repeat
runs each, with the target removed between runs:

- baseline: ``cp -r`` of the cohort's images and harmonized labels into an empty folder;
- xds: each exporter as a library call (imports warm), writing the same files plus its
  index (datalist JSON; Arrow + Parquet + card; dataset.json + splits_final.json).

Goal: ratio <= 1.5 for the exports that need no conversion (hard links, not copies).
``--embed`` puts the bytes in the dataset, so it is timed too, but it copies by design; and
an export of the raw source labels, which remaps them in worker processes, shows what the
harmonize step saves.

    python benchmarks/export.py [--repeat 5] [--jobs 2] [--subjects-per-center 12]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from timing import best_of  # benchmarks/timing.py, beside this script

from xds.catalog import Catalog
from xds.demo import run_demo
from xds.export import export_datalist, export_hf, export_nnunet, plan_export
from xds.harmonize import harmonize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--subjects-per-center", type=int, default=12)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="xds-bench-export-"))
    try:
        summary = run_demo(root / "demo", subjects_per_center=args.subjects_per_center)
        catalog = Catalog.open(summary["catalog"])
        cohort, split = summary["cohort"]["name"], summary["split"]["name"]
        harmonize(catalog, cohort, classes="crosspan", jobs=args.jobs)
        plan = plan_export(catalog, cohort, split=split, class_set="crosspan")
        files = [c.image for c in plan.cases] + [c.label for c in plan.cases if c.label]
        size = sum(Path(f).stat().st_size for f in files) / 1e6
        print(f"demo cohort: {len(plan.cases)} scans, {len(files)} files, {size:.1f} MB")

        out = root / "out"

        def fresh(fn):
            def run():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                return fn()

            return run

        def cp():
            subprocess.run(["cp", "-r", *files, str(out)], check=True)

        common = {"split": split, "jobs": args.jobs}
        cases = {
            "datalist": lambda: export_datalist(
                catalog, cohort, out=out / "d.json", class_set="crosspan", **common
            ),
            "hf (paths)": lambda: export_hf(
                catalog, cohort, out=out / "hf", class_set="crosspan", **common
            ),
            "nnunet": lambda: export_nnunet(
                catalog, cohort, dataset_id=1, out=out, class_set="crosspan", **common
            ),
            "hf --embed (copies bytes)": lambda: export_hf(
                catalog, cohort, out=out / "hf", class_set="crosspan", embed=True, **common
            ),
            "datalist, raw labels (remaps)": lambda: export_datalist(
                catalog, cohort, out=out / "d.json", classes=["pancreas"], **common
            ),
        }
        base, _ = best_of(fresh(cp), args.repeat)
        print(f"{'cp -r (baseline)':32s} {base * 1e3:8.1f} ms")
        for name, fn in cases.items():
            fn()  # warm: imports, page cache
            seconds, result = best_of(fresh(fn), args.repeat)
            ratio = seconds / base
            goal = (
                ""
                if "(" in name and "paths" not in name
                else ("  goal <= 1.5: " + ("ok" if ratio <= 1.5 else "MISSED"))
            )
            print(f"{name:32s} {seconds * 1e3:8.1f} ms  ratio {ratio:5.2f}{goal}  {result.files}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
