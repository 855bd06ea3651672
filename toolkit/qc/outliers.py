"""Which scans are unusual, and why: flags from each scan's measures and its peers'.

A scan is compared with its **peers**: the scans of its center and sequence (at least
:data:`MIN_PEERS` of them, itself included), else of its sequence in the whole cohort, else
of the cohort. MR intensities have no unit, so the intensity-scale rule only applies when
the peers are of the scan's own center.
For a measure, the peers' median and MAD (scaled by 1.4826, floored so a center of
near-identical scans does not turn noise into flags) give a robust z-score. Most rules also
ask for a large *ratio* to the peers' median, so that a 5 % difference never flags however
uniform the center is.

Flags and their rules:

``geometry``
    the voxel axes are not orthogonal (largest |cos| > 1e-3), the label is not on the
    image's grid (shape, or a corner more than a hundredth of a voxel away), the voxel
    counts along R, A, S are the peers' in another order (axes swapped), or the body's
    left-right / front-back proportions differ from the peers' by more than a third;
``spacing``
    the body's extent along an axis is at least 1.5 x (or at most 1 / 1.5 x) the peers',
    while the number of voxels along it is as usual: the header's spacing is wrong;
``truncated``
    the body's head-foot extent and the number of slices are both below 0.8 x the peers';
``intensity``
    the body's median or 99th percentile is 2.5 x away from the peers' (either way; for MR
    only against peers of its own center); the
    slices' edges are 40 points more inside the body mask than the peers' (an inverted
    image's "body" is its air); for CT, the air is not at -1000 HU (+-200) or the body's
    median not within -200..300 HU;
``bias``
    one of the smooth fields fitted to the label's tissues, the body's outer layer, or
    both (:func:`xds.qc.metrics.bias_range`) rises 0.7 log units (2 x) more across them
    than the peers' median of the same fit, and by 3 robust z;
``lr_flip``
    half or more of the organs with a side (liver right, spleen left, ...) lie on the
    other one, or the label fits its image 1.15 x better mirrored left-right;
``label_shift``
    the label fits its image 1.15 x better moved by up to 10 mm (a label that does not
    follow its organs' edges);
``empty_label``
    a class the label map annotates has no voxel, or the label holds no voxel at all;
``extra_component``
    a piece of a class lies more than 20 mm from the class's largest piece.

The score is the largest robust |z| among the measures that raised a flag (and 10 for a
rule without a z, so flagged scans sort above clean ones).
"""

from __future__ import annotations

import math

import numpy as np

MIN_PEERS = 3
SHIFT_GAIN = 1.15
MIRROR_GAIN = 1.15
FAR_GAP_MM = 20.0
BIAS_MARGIN = 0.7  # log units above the peers' median: a field 2 x stronger across
FLAGS = ("unreadable", "geometry", "spacing", "truncated", "intensity", "bias", "lr_flip",
         "label_shift", "empty_label", "extra_component")  # fmt: skip
"""Every flag, in the order reasons are listed (``unreadable``: the files could not be
measured; set by :func:`xds.qc.run_qc`, not by these rules)."""


def _robust(values: list[float], floor: float) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if arr.size == 0:
        return math.nan, math.nan
    median = float(np.median(arr))
    mad = 1.4826 * float(np.median(np.abs(arr - median)))
    return median, max(mad, floor * max(abs(median), 1e-9), 1e-12)


def peer_groups(rows: list[dict]) -> list[list[int]]:
    """For each row, the indices of its peers (itself included)."""
    by_cs: dict[tuple, list[int]] = {}
    by_s: dict[str, list[int]] = {}
    for n, r in enumerate(rows):
        by_cs.setdefault((r["center"], r["sequence"]), []).append(n)
        by_s.setdefault(r["sequence"], []).append(n)
    out = []
    for r in rows:
        group = by_cs[(r["center"], r["sequence"])]
        if len(group) < MIN_PEERS:
            group = by_s[r["sequence"]]
        if len(group) < MIN_PEERS:
            group = list(range(len(rows)))
        out.append(group)
    return out


def flag_scans(rows: list[dict]) -> list[dict]:
    """``flags`` (list), ``reasons`` (list of one-liners) and ``score`` for each row.

    ``rows``: ``{"center", "sequence", "modality", "measures": {name: value}}``.
    """
    groups = peer_groups(rows)
    stats: dict[tuple, tuple[float, float]] = {}
    out = []
    for n, row in enumerate(rows):
        judge = _Judge(row, [rows[i]["measures"] for i in groups[n]], tuple(groups[n]), stats)
        judge.one_center = all(rows[i]["center"] == row["center"] for i in groups[n])
        judge.geometry()
        judge.extent()
        judge.intensity()
        judge.labels()
        ordered = sorted(judge.flags.items(), key=lambda kv: FLAGS.index(kv[0]))
        out.append({
            "flags": [k for k, _ in ordered],
            "reasons": [f"{k}: {v[1]}" for k, v in ordered],
            "score": max((min(v[0], 1e6) for v in judge.flags.values()), default=0.0),
        })  # fmt: skip
    return out


