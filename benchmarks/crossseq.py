"""CrossPan's cross-sequence collapse on the phantom world, and how much joint training recovers.

Builds the demo's world and catalog (4 centers x 12 subjects x T1W/T2W/OOP, the liver as
class, 70/10/20 split by subject stratified by center x sequence), trains the torch backend
once on the T1W train scans only and once on every sequence's train scans (equal passes per
training scan), and prints each model's mean liver Dice on each sequence's test scans. The
demo does the same with 8 base features; at that capacity the joint model learns the
majority appearance and misses T1W, so this benchmark defaults to 16. Usage::

    python -m benchmarks.crossseq [--epochs 10] [--base-features 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from xds.catalog import Catalog
from xds.trainers.demo import run_demo, train_demo

try:
    from .timing import report
except ImportError:  # run as a script: python benchmarks/crossseq.py
    from timing import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="single-sequence epochs")
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_demo(Path(tmp) / "demo", seed=args.seed, jobs=2, epochs=0)
        started = time.perf_counter()
        result = train_demo(
            Catalog.open(summary["catalog"]), summary["cohort"]["name"],
            summary["split"]["name"], Path(tmp) / "report", epochs=args.epochs,
            base_features=args.base_features,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    scores = result["dice_by_sequence"]
    sequences = sorted({q for per in scores.values() for q in per})
    print(f"liver Dice on the test scans ({args.base_features} base features, {args.epochs} "
          "epochs x 20 batches for the T1W model, x3 for the joint one)")  # fmt: skip
    print(f"{'model':12s}" + "".join(f"{q:>8s}" for q in sequences))
    for model, per in scores.items():
        print(f"{model:12s}" + "".join(f"{per.get(q, float('nan')):8.3f}" for q in sequences))
    single, joint = scores["demo-t1w"], scores["demo-joint"]
    others = [q for q in sequences if q != "T1W"]
    drop = single["T1W"] - sum(single[q] for q in others) / len(others)
    regained = sum(joint[q] - single[q] for q in others) / len(others)
    print(
        f"cross-sequence drop of the T1W model: {drop:.3f}; joint training regains "
        f"{regained:.3f} of it on the other sequences ({regained / drop:.0%}); "
        f"T1W in-domain {single['T1W']:.3f} -> joint {joint['T1W']:.3f}; {seconds:.0f} s"
    )
    for model, per in scores.items():
        for q in sequences:
            report("crossseq", f"liver Dice of {model} on {q} test scans", ours=model,
                   baseline="reference labels", value=per.get(q, float("nan")), goal=None,
                   unit="", note=f"{args.base_features} base features")  # fmt: skip


if __name__ == "__main__":
    main()
