"""A montage PNG of a few synthetic sets: one row per set, image above its label map."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

_TILE = 128  # pixels per image in the montage
_GAP = 4


def montage(sets: list, path: str | Path, *, max_images: int = 6) -> Path:
    """Write rows of (image, label map) pairs of ``sets`` (middle slice of 3D ones) to ``path``.

    Each set gets two rows: its images (grey) and their label maps (one colour per label).
    """
    from PIL import Image

    path = Path(path)
    columns = min(max_images, max(len(s.images) for s in sets))
    width = columns * (_TILE + _GAP) + _GAP
    height = len(sets) * 2 * (_TILE + _GAP) + _GAP
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    palette = _palette(256)
    for row, item in enumerate(sets):
        for col in range(min(columns, len(item.images))):
            image, label = _middle(item.images[col]), _middle(item.labels[col])
            grey = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)
            for k, tile in enumerate((grey, palette[label])):
                top = _GAP + (2 * row + k) * (_TILE + _GAP)
                left = _GAP + col * (_TILE + _GAP)
                canvas[top : top + _TILE, left : left + _TILE] = _resize(tile)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an adaptive 256-colour palette: a third of the bytes of RGB for the docs
    Image.fromarray(canvas).quantize(256).save(path, optimize=True)
    return path


def _middle(volume: np.ndarray) -> np.ndarray:
    """A 2D view: the array itself, or the middle slice along the last axis (rotated)."""
    plane = volume if volume.ndim == 2 else volume[:, :, volume.shape[2] // 2]
    return np.rot90(plane)


def _resize(tile: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(tile).resize((_TILE, _TILE), Image.NEAREST))


def _palette(n: int) -> np.ndarray:
    """Background black, then well-separated hues (golden-ratio steps)."""
    colours = [(0, 0, 0)] + [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1, 0.75, 0.95))
        for k in range(1, n)
    ]
    return np.asarray(colours, dtype=np.uint8)
