"""Dice + HD95 + NSD on a 256x256x128 case: xds vs MONAI (same definition), in one run.

The case holds two organ-sized objects (a liver-like and a kidney-like ellipsoid, 0.8 x 0.8 x
2.5 mm voxels). Two predictions are scored: a realistic one (shifted and resized by a voxel
or two) and a poor one (shifted further, plus a false-positive island far away, which
stretches every bounding box). Printed per prediction:

- xds (``surface="voxel"``, MONAI's definition) vs MONAI's compute_dice +
  compute_hausdorff_distance(percentile=95) + compute_surface_dice: the speed-up
  (goal >= 10x) and the largest difference of the values;
- xds vs one scipy distance transform over the cropped region (the union bounding box):
  the time ratio, a floor for any method built on a dense transform;
- xds (``surface="surfel"``) vs DeepMind's surface-distance, when installed.

Every side is warmed up, then timed in alternating rounds in this one process, the same
number of rounds each (benchmarks/timing.py); all run single-process on the same arrays.

    python -m benchmarks.metrics [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from scipy import ndimage

from xds.evaluation.metrics import bounding_box, compare_label_maps

from .timing import MIN_ROUNDS, Side, compare, ratio, timed_report

SHAPE = (256, 256, 128)
SPACING = (0.8, 0.8, 2.5)
TAU = 2.0


def _ellipsoid(centre, radii) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1


def make_case() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The reference and the two predictions, as label maps (1 liver, 2 kidney)."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[_ellipsoid((110, 100, 64), (70, 55, 22))] = 1
    ref[_ellipsoid((190, 170, 60), (24, 16, 12))] = 2
    good = np.zeros(SHAPE, np.uint8)
    good[_ellipsoid((112, 101, 64), (68, 56, 21))] = 1
    good[_ellipsoid((191, 171, 61), (23, 17, 12))] = 2
    poor = np.zeros(SHAPE, np.uint8)
    poor[_ellipsoid((125, 90, 66), (60, 48, 19))] = 1
    poor[_ellipsoid((30, 230, 12), (8, 8, 4))] = 1  # false-positive island
    poor[_ellipsoid((198, 176, 58), (20, 13, 10))] = 2
    return ref, {"realistic": good, "poor": poor}


def ours(pred, ref, kind):
    got = compare_label_maps(pred, ref, SPACING, [1, 2], tau=TAU, surface_kind=kind)
    return {k: (v["dice"], v["hd95_mm"], v["nsd"]) for k, v in got.items()}


def monai(pred, ref):
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    yp = torch.from_numpy(np.stack([pred == k for k in (0, 1, 2)])[None])
    yt = torch.from_numpy(np.stack([ref == k for k in (0, 1, 2)])[None])
    dice = compute_dice(yp, yt, include_background=False)[0]
    hd = compute_hausdorff_distance(
        yp, yt, include_background=False, percentile=95, spacing=SPACING
    )[0]
    nsd = compute_surface_dice(yp, yt, [TAU, TAU], include_background=False, spacing=SPACING)[0]
    return {k: (float(dice[k - 1]), float(hd[k - 1]), float(nsd[k - 1])) for k in (1, 2)}


def deepmind(pred, ref):
    import surface_distance as sd

    out = {}
    for k in (1, 2):
        dists = sd.compute_surface_distances(ref == k, pred == k, SPACING)
        out[k] = (
            sd.compute_dice_coefficient(ref == k, pred == k),
            sd.compute_robust_hausdorff(dists, 95),
            sd.compute_surface_dice_at_tolerance(dists, TAU),
        )
    return out


def cropped_edt(pred, ref):
    box = bounding_box((pred > 0) | (ref > 0))
    return ndimage.distance_transform_edt(ref[box] == 0, sampling=SPACING)


def max_difference(a, b):
    return max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--quick", action="store_true", help="the realistic prediction only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI's deprecation notes
    ref, predictions = make_case()
    if args.quick:
        predictions = {"realistic": predictions["realistic"]}
    ours(ref, ref, "surfel")  # build the surfel area table once, outside the timings
    try:
        import surface_distance  # noqa: F401

        have_deepmind = True
    except ImportError:
        have_deepmind = False
    print(f"case {SHAPE} voxels of {SPACING} mm, classes liver + kidney, NSD tau {TAU} mm")
    one = "one process, same arrays"
    for name, pred in predictions.items():
        sides = {
            "xds": Side("xds compare_label_maps, surface='voxel': Dice + HD95 + NSD",
                        lambda p=pred: ours(p, ref, "voxel")),
            "monai": Side("MONAI compute_dice + compute_hausdorff_distance(95) + "
                          "compute_surface_dice", lambda p=pred: monai(p, ref)),
            "edt": Side("one scipy distance transform over the union's bounding box",
                        lambda p=pred: cropped_edt(p, ref)),
        }  # fmt: skip
        if have_deepmind:
            sides["surfel"] = Side("xds compare_label_maps, surface='surfel'",
                                   lambda p=pred: ours(p, ref, "surfel"))  # fmt: skip
            sides["deepmind"] = Side("DeepMind surface-distance: Dice, robust HD95, surface "
                                     "Dice", lambda p=pred: deepmind(p, ref))  # fmt: skip
        compare(sides, rounds=args.rounds)
        v_ours, v_monai = sides["xds"].result, sides["monai"].result
        print(f"\n{name} prediction: xds Dice/HD95/NSD {_fmt(v_ours)}; MONAI {_fmt(v_monai)}")
        diff = max_difference(v_ours, v_monai)
        timed_report("metrics", f"Dice+HD95+NSD vs MONAI, {name} prediction", sides["xds"],
                     sides["monai"], goal=">= 10", faster=True, parallelism=one,
                     note=f"values equal to {diff:.1e}")  # fmt: skip
        print(f"  xds / one cropped EDT: {ratio(sides['xds'], sides['edt']).text()}")
        if have_deepmind:
            diff = max_difference(sides["surfel"].result, sides["deepmind"].result)
            timed_report("metrics", f"surfel metrics vs DeepMind surface-distance, {name} "
                         "prediction", sides["surfel"], sides["deepmind"], goal=None,
                         faster=True, parallelism=one,
                         note=f"values equal to {diff:.1e}")  # fmt: skip


def _fmt(values) -> str:
    return "  ".join(f"[{k}] {d:.4f}/{h:.2f}/{n:.4f}" for k, (d, h, n) in sorted(values.items()))


if __name__ == "__main__":
    main()
