"""CIFAR-10-C-style corruptions (Hendrycks & Dietterich, ICLR 2019), generated on the fly at the model's resolution.

15 corruptions x severities 1..5, written here in torch/numpy/scipy (no imagecorruptions, Wand, OpenCV or skimage).
Severity tables are the ones of the reference CIFAR-10-C generator (`make_cifar_c.py`, Hendrycks' robustness
repository). Parameters that are lengths in pixels there (blur radii, shuffle distances, motion lengths) are scaled by
min(H, W) / 32, so a corruption covers the same fraction of the image at any resolution; at 32 px they are the
reference values. Where the reference needs something we do not have, the docstring of that corruption says what
replaces it (frost's photographs, ImageMagick's motion blur).

Randomness: every call draws from its own numpy Generator seeded by (seed, corruption), never from the global RNG.
The severity is deliberately not part of the seed, so the five severities of one seed share their random draws
(the same noise field, the same blur angle) and differ only by the severity parameters; this makes the distortion
grow with severity for the same images instead of by chance.
"""
from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from edgenas.errors import EdgenasError

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class _Corruption:
    apply: Callable      # (x: torch (N,C,H,W) float32 in [0,1], severity 1..5, rng: np.random.Generator) -> torch
    random: bool         # whether the output depends on the seed


_REGISTRY: dict[str, _Corruption] = {}


def register_corruption(name: str, random: bool = True):
    def deco(fn):
        _REGISTRY[name] = _Corruption(fn, random)
        return fn
    return deco


def is_random(name: str) -> bool:
    """Whether `name` draws random numbers (its output changes with the seed)."""
    _check_name(name)
    return _REGISTRY[name].random


def corrupt(x, name: str, severity: int, seed: int):
    """Corrupt a batch x (N, C, H, W) float in [0, 1] (C = 1 or 3, H, W >= 8) with `name` at `severity` (1..5).

    Returns a new float32 tensor of the same shape, clipped to [0, 1]; the same (x, name, severity, seed) always
    gives the same output, whatever the global RNG state.
    """
    return _corrupt(x, name, severity, (seed,))


def _corrupt(x, name: str, severity: int, entropy: tuple[int, ...]):
    import torch
    _check_name(name)
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise EdgenasError(f"corruption severity {severity!r} is not one of 1..5", "pass an integer severity from 1 to 5")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape[-2:]) < 8:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise EdgenasError(f"cannot corrupt images of shape {shape}",
                           "pass a float tensor (N, C, H, W) with C = 1 or 3 and H, W >= 8")
    rng = np.random.default_rng([*entropy, zlib.crc32(name.encode())])
    with torch.no_grad():
        out = _REGISTRY[name].apply(x.detach().to(torch.float32).cpu(), int(severity), rng)
    return out.clamp_(0.0, 1.0).to(x.device)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise EdgenasError(f"unknown corruption '{name}'", f"choose one of: {', '.join(_REGISTRY)}")


def corrupted_accuracy(predict_fn: Callable, split, seed: int, names: Sequence[str] | None = None,
                       severities: Sequence[int] = SEVERITIES, batch_size: int = 256) -> dict:
    """Accuracy of `predict_fn` on `split` under every corruption and severity.

    predict_fn maps a batch (N, C, H, W) at the split's resolution to predicted labels (N,) or logits (N, K).
    Batch k of the split is corrupted with the seed (seed, k), so results do not depend on what else was evaluated.
    Returns {name: {severity: accuracy}} plus "mean": the mean over all names and severities.
    """
    import torch
    from edgenas.data.core import batches
    names = tuple(CORRUPTIONS if names is None else names)
    for name in names:
        _check_name(name)
    if len(split.y) == 0:
        raise EdgenasError("the split to corrupt is empty", "pass a split with at least one image")
    result: dict = {}
    for name in names:
        result[name] = {}
        for severity in severities:
            correct = 0
            for k, (x, y) in enumerate(batches(split, batch_size, shuffle=False, generator=None)):
                pred = predict_fn(_corrupt(x, name, severity, (seed, k)))
                pred = torch.as_tensor(pred)
                pred = pred.argmax(1) if pred.ndim == 2 else pred
                correct += int((pred.cpu() == y).sum())
            result[name][int(severity)] = correct / len(split.y)
    result["mean"] = float(np.mean([a for name in names for a in result[name].values()]))
    return result


