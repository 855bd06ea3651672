"""Teacher-student pseudo-labelling rounds: ``xds pseudo-label``.

Round k: the teachers (the given runs in round 1, the previous round's student after that)
predict every candidate scan, once per test-time flip, through their own backend
(:class:`~xds.trainers.torch_predict.TorchTeacher`,
:class:`~xds.trainers.nnunet_backend.NnunetTeacher`); :func:`xds.pseudo.gates.judge_case` fuses
the members and gates the result against the labelled training set (:class:`xds.pseudo.gates.
Reference`: organ volumes and boundary contrasts of the teacher's train role); the accepted
labels become ``labels`` rows (origin ``pseudo``, teacher runs, round, figures). The student
trains with the teacher's backend and settings on a *derived split*: the teacher's fold with
the accepted scans moved into ``train`` and their labels pinned (``params["labels"]``), on
the teacher's cohort or, when candidates come from elsewhere, a cohort of both. Val and test
stay the teacher's, so the student is scored on the same cases, and ``xds audit`` on the
student's split sees every scan it learned from.

Candidates are the teacher split's ``unlabeled`` role by default, or a cohort (optionally
one role of one of its splits). A candidate is left out when it or its subject is in the
teacher's val or test role (training on another sequence of a test patient is a
patient-level leak), or when it has a human label, unless the teacher's split hides that
label by putting the scan in its ``unlabeled`` role (a semi-supervised split simulating
unlabeled data: its student reads the pinned pseudo-label, never the hidden one).

Each round writes ``pseudo/<name>/r<k>/report.json`` in the catalog folder (every case's
figures and verdict). A round whose report holds the same settings is not computed again,
and a finished student is not trained again, so re-running the command adds nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, build_cohort, get_cohort
from xds.catalog.cohorts import select_scans
from xds.export.files import remap_label
from xds.labels.cases import plan_export
from xds.labels.selection import best_labels
from xds.pseudo.gates import Gates, Reference, judge_case, measure
from xds.pseudo.writer import PseudoLabelWriter
from xds.schemas.errors import CohortError, RunError
from xds.schemas.ids import stable_id
from xds.splits.store import derive_split, get_split
from xds.trainers.checkpoints import config_fields
from xds.trainers.nnunet_backend import NnunetConfig, NnunetTeacher
from xds.trainers.runs import BACKENDS, get_run, train_run
from xds.trainers.torch_backend import _progress, pseudo_mixing_problem
from xds.trainers.torch_predict import TorchTeacher

HUMAN_ORIGINS = ("manual", "revised")
FLIPS = ((), (0,), (1,), (2,))
"""Test-time flips: the scan as it is and mirrored along each voxel axis."""


@dataclass
class PseudoRound:
    """What one round did."""

    round: int
    teachers: list[str]
    candidates: int
    accepted: int
    rejected: int
    reasons: dict[str, int]  # gate -> cases it rejected
    labels_added: int
    student: str | None = None
    student_split: str | None = None
    report: str = ""

    def summary(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


@dataclass
class PseudoReport:
    """A pseudo-labelling: its candidates, what was left out and why, and its rounds."""

    name: str
    classes: list[str]
    candidates: int
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> scans
    rounds: list[PseudoRound] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready fields."""
        return {**asdict(self), "rounds": [r.summary() for r in self.rounds]}


def load_teacher(catalog: Catalog, run: str, *, device: str = "auto"):
    """A recorded run as a teacher (``.classes``, ``.probabilities(image, flips)``)."""
    row = get_run(catalog, run)
    if row["backend"] == "nnunet":
        config = NnunetConfig(**config_fields(json.loads(row["config"])))
        return NnunetTeacher(row["uri"], config=config, fold=row["fold"], device=device)
    return TorchTeacher(row["uri"], device=device)


