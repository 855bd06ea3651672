"""Pseudo-label quality gates and provenance (Touchstone and A-Eval).

A teacher (or several, or one under test-time flips) gives each unlabeled scan a few
probability maps, its *members*. The pseudo-label is the argmax of their mean; these
figures say whether to trust it:

``entropy``
    mean normalized voxel entropy (0: certain, 1: uniform) over the voxels any member
    calls foreground. High when the teacher is unsure, e.g. on a sequence it never saw.
``agreement``
    the least agreeing member's Dice with the pseudo-label (mean over the classes either
    shows). Low when a teacher, a fold or a flipped input disagrees: a prediction that
    moves when its input is mirrored is an artefact (an orientation bug shifts it one way,
    then the other), not anatomy.
``change``
    1 - mean Dice to the scan's accepted pseudo-label of the previous round (over the
    voxels that label did not ignore): a label that keeps moving has not converged.
``volume``
    largest robust z-score, over classes, of log organ volume against the labelled
    training set (median and MAD): an empty, swollen or shrunken organ. An empty class
    every reference case has scores :data:`Z_CAP`.
``contrast``
    smallest ratio, over classes, of the organ's boundary contrast to the labelled set's
    median for that class (same sequence where the reference has it). Boundary contrast is
    ``|mean inside - mean in a two-voxel ring outside| / std of both``: a mask that sits on
    its organ has its organ's edge; a shifted or noisy one has not.

:class:`Gates` holds one threshold per figure (``entropy`` <= 0.35, ``agreement`` >= 0.8,
``change`` <= 0.2, ``volume`` <= 4, ``contrast`` >= 0.5 by default), optionally one per
sequence (``entropy@T2W=0.45``), or ``off``. A case failing any gate is rejected whole;
with ``unreliable="ignore"`` (the default) the accepted ones also get their unreliable voxels
(normalized entropy above ``voxel_entropy``, or members disagreeing) marked with the ignore
label (:data:`xds.labels.harmonization.IGNORE`, nnU-Net's ignore label once exported), which the
trainers' losses skip; ``"reject"`` keeps accepted cases whole. On the phantom benchmark
(``python -m benchmarks.pseudo``) students beat their teacher only with both gates and ignored
voxels: whole soft pseudo-labels teach a student the teacher's boundary errors.

:class:`PseudoLabelWriter` writes each accepted label as it is judged (a round holds one
volume at a time) and stores them as ``labels`` rows with origin
``pseudo``, the teacher runs, the round and every figure in ``quality``; the label ids come
from the scan, the round's name and number, the teachers and the settings, so running a
round again adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from xds.labels.mapping import IGNORE
from xds.schemas.errors import RunError

GATES: dict[str, tuple[str, float]] = {
    "entropy": ("max", 0.35),
    "agreement": ("min", 0.80),
    "change": ("max", 0.20),
    "volume": ("max", 4.0),
    "contrast": ("min", 0.50),
}
"""Gate -> (whether the figure must stay at most or at least the threshold, default)."""

Z_CAP = 99.0
"""The volume z-score of an empty organ (log 0), capped so it stays a finite number."""
_MIN_LOG_SCALE = 0.1  # a log-volume spread below 10 % is a reference too small to tell
_RING = 2  # voxels of the ring outside a mask that boundary contrast compares against


@dataclass
class Gates:
    """Thresholds of the quality gates, global and per sequence (None: gate off)."""

    thresholds: dict[str, float | None] = field(
        default_factory=lambda: {k: v for k, (_, v) in GATES.items()}
    )
    per_sequence: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @classmethod
    def parse(cls, specs: Iterable[str] = ()) -> Gates:
        """Gates from ``NAME=VALUE`` or ``NAME@SEQUENCE=VALUE`` texts (VALUE ``off``).

        Raises:
            RunError: an unknown gate, a missing ``=`` or a value that is not a number.
        """
        gates = cls()
        for spec in specs:
            key, sep, value = spec.partition("=")
            name, _, sequence = key.strip().partition("@")
            if not sep or name not in GATES:
                raise RunError(
                    f"--gate {spec!r}: expected NAME[@SEQUENCE]=VALUE|off with NAME one of "
                    + ", ".join(GATES)
                )
            try:
                number = None if value.strip() == "off" else float(value)
            except ValueError:
                raise RunError(f"--gate {spec!r}: {value!r} is not a number or 'off'") from None
            if sequence:
                gates.per_sequence.setdefault(sequence, {})[name] = number
            else:
                gates.thresholds[name] = number
        return gates

    def threshold(self, name: str, sequence: str | None) -> float | None:
        """The threshold of gate ``name`` for a scan of ``sequence``."""
        own = self.per_sequence.get(sequence or "", {})
        return own[name] if name in own else self.thresholds.get(name)

    def failures(self, figures: dict[str, float | None], sequence: str | None) -> list[str]:
        """The gates a case fails, as readable reasons (empty: accepted).

        A figure that could not be measured (no second member for ``agreement``, no
        previous round for ``change``, no reference) passes.
        """
        out = []
        for name, (direction, _) in GATES.items():
            limit, value = self.threshold(name, sequence), figures.get(name)
            if limit is None or value is None:
                continue
            if (direction == "max" and value > limit) or (direction == "min" and value < limit):
                sign = ">" if direction == "max" else "<"
                out.append(f"{name} {value:.3g} {sign} {limit:g}")
        return out

    def to_dict(self) -> dict:
        """JSON-ready thresholds."""
        return {"thresholds": self.thresholds, "per_sequence": self.per_sequence}


# -- measuring a label ----------------------------------------------------------------------------


def measure(
    label: np.ndarray, image: np.ndarray, spacing, classes: list[str]
) -> dict[str, tuple[float, float]]:
    """Class -> (volume in ml, boundary contrast) of a label map (index i+1 = classes[i]).

    Ignored voxels (:data:`IGNORE`) count as neither inside nor outside.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    image = np.asarray(image, dtype=np.float32)
    known = label != IGNORE
    out = {}
    for index, name in enumerate(classes, start=1):
        mask = label == index
        n = int(mask.sum())
        out[name] = (n * voxel_ml, _contrast(mask, known, image) if n else 0.0)
    return out