class _Judge:
    """The rules for one scan against its peers (``stats``: robust statistics, shared)."""

    def __init__(self, row: dict, peers: list[dict], key: tuple, stats: dict):
        self.row, self.m, self.peers, self.key, self.stats = row, row["measures"], peers, key, stats
        self.flags: dict[str, tuple[float, str]] = {}
        self.one_center = True  # the peers are all of this scan's center

    def flag(self, name: str, score: float, reason: str) -> None:
        if name not in self.flags or score > self.flags[name][0]:
            self.flags[name] = (score, reason)

    def robust(self, name: str, floor: float = 0.02) -> tuple[float, float]:
        """The peers' median and scaled MAD of a measure."""
        key = (self.key, name, floor)
        if key not in self.stats:
            self.stats[key] = _robust([p.get(name, math.nan) for p in self.peers], floor)
        return self.stats[key]

    def ratio(self, name: str) -> tuple[float, float]:
        """This scan's value over the peers' median, and its robust |z|."""
        value = self.m.get(name, math.nan)
        median, mad = self.robust(name)
        if not math.isfinite(value) or not math.isfinite(median) or median == 0:
            return math.nan, 0.0
        return value / median, abs(value - median) / mad

    def geometry(self) -> None:
        m = self.m
        if m.get("orthogonality", 0) > 1e-3:
            self.flag("geometry", 10, f"voxel axes not orthogonal (|cos| {m['orthogonality']:.3g})")
        if m.get("label_grid_ok") == 0:
            self.flag("geometry", 10, f"label off the image grid "
                                      f"({m.get('label_offset_mm', 0):.3g} mm)")  # fmt: skip
        counts = tuple(m.get(f"slices_{a}", math.nan) for a in "xyz")
        usual = tuple(self.robust(f"slices_{a}", 0.0)[0] for a in "xyz")
        if all(map(math.isfinite, counts + usual)) and counts != usual \
                and sorted(counts) == sorted(usual):  # fmt: skip
            self.flag("geometry", 10, f"{'x'.join(f'{c:.0f}' for c in counts)} voxels where its "
                                      f"peers have {'x'.join(f'{c:.0f}' for c in usual)}: axes "
                                      "swapped?")  # fmt: skip
        if m.get("extent_y", 0) > 0 and "extent_x" in m:
            aspect = m["extent_x"] / m["extent_y"]
            median, mad = _robust([p.get("extent_x", math.nan) / max(p.get("extent_y", 1e-9), 1e-9)
                                   for p in self.peers], 0.02)  # fmt: skip
            if math.isfinite(median) and abs(math.log(aspect / median)) > math.log(4 / 3):
                reason = f"body proportions {aspect:.2f} vs {median:.2f} of its peers"
                self.flag("geometry", abs(aspect - median) / mad, reason)

    def extent(self) -> None:
        for letter in "xyz":
            r, z = self.ratio(f"extent_{letter}")
            if not math.isfinite(r):
                continue
            count, _ = self.ratio(f"slices_{letter}")
            usual_count = not math.isfinite(count) or 0.9 <= count <= 1.1
            if (r >= 1.5 or r <= 1 / 1.5) and usual_count:
                self.flag("spacing", z, f"body {r:.2f} x its peers' size along {letter} with as "
                                        "many voxels: a wrong spacing in the header")  # fmt: skip
            if letter == "z" and r < 0.8 and math.isfinite(count) and count < 0.8:
                self.flag("truncated", z, f"{count:.0%} of its peers' slices, body {r:.0%} as long")

    def intensity(self) -> None:
        m = self.m
        # MR intensities have no unit: only a scan's own center sets its scale
        scaled = self.one_center or self.row.get("modality") != "MR"
        for name in ("p50", "p99") if scaled else ():
            r, z = self.ratio(name)
            if math.isfinite(r) and (r <= 0 or abs(math.log(abs(r))) > math.log(2.5)):
                self.flag("intensity", z, f"body {name} {r:.2f} x its peers'")
        median, _ = self.robust("body_at_border", 0.0)
        value = m.get("body_at_border", math.nan)
        if math.isfinite(value) and math.isfinite(median) and value - median > 0.4:
            self.flag("intensity", 10, f"{value:.0%} of the slices' edges brighter than air "
                                       f"(peers {median:.0%}): inverted?")  # fmt: skip
        if self.row.get("modality") == "CT":
            air, body = m.get("hu_air", math.nan), m.get("hu_body", math.nan)
            if math.isfinite(air) and not -1200 <= air <= -800:
                self.flag("intensity", 10, f"air at {air:.0f} HU, not -1000")
            if math.isfinite(body) and not -200 <= body <= 300:
                self.flag("intensity", 10, f"body median {body:.0f} HU")
        for name, where in (("bias", "the label's tissues and the body's outer layer"),
                            ("bias_label", "the label's tissues"),
                            ("bias_shell", "the body's outer layer")):  # fmt: skip
            median, mad = self.robust(name, 0.0)
            value = m.get(name, math.nan)
            if math.isfinite(value) and math.isfinite(median):
                z = (value - median) / max(mad, 0.05)
                if value - median > BIAS_MARGIN and z > 3:
                    self.flag("bias", z, f"a smooth field rises {math.exp(value):.1f} x across "
                                         f"{where} (peers {math.exp(median):.1f} x)")  # fmt: skip

    def labels(self) -> None:
        m = self.m
        if m.get("sides_wrong", 0) >= 0.5:
            self.flag("lr_flip", 10, f"{m['sides_wrong']:.0%} of sided organs on the wrong side")
        if m.get("mirror_gain", 0) > MIRROR_GAIN:
            self.flag("lr_flip", 10, f"the label fits its image {m['mirror_gain']:.2f} x better "
                                     "mirrored left-right")  # fmt: skip
        if m.get("shift_gain", 0) > SHIFT_GAIN:
            self.flag("label_shift", 10, f"the label fits its image {m['shift_gain']:.2f} x "
                                         "better moved a few mm")  # fmt: skip
        if m.get("empty_classes", 0) > 0 or ("label_classes" in m and m["label_classes"] == 0):
            self.flag("empty_label", 10, f"{int(m.get('empty_classes', 0))} annotated class(es) "
                                         "without a voxel")  # fmt: skip
        if m.get("far_gap_mm", 0) > FAR_GAP_MM:
            self.flag("extra_component", 10, f"a piece {m['far_gap_mm']:.0f} mm from its class")
