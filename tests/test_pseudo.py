"""Pseudo-labels: gates against corrupted teachers, provenance, rounds, audit."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("torchio")

from xds import cohort_subjects  # noqa: E402
from xds.catalog import Catalog, build_cohort  # noqa: E402
from xds.catalog.cohorts import select_scans  # noqa: E402
from xds.cli.main import cli  # noqa: E402
from xds.export.files import remap_label  # noqa: E402
from xds.ingest import ingest_nifti  # noqa: E402
from xds.labels.cases import plan_export  # noqa: E402
from xds.labels.mapping import IGNORE  # noqa: E402
from xds.labels.selection import best_labels  # noqa: E402
from xds.pseudo.gates import Gates, judge_case  # noqa: E402
from xds.pseudo.writer import PseudoLabelWriter  # noqa: E402
from xds.schemas.errors import RunError  # noqa: E402
from xds.splits.audit import audit_split  # noqa: E402
from xds.splits.store import derive_split, get_split, make_split, split_cohort  # noqa: E402
from xds.trainers.runs import get_run, train_run  # noqa: E402
from xds.trainers.students import (  # noqa: E402
    FLIPS,
    STUDENT_PSEUDO_WEIGHT,
    labelled_reference,
    pseudo_label,
)
from xds.trainers.torch_backend import TorchConfig, _subject_sampler  # noqa: E402


class OracleTeacher:
    """A teacher that knows the true labels; ``corrupt`` spoils what its network outputs.

    Like a real teacher it sees each flipped input in its own frame: the corruption is
    applied there, then the output is flipped back.
    """

    def __init__(self, truth: dict[str, np.ndarray], corrupt: str = "none", seed: int = 0):
        self.truth, self.corrupt = truth, corrupt
        self.rng = np.random.default_rng(seed)

    def probabilities(self, scan_id, flips=((),)):
        for axes in flips:
            label = np.flip(self.truth[scan_id], axes) if axes else self.truth[scan_id]
            if self.corrupt == "shifted":  # e.g. an orientation or affine bug
                label = np.roll(label, 4, axis=0)
            elif self.corrupt == "empty":
                label = np.zeros_like(label)
            if self.corrupt == "noise":
                probs = self.rng.dirichlet([1.0, 1.0], label.shape).astype(np.float32)
                probs = np.moveaxis(probs, -1, 0)
            else:
                probs = np.where(label == 1, 0.97, 0.03).astype(np.float32)[None]
                probs = np.concatenate([1 - probs, probs])
            yield np.ascontiguousarray(np.flip(probs, [a + 1 for a in axes]) if axes else probs)


@pytest.fixture
def livers(catalog):
    build_cohort(catalog, "has_label AND list_contains(classes, 'liver')", "livers")
    split = make_split(catalog, "livers", name="livers-h", seed=0)
    return catalog, split


def _truth(catalog, split, role):
    plan = plan_export(catalog, "livers", split=split.name, classes=["liver"], roles=(role,))
    out = {}
    for case in plan.cases:
        label = np.asanyarray(remap_label(case.label, case.lut).dataobj)
        image = nib.load(case.image)
        out[case.scan_id] = (label, image, case.meta["sequence"])
    return out


def test_gates_reject_corrupted_teacher_outputs(livers):
    catalog, split = livers
    reference = labelled_reference(catalog, "livers", split.name, 0, ["liver"])
    cases = _truth(catalog, split, "test")
    truth = {s: label for s, (label, _, _) in cases.items()}
    verdicts: dict[str, list] = {}
    for corrupt in ("none", "shifted", "empty", "noise"):
        teacher = OracleTeacher(truth, corrupt)
        for scan_id, (_, image, sequence) in cases.items():
            result = judge_case(
                scan_id, teacher.probabilities(scan_id, FLIPS),
                image.get_fdata(dtype=np.float32), image.header.get_zooms()[:3], ["liver"],
                sequence=sequence, reference=reference, gates=Gates(),
            )  # fmt: skip
            verdicts.setdefault(corrupt, []).append(result)
    clean = verdicts["none"]
    assert sum(r.accepted for r in clean) >= 0.8 * len(clean), [r.failures for r in clean]
    for r in clean:
        if r.accepted:
            assert np.array_equal(r.label, truth[r.scan_id])
    for corrupt in ("shifted", "empty", "noise"):
        assert not any(r.accepted for r in verdicts[corrupt]), corrupt
    # each corruption is caught by the gate that watches for it
    assert all(any(f.startswith("agreement") for f in r.failures) for r in verdicts["shifted"])
    assert all(any(f.startswith("volume") for f in r.failures) for r in verdicts["empty"])
    assert all(any(f.startswith("entropy") for f in r.failures) for r in verdicts["noise"])


def test_writer_stores_labels_as_judged_and_registers_them_once(livers):
    catalog, split = livers
    reference = labelled_reference(catalog, "livers", split.name, 0, ["liver"])
    cases = _truth(catalog, split, "test")
    good = OracleTeacher({s: label for s, (label, _, _) in cases.items()})
    empty = OracleTeacher(good.truth, "empty")
    version, rows = catalog.version, catalog.read("labels").num_rows

    def judge_all(writer):
        for k, (scan_id, (_, image, sequence)) in enumerate(sorted(cases.items())):
            teacher = empty if k == 0 else good  # the first case is rejected
            result = judge_case(
                scan_id, teacher.probabilities(scan_id, FLIPS), image.get_fdata(dtype=np.float32),
                image.header.get_zooms()[:3], ["liver"], sequence=sequence,
                reference=reference, gates=Gates(),
            )  # fmt: skip
            writer.add(result, image.affine)
            assert result.label is None  # the round keeps no volume once a case is judged
        return writer

    settings = dict(name="w", round_=1, teachers=["run-x"], digest="d", classes=["liver"],
                    unreliable="ignore", scan_ids=sorted(cases))  # fmt: skip
    writer = judge_all(PseudoLabelWriter(catalog, **settings))
    assert 0 < len(writer.accepted) < len(cases)
    files = sorted((catalog.root / "pseudo" / "w" / "r1").glob("*.nii.gz"))
    assert len(files) == len(writer.accepted)
    assert catalog.version == version  # nothing registered before commit
    assert writer.commit() == len(writer.accepted)
    stored = catalog.read("labels", "origin = 'pseudo'").to_pylist()
    assert catalog.read("labels").num_rows == rows + len(writer.accepted)
    for row in stored:
        label = np.asanyarray(nib.load(catalog.resolve(row["uri"])).dataobj)
        assert np.array_equal(label, good.truth[row["scan_id"]])
    # the same round again writes and adds nothing, and leaves the files as they were
    before = {p: p.stat().st_mtime_ns for p in files}
    again = judge_all(PseudoLabelWriter(catalog, **settings))
    assert again.accepted == writer.accepted
    assert again.commit() == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_unreliable_voxels_get_the_ignore_label_and_gates_parse(livers):
    catalog, split = livers
    reference = labelled_reference(catalog, "livers", split.name, 0, ["liver"])
    scan_id, (label, image, sequence) = next(iter(_truth(catalog, split, "test").items()))
    confident = np.stack([label == 0, label == 1]).astype(np.float32) * 0.96 + 0.02
    unsure = confident.copy()
    edge = (label == 1) & (np.roll(label, 1, axis=0) == 0)  # a face of the organ
    unsure[:, edge] = 0.5
    members = [confident, unsure]
    args = (image.get_fdata(dtype=np.float32), image.header.get_zooms()[:3], ["liver"])
    # the split (keyed by the catalog's secret) picks the scan: an OOP liver's contrast or an
    # odd volume must not reject it here, where the ignore label is under test
    kept = judge_case(scan_id, iter(members), *args, sequence=sequence, reference=reference,
                      gates=Gates.parse(["agreement=0.5", "contrast=off", "volume=off"]),
                      unreliable="ignore")  # fmt: skip
    assert kept.accepted, kept.failures
    assert np.array_equal(kept.label == IGNORE, edge)
    assert np.array_equal(kept.label[~edge], label[~edge])
    # per-sequence thresholds override the global one; 'off' disables a gate
    gates = Gates.parse(["entropy=0.1", f"entropy@{sequence}=off", "volume=2"])
    assert gates.threshold("entropy", sequence) is None
    assert gates.threshold("entropy", "other") == 0.1
    assert gates.failures({"entropy": 0.3, "volume": 3.0}, "other") == [
        "entropy 0.3 > 0.1", "volume 3 > 2"
    ]  # fmt: skip
    for bad in ("entropy", "bogus=1", "volume=high"):
        with pytest.raises(RunError, match="--gate"):
            Gates.parse([bad])


def test_pseudo_label_rounds_provenance_idempotence_and_audit(livers, world, tmp_path):
    catalog, _ = livers
    split = make_split(catalog, "livers", "semi-supervised", fractions=(50,), seed=0,
                       name="livers-ssl")  # fmt: skip
    # a new center sends images without labels
    center = next(c for c in world[1]["centers"] if (world[0] / c["path"] / "imagesTr").exists())
    images = sorted((world[0] / center["path"] / "imagesTr").glob("*_T1W_0000.nii.gz"))[:4]
    (tmp_path / "new" / "imagesTr").mkdir(parents=True)
    for image in images:
        shutil.copy(image, tmp_path / "new" / "imagesTr" / image.name)
    ingest_nifti(catalog, tmp_path / "new", center="Newcenter", dataset="new")
    build_cohort(catalog, "NOT has_label", "nolabel")
    config = TorchConfig.small(epochs=2, iterations=6, patch=(24, 24, 16),
                               spacing=(10.0, 10.0, 10.0))  # fmt: skip
    train_run(catalog, "livers", split=split.name, classes=["liver"], config=config,
              name="teacher", progress=False)  # fmt: skip
    loose = ["entropy=off", "agreement=off", "volume=off", "contrast=off", "change=off"]
    base = ["--catalog", str(catalog.root)]
    command = [*base, "pseudo-label", "--teacher", "teacher", "--cohort", "nolabel",
               "--rounds", "2", "--name", "pl", "--no-flips", "--warm-start",
               "--student-epochs", "1", "--pseudo-share", "0.25", "--json"]  # fmt: skip
    command += [x for g in loose for x in ("--gate", g)]
    result = CliRunner().invoke(cli, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    catalog = Catalog.open(catalog.root)
    first, second = report["rounds"]
    assert first["teachers"] == ["teacher"]
    assert second["teachers"] == ["pl-r1"]
    assert first["accepted"] == report["candidates"] > 0

    rows = catalog.read("labels", "origin = 'pseudo'").to_pylist()
    runs = {r["name"]: r["run_id"] for r in catalog.read("runs").to_pylist()}
    assert {(r["round"], r["teacher_run"]) for r in rows} == {
        (1, runs["teacher"]), (2, runs["pl-r1"])
    }  # fmt: skip
    assert all(
        {"entropy", "volume_ml.liver", "unreliable"} <= set(dict(r["quality"])) for r in rows
    )
    # each student started from its teacher's weights
    configs = {r["name"]: json.loads(r["config"]) for r in catalog.read("runs").to_pylist()}
    assert configs["pl-r1"]["init_from"] == str(catalog.root / "models" / "teacher")
    assert configs["pl-r2"]["init_from"] == str(catalog.root / "models" / "pl-r1")
    assert configs["teacher"]["epochs"] == 2
    assert configs["pl-r1"]["epochs"] == configs["pl-r2"]["epochs"] == 1  # fine-tuned
    assert configs["pl-r1"]["pseudo_share"] == configs["pl-r2"]["pseudo_share"] == 0.25
    assert configs["pl-r1"]["pseudo_batch"] == 0  # a share given: one queue for both
    assert configs["pl-r1"]["pseudo_weight"] == 1.0  # and nothing added to weigh
    assert all("change" in dict(r["quality"]) for r in rows if r["round"] == 2)
    # the scans had no label: a cohort can now ask for pseudo-labelled ones
    pseudo_scans = set(select_scans(catalog, "label_origin = 'pseudo'").column("scan_id")
                       .to_pylist())  # fmt: skip
    assert pseudo_scans == {r["scan_id"] for r in rows}

    # the student's split: the teacher's fold plus the pseudo-labels, pinned to its round
    student = get_split(catalog, "pl-r2")
    roles = student.roles(0)
    assert pseudo_scans <= set(roles["train"])
    assert set(roles["test"]) == set(split.roles(0)["test"])
    plan = plan_export(catalog, "pl-r2", split="pl-r2", classes=["liver"])
    round_two = {r["scan_id"]: r["label_id"] for r in rows if r["round"] == 2}
    assert {c.scan_id: c.label_id for c in plan.cases if c.scan_id in round_two} == round_two
    assert all(best_labels(catalog, [c.scan_id])[c.scan_id]["origin"] == "manual"
               for c in plan.cases if c.role == "test")  # fmt: skip
    # the student's subjects say whose label they carry, and draws follow --pseudo-share
    train = cohort_subjects(catalog, "pl-r2", split="pl-r2", role="train", classes=["liver"])
    origins = {s["scan_id"]: s["label_origin"] for s in train}
    assert {s for s, o in origins.items() if o == "pseudo"} == set(round_two)
    assert set(origins.values()) == {"pseudo", "manual"}
    torch.manual_seed(0)
    sampler = _subject_sampler(train, 0.25)
    draws = [train[i]["label_origin"] for _ in range(200) for i in sampler]
    assert abs(np.mean([d == "pseudo" for d in draws]) - 0.25) < 0.05
    assert _subject_sampler(train, None) is None
    assert _subject_sampler([s for s in train if s["label_origin"] == "manual"], 0.25) is None

    # re-running adds nothing
    again = CliRunner().invoke(cli, command, catch_exceptions=False)
    assert [r["labels_added"] for r in json.loads(again.stdout)["rounds"]] == [0, 0]
    assert Catalog.open(catalog.root).count("labels") == catalog.count("labels")

    # a split of the student's cohort where the teacher's training scans are test cases and
    # pseudo-labelled scans train; subject ids (and so splits) depend on the catalog's secret,
    # so take the first seed that gives both
    learned = set(split.roles(0)["train"]) | set(split.roles(0).get("val", []))
    for seed in range(5, 25):
        reshuffled = split_cohort(catalog, "pl-r1", seed=seed, name=f"reshuffled-{seed}")
        tested = learned & set(reshuffled.roles(0)["test"])
        trained = set(reshuffled.roles(0)["train"]) | set(reshuffled.roles(0).get("val", []))
        pseudo_in_train = pseudo_scans & trained
        if tested and pseudo_in_train:
            break
    assert tested
    assert pseudo_in_train
    audit = audit_split(catalog, reshuffled.name, images=False)
    leaks = [x for x in audit.leaks if x["kind"] == "teacher_trained_on_test"]
    assert {x["pseudo_labelled_scan"] for x in leaks} == pseudo_in_train
    assert {x["teacher_run"] for x in leaks} == {runs["teacher"], runs["pl-r1"]}
    assert all(set(x["roles"]["test"]) >= tested for x in leaks)

    # by default a torch student adds a batch of pseudo-labelled patches to each human one,
    # their loss weighing STUDENT_PSEUDO_WEIGHT
    command = [
        *base,
        "pseudo-label",
        "--teacher",
        "teacher",
        "--cohort",
        "nolabel",
        "--name",
        "pl-added",
        "--no-flips",
        "--warm-start",
        "--student-epochs",
        "1",
        "--json",
    ]
    command += [x for g in loose for x in ("--gate", g)]
    result = CliRunner().invoke(cli, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    added = json.loads(get_run(Catalog.open(catalog.root), "pl-added-r1")["config"])
    assert added["pseudo_batch"] == added["batch_size"] == configs["teacher"]["batch_size"]
    assert added["pseudo_share"] is None
    assert added["pseudo_weight"] == STUDENT_PSEUDO_WEIGHT < 1


def test_pseudo_label_refuses_what_it_cannot_do(livers):
    catalog, split = livers
    with pytest.raises(RunError, match="no run named"):
        pseudo_label(catalog, ["nope"])
    with pytest.raises(RunError, match="at least 1"):
        pseudo_label(catalog, ["nope"], rounds=0)
    with pytest.raises(RunError, match="strictly between 0 and 1"):
        pseudo_label(catalog, ["nope"], pseudo_share=1.0)
    with pytest.raises(RunError, match="choose one"):
        pseudo_label(catalog, ["nope"], pseudo_share=0.5, pseudo_batch=2)
    with pytest.raises(RunError, match="above 0"):
        pseudo_label(catalog, ["nope"], pseudo_batch=2, pseudo_weight=0.0)
    derived = derive_split(catalog, split, 0, name="d", cohort_id=split.cohort_id,
                           roles={}, params={})  # fmt: skip
    again = derive_split(catalog, split, 0, name="d", cohort_id=split.cohort_id,
                         roles={}, params={})  # fmt: skip
    assert again.split_id == derived.split_id
    with pytest.raises(Exception, match="other content"):
        derive_split(catalog, split, 0, name="d", cohort_id=split.cohort_id, roles={},
                     params={"x": 1})  # fmt: skip
