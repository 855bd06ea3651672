"""Anatomix generation speed: xds's batched torch generator vs a scipy reference doing the
same steps on the same draws, one volume at a time.

Both sides take every random number from the same per-set torch generator, in the same
order (:func:`xds.synth.templates.set_generator`): the structures placed (which, how large,
rotated how, where), the set's protocol and augmentations (:func:`xds.synth.render.draw_set`),
the coarse-lattice noise of the elastic fields, the texture and the additive noise. What
differs is how each step is computed:

- placement: xds resamples all structures of one window size in one ``grid_sample``; the
  reference calls ``scipy.ndimage.affine_transform`` per structure;
- warp: xds builds every element's sampling grid on the coarse lattice (affine folded in),
  upsamples the whole set with one matrix product per axis and warps it with one
  ``grid_sample``; the reference upsamples each element's lattice with ``ndimage.affine_transform``
  (linear, ends on ends: the same interpolation) and warps with ``map_coordinates``;
- intensity: xds batches the set (separable 5-tap blur, 3^3 sharpening as multiply-adds);
  the reference uses ``gaussian_filter`` (5 taps) and ``uniform_filter`` per image.

The same cc3d cleaning runs on both sides. Both are warmed up, then timed in alternating
rounds (benchmarks/timing.py); the label maps of the two are compared voxel by voxel, so a
reader can see they made the same sets. Goal: xds >= 10x the reference.

    python -m benchmarks.synth [--size 128] [--sets 4] [--set-size 4] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from xds.phantoms import generate_world
from xds.synth import AnatomixConfig, generate, load_structures
from xds.synth.render import _noise, draw_set
from xds.synth.templates import _TRIES, _random_rotations, clean_labels, set_generator

from .timing import MIN_ROUNDS, Side, compare, timed_report


def reference_set(pool, config: AnatomixConfig, index: int, set_size: int, seed: int):
    """Set ``index`` computed per volume with scipy.ndimage: (images, label maps)."""
    gen = set_generator(seed, index)
    for _ in range(_TRIES):
        volume = _reference_place(pool, config, gen)
        if np.count_nonzero(np.bincount(volume.ravel())[1:]) < config.min_labels:
            continue
        split = bool(torch.rand(1, generator=gen) < config.split_p)
        labels = clean_labels(volume, split=split, config=config)
        if labels.max() >= config.min_labels:
            break
    draw = draw_set(gen, int(labels.max()), set_size, 3)
    return _reference_render(labels, draw, gen)


def _reference_place(pool, config: AnatomixConfig, gen) -> np.ndarray:
    """The template's structures, the same draws as xds, each by ``affine_transform``."""
    size, window = config.size, config.size // 2
    n = int(torch.randint(config.min_labels, config.max_labels + 1, (1,), generator=gen))
    idx = torch.randint(len(pool), (n,), generator=gen).numpy()
    lo, hi = config.structure_scale
    scale = (lo + (hi - lo) * torch.rand(n, generator=gen)).numpy()
    rotation = _random_rotations(n, gen).numpy().astype(np.float64)
    centre = ((0.2 + 0.6 * torch.rand(n, 3, generator=gen)) * size).round().long().numpy()
    half = pool.extents_mm[idx].astype(np.float64) * scale[:, None] / (2 * pool.voxel_mm)
    half *= np.minimum((window / 2 - 1) / np.linalg.norm(half, axis=1), 1.0)[:, None]
    half = np.maximum(half, 0.5)
    sizes = np.minimum(np.ceil((2 * np.linalg.norm(half, axis=1) + 2) / 8) * 8, window)
    cube = pool.masks.shape[1]
    flip = np.eye(3)[::-1]  # array axes (z, y, x) <-> grid_sample's (x, y, z)
    masks = []
    for k in range(n):
        w = int(sizes[k])
        a = flip @ ((1 / half[k][::-1])[:, None] * rotation[k].T * (w / 2)) @ flip
        c = min(w, cube)  # as xds: sample at most the masks' resolution, then interpolate
        offset = cube / 2 * a @ np.full(3, 1 / c - 1) + (cube - 1) / 2
        mask = ndimage.affine_transform(pool.masks[idx[k]], cube / c * a, offset,
                                        output_shape=(c, c, c), order=1)  # fmt: skip
        if c < w:
            mask = ndimage.zoom(mask, w / c, order=1, grid_mode=True, mode="nearest")
        masks.append(mask > 0.5)
    padded = np.zeros((size + window,) * 3, dtype=np.uint8)
    for label, k in enumerate(np.argsort([-m.sum() for m in masks], kind="stable"), start=1):
        a, b, c = centre[k] + window // 2 - int(sizes[k]) // 2
        w = int(sizes[k])
        padded[a : a + w, b : b + w, c : c + w][masks[k]] = label
    lo_, hi_ = window // 2, window // 2 + size
    return np.ascontiguousarray(padded[lo_:hi_, lo_:hi_, lo_:hi_])


