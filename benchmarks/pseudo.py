"""Pseudo-labels on the phantom world: does a student on 10 % labels + gated pseudo-labels
beat the teacher trained on the 10 % alone?

Builds a phantom world (4 centers x ``--subjects`` subjects x T1W/T2W/OOP), a cohort of
its liver-labelled scans and a semi-supervised split (70/10/20 by subject, stratified by
center x sequence; 10 % of the train role keeps its labels, the rest is ``unlabeled``).
The teacher is the torch backend's small profile on the labelled 10 %; ``xds pseudo-label``
labels the unlabeled role (4 flips per scan; gates entropy <= 0.75 and contrast >= 0.35,
since a CPU-small teacher is soft, the others at their defaults; unreliable voxels ignored)
and trains a student per round with the same settings. Both are scored on the same test
role with ``xds evaluate``. One world per seed (the split differs too); prints each seed's
teacher and student Dice, how many pseudo-labels the gates kept and how good those were
against the labels the split hides, and the mean gain. ``--students`` trains several
students of one teacher (patch share x unreliable voxels) against one control; each phase
prints as it ends, with Dice per sequence. ``--new-center`` withholds a fifth center's
labels from teacher and control (with ``--scanner-shift``, its scanner differs) and reports
Dice per center. Beside a GPU, run one process per seed with ``--workers 2`` (five at once
filled an H200 to 76 % and 16 cores).
Usage::

    python -m benchmarks.pseudo [--subjects 12] [--sequences T1W,T2W,OOP] [--variability 1]
        [--features 8] [--workers 0] [--rounds 1] [--pseudo-share none] [--epochs 20]
        [--extra-epochs N] [--seeds 0,1,2] [--scratch] [--ceiling]
        [--students none/ignore,0.5/ignore,+2/reject,none/ignore/0.9,0.5/reject@new]
        [--new-center] [--scanner-shift 1] [--protocol-shift]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, build_cohort, get_cohort
from xds.evaluation.scoring import evaluate
from xds.evaluation.stats import bootstrap_ci, wilcoxon
from xds.export.files import remap_label
from xds.ingest import ingest_nifti
from xds.labels.cases import plan_export
from xds.labels.mapping import IGNORE
from xds.phantoms import generate_world
from xds.pseudo.gates import Gates
from xds.schemas.errors import RunError
from xds.splits.store import get_split, make_split
from xds.trainers.runs import get_run, predict_run, train_run
from xds.trainers.students import pseudo_label
from xds.trainers.torch_backend import TorchConfig

try:
    from .timing import report
except ImportError:  # run as a script: python benchmarks/pseudo.py
    from timing import report


def build(
    root: Path,
    subjects: int,
    seed: int,
    sequences: tuple[str, ...] = ("T1W", "T2W", "OOP"),
    variability: float = 1.0,
    scanner_shift: float = 0.0,
    centers: int = 4,
    protocol_shift: bool = False,
) -> tuple[Catalog, str, str, str]:
    """World, catalog, liver cohort, a 10 %-labelled semi-supervised split; the last center."""
    world = generate_world(root / "world", centers=centers, subjects_per_center=subjects,
                           shape=(48, 48, 24), seed=seed, jobs=2, broken=False,
                           sequences=sequences, variability=variability,
                           scanner_shift=scanner_shift, protocol_shift=protocol_shift)  # fmt: skip
    catalog = Catalog.create(root / "catalog")
    for c in world["centers"]:
        ingest_nifti(catalog, root / "world" / c["path"], center=c["name"], dataset="pw",
                     metadata=root / "world" / c["metadata"],
                     label_map=root / "world" / c["label_map"], vendor=c["vendor"],
                     field_strength=c["field_strength"], jobs=2)  # fmt: skip
    build_cohort(catalog, "list_contains(classes, 'liver')", "livers")
    # fold 0: 10 % of the train subjects labelled; fold 1: all of them (the ceiling)
    split = make_split(catalog, "livers", "semi-supervised", fractions=(10, 100), seed=seed,
                       name="livers-ssl10")  # fmt: skip
    return catalog, "livers", split.name, world["centers"][-1]["name"]


def score(catalog: Catalog, run: str) -> float:
    """Mean liver Dice of a run on its split's test role."""
    return score_by(catalog, run)["all"]


