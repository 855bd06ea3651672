"""The native torch/torchio backend: train a U-Net on cohort subjects, predict label maps.

Data: ``xds.cohort_subjects`` (labels remapped to the cohort's classes, ``annotated`` per
scan), then canonical (RAS) orientation, resampling to ``spacing`` (mm, torchio's x, y, z
order), per-volume z-score normalization and padding up to the patch; a torchio ``Queue``
draws label-balanced patches (``LabelSampler``: background and every class equally
likely); pseudo-labelled scans share that queue or, with ``pseudo_batch``, come from
a second one on top of each batch. Training: SGD with Nesterov momentum and poly
learning-rate decay (nnU-Net's and CrossPan's schedule), the partial-label Dice + CE loss
per sample, a DG objective over groups from a catalog column, optional RandConv and
Anatomix renderings (``synthetic_mix``), mixed precision on CUDA, seeded, a checkpoint per
epoch that a re-run resumes from. Prediction: sliding windows with half-patch overlap,
Gaussian-weighted (nnU-Net's weights), resampled back onto each scan's own grid.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xds.labels.mapping import IGNORE
from xds.schemas.errors import RunError
from xds.trainers.checkpoints import load_checkpoint, save_checkpoint
from xds.trainers.dg import RandConv, make_objective
from xds.trainers.losses import PartialDiceCELoss
from xds.trainers.network import PenultimateFeatures, autocast, build_unet, select_device
from xds.trainers.synthmix import SyntheticMix


@dataclass
class TorchConfig:
    """Training settings.

    Defaults are CrossPan's (appendix C); :meth:`small` is a CPU-sized
    configuration for tests and the demo.
    """

    epochs: int = 400
    iterations: int = 250  # batches per epoch
    batch_size: int = 2
    patch: tuple[int, int, int] = (192, 192, 48)  # voxels, x y z after reorientation
    spacing: tuple[float, float, float] = (1.25, 1.25, 3.0)  # mm, x y z
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    base_features: int = 32
    samples_per_volume: int = 4
    queue_length: int = 32
    workers: int = 0
    dg: str = "erm"
    dg_params: dict = field(default_factory=dict)
    groups: str | None = None  # the subject attribute (catalog column) forming DG groups
    randconv: bool = False
    synthetic_mix: float = 0.0  # share of patches replaced by Anatomix renderings
    ssl: str = "none"  # none | uamt | cps, on the unlabeled role
    ssl_ramp: float = 50.0  # epochs over which the unsupervised weight ramps up
    init_from: str | None = None  # a run folder whose weights start training (a student)
    pseudo_share: float | None = None  # share of draws from pseudo-labelled scans (None: pro rata)
    # pseudo-labelled patches added to each batch of ``batch_size`` human-labelled ones, as
    # FixMatch adds its unlabeled batch: the human labels keep the labelled-only run's batches
    # and gradient, and the pseudo-labels' mean loss is added to theirs (0: one queue for both)
    pseudo_batch: int = 0
    # the weight of the added pseudo-labels' mean loss (FixMatch's lambda_u), below 1 where
    # they pull the student towards its teacher's mistakes
    pseudo_weight: float = 1.0
    seed: int = 0

    @classmethod
    def small(cls, **changes) -> TorchConfig:
        """A few CPU minutes: small patches, few features, short epochs."""
        # lr 0.05: with 200 batches instead of 100,000, 0.01 has barely left the start
        base = dict(epochs=10, iterations=20, patch=(32, 32, 16), spacing=(8.0, 8.0, 8.0),
                    base_features=8, samples_per_volume=2, queue_length=16,
                    lr=0.05, ssl_ramp=5.0)  # fmt: skip
        return cls(**{**base, **changes})


@dataclass
class TrainResult:
    """What a training run did: where its checkpoint is, its losses, device and time."""

    out: str
    device: str
    classes: list[str]
    groups: list[str]
    epoch_losses: list[float]
    seconds: float
    resumed_from: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) for a run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preprocess(config: TorchConfig, train: bool):
    """The torchio transform a scan goes through before patches are drawn (and at inference)."""
    import torchio as tio

    steps = [
        tio.ToCanonical(),
        tio.Resample(config.spacing),
        tio.ZNormalization(),
        tio.CropOrPad(config.patch, only_pad=True, padding_mode="minimum"),
    ]
    if train:
        steps += [tio.RandomFlip(axes=(0, 1, 2)), tio.RandomAffine(scales=0.1, degrees=10)]
    return tio.Compose(steps)


def train_torch(
    subjects: list,
    out: str | Path,
    config: TorchConfig,
    *,
    unlabeled: list | None = None,
    device: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train on ``subjects`` (the train role, with labels) into folder ``out``.

    With ``config.ssl`` (``uamt`` or ``cps``), ``unlabeled`` subjects (the unlabeled role of
    a semi-supervised split; their labels, if any, are never read) add the method's
    consistency term.

    A checkpoint from an earlier run with the same configuration is resumed.

    Raises:
        RunError: no subject with a label, or a groups attribute the subjects lack.
    """
    import torchio as tio

    subjects = [s for s in subjects if "label" in s]
    if not subjects:
        raise RunError("no training subject has a label")
    problem = pseudo_mixing_problem(config.pseudo_share, config.pseudo_batch,
                                    config.pseudo_weight)  # fmt: skip
    if problem:
        raise RunError(problem)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    where = select_device(device)
    classes = [c for c in subjects[0]["classes"] if c != "background"]  # foreground, in order
    groups = sorted({str(s.get(config.groups)) for s in subjects}) if config.groups else ["all"]
    if config.groups and any(config.groups not in s for s in subjects):
        raise RunError(f"subjects have no attribute {config.groups!r} to form groups")
    group_index = {g: i for i, g in enumerate(groups)}

    def build():
        return build_unet(1, len(classes) + 1, config.patch, config.spacing,
                          base_features=config.base_features).to(where)  # fmt: skip

    network = build()
    features = PenultimateFeatures(network)
    objective = make_objective(config.dg, len(groups), **config.dg_params).to(where)
    loss_fn = PartialDiceCELoss(len(classes) + 1, ignore_index=IGNORE)  # pseudo-label gates
    ssl, unlabeled_batches = _semi_supervised(config, network, build, len(classes) + 1,
                                              unlabeled)  # fmt: skip
    parameters = list(network.parameters()) + (ssl.parameters() if ssl else [])
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)  # fmt: skip
    total = config.epochs * config.iterations
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, total - 1) / total) ** 0.9
    )
    scaler = torch.amp.GradScaler("cuda", enabled=where.type == "cuda")
    randconv = RandConv() if config.randconv else None
    synthetic = SyntheticMix(config.synthetic_mix, config.seed) if config.synthetic_mix else None

    state = load_checkpoint(out, config)
    start, losses = 0, []
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        objective.load_state_dict(state["objective"])
        scaler.load_state_dict(state["scaler"])
        if ssl is not None:
            ssl.load_state_dict(state["ssl"])
        start, losses = state["epoch"], state["losses"]
        torch.set_rng_state(state["rng"])
    elif config.init_from:
        warm = load_checkpoint(Path(config.init_from))
        if warm is None or warm["classes"] != classes:
            raise RunError(f"{config.init_from}: no checkpoint of a run with classes {classes}")
        network.load_state_dict(warm["model"])

    started = time.perf_counter()
    bar = _progress(progress)
    with bar:
        task = bar.add_task("train", total=(config.epochs - start) * config.iterations)
        batches = _training_batches(config, subjects, len(classes) + 1)
        for epoch in range(start, config.epochs):
            network.train()
            running = []
            for _ in range(config.iterations):
                batch = next(batches)
                image = batch["image"].to(where).float()
                target = batch["label"].to(where).long()
                annotated = batch["annotated"].to(where).bool()
                human = batch["human"]  # the DG objective takes [:human]; the rest are pseudo
                index = torch.tensor([group_index.get(str(g), 0)
                                      for g in batch["groups"][:human]])  # fmt: skip
                if synthetic is not None:
                    image, target, _ = synthetic(image, target)
                if randconv is not None:
                    image = randconv(image)
                optimizer.zero_grad(set_to_none=True)
                with autocast(where):
                    logits = network(image)
                    per_sample = loss_fn(logits, target, annotated)
                    loss = objective(per_sample[:human], index.to(where),
                                     _head(features.value, human), logits[:human])  # fmt: skip
                    if human < len(per_sample):
                        loss = loss + config.pseudo_weight * per_sample[human:].mean()
                    if ssl is not None:
                        plain = next(unlabeled_batches)["image"][tio.DATA].to(where).float()
                        loss = loss + ssl.supervised(loss_fn, image, target, annotated)
                        loss = loss + ssl.unsupervised(network, plain, epoch)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                if ssl is not None:
                    ssl.after_step(network)
                running.append(float(loss.detach()))
                dice = _foreground_dice(logits.detach(), target)
                bar.update(task, advance=1,
                           description=f"epoch {epoch + 1} loss {running[-1]:.3f} "
                           f"dice {dice:.3f}")  # fmt: skip
            losses.append(float(np.mean(running)))
            save_checkpoint(out, config, network, optimizer, schedule, objective, scaler,
                             epoch + 1, losses, classes, groups, ssl)  # fmt: skip
    return TrainResult(str(out), str(where), classes, groups, losses,
                       round(time.perf_counter() - started, 2), start)  # fmt: skip