# ------------------------------------------------------------------------------------------------------ helpers

def _px(x) -> float:
    """Factor from the reference's 32-px lengths to this image's size."""
    return min(x.shape[-2:]) / 32.0


def _torch(a: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _grey(x):
    """Luma (ITU-R 601, as OpenCV's RGB2GRAY) of (N, 3, H, W), or the image itself when it has one channel."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _gaussian_blur(x, sigma: float):
    """Per-channel Gaussian blur in pixels (edges repeat, as skimage.filters.gaussian)."""
    from scipy.ndimage import gaussian_filter
    if sigma <= 0:
        return x.clone()
    return _torch(gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0))


def _sample(x, fx, fy, padding: str = "border"):
    """out[n, :, i, j] = x[n, :, i + fy[n, i, j], j + fx[n, i, j]] with bilinear interpolation (offsets in pixels)."""
    import torch
    import torch.nn.functional as F
    n, _, h, w = x.shape
    jj = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    ii = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    gx = (2 * (jj + fx) + 1) / w - 1
    gy = (2 * (ii + fy) + 1) / h - 1
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1).expand(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _zoom_centre(x, factor: float):
    """Magnify the centre of every image by `factor`, keeping the size (the reference's clipped_zoom)."""
    import torch
    h, w = x.shape[-2:]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ii = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    jj = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    return _sample(x, (jj - cx) * (1 / factor - 1), (ii - cy) * (1 / factor - 1))


def _motion_blur(x, radius: float, sigma: float, angles_deg: np.ndarray):
    """Blur each image along a line at its own angle: a one-sided Gaussian-weighted streak of length 2*radius, the
    kernel ImageMagick's MotionBlurImage (used by the reference through Wand) builds. Taps beyond 4 sigma, whose
    weights are below 1e-3 of the first, are left out."""
    import torch
    length = max(1, int(min(2 * radius, math.ceil(4 * sigma))))
    taps = np.arange(length + 1, dtype=np.float64)
    weights = np.exp(-taps ** 2 / (2 * max(sigma, 1e-6) ** 2))
    weights /= weights.sum()
    theta = torch.as_tensor(np.deg2rad(angles_deg), dtype=torch.float32).view(-1, 1, 1)
    out = torch.zeros_like(x)
    for k, wk in zip(taps, weights):
        out += float(wk) * _sample(x, -k * torch.cos(theta), -k * torch.sin(theta))
    return out


def _plasma(rng: np.random.Generator, n: int, size: int, decay: float):
    """n diamond-square height maps (size x size, size a power of two, periodic) scaled to [0, 1]. Each halving of
    the grid step divides the random displacement by decay**2, so a larger decay gives smoother maps (the
    reference's plasma_fractal with its `wibbledecay`)."""
    height = np.zeros((n, size, size))
    step, amplitude = size, 1.0
    while step >= 2:
        half = step // 2
        corners = height[:, ::step, ::step]
        # square step: the centre of each cell is the mean of its four corners plus noise
        centre = (corners + np.roll(corners, -1, 1) + np.roll(corners, -1, 2) + np.roll(np.roll(corners, -1, 1), -1, 2)) / 4
        height[:, half::step, half::step] = centre + amplitude * rng.uniform(-1, 1, centre.shape)
        centre = height[:, half::step, half::step]
        # diamond step: edge midpoints are the mean of the two corners and two centres around them
        top = (corners + np.roll(corners, -1, 2) + centre + np.roll(centre, 1, 1)) / 4
        left = (corners + np.roll(corners, -1, 1) + centre + np.roll(centre, 1, 2)) / 4
        height[:, ::step, half::step] = top + amplitude * rng.uniform(-1, 1, top.shape)
        height[:, half::step, ::step] = left + amplitude * rng.uniform(-1, 1, left.shape)
        step, amplitude = half, amplitude / decay ** 2
    height -= height.min(axis=(1, 2), keepdims=True)
    return height / np.maximum(height.max(axis=(1, 2), keepdims=True), 1e-12)


def _plasma_like(x, rng: np.random.Generator, decay: float):
    """One plasma map per image, cropped to the image, as a (N, 1, H, W) tensor."""
    h, w = x.shape[-2:]
    size = 1 << max(3, math.ceil(math.log2(max(h, w))))
    return _torch(_plasma(rng, x.shape[0], size, decay)[:, None, :h, :w])


# -------------------------------------------------------------------------------------------------------- noise

@register_corruption("gaussian_noise")
def gaussian_noise(x, severity, rng):
    """Additive Gaussian noise, sigma .04/.06/.08/.09/.10."""
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    return x + sigma * _torch(rng.standard_normal(x.shape))


@register_corruption("shot_noise")
def shot_noise(x, severity, rng):
    """Poisson (photon) noise: x -> Poisson(x * c) / c with c = 500/250/100/75/50 photons at full scale."""
    c = (500, 250, 100, 75, 50)[severity - 1]
    return _torch(rng.poisson(x.numpy().astype(np.float64) * c) / c)


@register_corruption("impulse_noise")
def impulse_noise(x, severity, rng):
    """Salt-and-pepper noise: a fraction .01/.02/.03/.05/.07 of the values (per channel) set to 0 or 1."""
    import torch
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    hit = _torch(rng.random(x.shape)) < amount
    salt = _torch(rng.random(x.shape)) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


# --------------------------------------------------------------------------------------------------------- blur

def _disk_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    """A normalised disk of `radius` px, softened by a 3-tap Gaussian of `alias_sigma` (the reference's
    antialiasing). Each pixel's weight is the fraction of it the disk covers (8 x 8 subsamples), so a disk smaller
    than a pixel (a reference radius scaled down to a small image) still blurs in proportion instead of vanishing;
    at 32 px this is close to the reference's binary disk."""
    from scipy.ndimage import convolve1d
    half = math.ceil(radius) + 1
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    centres = np.arange(-half, half + 1)
    fine = (centres[:, None] + sub[None, :]).ravel()                 # subsample coordinates along one axis
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2 <= radius ** 2).astype(np.float64)
    size = 2 * half + 1
    disk = inside.reshape(size, 8, size, 8).mean(axis=(1, 3))
    if disk.sum() == 0:                                               # radius 0: the identity
        disk[half, half] = 1.0
    disk /= disk.sum()
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * max(alias_sigma, 1e-6) ** 2))
    taps /= taps.sum()
    return convolve1d(convolve1d(disk, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")


@register_corruption("defocus_blur", random=False)
def defocus_blur(x, severity, rng):
    """Convolution with an antialiased disk: (radius px, antialias sigma) = (.3,.4) (.4,.5) (.5,.6) (1,.2) (1.5,.1)."""
    import torch.nn.functional as F
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    kernel = _torch(_disk_kernel(radius * _px(x), alias * _px(x)))
    reach = kernel.shape[0] // 2
    if reach >= min(x.shape[-2:]):
        raise EdgenasError(f"defocus blur of {2 * reach + 1} px does not fit a {tuple(x.shape[-2:])} image",
                           "corrupt images at least as large as the blur")
    c = x.shape[1]
    padded = F.pad(x, (reach,) * 4, mode="reflect")          # OpenCV filter2D's default border (reflect 101)
    return F.conv2d(padded, kernel.expand(c, 1, -1, -1), groups=c)


@register_corruption("glass_blur")
def glass_blur(x, severity, rng):
    """Blur, then swap every pixel with a random neighbour up to `delta` px up/left, sweeping from the bottom-right
    corner (the reference's local shuffle), `iterations` times, then blur again. (sigma, delta, iterations) =
    (.05,1,1) (.25,1,1) (.4,1,1) (.25,1,2) (.4,1,2)."""
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]
    scale = _px(x)
    delta = max(1, round(delta * scale))
    img = _gaussian_blur(x, sigma * scale).numpy().copy()
    n, _, h, w = img.shape
    every = np.arange(n)
    # the offsets are drawn for the largest iteration count, so severities share their first sweep's offsets
    offsets = rng.integers(-delta, delta, size=(2, h, w, n, 2))
    for it in range(iterations):
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                di, dj = offsets[it, i, j, :, 0], offsets[it, i, j, :, 1]
                here = img[every, :, i, j].copy()
                img[every, :, i, j] = img[every, :, i + di, j + dj]
                img[every, :, i + di, j + dj] = here
    return _gaussian_blur(_torch(img), sigma * scale)


@register_corruption("motion_blur")
def motion_blur(x, severity, rng):
    """Streak blur at a random angle in [-45, 45] degrees; (radius, sigma) = (6,1) (6,1.5) (6,2) (8,2) (9,2.5) px.
    The kernel is ImageMagick's motion blur (see _motion_blur), written here instead of calling Wand."""
    radius, sigma = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))[severity - 1]
    angles = rng.uniform(-45, 45, size=x.shape[0])
    return _motion_blur(x, radius * _px(x), sigma * _px(x), angles)