def _matrix(aug) -> np.ndarray:
    """The augmentation's 4x4 output -> template matrix in normalized (x, y, z)."""
    out = np.eye(4)
    rot = np.eye(3)
    for axis, angle in enumerate(math.radians(d) for d in aug.degrees):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [x for x in range(3) if x != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = r @ rot
    flips = np.array([-1.0 if aug.flips[0] else 1.0, -1.0 if aug.flips[1] else 1.0, 1.0])
    out[:3, :3] = rot * aug.scale * flips
    out[:3, 3] = 2 * np.asarray(aug.translate[:3])
    return out


def _resize(a: np.ndarray, shape) -> np.ndarray:
    """Linear interpolation of ``a`` to ``shape``, first and last samples on the ends."""
    scale = [(m - 1) / (n - 1) for m, n in zip(a.shape, shape, strict=True)]
    return ndimage.affine_transform(a, scale, output_shape=tuple(shape), order=1, mode="nearest")


def _reference_render(labels: np.ndarray, draw, gen):
    shape, k = labels.shape, len(draw.within)
    unit = 1 / math.sqrt((2 / 3) ** 3)
    shared = _noise(draw.across, shape, gen)
    own = [_noise(w, shape, gen) for w in draw.within]
    lattice = [2, 2, 2]
    for noise in [shared, *own]:
        if noise is not None:
            lattice = [max(a, b) for a, b in zip(lattice, noise.shape[1:], strict=True)]
    axes = [np.linspace(0, n - 1, g) for n, g in zip(shape, lattice, strict=True)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    nodes = ((2 * nodes + 1) / np.asarray(shape) - 1)[..., ::-1]

    def field(aug, noise):
        if noise is None:
            return 0.0
        noise = noise.numpy()
        if list(noise.shape[1:]) != lattice:
            noise = np.stack([_resize(c, lattice) for c in noise])
        return np.moveaxis(noise, 0, -1) * (aug.elastic_alpha / 128 * unit * 2)

    across = field(draw.across, shared)
    warped = np.empty((k, *shape), np.int64)
    for j, aug in enumerate(draw.within):
        theta = (_matrix(draw.across) @ _matrix(aug))[:3]
        coarse = nodes @ theta[:, :3].T + theta[:, 3] + across + field(aug, noise=own[j])
        # normalized (x, y, z) -> voxel index per array axis (align_corners=False)
        coords = [
            (_resize(coarse[..., 2 - axis], shape) + 1) * shape[axis] / 2 - 0.5
            for axis in range(3)
        ]  # fmt: skip
        warped[j] = ndimage.map_coordinates(labels, coords, order=0, mode="constant")
    texture = torch.randn((k, 1, *shape), generator=gen).numpy()[:, 0]
    images = []
    noise_idx = [
        j for j, w in enumerate(draw.within)
        if draw.across.noise_mu + w.noise_mu or math.hypot(draw.across.noise_sigma, w.noise_sigma)
    ]  # fmt: skip
    noise = torch.randn((len(noise_idx), 1, *shape), generator=gen).numpy()[:, 0]
    for j, aug in enumerate(draw.within):
        image = draw.mean[warped[j]] + draw.std[warped[j]] * texture[j]
        image = (image - image.min()) / max(image.max() - image.min(), 1e-6)
        sigma = math.hypot(draw.across.blur_sigma, aug.blur_sigma)
        if sigma:
            image = ndimage.gaussian_filter(image, sigma, truncate=2 / sigma, mode="nearest")
        for a in (draw.across, aug):
            if a.sharpness != 1.0:
                box = ndimage.uniform_filter(image, 3, mode="nearest") * 27
                degenerate = (box + 4 * image) / 31
                image = np.clip(degenerate + a.sharpness * (image - degenerate), 0, 1)
        for a in (draw.across, aug):
            if "brightness_contrast" in a.applied:
                m = image.mean()
                image = np.clip((image - m) * a.contrast + m + a.brightness, 0, 1)
        if j in noise_idx:
            mu = draw.across.noise_mu + aug.noise_mu
            sd = math.hypot(draw.across.noise_sigma, aug.noise_sigma)
            image = np.clip(image + noise[noise_idx.index(j)] * sd + mu, 0, 1)
        if aug.flip_intensities:
            image = 1 - image
        images.append(image.astype(np.float32))
    return np.stack(images), warped.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--set-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="size 96, 2 sets of 4")
    args = parser.parse_args()
    if args.quick:
        args.size, args.sets = min(args.size, 96), min(args.sets, 2)
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
    print(f"torch threads {torch.get_num_threads()}; size {args.size}^3, {args.sets} sets x "
          f"{args.set_size} images")  # fmt: skip
    sides = {
        "xds": Side("xds: batched torch generator (grid_sample, lattice grids, separable filters)",
                    lambda: [(s.images, s.labels) for s in generate(
                        pool, config, sets=args.sets, set_size=args.set_size, seed=args.seed,
                        device="cpu")]),
        "ref": Side("scipy.ndimage per volume: affine_transform, the same lattice upsampled, "
                    "map_coordinates, gaussian/uniform filters",
                    lambda: [reference_set(pool, config, i, args.set_size, args.seed)
                             for i in range(args.sets)]),
    }  # fmt: skip
    compare(sides, rounds=args.rounds)
    ours, ref = sides["xds"].result, sides["ref"].result
    agree = np.mean([np.mean(a[1] == b[1]) for a, b in zip(ours, ref, strict=True)])
    same_labels = sum(int(a[1].max()) == int(b[1].max()) for a, b in zip(ours, ref, strict=True))
    n = args.sets * args.set_size
    print(f"label maps: {agree:.4f} of voxels equal; labels per set equal in {same_labels} of "
          f"{args.sets} sets; xds {n / sides['xds'].median:.2f} volumes/s, reference "
          f"{n / sides['ref'].median:.2f}")  # fmt: skip
    threads = f"one process, {torch.get_num_threads()} torch threads; scipy single-threaded"
    timed_report("synth", f"Anatomix sets vs scipy reference ({args.sets} x {args.set_size} "
                 f"of {args.size}^3)", sides["xds"], sides["ref"], goal=">= 10", faster=True,
                 parallelism=threads,
                 note=f"label maps {agree:.3f} voxel-equal")  # fmt: skip


if __name__ == "__main__":
    main()
