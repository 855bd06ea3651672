"""Render a set of images and label maps from one template (Pancakes, F.2 and Table 3).

A set shares one random *protocol* (a mean and a texture std of intensity per label,
background included) and one draw of the across-set augmentations; each element adds its own
within-set augmentations. Geometry (affine, elastic, flips) warps the label map, the image is
rendered from the warped labels, then intensity augmentations follow (blur, sharpness,
brightness/contrast, noise, flipped intensities) and the image is scaled to [0, 1].

Ranges and probabilities are Table 3's. Where the table leaves a meaning open:

- affine: rotation about each axis (one in 2D), translation as a fraction of the size per
  axis with a random sign, isotropic scale;
- elastic: a smooth random displacement field with correlation length sigma voxels and
  standard deviation alpha voxels per axis (at size 128; both scale with the size);
- sharpness: torchvision's definition (blend with a 3x3(x3) smoothing kernel whose centre
  weighs 5) with the table's factor;
- brightness/contrast: ``(x - mean) * contrast + mean + brightness``;
- the protocol: mean ~ U(0, 1) and texture std ~ U(0, 0.05) per label.

Everything one set needs is drawn from that set's generator in a fixed order, so a set is
the same whatever else is generated with it. All elements of a set are computed as one batch
(one ``grid_sample``, grouped convolutions), on the GPU when the tensors live there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from xds.io.optional import optional

# Table 3 (a): within-set, (b): across-set. (probability, parameter ranges)
WITHIN = {
    "affine": (0.25, {"degrees": (-25.0, 25.0), "translate": (0.0, 0.1), "scale": (0.9, 1.1)}),
    "brightness_contrast": (0.5, {"brightness": (-0.1, 0.1), "contrast": (0.5, 1.5)}),
    "elastic": (0.8, {"alpha": (1.0, 2.5), "sigma": (7.0, 9.0)}),
    "sharpness": (0.25, {"factor": (3.0, 3.0)}),
    "flip_intensities": (0.5, {}),
    "blur": (0.25, {"sigma": (0.1, 1.0)}),
    "noise": (0.25, {"mu": (0.0, 0.05), "sigma": (0.0, 0.05)}),
}
ACROSS = {
    "affine": (0.5, {"degrees": (0.0, 360.0), "translate": (0.0, 0.2), "scale": (0.8, 1.1)}),
    "brightness_contrast": (0.5, {"brightness": (-0.1, 0.1), "contrast": (0.8, 1.2)}),
    "blur": (0.5, {"sigma": (0.1, 1.1)}),
    "noise": (0.5, {"mu": (0.0, 0.05), "sigma": (0.0, 0.05)}),
    "elastic": (0.5, {"alpha": (1.0, 2.0), "sigma": (6.0, 8.0)}),
    "sharpness": (0.5, {"factor": (5.0, 5.0)}),
    "horizontal_flip": (0.5, {}),
    "vertical_flip": (0.5, {}),
}
TEXTURE_STD = (0.0, 0.05)  # wider makes sharpened images (factor 3 x 5) mostly noise
BLUR_TAPS = 5  # the table's kernel size k


@dataclass
class Augment:
    """One draw of a table's augmentations; values of those not drawn are the identity."""

    applied: list[str] = field(default_factory=list)
    degrees: tuple[float, ...] = (0.0, 0.0, 0.0)
    translate: tuple[float, ...] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    flips: tuple[bool, bool] = (False, False)
    brightness: float = 0.0
    contrast: float = 1.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 8.0
    sharpness: float = 1.0
    blur_sigma: float = 0.0
    noise_mu: float = 0.0
    noise_sigma: float = 0.0
    flip_intensities: bool = False

    def to_dict(self) -> dict:
        """Only what was applied, JSON-ready (for ``scans.protocol``)."""
        out = {k: v for k, v in asdict(self).items() if k != "applied"}
        default = asdict(Augment())
        return {"applied": self.applied, **{k: v for k, v in out.items() if v != default[k]}}


@dataclass
class SetDraw:
    """What one set draws: its protocol, its across-set and its per-element augmentations."""

    mean: np.ndarray  # (n_labels + 1,) intensity per label, background first
    std: np.ndarray  # (n_labels + 1,) texture std per label
    across: Augment
    within: list[Augment]