def _contrast(mask: np.ndarray, known: np.ndarray, image: np.ndarray) -> float:
    """|mean inside - mean in the ring outside| / std of both, within the mask's box."""
    lo = [max(int(i.min()) - _RING - 1, 0) for i in np.nonzero(mask)]
    hi = [int(i.max()) + _RING + 2 for i in np.nonzero(mask)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    inside = mask[box]
    ring = ndimage.binary_dilation(inside, iterations=_RING) & ~inside & known[box]
    if not ring.any():
        return 0.0
    values = image[box]
    a, b = values[inside], values[ring]
    spread = float(np.concatenate([a, b]).std())
    return abs(float(a.mean()) - float(b.mean())) / spread if spread > 0 else 0.0


@dataclass
class Reference:
    """What the labelled training set says organs look like: log volumes and contrasts."""

    log_volume: dict[str, tuple[float, float, int]]  # class -> (median, scale, cases)
    contrast: dict[str, float]  # "class" and "class@SEQUENCE" -> median boundary contrast

    @classmethod
    def from_measures(cls, measures: list[tuple[str | None, dict]]) -> Reference:
        """From (sequence, :func:`measure` output of annotated classes) per labelled case."""
        volumes: dict[str, list[float]] = {}
        contrasts: dict[str, list[float]] = {}
        for sequence, found in measures:
            for name, (ml, contrast) in found.items():
                if ml <= 0:
                    continue
                volumes.setdefault(name, []).append(np.log(ml))
                contrasts.setdefault(name, []).append(contrast)
                contrasts.setdefault(f"{name}@{sequence}", []).append(contrast)
        log_volume = {}
        for name, values in volumes.items():
            v = np.asarray(values)
            median = float(np.median(v))
            scale = max(1.4826 * float(np.median(np.abs(v - median))), _MIN_LOG_SCALE)
            log_volume[name] = (median, scale, len(v))
        return cls(log_volume, {k: float(np.median(v)) for k, v in contrasts.items()})

    def volume_z(self, name: str, ml: float) -> float | None:
        """Robust z-score of a volume's log against the reference (None: no reference)."""
        if name not in self.log_volume:
            return None
        median, scale, _ = self.log_volume[name]
        if ml <= 0:
            return -Z_CAP
        return float(np.clip((np.log(ml) - median) / scale, -Z_CAP, Z_CAP))

    def contrast_ratio(self, name: str, sequence: str | None, contrast: float) -> float | None:
        """A contrast over the reference median (same sequence if known; None: none)."""
        median = self.contrast.get(f"{name}@{sequence}", self.contrast.get(name))
        if not median:
            return None
        return contrast / median

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"log_volume": self.log_volume, "contrast": self.contrast}


