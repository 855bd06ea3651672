"""Metrics against analytic shapes, every empty case, and the reference libraries."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from xds.evaluation.metrics import compare_label_maps, compare_masks, set_dice, surfel_areas
from xds.schemas import EvaluationError


def _grid(shape):
    return np.indices(shape, dtype=np.float64)


def _ball(shape, centre_mm, radius_mm, spacing):
    idx = _grid(shape)
    d2 = sum(((idx[i] * spacing[i]) - centre_mm[i]) ** 2 for i in range(3))
    return d2 <= radius_mm**2


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def _sphere_pair_hd95(radius, offset, q=0.95):
    """HD95 of two spheres of one radius whose centres are ``offset`` apart.

    A point at polar angle θ of one sphere lies | sqrt(R²+d²-2Rd cosθ) - R | from the other;
    cosθ is uniform over the sphere's area, so the fraction within x is an interval of cosθ.
    """

    def within(x):
        lo = (radius**2 + offset**2 - (radius + x) ** 2) / (2 * radius * offset)
        hi = (radius**2 + offset**2 - (radius - x) ** 2) / (2 * radius * offset)
        return (min(hi, 1) - max(lo, -1)) / 2

    return brentq(lambda x: within(x) - q, 0, offset)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.0, 2.5)])
@pytest.mark.parametrize("kind", ["surfel", "voxel"])
def test_offset_spheres_match_the_analytic_dice_and_hd95(spacing, kind):
    radius, offset = 14.0, 6.0
    shape = tuple(int(64 / s) for s in spacing)
    centre = np.array([32.0, 32.0, 32.0])
    ref = _ball(shape, centre, radius, spacing)
    pred = _ball(shape, centre + [offset, 0, 0], radius, spacing)
    got = compare_masks(pred, ref, spacing, surface_kind=kind)
    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12
    dice = lens / (4 / 3 * math.pi * radius**3)
    assert got["dice"] == pytest.approx(dice, abs=0.02)
    assert got["hd95_mm"] == pytest.approx(_sphere_pair_hd95(radius, offset), abs=max(spacing))
    assert got["vol_ref_ml"] == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.03)


@pytest.mark.parametrize("kind", ["surfel", "voxel"])
def test_shifted_boxes_are_exact(kind):
    spacing = (0.7, 1.0, 3.0)
    ref = _box((40, 40, 30), (5, 8, 6), (30, 33, 20))
    for axis, shift in ((0, 3), (2, 2)):
        lo, hi = [5, 8, 6], [30, 33, 20]
        lo[axis] += shift
        hi[axis] += shift
        got = compare_masks(_box((40, 40, 30), lo, hi), ref, spacing, surface_kind=kind, tau=1.0)
        side = hi[axis] - lo[axis]
        assert got["dice"] == pytest.approx((side - shift) / side)
        assert got["hd95_mm"] == pytest.approx(shift * spacing[axis])
        assert 0 < got["nsd"] < 1
        wide = compare_masks(_box((40, 40, 30), lo, hi), ref, spacing, surface_kind=kind, tau=9.0)
        assert wide["nsd"] == 1.0


def test_identical_masks_score_perfectly_even_at_the_image_border():
    ref = _box((20, 20, 20), (0, 0, 0), (20, 10, 7))  # touches five faces of the image
    for kind in ("surfel", "voxel"):
        got = compare_masks(ref, ref.copy(), (1, 1, 1), surface_kind=kind)
        assert (got["dice"], got["nsd"], got["hd95_mm"], got["assd_mm"]) == (1.0, 1.0, 0.0, 0.0)


def test_empty_cases_are_explicit_and_never_a_best_score():
    shape, spacing = (10, 12, 8), (1.0, 2.0, 3.0)
    empty, some = np.zeros(shape, bool), _box(shape, (2, 2, 2), (5, 6, 4))
    diagonal = math.dist((0, 0, 0), (10, 24, 24))
    both = compare_masks(empty, empty, spacing)
    assert all(math.isnan(both[k]) for k in ("dice", "nsd", "hd95_mm", "assd_mm"))
    assert both["empty_pred"]
    assert both["empty_ref"]
    perfect = compare_masks(empty, empty, spacing, both_empty="perfect")
    assert (perfect["dice"], perfect["nsd"], perfect["hd95_mm"]) == (1.0, 1.0, 0.0)
    for pred, ref in ((empty, some), (some, empty)):
        got = compare_masks(pred, ref, spacing)
        assert (got["dice"], got["nsd"]) == (0.0, 0.0)
        assert got["hd95_mm"] == pytest.approx(diagonal)
        assert got["empty_pred"] == (pred is empty)
        assert math.isinf(compare_masks(pred, ref, spacing, missing_distance="inf")["hd95_mm"])
        assert math.isnan(compare_masks(pred, ref, spacing, missing_distance="nan")["assd_mm"])
    with pytest.raises(EvaluationError, match="shape"):
        compare_masks(some, some[:-1], spacing)
    with pytest.raises(EvaluationError, match="both_empty"):
        compare_masks(some, some, spacing, both_empty="ignore")


def test_label_maps_score_each_class_in_its_own_box():
    shape, spacing = (48, 40, 24), (1.0, 1.0, 2.0)
    ref = np.zeros(shape, np.uint8)
    ref[_box(shape, (4, 4, 4), (20, 20, 12))] = 1
    ref[_box(shape, (26, 20, 6), (40, 36, 18))] = 2
    pred = ref.copy()
    pred[pred == 2] = 0
    pred[_box(shape, (28, 20, 6), (42, 36, 18))] = 2
    pred[0:2, 0:2, 0:2] = 3  # a class the reference lacks
    got = compare_label_maps(pred, ref, spacing, classes=[1, 2, 3, 4])
    assert got[1]["dice"] == 1.0
    assert got[2]["hd95_mm"] == pytest.approx(2.0)
    full = compare_masks(pred == 2, ref == 2, spacing)
    assert got[2] == pytest.approx(full)
    assert got[3]["dice"] == 0.0
    assert got[3]["empty_ref"]
    assert got[3]["hd95_mm"] == pytest.approx(math.dist((0, 0, 0), (48, 40, 48)))
    assert math.isnan(got[4]["dice"])


def test_pooled_hd95_is_between_the_directed_ones():
    spacing = (1.0, 1.0, 1.0)
    ref = _ball((48, 48, 48), (24, 24, 24), 12, spacing)
    pred = _ball((48, 48, 48), (24, 24, 24), 12, spacing) | _box((48, 48, 48), (1, 1, 1), (4, 4, 4))
    worst = compare_masks(pred, ref, spacing, hd="max")["hd95_mm"]
    pooled = compare_masks(pred, ref, spacing, hd="pooled")["hd95_mm"]
    assert pooled <= worst


def _blobs(seed, shape=(40, 44, 28)):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    ref = field > 0.02
    moved = ndimage.shift(field, (1.5, -1, 0.5), order=1) + rng.normal(0, 0.01, shape)
    return moved > 0.025, ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxel_surface_equals_monai(seed):
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    pred, ref = _blobs(seed)
    spacing = (0.9, 1.3, 2.5)
    ours = compare_masks(pred, ref, spacing, surface_kind="voxel", tau=2.0)
    yp = torch.from_numpy(np.stack([~pred, pred])[None])
    yt = torch.from_numpy(np.stack([~ref, ref])[None])
    dice = compute_dice(yp, yt, include_background=False).item()
    hd95 = compute_hausdorff_distance(
        yp, yt, include_background=False, percentile=95, spacing=spacing
    ).item()
    nsd = compute_surface_dice(yp, yt, [2.0], include_background=False, spacing=spacing).item()
    # MONAI keeps distances in float32: agreement to float32 precision
    assert ours["dice"] == pytest.approx(dice, rel=1e-6)
    assert ours["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
    assert ours["nsd"] == pytest.approx(nsd, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_surfel_surface_equals_deepmind_surface_distance(seed):
    import surface_distance as sd

    pred, ref = _blobs(seed)
    spacing = (0.9, 1.3, 2.5)
    ours = compare_masks(pred, ref, spacing, tau=2.0)
    dists = sd.compute_surface_distances(ref, pred, spacing)
    assert ours["hd95_mm"] == pytest.approx(sd.compute_robust_hausdorff(dists, 95), rel=1e-12)
    assert ours["nsd"] == pytest.approx(sd.compute_surface_dice_at_tolerance(dists, 2.0))
    assert ours["dice"] == pytest.approx(sd.compute_dice_coefficient(ref, pred))
    a_ref, a_pred = dists["surfel_areas_gt"].sum(), dists["surfel_areas_pred"].sum()
    d_ref, d_pred = sd.compute_average_surface_distance(dists)
    assssd = (d_ref * a_ref + d_pred * a_pred) / (a_ref + a_pred)
    assert ours["assd_mm"] == pytest.approx(assssd)


def test_surfel_area_table_equals_deepmind():
    from surface_distance import lookup_tables as lookup

    for spacing in ((1.0, 1.0, 1.0), (0.5, 0.8, 3.0), (2.5, 0.3, 1.1)):
        theirs = lookup.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surfel_areas(spacing), theirs, atol=1e-12)


def test_set_dice_takes_the_best_consistent_label():
    ref = [_box((12, 12, 12), (2, 2, 2), (8, 8, 8)), _box((12, 12, 12), (3, 3, 3), (9, 9, 9))]
    # two protocols; in protocol 1 label 2 covers the structure in both images
    maps = []
    for r in ref:
        m = np.zeros((2, 12, 12, 12), np.uint8)
        m[0][r] = 1
        m[0][:6] = 3  # protocol 0 splits the structure between labels 1 and 3
        m[1][r] = 2
        maps.append(m)
    got = set_dice(maps, ref)
    assert (got.value, got.map_index, got.label) == (1.0, 1, 2)
    # a label right in one image only scores its mean over the set
    single = [maps[0][0], np.zeros((12, 12, 12), np.uint8)]
    assert set_dice(single, ref).value == pytest.approx(
        np.mean([compare_masks(single[0] == 1, ref[0], (1, 1, 1))["dice"], 0.0])
    )
    with pytest.raises(EvaluationError, match="same number of maps"):
        set_dice([maps[0], maps[1][0]], ref)
