"""Abdominal anatomy of a phantom subject, as a label map sampled on any voxel grid.

Organs are deformed ellipsoids, tubes and cylinders defined in RAS+ millimetres (x grows
toward the patient's Right, y toward Anterior, z toward Superior; origin near the pancreas
head), so the same subject rasterized on two centers' grids (spacing, orientation, field of
view) is the same body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ORGANS = (
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "pancreas",
    "gallbladder",
    "stomach",
    "aorta",
    "inferior_vena_cava",
)
"""Organs a phantom label map can hold, by their canonical class names."""

# Tissue codes used by the renderer. Organ tissues double as the canonical label names.
TISSUES = ("air", "fat", "muscle", "bone", *ORGANS, "cyst", "tumour")
TISSUE = {name: i for i, name in enumerate(TISSUES)}

# Lesion tissues belong to the pancreas label (CrossPan labels the whole gland).
_LABEL_OF_TISSUE = {"cyst": "pancreas", "tumour": "pancreas"}


@dataclass
class Anatomy:
    """One subject's body: organ shapes drawn from the subject's random generator.

    Attributes:
        scale: body size factor (about 0.9-1.1).
        subcutaneous_fat_mm: thickness of the subcutaneous fat layer.
        lesion: "none", "cyst" or "tumour" (a sphere inside the pancreas).
        variability: how far subjects differ: multiplies every organ's position jitter,
            size spread and the deformation's amplitude (1: the default world; 3: organs
            move by up to 24 mm, change size by up to 36 % and bend by about 8 mm, so a
            handful of labelled subjects no longer covers the shapes a model meets). The
            same random numbers are drawn whatever its value.
    """

    rng: np.random.Generator
    scale: float = 1.0
    subcutaneous_fat_mm: float = 15.0
    lesion: str = "none"
    variability: float = 1.0
    _organs: dict = field(default_factory=dict, init=False)
    _warp: tuple = field(default=(), init=False)

    def __post_init__(self) -> None:
        r = self.rng
        s = self.scale
        v = self.variability

        def about_one(low, high, size=None):
            # 1 +- the spread times v (exactly r.uniform(low, high) when v is 1)
            return 1 + v * (r.uniform(low, high, size) - 1)

        def jitter(center, radii, shift=8.0, spread=0.12):
            c = np.asarray(center, float) * s + v * r.uniform(-shift, shift, 3)
            rad = np.asarray(radii, float) * s * about_one(1 - spread, 1 + spread, 3)
            return c, np.maximum(rad, 2.0)

        self._organs = {
            "liver": jitter((65, 15, 45), (80, 75, 62)),
            "spleen": jitter((-85, -30, 50), (30, 45, 50)),
            "kidney_right": jitter((58, -52, -15), (26, 30, 52)),
            "kidney_left": jitter((-58, -52, -5), (26, 30, 52)),
            "gallbladder": jitter((58, 48, -5), (16, 18, 30), spread=0.25),
            "stomach": jitter((-40, 32, 45), (48, 35, 40)),
        }
        # Pancreas: a tube along a quadratic curve from the head (patient right) to the tail.
        head = np.array((32, 8, -8)) * s + v * r.uniform(-6, 6, 3)
        tail = np.array((-78, -28, 12)) * s + v * r.uniform(-6, 6, 3)
        bend = (head + tail) / 2 + np.array((0, 22, 4)) * s + v * r.uniform(-6, 6, 3)
        t = np.linspace(0, 1, 24)[:, None]
        self._pancreas_curve = (1 - t) ** 2 * head + 2 * (1 - t) * t * bend + t**2 * tail
        self._pancreas_radius = np.linspace(14, 8, 24) * s * max(about_one(0.85, 1.15), 0.3)
        self._vessels = {
            "aorta": (np.array((-12, -38)) * s + v * r.uniform(-4, 4, 2), 11 * s),
            "inferior_vena_cava": (np.array((24, -34)) * s + v * r.uniform(-4, 4, 2), 12 * s),
        }
        k = int(r.integers(4, 24))
        self._lesion_center = self._pancreas_curve[k] + r.uniform(-3, 3, 3)
        self._lesion_radius = float(self._pancreas_radius[k] * r.uniform(0.5, 0.8))
        # Smooth deformation: a few random plane waves, amplitude a few mm.
        self._warp = (
            r.normal(0, 1 / 60, (5, 3)),  # wave vectors (1/mm)
            r.uniform(0, 2 * np.pi, 5),  # phases
            v * r.normal(0, 2.5, (5, 3)),  # amplitudes (mm)
        )

    def tissue_map(self, world: np.ndarray) -> np.ndarray:
        """Tissue codes (see :data:`TISSUE`) at world points of shape (..., 3), in mm."""
        k, phase, amp = self._warp
        p = world + np.sin(world @ k.T + phase) @ amp
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        s = self.scale
        out = np.zeros(p.shape[:-1], np.uint8)
        body = (x / (150 * s)) ** 2 + (y / (112 * s)) ** 2 <= 1
        fat_inner = (x / (150 * s - self.subcutaneous_fat_mm)) ** 2 + (
            y / (112 * s - self.subcutaneous_fat_mm)
        ) ** 2
        wall = 9.0
        inner = (x / (150 * s - self.subcutaneous_fat_mm - wall)) ** 2 + (
            y / (112 * s - self.subcutaneous_fat_mm - wall)
        ) ** 2 <= 1
        out[body] = TISSUE["fat"]
        out[body & (fat_inner <= 1)] = TISSUE["muscle"]
        out[inner] = TISSUE["fat"]  # visceral fat fills what organs leave free
        spine = (x / (22 * s)) ** 2 + ((y + 82 * s) / (20 * s)) ** 2 <= 1
        out[spine] = TISSUE["bone"]
        # Paint from least to most specific; later organs win overlaps.
        for name in ("liver", "stomach", "spleen", "kidney_right", "kidney_left", "gallbladder"):
            c, rad = self._organs[name]
            inside = (((p - c) / rad) ** 2).sum(-1) <= 1
            out[inside & inner] = TISSUE[name]
        out[self._in_pancreas(p) & inner] = TISSUE["pancreas"]
        if self.lesion != "none":
            d2 = ((p - self._lesion_center) ** 2).sum(-1)
            out[(d2 <= self._lesion_radius**2) & (out == TISSUE["pancreas"])] = TISSUE[self.lesion]
        for name, (center, radius) in self._vessels.items():
            tube = ((x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2) & (np.abs(z) < 140)
            out[tube & inner] = TISSUE[name]
        return out

    def _in_pancreas(self, p: np.ndarray) -> np.ndarray:
        inside = np.zeros(p.shape[:-1], bool)
        for center, radius in zip(self._pancreas_curve, self._pancreas_radius, strict=True):
            inside |= ((p - center) ** 2).sum(-1) <= radius**2
        return inside


def labels_from_tissues(tissues: np.ndarray, index_of: dict[str, int]) -> np.ndarray:
    """A label map from a tissue map, with the center's own class indices.

    Organs the convention does not name stay background (partial labels).
    """
    lut = np.zeros(len(TISSUES), np.uint8)
    for tissue, code in TISSUE.items():
        name = _LABEL_OF_TISSUE.get(tissue, tissue)
        lut[code] = index_of.get(name, 0)
    return lut[tissues]