# the added pseudo-labels' loss weight for students: on the new-center benchmark (README,
# Benchmarks) weight 1 lost 0.01 on the labelled centers; 0.25 beat it in 13 of 16 runs
STUDENT_PSEUDO_WEIGHT = 0.25


def pseudo_label(
    catalog: Catalog,
    teachers: list[str],
    *,
    cohort: str | None = None,
    split: str | None = None,
    role: str | None = None,
    rounds: int = 1,
    gates: Gates | None = None,
    unreliable: str = "ignore",
    voxel_entropy: float = 0.5,
    flips: bool = True,
    students: bool = True,
    warm_start: bool = False,
    student_epochs: int | None = None,
    pseudo_share: float | None = None,
    pseudo_batch: int | None = None,
    pseudo_weight: float | None = None,
    name: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> PseudoReport:
    """Pseudo-label candidates with ``teachers`` and train students, for ``rounds`` rounds.

    Args:
        catalog: the catalog.
        teachers: run names (or ids); they must predict the same classes. The first one's
            cohort, split and fold are the students' (see the module docstring).
        cohort: the scans to label (default: the teacher split's unlabeled role).
        split: with ``cohort``, only scans of this split of it...
        role: ...in this role.
        rounds: teacher-student rounds; round k > 1's teacher is round k - 1's student.
        gates: quality thresholds (default :class:`xds.pseudo.gates.Gates`).
        unreliable: ``ignore`` unreliable voxels of accepted cases (the ignore label), or
            ``reject``: keep accepted cases whole (rejected cases are dropped either way).
        voxel_entropy: normalized entropy above which a voxel is unreliable.
        flips: add test-time flips as members (4 passes per teacher).
        students: train a student each round (without: label one round, train nothing).
        warm_start: torch students start from their teacher's weights, then train the
            teacher's schedule on labelled + pseudo-labelled scans (for little compute);
            otherwise, and always with nnU-Net, from scratch (A-Eval's and Noisy Student's
            way, which does not inherit the teacher's mistakes through its weights).
        student_epochs: the students' epochs (default: the teacher's); a warm-started
            student fine-tunes, which takes fewer.
        pseudo_share: torch students draw pseudo-labelled scans as this share of their
            patches, the human-labelled ones as the rest (with ``pseudo_batch`` 0 and no
            share: in proportion to their numbers, which lets 60 pseudo-labels drown 8
            human labels).
        pseudo_batch: torch students add this many pseudo-labelled patches to each batch of
            human-labelled ones, and their mean loss to the batch's, so the human labels keep
            the batches and gradient of a labelled-only run (FixMatch's way). Default: the
            teacher's batch size, unless ``pseudo_share`` is given; 0: one queue for both.
        pseudo_weight: the weight of those added patches' mean loss (FixMatch's lambda_u).
            Default: ``STUDENT_PSEUDO_WEIGHT`` (0.25) with ``pseudo_batch``, else 1. At 1 the
            students lost 0.01 on the labelled centers; 0.25 beat 1 in 13 of 16 benchmark runs.
        name: the pseudo-labelling's name (default ``<first teacher>-pl``): label files,
            students (``<name>-r<k>``) and their splits are named after it.
        device: ``auto``, ``cpu``, ``cuda``...
        progress: show progress bars.

    Raises:
        RunError: unknown runs, teachers with different classes, no candidate left,
            more than one round without students, bad settings.
    """
    if rounds < 1:
        raise RunError(f"--rounds must be at least 1, not {rounds}")
    if student_epochs is not None and student_epochs < 1:
        raise RunError(f"--student-epochs must be at least 1, not {student_epochs}")
    problem = pseudo_mixing_problem(pseudo_share, pseudo_batch, pseudo_weight, flags=True)
    if problem:
        raise RunError(problem)
    if rounds > 1 and not students:
        raise RunError("rounds after the first need the previous round's student")
    if not teachers:
        raise RunError("give at least one --teacher run")
    gates = gates or Gates()
    runs = [get_run(catalog, t) for t in teachers]
    base = runs[0]
    if (pseudo_share is not None or pseudo_batch) and base["backend"] != "torch":
        flag = "--pseudo-share" if pseudo_share is not None else "--pseudo-batch"
        raise RunError(f"{flag}: {base['name']} is a {base['backend']} run; only torch "
                       "students draw their patches by label origin")  # fmt: skip
    if pseudo_batch is None:  # the human labels keep their batches; pseudo-labels come on top
        torch_student = base["backend"] == "torch" and pseudo_share is None
        pseudo_batch = json.loads(base["config"])["batch_size"] if torch_student else 0
    if pseudo_weight is None:
        pseudo_weight = STUDENT_PSEUDO_WEIGHT if pseudo_batch else 1.0
    problem = pseudo_mixing_problem(pseudo_share, pseudo_batch, pseudo_weight, flags=True)
    if problem:  # a weight given where the defaults add no pseudo-labelled patches
        raise RunError(problem)
    classes = list(base["classes"])
    for run in runs[1:]:
        if list(run["classes"]) != classes:
            raise RunError(
                f"teachers predict different classes: {base['name']} {classes}, "
                f"{run['name']} {list(run['classes'])}"
            )
    name = name or f"{base['name']}-pl"
    base_cohort = get_cohort(catalog, base["cohort_id"]).name
    base_split = get_split(catalog, base["split_id"])
    fold = base["fold"]
    ids, left_out = _candidates(catalog, base_split, fold, cohort, split, role)
    report = PseudoReport(name, classes, len(ids), left_out)
    if not ids:
        raise RunError(
            "no scan left to pseudo-label"
            + (f" ({', '.join(f'{k}: {v}' for k, v in left_out.items())})" if left_out else "")
        )
    reference = labelled_reference(catalog, base_cohort, base_split.name, fold, classes)
    scans = {r["scan_id"]: r for r in catalog.rows_for(
        "scans", ids, ["scan_id", "sequence", "image_uri"]).to_pylist()}  # fmt: skip
    settings = {
        "gates": gates.to_dict(), "unreliable": unreliable, "voxel_entropy": voxel_entropy,
        "flips": flips, "classes": classes,
    }  # fmt: skip
    previous: dict[str, str] = {}  # scan -> label id accepted in the round before
    current = [r["run_id"] for r in runs]
    digest = stable_id("pls", json.dumps(settings, sort_keys=True), *ids)
    for k in range(1, rounds + 1):
        folder = catalog.root / "pseudo" / name / f"r{k}"
        stored = _stored_round(folder, digest, current)
        if stored is None:
            writer = PseudoLabelWriter(catalog, name=name, round_=k, teachers=current,
                                       digest=digest, classes=classes, unreliable=unreliable,
                                       scan_ids=sorted(scans))  # fmt: skip
            results = _label_round(catalog, current, scans, classes, reference, gates,
                                   previous, unreliable, voxel_entropy, flips, device,
                                   progress, k, writer)  # fmt: skip
            accepted, added = writer.accepted, writer.commit()
            stored = {
                "digest": digest, "teachers": current, "settings": settings,
                "reference": reference.to_dict(), "accepted": accepted,
                "cases": [r.summary() for r in results],
            }  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "report.json").write_text(json.dumps(stored, indent=1) + "\n")
        else:
            added = 0
        cases = stored["cases"]
        reasons = Counter(f.split()[0] for c in cases for f in c["failures"])
        this = PseudoRound(
            k, [get_run(catalog, t)["name"] for t in current], len(cases),
            len(stored["accepted"]), len(cases) - len(stored["accepted"]), dict(reasons),
            added, report=str(folder / "report.json"),
        )  # fmt: skip
        report.rounds.append(this)
        previous = stored["accepted"]
        if students:
            if not previous:
                raise RunError(f"round {k}: every case was rejected ({dict(reasons)}); "
                               "loosen --gate or improve the teacher")  # fmt: skip
            warm = get_run(catalog, current[0])["uri"] if warm_start else None
            student = _train_student(catalog, base, base_cohort, base_split, fold, name, k,
                                     previous, warm, student_epochs,
                                     (pseudo_share, pseudo_batch, pseudo_weight), device,
                                     progress)  # fmt: skip
            this.student, this.student_split = student
            current = [get_run(catalog, student[0])["run_id"]]
    return report