def pseudo_mixing_problem(share: float | None, batch: int | None, weight: float | None,
                          *, flags: bool = False) -> str | None:  # fmt: skip
    """What makes these pseudo-label settings impossible, or None.

    One set of rules for the trainer, ``pseudo_label`` and the CLI; ``batch`` or ``weight``
    None (a default not yet chosen) skips the rules about it. ``flags`` names the settings
    as command-line options (``--pseudo-share``) rather than ``TorchConfig`` fields.
    """

    def name(field: str) -> str:
        return "--" + field.replace("_", "-") if flags else field

    if share is not None and not 0 < share < 1:
        return f"{name('pseudo_share')} must lie strictly between 0 and 1, not {share}"
    if batch is not None and batch < 0:
        return f"{name('pseudo_batch')} must be at least 0, not {batch}"
    if weight is not None and weight <= 0:
        return f"{name('pseudo_weight')} must be above 0, not {weight}"
    if batch and share is not None:
        return (f"{name('pseudo_share')} mixes pseudo-labels into the batch, "
                f"{name('pseudo_batch')} adds them on top of it: choose one")  # fmt: skip
    if weight not in (None, 1.0) and (share is not None or batch == 0):
        return (f"{name('pseudo_weight')} weighs the patches {name('pseudo_batch')} adds on "
                f"top of each batch: it needs {name('pseudo_batch')} above 0")  # fmt: skip
    return None


