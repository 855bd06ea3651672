"""``xds train`` and ``xds predict``: runs recorded in the catalog."""

from __future__ import annotations

import click

from xds.cli.options import csv_list, json_option
from xds.cli.output import emit_json, print_kv, print_table


def pseudo_mixing_options(students: bool):
    """Add ``--pseudo-share`` and ``--pseudo-batch`` to train, or (``students``) pseudo-label.

    They say how a torch run mixes pseudo-labelled scans (those whose best label is a
    pseudo-label) with human-labelled ones.
    """
    share = click.option(
        "--pseudo-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help="Draw pseudo-labelled scans as this share of the batch's patches, human-labelled "
        "ones as the rest" + ("." if students else
                              " (default: in proportion to their numbers)."),
    )  # fmt: skip
    batch = click.option(
        "--pseudo-batch", type=click.IntRange(0),
        help="Add N pseudo-labelled patches to each batch of human-labelled ones and their "
        "mean loss to the batch's, so the human labels keep every batch and gradient they "
        "would have alone (FixMatch's way; 0: one queue for both, in proportion to their "
        "numbers)" + (" [default: the teacher's batch size]." if students else "."),
    )  # fmt: skip

    weight = click.option(
        "--pseudo-weight", type=click.FloatRange(0, min_open=True),
        default=None if students else 1.0, show_default=not students,
        help="Weight of the added pseudo-labelled patches' mean loss (FixMatch's lambda_u); "
        "below 1 the student leans less on its teacher's mistakes. Needs --pseudo-batch"
        + (" [default: 0.25 with it, the benchmark's best]." if students else "."),
    )  # fmt: skip

    def decorate(command):
        return share(batch(weight(command)))

    return decorate


def _pseudo_mixing(share: float | None, batch: int | None, weight: float | None) -> dict:
    from xds.trainers.torch_backend import pseudo_mixing_problem

    problem = pseudo_mixing_problem(share, batch, weight, flags=True)
    if problem:
        raise click.UsageError(problem)
    return {"pseudo_share": share, "pseudo_batch": batch, "pseudo_weight": weight}