def draw_set(gen, n_labels: int, set_size: int, dims: int) -> SetDraw:
    """Draw a set's protocol and augmentations from its generator."""
    torch = optional("torch", "Anatomix rendering", "synth")

    mean = torch.rand(n_labels + 1, generator=gen).numpy()
    lo, hi = TEXTURE_STD
    std = (lo + (hi - lo) * torch.rand(n_labels + 1, generator=gen)).numpy()
    across = _draw(gen, ACROSS, dims)
    within = [_draw(gen, WITHIN, dims) for _ in range(set_size)]
    return SetDraw(mean.astype(np.float32), std.astype(np.float32), across, within)


def _draw(gen, table: dict, dims: int) -> Augment:
    torch = optional("torch", "Anatomix rendering", "synth")

    def u(lo: float, hi: float, n: int = 1) -> list[float]:
        return (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)).tolist()

    aug = Augment()
    for name, (p, ranges) in table.items():
        if float(torch.rand(1, generator=gen, dtype=torch.float64)) >= p:
            continue
        aug.applied.append(name)
        if name == "affine":
            aug.degrees = tuple(u(*ranges["degrees"], n=3 if dims == 3 else 1))
            signs = torch.randint(0, 2, (dims,), generator=gen) * 2 - 1
            shifts = u(*ranges["translate"], n=dims)
            aug.translate = tuple(float(s) * t for s, t in zip(signs, shifts, strict=True))
            aug.scale = u(*ranges["scale"])[0]
        elif name == "brightness_contrast":
            aug.brightness, aug.contrast = u(*ranges["brightness"])[0], u(*ranges["contrast"])[0]
        elif name == "elastic":
            aug.elastic_alpha, aug.elastic_sigma = u(*ranges["alpha"])[0], u(*ranges["sigma"])[0]
        elif name == "sharpness":
            aug.sharpness = u(*ranges["factor"])[0]
        elif name == "blur":
            aug.blur_sigma = u(*ranges["sigma"])[0]
        elif name == "noise":
            aug.noise_mu, aug.noise_sigma = u(*ranges["mu"])[0], u(*ranges["sigma"])[0]
        elif name == "flip_intensities":
            aug.flip_intensities = True
        elif name == "horizontal_flip":
            aug.flips = (True, aug.flips[1])
        elif name == "vertical_flip":
            aug.flips = (aug.flips[0], True)
    return aug


def render_set(template: np.ndarray, draw: SetDraw, gen, *, device="cpu"):
    """Images (K, *shape) float32 in [0, 1] and label maps (K, *shape) uint8 of one set.

    ``template`` is 2D or 3D; ``gen`` (the set's generator, after :func:`draw_set`) draws
    the random fields and noise, always on the CPU, so a seed gives the same set on any device.
    """
    torch = optional("torch", "Anatomix rendering", "synth")
    F = optional("torch.nn.functional", "Anatomix rendering", "synth")

    k, shape = len(draw.within), tuple(template.shape)
    labels = torch.from_numpy(template).to(device=device, dtype=torch.float32)
    grid = _sampling_grid(draw, shape, gen).to(device)
    warped = F.grid_sample(
        labels.expand(k, 1, *shape), grid, mode="nearest", align_corners=False
    ).long()
    del grid

    mean = torch.from_numpy(draw.mean).to(device)
    std = torch.from_numpy(draw.std).to(device)
    texture = torch.randn(warped.shape, generator=gen).to(device)
    image = torch.take(mean, warped).addcmul_(torch.take(std, warped), texture)
    del texture
    image = _rescale(image)

    view = (-1,) + (1,) * (1 + len(shape))

    def column(values: list[float]) -> torch.Tensor:  # one value per image, broadcastable
        return torch.tensor(values, dtype=torch.float32, device=device).view(view)

    # each step touches only the images that drew it
    sigma = [math.hypot(draw.across.blur_sigma, w.blur_sigma) for w in draw.within]
    idx = [i for i in range(k) if sigma[i]]
    if idx:
        image[idx] = _blur(image[idx], [sigma[i] for i in idx])
    for augs in ([draw.across] * k, draw.within):
        idx = [i for i in range(k) if augs[i].sharpness != 1.0]
        if idx:
            factor = column([augs[i].sharpness for i in idx])
            image[idx] = _sharpen(image[idx], factor).clamp_(0, 1)
    for augs in ([draw.across] * k, draw.within):
        idx = [i for i in range(k) if "brightness_contrast" in augs[i].applied]
        if idx:
            part = image[idx]
            centre = part.mean(dim=tuple(range(1, part.dim())), keepdim=True)
            contrast = column([augs[i].contrast for i in idx])
            brightness = column([augs[i].brightness for i in idx])
            image[idx] = ((part - centre) * contrast + centre + brightness).clamp_(0, 1)
    mu = [draw.across.noise_mu + w.noise_mu for w in draw.within]
    sd = [math.hypot(draw.across.noise_sigma, w.noise_sigma) for w in draw.within]
    idx = [i for i in range(k) if mu[i] or sd[i]]
    if idx:
        noise = torch.randn((len(idx), 1, *shape), generator=gen).to(device)
        noise = noise * column([sd[i] for i in idx]) + column([mu[i] for i in idx])
        image[idx] = (image[idx] + noise).clamp_(0, 1)
    idx = [i for i, w in enumerate(draw.within) if w.flip_intensities]
    if idx:
        image[idx] = 1 - image[idx]
    return image[:, 0].cpu().numpy(), warped[:, 0].to(torch.uint8).cpu().numpy()


