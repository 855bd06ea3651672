"""MR and CT contrast from tissue physics, so image intensities and protocol tags agree.

Relaxation times (ms) are published in-vivo values (de Bazelaire et al., Radiology 2004,
at 1.5 T and 3 T; blood, bile and fluid from the usual literature ranges). Each voxel holds a
water and a fat compartment; a sequence's signal equation gives each compartment's signal,
and the opposed-phase echo subtracts them (fat-water cancellation at boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xds.phantoms.anatomy import TISSUES

# Pancreatic-phase enhancement: the gland enhances avidly, the spleen less.
# tissue: (proton density, fat fraction, (T1, T2) at 1.5 T, (T1, T2) at 3 T, gadolinium mM, HU)
_PROPS = {
    "air": (0.0, 0.0, (1, 1), (1, 1), 0.0, -1000),
    "fat": (0.9, 1.0, (343, 58), (382, 68), 0.0, -100),
    "muscle": (0.7, 0.02, (856, 27), (898, 29), 0.2, 50),
    "bone": (0.35, 0.5, (550, 40), (600, 40), 0.05, 600),
    "liver": (0.75, 0.03, (586, 46), (809, 34), 0.3, 60),
    "spleen": (0.8, 0.0, (1057, 79), (1328, 61), 0.3, 50),
    "kidney_right": (0.85, 0.0, (1189, 86), (1343, 78), 0.9, 35),
    "kidney_left": (0.85, 0.0, (1189, 86), (1343, 78), 0.9, 35),
    "pancreas": (0.8, 0.06, (584, 46), (725, 43), 0.5, 45),
    "gallbladder": (1.0, 0.0, (3000, 500), (3000, 500), 0.0, 10),
    "stomach": (0.95, 0.0, (2800, 450), (2900, 420), 0.05, 15),
    "aorta": (0.9, 0.0, (1441, 290), (1932, 275), 1.2, 45),
    "inferior_vena_cava": (0.9, 0.0, (1441, 290), (1932, 275), 0.9, 45),
    "cyst": (1.0, 0.0, (3000, 700), (3000, 700), 0.0, 10),
    "tumour": (0.8, 0.0, (1100, 70), (1300, 65), 0.15, 40),
}
_FAT_T1T2 = {1.5: (343.0, 58.0), 3.0: (382.0, 68.0)}
_R1_GD = 4.0e-3  # gadolinium relaxivity, 1/(mM ms)


@dataclass(frozen=True)
class Protocol:
    """One center's acquisition of one sequence (the values written into DICOM tags).

    Attributes:
        sequence: T1W (contrast-enhanced, fat-saturated spoiled GRE), T2W (turbo spin echo),
            OOP or IP (dual-echo GRE), or CT.
        tr_ms, te_ms: repetition and echo time; flip_deg: flip angle.
    """

    sequence: str
    field_strength: float
    tr_ms: float
    te_ms: float
    flip_deg: float
    contrast_agent: bool = False
    fat_suppression: float = 0.0  # fraction of fat signal removed


def default_protocol(sequence: str, field_strength: float, rng: np.random.Generator) -> Protocol:
    """A plausible protocol for ``sequence`` at ``field_strength`` tesla, jittered per center."""
    b0 = field_strength
    if sequence == "T1W":
        return Protocol(
            "T1W",
            b0,
            rng.uniform(3.5, 4.5),
            rng.uniform(1.3, 2.0),
            rng.uniform(10, 15),
            contrast_agent=True,
            fat_suppression=0.85,
        )
    if sequence == "T2W":
        return Protocol("T2W", b0, rng.uniform(1500, 4500), rng.uniform(80, 110), 90.0)
    if sequence in ("OOP", "IP"):
        # Opposed phase at ~2.3 ms (1.5 T) / ~1.15 ms (3 T); in phase at twice that.
        opposed = 2.3 if b0 < 2 else 1.15
        te = opposed if sequence == "OOP" else 2 * opposed
        return Protocol(sequence, b0, rng.uniform(150, 200), te, rng.uniform(65, 75))
    if sequence == "CT":
        return Protocol("CT", 0.0, 0.0, 0.0, 0.0, contrast_agent=True)
    raise ValueError(f"the phantom world cannot render sequence {sequence!r}")


def _signal(protocol: Protocol, pd, t1, t2):
    tr, te = protocol.tr_ms, protocol.te_ms
    e1 = np.exp(-tr / t1)
    if protocol.sequence == "T2W":  # spin echo
        return pd * (1 - e1) * np.exp(-te / t2)
    a = np.deg2rad(protocol.flip_deg)  # spoiled gradient echo (T2 stands in for T2*)
    return pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / t2)


def water_fat_signal(protocol: Protocol, fat_fraction_liver: float = 0.03):
    """Per-tissue water and fat signals (arrays indexed by tissue code)."""
    b0 = 1.5 if protocol.field_strength < 2 else 3.0
    water = np.zeros(len(TISSUES))
    fat = np.zeros(len(TISSUES))
    t1f, t2f = _FAT_T1T2[b0]
    s_fat = _signal(protocol, 0.9, t1f, t2f) * (1 - protocol.fat_suppression)
    for i, name in enumerate(TISSUES):
        pd, ff, t15, t30, gd, _ = _PROPS[name]
        if name == "liver":
            ff = fat_fraction_liver
        t1, t2 = t15 if b0 == 1.5 else t30
        if protocol.contrast_agent:
            t1 = 1.0 / (1.0 / t1 + _R1_GD * gd)
        water[i] = (1 - ff) * _signal(protocol, pd, t1, t2)
        fat[i] = ff * s_fat
    water[0] = fat[0] = 0.0
    return water, fat


def render(
    tissues: np.ndarray,
    protocol: Protocol,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    noise: float,
    bias: float,
    fat_fraction_liver: float = 0.03,
) -> np.ndarray:
    """An image (float32, arbitrary units or HU) of a tissue map under ``protocol``.

    Partial volume is modelled by blurring the water and fat signals over about one voxel
    before they are combined, which is what makes opposed-phase images show dark rims where
    fat meets water ("India ink"). MR gets a smooth bias field and Rician noise
    (``noise`` x mean body signal); CT gets Gaussian noise in HU.
    """
    sigma = [0.6 * min(spacing) / s for s in spacing]
    if protocol.sequence == "CT":
        hu = np.array([_PROPS[name][5] for name in TISSUES], np.float32)
        if protocol.contrast_agent:
            hu += np.array([_PROPS[name][4] * 120 for name in TISSUES], np.float32)
        image = ndimage.gaussian_filter(hu[tissues], sigma)
        return (image + rng.normal(0, 12, image.shape)).astype(np.float32)
    water, fat = water_fat_signal(protocol, fat_fraction_liver)
    w = ndimage.gaussian_filter(water[tissues], sigma)
    f = ndimage.gaussian_filter(fat[tissues], sigma)
    image = np.abs(w - f) if protocol.sequence == "OOP" else w + f
    image *= _bias_field(image.shape, bias, rng)
    body = tissues > 0
    level = float(image[body].mean()) if body.any() else 1.0
    sd = noise * level
    image = np.hypot(image + rng.normal(0, sd, image.shape), rng.normal(0, sd, image.shape))
    return image.astype(np.float32)


def _bias_field(shape, strength: float, rng: np.random.Generator) -> np.ndarray:
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    coef = rng.normal(0, 1, (len(shape), 2))
    log_field = sum(c[0] * a + c[1] * (a**2 - 1 / 3) for c, a in zip(coef, axes, strict=True))
    log_field *= strength / max(1e-6, float(np.abs(log_field).max()))
    return np.exp(log_field)