@click.command("train")
@click.argument("cohort")
@click.option("--split", "split_name", required=True, help="Split whose train role is used.")
@click.option("--fold", type=int, default=0, show_default=True)
@click.option(
    "--backend", type=click.Choice(["torch", "nnunet"]), default="torch", show_default=True,
    help="torch: nnU-Net's plain U-Net on torchio patches, with DG methods; nnunet: nnU-Net "
    "v2 itself (its planning, preprocessing and trainer, on our folds).",
)  # fmt: skip
@click.option("--classes", help="Classes to learn (default: those the split's labels share).")
@click.option("--partial", is_flag=True, help="Allow classes some scans do not annotate.")
@click.option(
    "--where", "train_where",
    help="Train only on the train scans matching this scan_view clause, e.g. "
    "\"sequence='T1W'\" (single-source training on a split made for all sources).",
)  # fmt: skip
@click.option(
    "--profile", type=click.Choice(["small", "crosspan"]), default="small", show_default=True,
    help="small: minutes on a CPU (torch: patch 32x32x16 at 8 mm, 10x20 batches; nnunet: "
    "3x10 batches); crosspan: CrossPan's settings (400 epochs x 250 batches of 2; torch: "
    "1.25x1.25x3 mm, patch 192x192x48; nnunet: its own plans).",
)  # fmt: skip
@click.option("--epochs", type=click.IntRange(1), help="Override the profile's epochs.")
@click.option("--iterations", type=click.IntRange(1), help="Batches per epoch.")
@click.option("--lr", type=float, help="Initial learning rate (poly decay).")
@click.option("--patch", help="Patch size in voxels, x,y,z.")
@click.option("--spacing", help="Target spacing in mm, x,y,z.")
@click.option("--groups", help="scan_view column forming DG groups (center, sequence...).")
@click.option(
    "--dg", type=click.Choice(["erm", "groupdro", "vrex", "iberm", "sd"]), default="erm",
    show_default=True, help="Domain-generalization objective over --groups.",
)  # fmt: skip
@click.option("--randconv", is_flag=True, help="RandConv augmentation.")
@click.option(
    "--synthetic-mix", type=click.FloatRange(0, 1), default=0.0, show_default=True,
    help="Share of patches replaced by Anatomix renderings of their own labels.",
)  # fmt: skip
@click.option(
    "--ssl", type=click.Choice(["none", "uamt", "cps"]), default="none", show_default=True,
    help="Semi-supervised method on the split's unlabeled role (a semi-supervised split).",
)  # fmt: skip
@pseudo_mixing_options(students=False)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", help="Run name (default: <cohort>-<backend>-f<fold>-s<seed>).")
@click.option("--out", type=click.Path(file_okay=False), help="Checkpoint folder.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="auto: the GPU when there is one (with mixed precision).",
)  # fmt: skip
@json_option
@click.pass_obj
def train_cmd(state, cohort, split_name, fold, backend, classes, partial, train_where, profile,
              epochs,
              iterations, lr, patch, spacing, groups, dg, randconv, synthetic_mix, ssl,
              pseudo_share, pseudo_batch, pseudo_weight, seed, name, out, device,
              as_json):  # fmt: skip
    """Train a model on the train role of a split; record the run in the catalog.

    The run row keeps the cohort, split, fold, catalog version, classes, every setting,
    seed, code version, device and time; the checkpoint (resumable: the same command
    continues it) lies in CATALOG/models/NAME unless --out says otherwise.
    """
    from xds.trainers.nnunet_backend import NnunetConfig
    from xds.trainers.runs import train_run
    from xds.trainers.torch_backend import TorchConfig

    changes = {"seed": seed}
    for key, value in (("epochs", epochs), ("iterations", iterations)):
        if value is not None:
            changes[key] = value
    if backend == "nnunet":
        torch_only = {"--lr": lr, "--patch": patch, "--spacing": spacing, "--groups": groups,
                      "--randconv": randconv or None, "--synthetic-mix": synthetic_mix or None,
                      "--dg": None if dg == "erm" else dg,
                      "--ssl": None if ssl == "none" else ssl,
                      "--pseudo-share": pseudo_share,
                      "--pseudo-batch": pseudo_batch,
                      "--pseudo-weight":
                          None if pseudo_weight == 1.0 else pseudo_weight}  # fmt: skip
        given = [flag for flag, value in torch_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)}: torch backend options (nnU-Net plans)")
        kind = NnunetConfig
    else:
        changes.update(
            groups=groups, dg=dg, randconv=randconv, synthetic_mix=synthetic_mix, ssl=ssl,
            **_pseudo_mixing(pseudo_share, pseudo_batch or 0, pseudo_weight),
        )  # fmt: skip
        if lr is not None:
            changes["lr"] = lr
        for key, text in (("patch", patch), ("spacing", spacing)):
            if text:
                values = csv_list(text)
                if len(values) != 3:
                    raise click.BadParameter(f"--{key} takes three comma-separated numbers")
                changes[key] = tuple((int if key == "patch" else float)(v) for v in values)
        kind = TorchConfig
    config = kind.small(**changes) if profile == "small" else kind(**changes)
    run = train_run(state.catalog(), cohort, split=split_name, fold=fold, backend=backend,
                    config=config, classes=csv_list(classes), partial=partial,
                    train_where=train_where, name=name,
                    out=out, device=device, progress=not as_json)  # fmt: skip
    if as_json:
        emit_json(run.summary())
        return
    losses = run.epoch_losses
    print_kv({"run": run.name, "checkpoint": run.uri, "classes": ", ".join(run.classes),
              "device": run.device, "epochs": len(losses),
              "loss first -> last": f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "",
              "seconds": run.seconds,
              "next": f"xds predict {run.name}"}, "xds train")  # fmt: skip