def _candidates(catalog, base_split, fold, cohort, split, role) -> tuple[list[str], dict]:
    """Scans to label and, per reason, how many were left out."""
    teacher_roles = base_split.roles(fold)
    if cohort is None:
        if split is not None or role is not None:
            raise RunError("--split and --role choose scans of --cohort; give --cohort too")
        ids = teacher_roles.get("unlabeled", [])
        if not ids:
            raise RunError(f"the teacher's split {base_split.name!r} has no unlabeled role in "
                           f"fold {fold}; pass --cohort")  # fmt: skip
    else:
        found = get_cohort(catalog, cohort)
        if split is not None:
            the_split = get_split(catalog, split)
            if the_split.cohort_id != found.cohort_id:
                raise RunError(f"split {split!r} belongs to another cohort than {cohort!r}")
            ids = [s for r, v in the_split.roles(0).items() if role in (None, r) for s in v]
        elif role is not None:
            raise RunError("--role needs --split")
        else:
            ids = list(found.scan_ids)
    rows = catalog.rows_for("scans", sorted(set(ids)), ["scan_id", "subject_id"]).to_pylist()
    held = set(teacher_roles.get("val", [])) | set(teacher_roles.get("test", []))
    held_subjects = {r["subject_id"] for r in base_split.rows.to_pylist()
                     if r["fold"] == fold and r["scan_id"] in held}  # fmt: skip
    human = best_labels(catalog, [r["scan_id"] for r in rows], origins=HUMAN_ORIGINS)
    hidden = set(teacher_roles.get("unlabeled", []))  # labels the split hides (simulated SSL)
    left_out: Counter = Counter()
    keep = []
    for r in rows:
        if r["scan_id"] in held or r["subject_id"] in held_subjects:
            left_out["subject in the teacher's val/test role"] += 1
        elif r["scan_id"] in human and r["scan_id"] not in hidden:
            left_out["has a human label"] += 1
        else:
            keep.append(r["scan_id"])
    return keep, dict(left_out)


