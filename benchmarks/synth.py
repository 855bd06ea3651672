"""Anatomix generation speed: xds's batched torch generator vs a per-volume scipy reference.

The reference does the same work the straightforward way, one volume at a time with
scipy.ndimage and numpy: each structure placed by ``affine_transform`` into its window, the
template cleaned by the same cc3d calls, then per image a dense elastic field per axis from
``gaussian_filter`` of white noise (Simard et al.'s recipe, what torchvision's
ElasticTransform does), ``map_coordinates`` for the warp, Gaussian blur and a 3^3 uniform
filter for sharpness, and the same intensity steps. Table 3's probabilities and ranges are
drawn for both.

xds differs in how, not what: all structures of a template in one ``grid_sample``, all
images of a set in one batch, the elastic field interpolated from noise on a grid sigma
voxels apart (smooth at the same scale, a fraction of the cost) with the affine folded into
that grid, blur as grouped separable 5-tap convolutions.

Both run in this process on the same templates, timed in the same run (the machine is
noisy); the ratio is what to read. Usage::

    python benchmarks/synth.py [--size 128] [--sets 4] [--set-size 4]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from xds.phantoms import generate_world
from xds.synth import AnatomixConfig, generate, load_structures
from xds.synth.render import ACROSS, TEXTURE_STD, WITHIN
from xds.synth.templates import clean_labels


def reference_set(pool, config: AnatomixConfig, rng: np.random.Generator, set_size: int):
    """One set, per volume, with scipy.ndimage: (images, labels) lists."""
    size, window = config.size, config.size // 2
    while True:
        template = _reference_template(pool, config, rng, size, window)
        labels = clean_labels(template, split=rng.random() < config.split_p, config=config)
        if labels.max() >= config.min_labels:
            break
    n = int(labels.max())
    mean, std = rng.random(n + 1), rng.uniform(*TEXTURE_STD, n + 1)
    across = _reference_draw(rng, ACROSS)
    images, maps = [], []
    grid = np.indices(labels.shape, dtype=np.float32)
    centre = (np.asarray(labels.shape) - 1) / 2
    for _ in range(set_size):
        within = _reference_draw(rng, WITHIN)
        matrix = _matrix(across) @ _matrix(within)
        coords = np.tensordot(matrix, grid - centre[:, None, None, None], axes=1)
        coords += centre[:, None, None, None]
        for aug in (across, within):
            if "elastic" in aug:
                alpha, sigma = aug["elastic"]
                for axis in range(3):
                    field = ndimage.gaussian_filter(rng.standard_normal(labels.shape), sigma)
                    coords[axis] += field / field.std() * alpha
        warped = ndimage.map_coordinates(labels, coords, order=0, mode="constant")
        image = mean[warped] + std[warped] * rng.standard_normal(warped.shape)
        sigma = math.hypot(across.get("blur", 0.0), within.get("blur", 0.0))
        if sigma:
            image = ndimage.gaussian_filter(image, sigma, truncate=2 / sigma)
        image = (image - image.min()) / max(image.max() - image.min(), 1e-6)
        for aug in (across, within):
            if "sharpness" in aug:
                box = ndimage.uniform_filter(image, 3, mode="nearest") * 27
                degenerate = (box + 4 * image) / 31
                image = np.clip(degenerate + aug["sharpness"] * (image - degenerate), 0, 1)
        for aug in (across, within):
            if "bc" in aug:
                brightness, contrast = aug["bc"]
                m = image.mean()
                image = np.clip((image - m) * contrast + m + brightness, 0, 1)
        for aug in (across, within):
            if "noise" in aug:
                mu, sd = aug["noise"]
                image = np.clip(image + mu + sd * rng.standard_normal(image.shape), 0, 1)
        if within.get("invert"):
            image = 1 - image
        images.append(image.astype(np.float32))
        maps.append(warped.astype(np.uint8))
    return images, maps


def _reference_template(pool, config, rng, size, window):
    n = int(rng.integers(config.min_labels, config.max_labels + 1))
    idx = rng.integers(len(pool), size=n)
    scale = rng.uniform(*config.structure_scale, n)
    rotations = Rotation.random(n, random_state=rng).as_matrix()
    centres = np.round((0.2 + 0.6 * rng.random((n, 3))) * size).astype(int)
    cube = pool.masks.shape[1]
    padded = np.zeros((size + window,) * 3, np.uint8)
    placed = []
    for k in range(n):
        half = pool.extents_mm[idx[k]] * scale[k] / (2 * pool.voxel_mm)
        half *= min(1.0, (window / 2 - 1) / np.linalg.norm(half))
        # window voxel -> cube voxel: rotate about the window centre, scale to the cube
        matrix = np.diag(cube / (2 * np.maximum(half, 0.5))) @ rotations[k].T
        offset = (cube - 1) / 2 - matrix @ np.full(3, (window - 1) / 2)
        mask = ndimage.affine_transform(
            pool.masks[idx[k]], matrix, offset, output_shape=(window,) * 3, order=1
        )
        placed.append((mask > 0.5, centres[k]))
    placed.sort(key=lambda m: -m[0].sum())
    for label, (mask, (a, b, c)) in enumerate(placed, start=1):
        padded[a : a + window, b : b + window, c : c + window][mask] = label
    lo = window // 2
    return np.ascontiguousarray(padded[lo : lo + size, lo : lo + size, lo : lo + size])


def _reference_draw(rng, table) -> dict:
    out = {}
    for name, (p, ranges) in table.items():
        if rng.random() >= p:
            continue
        if name == "affine":
            out["affine"] = (
                rng.uniform(*ranges["degrees"], 3),
                rng.choice([-1, 1], 3) * rng.uniform(*ranges["translate"], 3),
                rng.uniform(*ranges["scale"]),
            )
        elif name == "elastic":
            out["elastic"] = (rng.uniform(*ranges["alpha"]), rng.uniform(*ranges["sigma"]))
        elif name == "brightness_contrast":
            out["bc"] = (rng.uniform(*ranges["brightness"]), rng.uniform(*ranges["contrast"]))
        elif name == "sharpness":
            out["sharpness"] = ranges["factor"][0]
        elif name == "blur":
            out["blur"] = rng.uniform(*ranges["sigma"])
        elif name == "noise":
            out["noise"] = (rng.uniform(*ranges["mu"]), rng.uniform(*ranges["sigma"]))
        elif name == "flip_intensities":
            out["invert"] = True
    return out


def _matrix(aug: dict) -> np.ndarray:
    if "affine" not in aug:
        return np.eye(3)
    degrees, _, scale = aug["affine"]
    return Rotation.from_euler("xyz", degrees, degrees=True).as_matrix() * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--set-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = AnatomixConfig(size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        world = generate_world(Path(tmp), centers=2, subjects_per_center=6, seed=args.seed)
        files = sorted(  # every center's label maps, whatever its folder layout
            p
            for p in Path(tmp).rglob("*.nii.gz")
            if re.search("label|seg|mask", str(p.relative_to(tmp)), re.IGNORECASE)
        )
        pool = load_structures(files, size=args.size)
    print(f"templates: {len(files)} label maps of {world['n_scans']} scans, {len(pool)} structures")
    images = args.sets * args.set_size
    list(generate(pool, config, sets=1, set_size=1, seed=args.seed + 1))  # warm-up
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    started = time.perf_counter()
    ours = list(generate(pool, config, sets=args.sets, set_size=args.set_size, seed=args.seed))
    xds_s = time.perf_counter() - started

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    refs = [reference_set(pool, config, rng, args.set_size) for _ in range(args.sets)]
    ref_s = time.perf_counter() - started

    ours_labels = [int(s.template.max()) for s in ours]
    ref_labels = [int(max(m.max() for m in maps)) for _, maps in refs]
    print(f"size {args.size}^3, {args.sets} sets x {args.set_size} images")
    print(f"labels per template: xds {ours_labels}, reference {ref_labels}")
    print(f"xds (torch, batched): {images / xds_s:7.2f} volumes/s  ({xds_s:.1f} s)")
    print(f"scipy reference:      {images / ref_s:7.2f} volumes/s  ({ref_s:.1f} s)")
    print(f"ratio xds / reference: {ref_s / xds_s:.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