# -- one case -------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """A pseudo-label candidate: its voxels, figures, and the gates' verdict."""

    scan_id: str
    sequence: str | None
    # uint8; IGNORE marks unreliable voxels (unreliable="ignore"); None once stored or rejected
    label: np.ndarray | None
    figures: dict[str, float | None]
    failures: list[str]

    @property
    def accepted(self) -> bool:
        """True when every gate passed."""
        return not self.failures

    def summary(self) -> dict:
        """JSON-ready verdict and figures."""
        return {
            "scan_id": self.scan_id, "sequence": self.sequence, "accepted": self.accepted,
            "failures": self.failures, "figures": self.figures,
        }  # fmt: skip


def judge_case(
    scan_id: str,
    members: Iterable[np.ndarray],
    image: np.ndarray,
    spacing,
    classes: list[str],
    *,
    sequence: str | None,
    reference: Reference,
    gates: Gates,
    previous: np.ndarray | None = None,
    unreliable: str = "ignore",
    voxel_entropy: float = 0.5,
) -> CaseResult:
    """Fuse a case's members into a pseudo-label and put it through the gates.

    Args:
        scan_id: the scan.
        members: (classes + 1, *shape) probability maps on the scan's grid, read one at a
            time (teachers x test-time flips).
        image: the scan's voxels (for boundary contrast).
        spacing: voxel size in mm.
        classes: foreground classes, index i + 1 = ``classes[i]``.
        sequence: the scan's sequence (per-sequence thresholds and contrast reference).
        reference: the labelled training set's :class:`Reference`.
        gates: thresholds.
        previous: the scan's accepted pseudo-label of the previous round, if any.
        unreliable: ``ignore`` (mark unreliable voxels of accepted cases with the ignore
            label) or ``reject`` (keep accepted cases whole).
        voxel_entropy: normalized entropy above which a voxel is unreliable.
    """
    if unreliable not in ("reject", "ignore"):
        raise RunError(f"--unreliable must be reject or ignore, not {unreliable!r}")
    total, argmaxes = None, []
    for probs in members:
        total = probs.astype(np.float32) if total is None else total + probs
        argmaxes.append(probs.argmax(0).astype(np.uint8))
    if total is None:
        raise RunError(f"{scan_id}: the teacher gave no prediction")
    mean = total / len(argmaxes)
    label = mean.argmax(0).astype(np.uint8)
    n_classes = mean.shape[0]
    region = label > 0
    for a in argmaxes:
        region |= a > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(mean > 0, mean * np.log(mean), 0.0)
    entropy = -plogp.sum(0) / np.log(n_classes)
    figures: dict[str, float | None] = {
        "members": float(len(argmaxes)),
        "entropy": float(entropy[region].mean()) if region.any() else 0.0,
        "agreement": None,
        "change": None,
    }
    if len(argmaxes) > 1:
        figures["agreement"] = float(min(_dice(a, label, n_classes) for a in argmaxes))
    if previous is not None:
        known = previous != IGNORE  # what the previous round left open does not count
        figures["change"] = 1.0 - _dice(previous[known], label[known], n_classes)
    found = measure(label, image, spacing, classes)
    zs, ratios = [], []
    for name, (ml, contrast) in found.items():
        figures[f"volume_ml.{name}"] = ml
        z = reference.volume_z(name, ml)
        if z is not None:
            figures[f"volume_z.{name}"] = z
            zs.append(abs(z))
        ratio = reference.contrast_ratio(name, sequence, contrast)
        if ratio is not None:
            figures[f"contrast.{name}"] = ratio
            ratios.append(ratio)
    figures["volume"] = max(zs) if zs else None
    figures["contrast"] = min(ratios) if ratios else None
    unsure = region & (entropy > voxel_entropy)
    for a in argmaxes:
        unsure |= region & (a != label)
    figures["unreliable"] = float(unsure.sum() / region.sum()) if region.any() else 0.0
    failures = gates.failures(figures, sequence)
    if unreliable == "ignore" and not failures:
        label[unsure] = IGNORE
    return CaseResult(scan_id, sequence, label, figures, failures)


def _dice(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the foreground classes either map shows (1.0 when both are empty)."""
    scores = []
    for c in range(1, n_classes):
        x, y = a == c, b == c
        size = int(x.sum()) + int(y.sum())
        if size:
            scores.append(2.0 * int((x & y).sum()) / size)
    return float(np.mean(scores)) if scores else 1.0


# -- provenance -----------------------------------------------------------------------------------