def labelled_reference(
    catalog: Catalog, cohort: str, split: str, fold: int, classes: list[str]
) -> Reference:
    """Organ volumes and boundary contrasts of the human labels of a split's train role."""
    plan = plan_export(catalog, cohort, split=split, fold=fold, classes=classes, partial=True,
                       roles=("train",))  # fmt: skip
    ids = [c.label_id for c in plan.cases if c.label_id]
    origin = {r["label_id"]: r["origin"] for r in catalog.read(
        "labels", "list_contains(?, label_id)", [ids]).to_pylist()}  # fmt: skip
    measures = []
    for case in plan.cases:
        if case.label is None or origin.get(case.label_id) not in HUMAN_ORIGINS:
            continue
        label = np.asanyarray(remap_label(case.label, case.lut).dataobj)
        image = nib.load(case.image)
        found = measure(label, image.get_fdata(dtype=np.float32),
                        image.header.get_zooms()[:3], classes)  # fmt: skip
        measures.append((case.meta["sequence"], {c: found[c] for c in case.annotated}))
    if not measures:
        raise RunError(f"split {split!r} fold {fold} has no human-labelled train scan to "
                       "judge pseudo-labels against")  # fmt: skip
    return Reference.from_measures(measures)


def _stored_round(folder: Path, digest: str, teachers: list[str]) -> dict | None:
    path = folder / "report.json"
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    if stored.get("digest") != digest or stored.get("teachers") != teachers:
        return None
    return stored