def _rescale(image):
    """Each image scaled to [0, 1] (min to 0, max to 1)."""
    dims = tuple(range(1, image.dim()))
    low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
    return image.sub_(low).div_((high - low).clamp(min=1e-6))


def _affine(across: Augment, within: Augment, dims: int):
    """(dims, dims + 1) matrix, output -> template, in ``grid_sample``'s normalized (x, y, z)."""
    torch = optional("torch", "Anatomix rendering", "synth")

    def matrix(aug: Augment):
        out = torch.eye(dims + 1, dtype=torch.float64)
        flips = torch.ones(dims, dtype=torch.float64)
        flips[0], flips[1] = (-1.0 if f else 1.0 for f in aug.flips)
        out[:dims, :dims] = _rotation(aug.degrees, dims) * aug.scale * flips  # flips: columns
        out[:dims, dims] = 2 * torch.tensor(aug.translate[:dims], dtype=torch.float64)
        return out

    return (matrix(across) @ matrix(within))[:dims]


def _rotation(degrees: tuple[float, ...], dims: int):
    torch = optional("torch", "Anatomix rendering", "synth")

    a = [math.radians(d) for d in degrees]
    if dims == 2:
        c, s = math.cos(a[0]), math.sin(a[0])
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    out = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(a):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [x for x in range(3) if x != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def _noise(aug: Augment, shape: tuple[int, ...], gen):
    """An elastic field's noise: (dims, *lattice) unit normals sigma voxels apart, or None.

    Sigma is given at size 128 and scales with the size.
    """
    torch = optional("torch", "Anatomix rendering", "synth")

    if not aug.elastic_alpha:
        return None
    sigma = aug.elastic_sigma * max(shape) / 128
    lattice = [max(2, math.ceil((n - 1) / sigma) + 1) for n in shape]
    return torch.randn(len(shape), *lattice, generator=gen, dtype=torch.float64)


def _sampling_grid(draw: SetDraw, shape: tuple[int, ...], gen):
    """The (K, *shape, dims) ``grid_sample`` grid of a set: affine plus elastic fields.

    Both are built on a coarse lattice and interpolated to every voxel in one step: linear
    interpolation reproduces the affine part exactly, and interpolating unit normals placed
    sigma voxels apart gives a field smooth at sigma (scaled so its mean variance is alpha^2
    voxels^2), at a fraction of the cost of Gaussian-filtering dense noise. All elements
    share the finest lattice any of their fields needs (coarser noise is resampled onto
    it), so the whole set is interpolated in one call.
    """
    torch = optional("torch", "Anatomix rendering", "synth")
    F = optional("torch.nn.functional", "Anatomix rendering", "synth")

    dims = len(shape)
    mode = "trilinear" if dims == 3 else "bilinear"
    shared = _noise(draw.across, shape, gen)
    own = [_noise(w, shape, gen) for w in draw.within]
    lattice = [2] * dims
    for noise in [shared, *own]:
        if noise is not None:
            lattice = [max(a, b) for a, b in zip(lattice, noise.shape[1:], strict=True)]
    # lattice nodes in voxels per array axis, then in grid_sample's normalized (x, y, z)
    axes = [
        torch.linspace(0, n - 1, g, dtype=torch.float64)
        for n, g in zip(shape, lattice, strict=True)
    ]
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    nodes = ((2 * nodes + 1) / torch.tensor(shape, dtype=torch.float64) - 1).flip(-1)
    unit = 1 / math.sqrt((2 / 3) ** dims)  # mean variance of interpolated unit normals

    def field(aug: Augment, noise):
        if noise is None:
            return 0.0
        if list(noise.shape[1:]) != lattice:
            noise = F.interpolate(noise[None], size=lattice, mode=mode, align_corners=True)[0]
        return noise.movedim(0, -1) * (aug.elastic_alpha / 128 * unit * 2)  # -> normalized

    across = field(draw.across, shared)
    coarse = []
    for aug, noise in zip(draw.within, own, strict=True):
        theta = _affine(draw.across, aug, dims)
        coarse.append(nodes @ theta[:, :dims].T + theta[:, dims] + across + field(aug, noise))
    return _upsample(torch.stack(coarse).float(), shape)


def _upsample(coarse, shape: tuple[int, ...]):
    """(K, *lattice, C) -> (K, *shape, C): linear interpolation, lattice ends on the ends.

    What ``F.interpolate(..., align_corners=True)`` computes, as one small matrix product per
    axis (last axis first), which keeps the channels last for ``grid_sample`` with no
    transposed copies: twice as fast on a CPU.
    """
    torch = optional("torch", "Anatomix rendering", "synth")

    out = coarse.contiguous()
    k, lattice, channels = out.shape[0], list(out.shape[1:-1]), out.shape[-1]
    sizes = lattice[:]
    for axis in reversed(range(len(shape))):
        n, m = lattice[axis], shape[axis]
        position = torch.linspace(0, n - 1, m, dtype=torch.float64)
        low = position.floor().clamp(max=n - 2).long()
        weights = torch.zeros(m, n, dtype=torch.float64)
        rows = torch.arange(m)
        weights[rows, low] = 1 - (position - low)
        weights[rows, low + 1] = position - low
        prefix = k * math.prod(sizes[:axis])
        suffix = math.prod(sizes[axis + 1 :]) * channels
        out = weights.to(out) @ out.view(prefix, n, suffix)
        sizes[axis] = m
    return out.view(k, *shape, channels)


def _blur(image, sigmas: list[float]):
    """Separable Gaussian blur with a 5-tap kernel (Table 3's k), one sigma per image."""
    torch = optional("torch", "Anatomix rendering", "synth")

    taps = torch.arange(BLUR_TAPS, dtype=torch.float32) - BLUR_TAPS // 2
    kernels = torch.stack([torch.exp(-(taps**2) / (2 * s * s)) for s in sigmas])
    return _separable(image, (kernels / kernels.sum(1, keepdim=True)).to(image.device))


def _sharpen(image, factor):
    """Torchvision's adjust_sharpness in 2D or 3D: blend with a centre-weighted 3^d mean.

    ``degenerate + f * (x - degenerate)`` with ``degenerate = (box_sum + 4 x) / (3^d + 4)``,
    folded into ``a * box_sum + b * x``.
    """
    torch = optional("torch", "Anatomix rendering", "synth")

    n = 3 ** (image.dim() - 2)
    a = (1 - factor) / (n + 4)
    box = _separable(image, torch.ones(len(image), 3, device=image.device))
    return box.mul_(a).addcmul_(image, 4 * a + factor)


def _separable(image, weights):
    """Correlate each image (K, 1, ...) along every axis with its own odd kernel (K, taps).

    Edges are replicated. Multiply-adds of shifted views, no padded copies: on a CPU several
    times faster than ``avg_pool3d`` and as fast as grouped convolutions, 2D and 3D alike.
    """
    k, taps = weights.shape
    half = taps // 2
    scale = weights.view(k, taps, *[1] * (image.dim() - 1))
    for axis in range(2, image.dim()):
        n = image.shape[axis]
        out = image * scale[:, half]
        for j in range(taps):
            d = j - half  # out[i] += w_j * image[clamp(i + d)]
            if d == 0:
                continue
            w, m = scale[:, j], n - abs(d)
            if d > 0:
                out.narrow(axis, 0, m).addcmul_(image.narrow(axis, d, m), w)
                edge, at = image.narrow(axis, n - 1, 1), out.narrow(axis, m, abs(d))
            else:
                out.narrow(axis, -d, m).addcmul_(image.narrow(axis, 0, m), w)
                edge, at = image.narrow(axis, 0, 1), out.narrow(axis, 0, abs(d))
            at.addcmul_(edge.expand_as(at), w)
        image = out
    return image
