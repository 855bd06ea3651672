"""Pseudo-labels on the phantom world: does a student on 10 % labels + gated pseudo-labels
beat the teacher trained on the 10 % alone?

Builds a phantom world (4 centers x ``--subjects`` subjects x T1W/T2W/OOP), a cohort of
its liver-labelled scans and a semi-supervised split (70/10/20 by subject, stratified by
center x sequence; 10 % of the train role keeps its labels, the rest is ``unlabeled``).
The teacher is the torch backend's small profile on the labelled 10 %; ``xds pseudo-label``
labels the unlabeled role (4 flips per scan, default gates) and trains a student per
round with the same settings. Both are scored on the same test role with ``xds
evaluate``. Prints the mean liver Dice of each, the gain, and what the gates kept.
Usage::

    python benchmarks/pseudo.py [--subjects 12] [--rounds 1] [--epochs 10] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from xds.catalog import Catalog, build_cohort
from xds.evaluate import evaluate
from xds.ingest import ingest_nifti
from xds.phantoms import generate_world
from xds.pseudo import Gates
from xds.splits import get_split, make_split
from xds.trainers.pseudo import pseudo_label
from xds.trainers.runs import predict_run, train_run
from xds.trainers.torch_backend import TorchConfig


def build(root: Path, subjects: int, seed: int) -> tuple[Catalog, str, str]:
    """World, catalog, liver cohort and a 10 %-labelled semi-supervised split."""
    world = generate_world(root / "world", centers=4, subjects_per_center=subjects,
                           shape=(48, 48, 24), seed=seed, jobs=2, broken=False)  # fmt: skip
    catalog = Catalog.create(root / "catalog")
    for c in world["centers"]:
        ingest_nifti(catalog, root / "world" / c["path"], center=c["name"], dataset="pw",
                     metadata=root / "world" / c["metadata"],
                     label_map=root / "world" / c["label_map"], vendor=c["vendor"],
                     field_strength=c["field_strength"], jobs=2)  # fmt: skip
    build_cohort(catalog, "list_contains(classes, 'liver')", "livers")
    split = make_split(catalog, "livers", "semi-supervised", fractions=(10,), seed=seed,
                       name="livers-ssl10")  # fmt: skip
    return catalog, "livers", split.name


def score(catalog: Catalog, run: str) -> float:
    """Mean liver Dice of a run on its split's test role."""
    prediction = predict_run(catalog, run, role="test")
    row = catalog.read("runs", "name = ?", [run]).to_pylist()[0]
    split = catalog.read("splits", "split_id = ?", [row["split_id"]]).slice(0, 1).to_pylist()
    cohort = catalog.read("cohorts", "cohort_id = ?", [row["cohort_id"]]).to_pylist()[0]
    report = evaluate(catalog, prediction["uri"], cohort=cohort["name"],
                      split=split[0]["name"], role="test", classes="liver",
                      name=f"{run}-test", jobs=1)  # fmt: skip
    return report.mean["liver"]["dice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=12, help="subjects per center")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build in this (new) folder and keep it")
    parser.add_argument("--gate", action="append", default=[], help="as xds pseudo-label's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalog, cohort, split = build(args.keep or Path(tmp), args.subjects, args.seed)
        roles = {r: len(v) for r, v in get_split(catalog, split).roles(0).items()}
        config = TorchConfig.small(epochs=args.epochs, seed=args.seed)
        started = time.perf_counter()
        train_run(catalog, cohort, split=split, classes=["liver"], config=config,
                  name="teacher", progress=False)  # fmt: skip
        teacher_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = pseudo_label(catalog, ["teacher"], rounds=args.rounds, name="pl",
                              gates=Gates.parse(args.gate), progress=False)  # fmt: skip
        pseudo_seconds = time.perf_counter() - started
        scores = {"teacher (labelled 10 % only)": score(catalog, "teacher")}
        for r in report.rounds:
            scores[f"student round {r.round}"] = score(catalog, r.student)
    print(f"scans per role: {roles}")
    for r in report.rounds:
        print(f"round {r.round}: {r.accepted} of {r.candidates} pseudo-labels accepted, "
              f"rejected by {r.reasons or 'nothing'}")  # fmt: skip
    print("mean liver Dice on the test role:")
    for model, dice in scores.items():
        print(f"  {model:30s} {dice:.3f}")
    teacher, best = next(iter(scores.values())), list(scores.values())[-1]
    print(f"gain of the last student over the teacher: {best - teacher:+.3f} Dice "
          f"({best / teacher:.2f}x); teacher {teacher_seconds:.0f} s, pseudo-labelling and "
          f"students {pseudo_seconds:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