def _label_round(catalog, teachers, scans, classes, reference, gates, previous, unreliable,
                 voxel_entropy, flips, device, progress, k, writer):  # fmt: skip
    """Every candidate judged; ``writer`` stores each accepted label as it comes."""
    models = [load_teacher(catalog, t, device=device) for t in teachers]
    before = {}
    if previous:
        rows = catalog.read("labels", "list_contains(?, label_id)",
                            [sorted(previous.values())]).to_pylist()  # fmt: skip
        before = {r["scan_id"]: catalog.resolve(r["uri"]) for r in rows}
    results = []
    bar = _progress(progress)
    with bar:
        task = bar.add_task(f"pseudo-label round {k}", total=len(scans))
        for scan_id, scan in sorted(scans.items()):
            path = catalog.resolve(scan["image_uri"])
            image = nib.load(str(path))
            members = (p for m in models for p in m.probabilities(path, FLIPS if flips else ((),)))
            prior = np.asanyarray(nib.load(str(before[scan_id])).dataobj) \
                if scan_id in before else None  # fmt: skip
            result = judge_case(
                scan_id, members, image.get_fdata(dtype=np.float32),
                image.header.get_zooms()[:3], classes, sequence=scan["sequence"],
                reference=reference, gates=gates, previous=prior, unreliable=unreliable,
                voxel_entropy=voxel_entropy,
            )  # fmt: skip
            writer.add(result, image.affine)  # writes it if accepted; drops the voxels
            results.append(result)
            bar.update(task, advance=1)
    return results


def _train_student(catalog, base, base_cohort, base_split, fold, name, k, labels, warm, epochs,
                   mixing, device, progress) -> tuple[str, str]:  # fmt: skip
    """Train round ``k``'s student on the teacher's fold plus the accepted pseudo-labels."""
    found = get_cohort(catalog, base_cohort)
    cohort = base_cohort
    outside = sorted(set(labels) - set(found.scan_ids))
    if outside:
        cohort = f"{name}-r{k}"
        wanted = sorted(set(found.scan_ids) | set(outside))
        try:
            existing = get_cohort(catalog, cohort)
        except CohortError:
            quoted = ", ".join(f"'{s}'" for s in wanted)
            existing = build_cohort(catalog, f"scan_id IN ({quoted})", cohort)
        if list(existing.scan_ids) != wanted:
            raise RunError(f"cohort {cohort!r} exists with other scans; pass another --name")
    cohort_id = get_cohort(catalog, cohort).cohort_id
    roles = dict.fromkeys(labels, "train")
    train_where = json.loads(base["config"]).get("_train_where")
    if train_where:
        # the teacher learned from the train scans its --where kept; so does the student,
        # plus its pseudo-labels whatever they are (another sequence, typically)
        keep = set(select_scans(catalog, train_where).column("scan_id").to_pylist())
        roles = {s: "unlabeled" for s in base_split.roles(fold).get("train", [])
                 if s not in keep} | roles  # fmt: skip
    split = derive_split(
        catalog, base_split, fold, name=f"{name}-r{k}", cohort_id=cohort_id, roles=roles,
        params={"pseudo_label": name, "round": k, "labels": dict(sorted(labels.items()))},
    )  # fmt: skip
    config = BACKENDS[base["backend"]](**config_fields(json.loads(base["config"])))
    if warm and base["backend"] == "torch":
        config = replace(config, init_from=str(warm))
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if base["backend"] == "torch":  # (pseudo_share, pseudo_batch, pseudo_weight), checked
        config = replace(config, pseudo_share=mixing[0], pseudo_batch=mixing[1],
                         pseudo_weight=mixing[2])  # fmt: skip
    run = train_run(catalog, cohort, split=split.name, fold=0, backend=base["backend"],
                    config=config, classes=list(base["classes"]), partial=True,
                    name=f"{name}-r{k}", device=device, progress=progress)  # fmt: skip
    return run.name, split.name