def _training_batches(config: TorchConfig, subjects: list, n_classes: int):
    """Endless training batches, each a dict.

    Keys: ``image`` (B, 1, *patch), ``label`` (B, *patch), ``annotated`` (B, classes), the
    ``groups`` attribute and ``scan_id`` per sample, and ``human``: the DG objective's
    samples come first, ``human`` of them (with a second queue, the human-labelled ones;
    with one, every sample, pseudo-labelled ones among them).

    Label-balanced patches from a torchio queue; with ``config.pseudo_batch``, a second
    queue over the pseudo-labelled subjects adds that many patches to each batch of
    ``batch_size`` human-labelled ones (``human`` = ``batch_size``); otherwise both kinds
    share one queue (pro rata, or by ``config.pseudo_share``).

    Raises:
        RunError: ``pseudo_batch`` without any human-labelled subject.
    """
    import torchio as tio

    sampler = tio.LabelSampler(config.patch, "label", dict.fromkeys(range(n_classes), 1.0))
    pseudo = [s for s in subjects if s.get("label_origin") == "pseudo"]
    if config.pseudo_batch and pseudo:
        subjects = [s for s in subjects if s.get("label_origin") != "pseudo"]
        if not subjects:
            raise RunError("--pseudo-batch needs human-labelled training scans besides the "
                             "pseudo-labelled ones")  # fmt: skip

    def stream(chosen: list, size: int, draws=None):
        dataset = tio.SubjectsDataset(chosen, transform=preprocess(config, train=True))
        queue = tio.Queue(dataset, config.queue_length, config.samples_per_volume, sampler,
                          subject_sampler=draws, shuffle_subjects=draws is None,
                          num_workers=config.workers)  # fmt: skip
        return _forever(torch.utils.data.DataLoader(queue, batch_size=size, num_workers=0))

    main = stream(subjects, config.batch_size, _subject_sampler(subjects, config.pseudo_share))
    extra = stream(pseudo, config.pseudo_batch) if config.pseudo_batch and pseudo else None
    for batch in main:
        parts = [batch, next(extra)] if extra is not None else [batch]

        def listed(key: str, parts=parts) -> list:
            return [x for p in parts for x in p.get(key, [None] * len(p["annotated"]))]

        yield {
            "image": torch.cat([p["image"][tio.DATA] for p in parts]),
            "label": torch.cat([p["label"][tio.DATA][:, 0] for p in parts]),
            "annotated": torch.cat([p["annotated"] for p in parts]),
            "groups": listed(config.groups) if config.groups else ["all"] * sum(
                len(p["annotated"]) for p in parts),
            "scan_id": listed("scan_id"),
            "human": len(batch["annotated"]),
        }  # fmt: skip