@register_corruption("zoom_blur", random=False)
def zoom_blur(x, severity, rng):
    """Average of the image and its centre zoomed by 1.00, 1.01, ... up to 1.05/1.10/1.15/1.20/1.25."""
    top = (5, 10, 15, 20, 25)[severity - 1]
    out = x.clone()
    for k in range(top + 1):
        out += _zoom_centre(x, 1 + 0.01 * k)
    return out / (top + 2)


# ------------------------------------------------------------------------------------------------------ weather

@register_corruption("snow")
def snow(x, severity, rng):
    """Falling snow: thresholded, zoomed Gaussian flakes streaked by motion blur (angle in [-135, -45] degrees),
    added twice (the layer and its 180-degree rotation) to an image lifted towards white. Parameters (flake mean,
    flake std, zoom, threshold, blur radius px, blur sigma px, image weight) as in the reference table."""
    loc, std, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95), (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))[severity - 1]
    import torch
    n, _, h, w = x.shape
    flakes = loc + std * _torch(rng.standard_normal((n, 1, h, w)))
    flakes = _zoom_centre(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes).clamp(0, 1)
    flakes = _motion_blur(flakes, radius * _px(x), sigma * _px(x), rng.uniform(-135, -45, size=n))
    lifted = keep * x + (1 - keep) * torch.maximum(x, _grey(x) * 1.5 + 0.5)
    return lifted + flakes + torch.rot90(flakes, 2, dims=(2, 3))