def score_by(catalog: Catalog, run: str, column: str = "sequence") -> dict[str, float]:
    """Mean liver Dice of a run on its split's test role: overall ("all") and per value of a
    scans column (sequence, center)."""
    prediction = predict_run(catalog, run, role="test")
    row = get_run(catalog, run)
    report = evaluate(catalog, prediction["uri"], cohort=get_cohort(catalog, row["cohort_id"]).name,
                      split=get_split(catalog, row["split_id"]).name, role="test", classes="liver",
                      name=f"{run}-test-{time.time_ns()}", jobs=1)  # fmt: skip
    rows = catalog.sql(
        f"SELECT s.{column} AS value, avg(m.dice) AS dice FROM metrics m JOIN scans s "
        f"USING (scan_id) WHERE m.eval_id = '{report.eval_id}' AND m.class_name = 'liver' "
        "GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    return {"all": report.mean["liver"]["dice"]} | {r["value"]: r["dice"] for r in rows}


def shown(dice: dict[str, float]) -> str:
    """``0.812 (OOP 0.700, T1W 0.900, T2W 0.800)``."""
    rest = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if k != "all")
    return f"{dice['all']:.3f} ({rest})"


def kept_quality(catalog: Catalog, split: str, name: str, round_: int) -> float:
    """Mean Dice of a round's kept pseudo-labels against the labels the split hides."""
    plan = plan_export(catalog, "livers", split=split, classes=["liver"], roles=("unlabeled",))
    truth = {c.scan_id: c for c in plan.cases}
    rows = catalog.read("labels", "origin = 'pseudo' AND round = ? AND source = ?",
                        [round_, f"pseudo-label {name} r{round_}"]).to_pylist()  # fmt: skip
    scores = []
    for row in rows:
        case = truth[row["scan_id"]]
        hidden = np.asanyarray(remap_label(case.label, case.lut).dataobj) == 1
        label = np.asanyarray(nib.load(catalog.resolve(row["uri"])).dataobj)
        known = label != IGNORE
        kept = (label == 1) & known
        scores.append(2 * (kept & hidden & known).sum() / (kept.sum() + (hidden & known).sum()))
    return float(np.mean(scores)) if scores else float("nan")