@click.command("predict")
@click.argument("run")
@click.option("--cohort", help="Cohort to predict (default: the run's).")
@click.option("--split", "split_name", help="Split whose --role is predicted (default: the run's).")
@click.option(
    "--role", default="test", show_default=True, help="Role to predict; 'all': every scan."
)
@click.option("--fold", type=int, help="Fold of the split (default: the run's).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the label maps.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@json_option
@click.pass_obj
def predict_cmd(state, run, cohort, split_name, role, fold, out, device, as_json):
    """Predict label maps with a run; record them so `xds evaluate --pred RUN` finds them."""
    from xds.trainers.runs import predict_run

    catalog = state.catalog()
    row = predict_run(catalog, run, cohort=cohort, split=split_name,
                      role=None if role == "all" else role, fold=fold, out=out,
                      device=device)  # fmt: skip
    if as_json:
        emit_json(row)
        return
    print_kv({"run": run, "cases": len(row["scan_ids"]), "folder": row["uri"],
              "seconds": row["seconds"],
              "next": f"xds evaluate --pred {run} --cohort COHORT"}, "xds predict")  # fmt: skip


@click.command("pseudo-label")
@click.option(
    "--teacher", "teachers", multiple=True, required=True,
    help="A trained run (repeat for an ensemble of runs or folds; same classes).",
)  # fmt: skip
@click.option("--cohort", help="Scans to label (default: the teacher split's unlabeled role).")
@click.option("--split", "split_name", help="With --cohort: only scans of this split of it...")
@click.option("--role", help="...in this role (e.g. unlabeled).")
@click.option(
    "--rounds", type=click.IntRange(1), default=1, show_default=True,
    help="Teacher-student rounds; each round's teacher is the previous round's student.",
)  # fmt: skip
@click.option(
    "--gate", "gates", multiple=True, metavar="NAME[@SEQ]=VALUE",
    help="A quality threshold, or 'off' (repeatable): entropy (max, 0.35), agreement "
    "(min, 0.8), change (max, 0.2), volume (max |z|, 4), contrast (min ratio, 0.5); "
    "e.g. --gate entropy@T2W=0.45 --gate change=off.",
)  # fmt: skip
@click.option(
    "--unreliable", type=click.Choice(["reject", "ignore"]), default="ignore",
    show_default=True,
    help="Gates keep or drop whole cases; ignore: also mark the unreliable voxels of kept "
    "cases with the ignore label, which training skips (on the phantom benchmark, students "
    "beat the teacher only with both); reject: keep the cases whole.",
)  # fmt: skip
@click.option(
    "--voxel-entropy", type=click.FloatRange(0, 1), default=0.5, show_default=True,
    help="With --unreliable ignore: normalized entropy above which a voxel is unreliable "
    "(members disagreeing there is too).",
)  # fmt: skip
@click.option(
    "--flips/--no-flips", default=True, show_default=True,
    help="Test-time flips along each axis as extra members (4 passes per teacher).",
)  # fmt: skip
@click.option("--no-students", is_flag=True, help="Label one round only; train no student.")
@click.option(
    "--warm-start", is_flag=True,
    help="Torch students start from their teacher's weights instead of from scratch.",
)  # fmt: skip
@click.option(
    "--student-epochs", type=click.IntRange(1),
    help="The students' epochs (default: the teacher's; a warm-started student needs fewer).",
)  # fmt: skip
@pseudo_mixing_options(students=True)
@click.option("--name", help="Name of the labelling, its students and splits (<name>-r<k>).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@json_option
@click.pass_obj
def pseudo_label_cmd(state, teachers, cohort, split_name, role, rounds, gates, unreliable,
                     voxel_entropy, flips, no_students, warm_start, student_epochs,
                     pseudo_share, pseudo_batch, pseudo_weight, name, device, as_json):  # fmt: skip
    """Pseudo-label scans with trained runs, gate them, and train students on them.

    Each round predicts every candidate (teachers x flips), keeps the cases that pass
    every gate as labels with origin 'pseudo' (teacher runs, round and quality figures in
    the row), and trains a student with the teacher's backend and settings on the
    teacher's split plus those cases. Scans that have a human label, or whose subject is
    in the teacher's val or test role, are left out. Cohorts pick labels by the rule manual
    > revised > pseudo; `--where "label_origin='pseudo'"` selects pseudo-labelled scans.
    Re-running the command adds nothing.
    """
    from xds.pseudo.gates import Gates
    from xds.trainers.students import pseudo_label

    report = pseudo_label(
        state.catalog(), list(teachers), cohort=cohort, split=split_name, role=role,
        rounds=rounds, gates=Gates.parse(gates), unreliable=unreliable,
        voxel_entropy=voxel_entropy, flips=flips, students=not no_students,
        warm_start=warm_start, student_epochs=student_epochs,
        **_pseudo_mixing(pseudo_share, pseudo_batch, pseudo_weight), name=name,
        device=device, progress=not as_json,
    )  # fmt: skip
    if as_json:
        emit_json(report.summary())
        return
    left = ", ".join(f"{k}: {v}" for k, v in report.left_out.items()) or "none"
    print_kv({"name": report.name, "classes": ", ".join(report.classes),
              "candidates": report.candidates, "left out": left}, "xds pseudo-label")  # fmt: skip
    rows = [{
        "round": r.round, "teachers": ", ".join(r.teachers), "accepted": r.accepted,
        "rejected": r.rejected,
        "rejected by": ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items())) or "-",
        "labels added": r.labels_added, "student": r.student or "-",
    } for r in report.rounds]  # fmt: skip
    print_table(rows, "rounds")


COMMANDS = [train_cmd, predict_cmd, pseudo_label_cmd]