def _frost_texture(x, rng):
    """A procedural frost layer in [0, 1] (N, C, H, W): a smooth icy haze (plasma fractal) plus needle-like
    crystals (sparse bright seeds smeared in two random directions), bluish-white on RGB images."""
    import torch
    n, c, h, w = x.shape
    haze = _plasma_like(x, rng, decay=1.6)
    seeds = _torch(rng.random((n, 1, h, w)) < 0.06) * _torch(rng.uniform(0.5, 1.0, (n, 1, h, w)))
    length = 3 * _px(x)
    needles = sum(_motion_blur(seeds, length, length / 2, rng.uniform(0, 180, size=n)) for _ in range(2))
    needles = needles / needles.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    texture = (0.25 + 0.45 * haze + 0.5 * needles).clamp(0, 1)
    if c == 3:
        texture = texture * torch.tensor([0.80, 0.90, 1.00]).view(1, 3, 1, 1)
    return texture


@register_corruption("frost")
def frost(x, severity, rng):
    """Frost on the lens: c0 * x + c1 * frost with (c0, c1) = (1,.2) (1,.3) (.9,.4) (.85,.4) (.75,.45). The
    reference crops photographs of frost that do not ship with edgenas; a procedural frost texture (smooth haze plus
    crystal needles, mean about .5 like the photographs) replaces them, so absolute accuracies differ from CIFAR-10-C."""
    keep, weight = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]
    return keep * x + weight * _frost_texture(x, rng)