def one_seed(root: Path, seed: int, args) -> dict:
    """Teacher and students of one world; their test Dice and what the gates kept."""
    started = time.perf_counter()

    def step(what: str) -> None:  # each phase as it ends: a run cut short still says something
        print(f"  seed {seed}: {what} ({time.perf_counter() - started:.0f} s)", flush=True)

    # a fifth center for --new-center: the fourth labels the pancreas only (CrossPan's way)
    catalog, cohort, split, last = build(root, args.subjects, seed, args.sequences,
                                         args.variability, args.scanner_shift,
                                         5 if args.new_center else 4,
                                         args.protocol_shift)  # fmt: skip
    # --new-center: the last center sends images only; teacher and control never see its labels
    where = f"center <> '{last}'" if args.new_center else None
    by = "center" if args.new_center else "sequence"
    step("world, catalog and split built" + (f"; {last} is the new center" if where else ""))
    config = TorchConfig.small(epochs=args.epochs, seed=seed, base_features=args.features,
                               workers=args.workers)  # fmt: skip
    train_run(catalog, cohort, split=split, classes=["liver"], config=config, name="teacher",
              train_where=where, progress=False)  # fmt: skip
    roles = get_split(catalog, split).roles(0)
    labelled = catalog.rows_for("scans", roles["train"], ["center"]).column("center").to_pylist()
    teacher = score_by(catalog, "teacher", by)
    out = {"teacher": teacher["all"], "more": [], "variants": {}, "ceiling": None, "wide": None,
           "labelled": sum(not where or c != last for c in labelled),
           "unlabeled": len(roles["unlabeled"])}  # fmt: skip
    step(f"teacher {shown(teacher)}")
    if args.ceiling or args.ceiling_only:
        train_run(catalog, cohort, split=split, fold=1, classes=["liver"], config=config,
                  name="ceiling", progress=False)  # fmt: skip
        out["ceiling"] = score(catalog, "ceiling")
        step(f"ceiling {out['ceiling']:.3f}")
    if args.ceiling_only:
        return out
    if any(only_new for *_, only_new in args.students):
        build_cohort(catalog, f"list_contains(classes, 'liver') AND center = '{last}'",
                     "new-center")  # fmt: skip
    for share, unreliable, entropy, weight, only_new in args.students:
        if isinstance(share, int):  # +N: N pseudo-labelled patches on top of each batch
            tag, short = f"+{share} per batch", f"add{share}"
            mixing = {"pseudo_batch": share, "pseudo_weight": weight}
            if weight != 1.0:
                tag, short = f"{tag} weighing {weight:g}", f"{short}w{weight:g}"
        else:
            tag = "pro rata" if share is None else f"share {share:g}"
            short = "pr" if share is None else f"{share:g}"
            mixing = {"pseudo_share": share, "pseudo_batch": 0}
        tag += f", {unreliable}" + (f" > {entropy:g}" if unreliable == "ignore" else "")
        name = f"pl-{short}-{unreliable}-{entropy:g}"
        cohort_of_new = None
        if only_new:  # the case: label the new center's unlabeled scans only
            tag, name, cohort_of_new = f"{tag}, new center only", f"{name}-new", "new-center"
        rounds = out["variants"][tag] = []  # stays empty when the gates reject every case
        try:
            report = pseudo_label(catalog, ["teacher"], cohort=cohort_of_new,
                                  rounds=args.rounds, name=name,
                                  gates=Gates.parse(args.gate or DEFAULT_GATES),
                                  unreliable=unreliable, voxel_entropy=entropy,
                                  warm_start=not args.scratch,
                                  student_epochs=None if args.scratch else args.extra_epochs,
                                  progress=False, **mixing)  # fmt: skip
        except RunError as error:  # the gates rejected every case: no student, no mean
            step(f"no student ({tag}): {error}")
            continue
        for r in report.rounds:
            dice = score_by(catalog, r.student, by)
            rounds.append({
                "dice": dice["all"], "by": dice, "kept": r.accepted, "of": r.candidates,
                "reasons": r.reasons,
                "kept_quality": kept_quality(catalog, split, name, r.round),
            })  # fmt: skip
            step(f"round {r.round} student ({tag}) {shown(dice)}, kept {r.accepted}/"
                 f"{r.candidates} of Dice {rounds[-1]['kept_quality']:.3f}")  # fmt: skip
    # the control: the teacher trained on as many more batches, on its labelled scans only;
    # one per round, each warm-started from the last, as round k's student has k x the batches
    start = "teacher"
    for k in range(1, args.rounds + 1):
        name = "more" if k == 1 else f"more-r{k}"
        more = replace(config, init_from=str(catalog.root / "models" / start),
                       epochs=args.extra_epochs)  # fmt: skip
        train_run(catalog, cohort, split=split, classes=["liver"], config=more, name=name,
                  train_where=where, progress=False)  # fmt: skip
        out["more"].append(score_by(catalog, name, by))
        start = name
        step(f"control {k} (labelled only, round {k} student's batches) "
             f"{shown(out['more'][-1])}")  # fmt: skip
    if args.wide_control:  # as many patches per batch as a +N student's, labelled only
        wide = max([share for share, *_ in args.students if isinstance(share, int)], default=0)
        more = replace(config, init_from=str(catalog.root / "models" / "teacher"),
                       epochs=args.extra_epochs, batch_size=config.batch_size + wide)  # fmt: skip
        train_run(catalog, cohort, split=split, classes=["liver"], config=more, name="wide",
                  train_where=where, progress=False)  # fmt: skip
        out["wide"] = score_by(catalog, "wide", by)
        step(f"wide control (labelled only, batches of {more.batch_size}) {shown(out['wide'])}")
    return out