def _head(value: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if value is None else value[:n]


def _semi_supervised(config: TorchConfig, network, build, n_classes: int, unlabeled):
    """The SSL method and an endless stream of unlabeled patches, or (None, None)."""
    import torchio as tio

    from xds.trainers.ssl import CPS, UAMT

    if config.ssl == "none":
        return None, None
    if config.ssl not in ("uamt", "cps"):
        raise RunError(f"unknown SSL method {config.ssl!r}; known: none, uamt, cps")
    images = [tio.Subject(image=s["image"]) for s in unlabeled or []]
    if not images:
        raise RunError(f"--ssl {config.ssl} needs unlabeled scans (a semi-supervised split)")
    if config.ssl == "uamt":
        method = UAMT(network, n_classes, ramp=config.ssl_ramp)
    else:
        torch.manual_seed(config.seed + 1)  # CPS needs two differently initialized networks
        method = CPS(build(), ramp=config.ssl_ramp)
    steps = [t for t in preprocess(config, train=True).transforms]
    dataset = tio.SubjectsDataset(images, transform=tio.Compose(steps))
    queue = tio.Queue(dataset, config.queue_length, config.samples_per_volume,
                      tio.UniformSampler(config.patch), num_workers=config.workers)  # fmt: skip
    loader = torch.utils.data.DataLoader(queue, batch_size=config.batch_size, num_workers=0)
    return method, _forever(loader)


def _foreground_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Hard Dice of foreground (any class) vs background in a batch, for the progress bar."""
    valid = target != IGNORE
    predicted, truth = (logits.argmax(1) > 0) & valid, (target > 0) & valid
    total = predicted.sum() + truth.sum()
    return float(2 * (predicted & truth).sum() / total) if total else 1.0


def _forever(loader):
    while True:
        yield from loader


def _progress(show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    console=console, disable=not (show and console.is_terminal))  # fmt: skip


def _subject_sampler(subjects: list, share: float | None):
    """A sampler drawing pseudo-labelled subjects as ``share`` of the queue's subjects.

    The others make up the rest; draws are with replacement. None where the share is unset
    or the subjects are all of one kind.
    """
    if share is None:
        return None
    pseudo = [s.get("label_origin") == "pseudo" for s in subjects]
    n_pseudo = sum(pseudo)
    if n_pseudo in (0, len(subjects)):
        return None
    other = len(subjects) - n_pseudo
    weights = [share / n_pseudo if p else (1 - share) / other for p in pseudo]
    return torch.utils.data.WeightedRandomSampler(weights, len(subjects), replacement=True)