@register_corruption("fog")
def fog(x, severity, rng):
    """Fog: a plasma fractal of strength c0 and smoothness c1 added, then rescaled to keep the image maximum;
    (c0, c1) = (.2,3) (.5,3) (.75,2.5) (1,2) (1.5,1.75)."""
    strength, decay = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))[severity - 1]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * _plasma_like(x, rng, decay)) * peak / (peak + strength)


# ------------------------------------------------------------------------------------------------------ digital

@register_corruption("brightness", random=False)
def brightness(x, severity, rng):
    """Add .05/.1/.15/.2/.3 to the HSV value (hue and saturation kept): RGB scales by V'/V, grey images add."""
    import torch
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    value = x.amax(dim=1, keepdim=True)
    lifted = (value + c).clamp(max=1.0)
    return torch.where(value > 0, x * lifted / value.clamp_min(1e-12), lifted.expand_as(x))


@register_corruption("contrast", random=False)
def contrast(x, severity, rng):
    """Pull every channel towards its image mean by factor .75/.5/.4/.3/.15."""
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


@register_corruption("elastic_transform")
def elastic_transform(x, severity, rng):
    """A random affine warp (three control points moved by up to c2 px) composed with a smooth random displacement
    field (uniform noise blurred by sigma c1, scaled by c0), reflecting at the borders. (c0, c1, c2) are the
    reference's fractions of the image size: (0,0,.08) (.05,.2,.07) (.08,.06,.06) (.1,.04,.05) (.1,.03,.03)."""
    from scipy.ndimage import gaussian_filter
    import torch
    alpha, sigma, jitter = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03))[severity - 1]
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, jitter = alpha * size, sigma * size, jitter * size
    centre = np.array([w // 2, h // 2], dtype=np.float64)
    arm = size // 3
    src = np.stack([centre + arm, centre + [arm, -arm], centre - arm])                 # (3, 2) as (x, y)
    moves = rng.uniform(-1, 1, size=(n, 3, 2))
    noise = rng.uniform(-1, 1, size=(2, n, h, w))
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float64)
    fx, fy = np.empty((n, h, w)), np.empty((n, h, w))
    for k in range(n):
        dst = src + jitter * moves[k]
        # the affine A maps src to dst (x' = A [x, y, 1]); the warped image at p is the source at A^-1 p
        a = np.linalg.solve(np.c_[src, np.ones(3)], dst).T                            # (2, 3)
        inv = np.linalg.inv(np.r_[a, [[0, 0, 1]]])[:2]
        dx = gaussian_filter(noise[0, k], sigma, mode="reflect", truncate=3) * alpha if sigma > 0 else 0 * ii
        dy = gaussian_filter(noise[1, k], sigma, mode="reflect", truncate=3) * alpha if sigma > 0 else 0 * ii
        px, py = jj + dx, ii + dy                                                      # elastic, then affine
        fx[k] = inv[0, 0] * px + inv[0, 1] * py + inv[0, 2] - jj
        fy[k] = inv[1, 0] * px + inv[1, 1] * py + inv[1, 2] - ii
    return _sample(x, _torch(fx), _torch(fy), padding="reflection")


@register_corruption("pixelate", random=False)
def pixelate(x, severity, rng):
    """Box-downsample to int(size * c) and box-upsample back, c = .95/.9/.85/.75/.65."""
    import torch.nn.functional as F
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="area")


@register_corruption("jpeg_compression", random=False)
def jpeg_compression(x, severity, rng):
    """JPEG encode/decode with Pillow at quality 80/65/58/50/40 (8-bit grey or RGB)."""
    import torch
    from PIL import Image
    quality = (80, 65, 58, 50, 40)[severity - 1]
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(pixels)
    for k, img in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[k] = np.asarray(decoded).reshape(img.shape)
    return _torch(out.transpose(0, 3, 1, 2) / 255.0)


CORRUPTIONS: tuple[str, ...] = tuple(_REGISTRY)   # the 15 CIFAR-10-C corruptions, in the benchmark's order
