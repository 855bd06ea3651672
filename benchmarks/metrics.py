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

Times are the best of --repeat runs of each, measured alternately in this one process.

    python benchmarks/metrics.py [--repeat 5]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage
from timing import best_of  # benchmarks/timing.py, beside this script

from xds.metrics import bounding_box, compare_label_maps

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
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ref, predictions = make_case()
    ours(ref, ref, "surfel")  # build the surfel area table once, outside the timings
    print(f"case {SHAPE} voxels of {SPACING} mm, classes liver + kidney, NSD tau {TAU} mm")
    for name, pred in predictions.items():
        t_ours, v_ours = best_of(lambda p=pred: ours(p, ref, "voxel"), args.repeat)
        t_monai, v_monai = best_of(lambda p=pred: monai(p, ref), args.repeat)
        t_edt, _ = best_of(lambda p=pred: cropped_edt(p, ref), args.repeat)
        print(f"\n{name} prediction")
        print(f"  xds voxel   {t_ours * 1000:8.1f} ms   Dice/HD95/NSD {_fmt(v_ours)}")
        print(f"  MONAI       {t_monai * 1000:8.1f} ms   Dice/HD95/NSD {_fmt(v_monai)}")
        print(f"  one cropped scipy EDT {t_edt * 1000:8.1f} ms")
        print(f"  speed-up vs MONAI: {t_monai / t_ours:5.1f}x (goal >= 10x); "
              f"largest value difference {max_difference(v_ours, v_monai):.2e}")  # fmt: skip
        print(f"  xds / one cropped EDT: {t_ours / t_edt:5.2f}")
        try:
            t_surfel, v_surfel = best_of(lambda p=pred: ours(p, ref, "surfel"), args.repeat)
            t_dm, v_dm = best_of(lambda p=pred: deepmind(p, ref), max(1, args.repeat // 2))
        except ImportError:
            continue
        print(f"  xds surfel  {t_surfel * 1000:8.1f} ms   vs DeepMind surface-distance "
              f"{t_dm * 1000:8.1f} ms: {t_dm / t_surfel:5.1f}x, largest value difference "
              f"{max_difference(v_surfel, v_dm):.2e}")  # fmt: skip


def _fmt(values) -> str:
    return "  ".join(f"[{k}] {d:.4f}/{h:.2f}/{n:.4f}" for k, (d, h, n) in sorted(values.items()))


if __name__ == "__main__":
    main()
