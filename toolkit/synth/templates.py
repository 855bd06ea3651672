"""Anatomix label-map templates (Pancakes, appendix F.2).

A template is a random label map built from real anatomy: 20-40 structures (binary masks cut
out of real label maps) placed into a ``size``^3 volume, each with its own random rotation,
scale and position; for 2D output one slice of it (random axis, slice 25-100 at size 128).
With probability 0.5 labels are split into connected components (cc3d), so a label is one
contiguous structure, and components under 20 voxels go to background. Every image and label
map of one set is warped from the same template.

Structures are kept as ``cube``^3 resampled masks plus their extent in mm, so placing 40 of
them is one batched ``grid_sample`` (torch) into windows of ``size / 2`` voxels, not 40
full-volume resamplings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xds.io.optional import optional
from xds.schemas.errors import SynthError

_TRIES = 25  # redraws before a template that keeps too few labels is an error


@dataclass(frozen=True)
class AnatomixConfig:
    """What a template and its set look like (Pancakes, F.2; defaults are the paper's).

    Attributes:
        size: edge of the generated volume (voxels).
        dims: 3 for volumes, 2 for slices of them.
        min_labels: fewest labels a template keeps.
        max_labels: most labels a template keeps (the largest win after a split).
        split_p: probability that labels are split into connected components.
        min_voxels: components smaller than this go to background.
        slices: slice index range for 2D output, at size 128 (scaled for other sizes).
        structure_scale: random scale range of a placed structure.
    """

    size: int = 128
    dims: int = 3
    min_labels: int = 20
    max_labels: int = 40
    split_p: float = 0.5
    min_voxels: int = 20
    slices: tuple[int, int] = (25, 100)
    structure_scale: tuple[float, float] = (0.8, 1.6)

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise SynthError(f"dims must be 2 or 3, not {self.dims}")
        if self.size < 16:
            raise SynthError(f"size must be at least 16 voxels, not {self.size}")
        if not 1 <= self.min_labels <= self.max_labels <= 255:
            raise SynthError(
                f"need 1 <= min_labels <= max_labels <= 255, got {self.min_labels}, "
                f"{self.max_labels}"
            )

    def to_dict(self) -> dict:
        """The configuration as JSON-ready data."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def digest(self, seed: int, templates: str) -> str:
        """A short id of (config, seed, templates): the generator run's identity."""
        text = json.dumps([self.to_dict(), seed, templates], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class StructurePool:
    """Binary structures cut out of template label maps.

    Attributes:
        masks: (N, cube, cube, cube) float32 masks resampled from each structure's box.
        extents_mm: (N, 3) the boxes' size in mm (voxel axes).
        voxel_mm: the generated volume's voxel size: median template field of view / size.
        n_templates: label maps the structures come from.
    """

    masks: np.ndarray
    extents_mm: np.ndarray
    voxel_mm: float
    n_templates: int

    def __len__(self) -> int:
        return len(self.masks)


def load_structures(
    paths: list[Path], *, size: int, cube: int = 32, min_voxels: int = 20
) -> StructurePool:
    """Every label of every label map in ``paths`` as a structure.

    Raises:
        SynthError: a file that is not a 3D label map (named), or no structure at all.
    """
    import nibabel as nib
    torch = optional("torch", "Anatomix synthesis", "synth")
    F = optional("torch.nn.functional", "Anatomix synthesis", "synth")
    from scipy import ndimage

    masks, extents, fovs = [], [], []
    for path in paths:
        try:
            image = nib.load(path)
            data = np.asanyarray(image.dataobj)
        except Exception as exc:  # nibabel raises many types for broken files
            raise SynthError(f"{path}: unreadable label map ({type(exc).__name__})") from None
        data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
        if data.ndim != 3 or (data.dtype.kind == "f" and not np.array_equal(data, np.round(data))):
            raise SynthError(f"{path}: not a 3D integer label map (shape {data.shape})")
        data = data.astype(np.int64)
        if data.min() < 0:
            raise SynthError(f"{path}: label map holds negative values")
        spacing = np.asarray(image.header.get_zooms()[:3], dtype=float)
        fovs.append(float((np.asarray(data.shape) * spacing).max()))
        for value, box in enumerate(ndimage.find_objects(data), start=1):
            if box is None:
                continue
            mask = data[box] == value
            if mask.sum() < min_voxels:
                continue
            tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
            masks.append(F.interpolate(tensor, size=(cube,) * 3, mode="trilinear")[0, 0])
            extents.append(np.asarray(mask.shape) * spacing)
    if not masks:
        raise SynthError(
            f"no structure of at least {min_voxels} voxels in {len(paths)} template label map(s)"
        )
    return StructurePool(
        masks=torch.stack(masks).numpy(),
        extents_mm=np.asarray(extents, dtype=np.float32),
        voxel_mm=float(np.median(fovs)) / size,
        n_templates=len(paths),
    )


def make_template(pool: StructurePool, config: AnatomixConfig, gen) -> tuple[np.ndarray, dict]:
    """One template label map (uint8, ``size``^dims) drawn with torch generator ``gen``.

    Returns the map (labels 1..n, consecutive) and what was drawn (structures placed,
    split or not, 2D axis and slice, tries).

    Raises:
        SynthError: the templates cannot give ``min_labels`` labels in ``_TRIES`` draws.
    """
    torch = optional("torch", "Anatomix synthesis", "synth")

    for tries in range(1, _TRIES + 1):
        volume, placed = _place(pool, config, gen)
        info = {"structures": placed, "tries": tries}
        if np.count_nonzero(np.bincount(volume.ravel())[1:]) < config.min_labels:
            continue
        if config.dims == 2:
            axis = int(torch.randint(3, (1,), generator=gen))
            lo, hi = (round(s * config.size / 128) for s in config.slices)
            index = min(int(torch.randint(lo, hi + 1, (1,), generator=gen)), config.size - 1)
            volume = np.ascontiguousarray(volume.take(index, axis=axis))
            info.update(axis=axis, slice=index)
        split = bool(torch.rand(1, generator=gen) < config.split_p)
        labels = clean_labels(volume, split=split, config=config)
        info["split"] = split
        info["labels"] = int(labels.max())
        if info["labels"] >= (config.min_labels if config.dims == 3 else 2):
            return labels, info
    raise SynthError(
        f"the templates' {len(pool)} structures gave fewer than {config.min_labels} labels "
        f"of {config.min_voxels}+ voxels in {_TRIES} draws; use larger or more template "
        "label maps, a larger --size or fewer --min-labels"
    )


def clean_labels(labels: np.ndarray, *, split: bool, config: AnatomixConfig) -> np.ndarray:
    """Split into components (when ``split``), drop small ones, keep the largest, renumber.

    Components under ``min_voxels`` go to background either way, so no label holds a speck;
    with ``split`` every component is a label of its own. Of what is left the
    ``max_labels`` largest labels are kept and renumbered 1..n by decreasing size.
    """
    import cc3d

    connectivity = 26 if labels.ndim == 3 else 8
    labels = cc3d.dust(labels, threshold=config.min_voxels, connectivity=connectivity)
    if split:
        labels = cc3d.connected_components(labels, connectivity=connectivity)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    keep = np.argsort(-counts, kind="stable")[: config.max_labels]
    keep = keep[counts[keep] > 0]
    lut = np.zeros(len(counts), dtype=np.uint8)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def _place(pool: StructurePool, config: AnatomixConfig, gen) -> tuple[np.ndarray, int]:
    """Place min..max_labels random structures into a size^3 volume (larger ones first)."""
    torch = optional("torch", "Anatomix synthesis", "synth")
    F = optional("torch.nn.functional", "Anatomix synthesis", "synth")

    size, window = config.size, config.size // 2
    n = int(torch.randint(config.min_labels, config.max_labels + 1, (1,), generator=gen))
    idx = torch.randint(len(pool), (n,), generator=gen)
    lo, hi = config.structure_scale
    scale = lo + (hi - lo) * torch.rand(n, generator=gen)
    rotation = _random_rotations(n, gen)
    centre = ((0.2 + 0.6 * torch.rand(n, 3, generator=gen)) * size).round().long()

    half = torch.from_numpy(pool.extents_mm)[idx] * scale[:, None] / (2 * pool.voxel_mm)
    # a rotated structure must fit the largest window: shrink those whose half-diagonal does not
    fit = ((window / 2 - 1) / half.norm(dim=1)).clamp(max=1.0)
    half = (half * fit[:, None]).clamp(min=0.5)
    # each structure gets the smallest window (a multiple of 8 voxels) its rotations fit in;
    # one batched resampling per window size
    sizes = (((2 * half.norm(dim=1) + 2) / 8).ceil() * 8).clamp(max=window).long()
    masks: list = [None] * n
    for w in sorted(set(sizes.tolist())):
        group = (sizes == w).nonzero()[:, 0]
        # affine_grid coordinates run (x, y, z) = (last, middle, first) voxel axis
        theta = torch.zeros(len(group), 3, 4)
        theta[:, :, :3] = (
            (1 / half[group].flip(-1))[:, :, None] * rotation[group].transpose(1, 2) * (w / 2)
        )
        # the masks hold `cube` voxels across a structure: sampling finer than that adds
        # nothing, so sample at most cube^3 and interpolate the occupancy up to the window
        coarse = min(w, pool.masks.shape[1])
        cubes = torch.from_numpy(pool.masks)[idx[group], None]
        occupancy = F.grid_sample(cubes, _affine_grid(theta, coarse), align_corners=False)
        if coarse < w:
            occupancy = F.interpolate(occupancy, size=(w, w, w), mode="trilinear")
        found = (occupancy > 0.5)[:, 0].numpy()
        for k, mask in zip(group.tolist(), found, strict=True):
            masks[k] = mask

    padded = np.zeros((size + window,) * 3, dtype=np.uint8)
    order = np.argsort([-m.sum() for m in masks], kind="stable")
    for label, k in enumerate(order, start=1):
        # the window is centred on the structure's centre (offset window/2 in the padding)
        a, b, c = (centre[k] + window // 2 - sizes[k] // 2).tolist()
        w = int(sizes[k])
        padded[a : a + w, b : b + w, c : c + w][masks[k]] = label
    lo_, hi_ = window // 2, window // 2 + size
    return np.ascontiguousarray(padded[lo_:hi_, lo_:hi_, lo_:hi_]), n


def _affine_grid(theta, w: int):
    """``F.affine_grid(theta, [n, 1, w, w, w], align_corners=False)``, three times faster.

    A sum of broadcast axes instead of a batched matrix product with a ones channel.
    """
    torch = optional("torch", "Anatomix synthesis", "synth")

    centres = (torch.arange(w, dtype=theta.dtype) * 2 + 1) / w - 1
    x, y, z = centres.view(1, 1, 1, w, 1), centres.view(1, 1, w, 1, 1), centres.view(1, w, 1, 1, 1)
    a = theta[:, None, None, None]  # (n, 1, 1, 1, 3, 4)
    return x * a[..., 0] + y * a[..., 1] + z * a[..., 2] + a[..., 3]


def _random_rotations(n: int, gen):
    """(n, 3, 3) rotations uniform on SO(3) (normalized Gaussian quaternions)."""
    torch = optional("torch", "Anatomix synthesis", "synth")

    q = torch.randn(n, 4, generator=gen)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], 1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], 1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1),
        ],
        1,
    )


def set_generator(seed: int, index: int):
    """The torch generator of set ``index``: its draws do not depend on other sets or batches."""
    torch = optional("torch", "Anatomix synthesis", "synth")

    digest = hashlib.sha256(f"anatomix:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