DEFAULT_GATES = ["entropy=0.75", "contrast=0.35"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=12, help="subjects per center")
    parser.add_argument("--sequences", default="T1W,T2W,OOP", help="the world's, comma-separated")
    parser.add_argument("--variability", type=float, default=1.0,
                        help="anatomical differences between subjects (xds phantoms')")  # fmt: skip
    parser.add_argument("--scanner-shift", type=float, default=0.0, help="how far the last "
                        "center's scanner departs from the others' (xds phantoms')")  # fmt: skip
    parser.add_argument("--protocol-shift", action="store_true", help="the last center's "
                        "T1W is native, without the others' contrast agent "
                        "(xds phantoms')")  # fmt: skip
    parser.add_argument("--new-center", action="store_true", help="the last center sends "
                        "images only: teacher and control never see its labels, its scans are "
                        "pseudo-labelled with the rest; Dice per center")  # fmt: skip
    parser.add_argument("--features", type=int, default=8, help="the U-Net's base features "
                        "(the small profile's 8 fit three sequences' livers poorly)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, help="processes filling each patch "
                        "queue (0: the trainer's own; more where there are cores to spare, as "
                        "beside a GPU)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20, help="the teacher's")
    parser.add_argument("--extra-epochs", type=int, help="the warm-started student's and the "
                        "control's, on top of the teacher's (default: --epochs)")  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2", help="one world and split per seed")
    parser.add_argument("--gate", action="append",
                        help="as xds pseudo-label's (default: entropy=0.75, contrast=0.35: a "
                        "CPU-small teacher is soft)")  # fmt: skip
    parser.add_argument("--unreliable", choices=["reject", "ignore"], default="ignore",
                        help="what the students' labels do with unreliable voxels")  # fmt: skip
    parser.add_argument("--voxel-entropy", type=float, default=0.5)
    parser.add_argument(
        "--pseudo-share",
        default="none",
        help="students' share of patches from pseudo-labelled scans ('none': in proportion "
        "to their numbers)",
    )
    parser.add_argument("--students", help="several students of one teacher, compared with "
                        "one control: comma-separated SHARE/UNRELIABLE[/VOXEL_ENTROPY][@new], "
                        "e.g. none/ignore,0.5/ignore,+2/reject,+2*0.5/ignore,none/ignore/0.9,"
                        "0.5/reject@new (SHARE: none, a share of the batch, or +N pseudo-labelled "
                        "patches on top of each batch, *W: their loss weighing W; @new: with "
                        "--new-center, label only the new center's unlabeled scans; default: "
                        "--pseudo-share, --unreliable and --voxel-entropy)")  # fmt: skip
    parser.add_argument("--wide-control", action="store_true", help="also a labelled-only "
                        "control with as many patches per batch as the +N students see (their "
                        "compute), beside the one with as many human-labelled batches")  # fmt: skip
    parser.add_argument("--scratch", action="store_true", help="students from scratch (default: "
                        "warm-started from the teacher, as the control is)")  # fmt: skip
    parser.add_argument("--ceiling", action="store_true", help="also train on every train "
                        "scan's label for the teacher's batches: what labels can add")  # fmt: skip
    parser.add_argument("--ceiling-only", action="store_true", help="train the teacher and the "
                        "ceiling only: is there anything for pseudo-labels to gain on this "
                        "world and budget?")  # fmt: skip
    args = parser.parse_args()
    args.extra_epochs = args.extra_epochs or args.epochs
    pairs = args.students or f"{args.pseudo_share}/{args.unreliable}"
    args.students = []
    for pair in pairs.split(","):
        spec, at, suffix = pair.strip().partition("@")
        if at and (suffix != "new" or not args.new_center):
            parser.error(f"{pair}: the only @ is @new, and it needs --new-center")
        share, unreliable, *entropy = spec.split("/")
        share, star, weight = share.partition("*")
        if star and share[0] != "+":
            parser.error(f"{pair}: *WEIGHT goes with +N students only")
        share = None if share == "none" else int(share) if share[0] == "+" else float(share)
        args.students.append((share, unreliable,
                              float(entropy[0]) if entropy else args.voxel_entropy,
                              float(weight) if star else 1.0, bool(at)))  # fmt: skip
    args.sequences = tuple(s.strip() for s in args.sequences.split(",") if s.strip())
    print(
        f"world: {args.subjects} subjects x {5 if args.new_center else 4} centers, "
        f"{'/'.join(args.sequences)}, "
        f"variability {args.variability}, scanner shift {args.scanner_shift}"
        + (", the last center's T1W native" if args.protocol_shift else "")
        + (" (new center: no labels from the last)" if args.new_center else "")
        + f"; U-Net base features {args.features}"
    )
    if args.ceiling_only:
        print(f"teacher (10 % of labels) and ceiling (every label), {args.epochs} epochs x 20 "
              "batches each")  # fmt: skip
    else:
        print(f"gates {args.gate or DEFAULT_GATES}, students {pairs} (share/unreliable[/entropy]), "
              f"--voxel-entropy {args.voxel_entropy}, teacher {args.epochs} epochs x 20 "
              "batches" + ("; students from scratch for as many" if args.scratch else
                           f"; then {args.extra_epochs} more for the warm-started student "
                           "and the control"))  # fmt: skip
    started = time.perf_counter()
    gains: dict[str, list[float]] = {}
    per: dict[str, dict[str, list[float]]] = {}  # student -> center or sequence -> gains
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            result = one_seed(Path(tmp), seed, args)
        line = (f"seed {seed} ({result['labelled']} labelled train scans, "
                f"{result['unlabeled']} unlabeled): teacher {result['teacher']:.3f}")  # fmt: skip
        for k, more in enumerate(result["more"], start=1):
            line += f", labelled only with round {k} student's extra batches {more['all']:.3f}"
        if result["wide"] is not None:
            line += f", labelled only in wider batches {result['wide']['all']:.3f}"
        if result["ceiling"] is not None:
            line += f", every train scan labelled (teacher's batches) {result['ceiling']:.3f}"
            gains.setdefault("ceiling - teacher", []).append(result["ceiling"] - result["teacher"])
        for tag, rounds in result["variants"].items():
            if not rounds:  # left out of the means below
                line += f"; no student ({tag}): the gates rejected every case"
            for k, r in enumerate(rounds, start=1):
                gains.setdefault(f"round {k} student ({tag}) - teacher", []).append(
                    r["dice"] - result["teacher"]
                )
                control = result["more"][k - 1]
                gains.setdefault(f"round {k} student ({tag}) - labelled only, same batches",
                                 []).append(r["dice"] - control["all"])  # fmt: skip
                for value, dice in r["by"].items():
                    if value != "all" and value in control:
                        per.setdefault(f"round {k} student ({tag})", {}).setdefault(
                            value, []).append(dice - control[value])  # fmt: skip
                    if k == 1 and result["wide"] and value in result["wide"] and value != "all":
                        per.setdefault(f"round 1 student ({tag}) vs wide", {}).setdefault(
                            value, []).append(dice - result["wide"][value])  # fmt: skip
                if k == 1 and result["wide"] is not None:
                    gains.setdefault(f"round 1 student ({tag}) - labelled only, as many patches",
                                     []).append(r["dice"] - result["wide"]["all"])  # fmt: skip
                line += (f"; student r{k} ({tag}) {r['dice']:.3f}, kept {r['kept']}/{r['of']} "
                         f"pseudo-labels of Dice {r['kept_quality']:.3f} against the hidden "
                         "labels (ignored voxels aside)")  # fmt: skip
        print(line, flush=True)
    print("mean liver Dice on the test role:")
    for what, values in gains.items():
        v = np.asarray(values)
        low, high = bootstrap_ci(v)  # over seeds; nan with fewer than two
        _, p = wilcoxon(v, np.zeros_like(v))
        print(f"  {what}: {v.mean():+.3f} (sd {v.std(ddof=1) if len(v) > 1 else 0:.3f}; "
              f"95 % CI {low:+.3f} to {high:+.3f}; Wilcoxon p {p:.2f}; "
              f"better in {(v > 0).sum()} of {len(v)} seeds)")  # fmt: skip
        report("pseudo", f"liver Dice, {what}", ours="student", baseline=what.split(" - ")[-1],
               value=float(v.mean()), goal=None, unit="",
               note=f"seeds {args.seeds}; 95 % CI {low:+.3f} to {high:+.3f}")  # fmt: skip
    for what, values in per.items():
        print(f"  {what} - labelled only, by {'center' if args.new_center else 'sequence'}: "
              + ", ".join(f"{k} {np.mean(v):+.3f} ({sum(x > 0 for x in v)}/{len(v)})"
                          for k, v in sorted(values.items())))  # fmt: skip
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
