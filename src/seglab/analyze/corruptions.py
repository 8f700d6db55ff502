"""Natural corruptions at five severities, for robustness evaluation (SegFormer Table 6, Cityscapes-C).

The definitions and severity tables are those of ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019, arXiv:1903.12261; github.com/hendrycks/robustness,
`ImageNet-C/create_c/make_imagenet_c.py`) in the form for images of any size of Michaelis et al. ("Benchmarking
Robustness in Object Detection", arXiv:1907.07484; the `imagecorruptions` package 1.1.2, Apache-2.0), which is also
what Kamann & Rother's Cityscapes-C uses. That package does not run with today's scikit-image and NumPy (its glass
blur, Gaussian blur and fog fail), so the formulas are written here once, on NumPy, SciPy and Pillow only:
scikit-image's `gaussian` is `scipy.ndimage.gaussian_filter` per channel (mode `nearest`, truncate 4), OpenCV's
`filter2D` / `GaussianBlur` borders are `mirror` (reflect-101), its `INTER_CUBIC` resize is Pillow's bicubic, and
RGB <-> HSV is matplotlib's (the same formulas as scikit-image's).

Not here: `spatter` (its definition is built on OpenCV's Canny edges, distance transform and histogram equalisation,
which cannot be matched without OpenCV). `frost` blends photographs of frost; it needs those six texture files,
found in an installed `imagecorruptions` package or a folder given as `frost_dir`.

Each corruption takes a uint8 (H, W, 3) RGB array, a severity 1..5 and a `numpy.random.Generator` (every random
draw comes from it: the same generator state gives the same picture), and returns a uint8 (H, W, 3) array.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

# name -> the five severities' parameters (ImageNet-C's `c` lists, in `imagecorruptions`' any-size form)
SEVERITIES: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    "gaussian_blur": (1, 2, 3, 4, 6),
    # (sigma, max pixel displacement, iterations)
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    # (disk radius, alias blur)
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    # (radius, sigma)
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    # (first zoom, last zoom exclusive, step)
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
    # (mean, std, zoom, threshold, blur radius, blur sigma, blend)
    "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
    # (image weight, frost weight)
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    # (strength, wibble decay)
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    # (saturation factor, offset)
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    "elastic_transform": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}

CATEGORIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("gaussian_blur", "glass_blur", "defocus_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression"),
}

# Cityscapes-C as SegFormer reports it (Table 6), without spatter (see the module docstring)
CITYSCAPES_C = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur",
                "motion_blur", "gaussian_blur", "snow", "frost", "fog", "brightness", "contrast", "saturate",
                "jpeg_compression")

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


class CorruptionError(ValueError):
    """An unknown corruption, a severity outside 1..5, an image of the wrong shape, or missing frost textures."""


# ---------------------------------------------------------------------------------------------------- helpers
def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image's `gaussian(x, sigma, channel_axis=-1)`: each channel on its own, nearest border."""
    sigmas = (sigma, sigma, 0) if x.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(x.astype(np.float64), sigma=sigmas, mode="nearest", truncate=4.0)


def _cv_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's `getGaussianKernel(size, sigma)`."""
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def _disk(radius: int, alias_blur: float) -> np.ndarray:
    """The aliased disk kernel of defocus blur, smoothed by a small Gaussian (OpenCV border: reflect-101)."""
    half = 8 if radius <= 8 else radius
    ksize = 3 if radius <= 8 else 5
    t = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(t, t)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    k = _cv_gaussian_kernel(ksize, alias_blur)
    disk = ndimage.correlate1d(disk, k, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, k, axis=1, mode="mirror")


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zooms the centre of `x` by `factor` (bilinear) back to about its size; the caller crops to (H, W)."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    zooms = (factor, factor) + (1,) * (x.ndim - 2)
    return ndimage.zoom(x[top:top + ch, left:left + cw], zooms, order=1)


def _motion_kernel_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided Gaussian streak of `2 * radius + 1` taps along `angle` degrees; shifted copies repeat the edge."""
    width = 2 * radius + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    point = (width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle)))
    hypot = math.hypot(*point)
    h, w = x.shape[:2]
    rows, cols = np.arange(h), np.arange(w)
    blurred = np.zeros(x.shape, dtype=np.float64)
    for i in range(width):
        dy = -math.ceil(i * point[0] / hypot - 0.5)
        dx = -math.ceil(i * point[1] / hypot - 0.5)
        if abs(dy) >= h or abs(dx) >= w:
            break
        shifted = x[np.clip(rows - dy, 0, h - 1)][:, np.clip(cols - dx, 0, w - 1)]
        blurred += kernel[i] * shifted
    return blurred


def _plasma_fractal(size: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) diamond-square height map in [0, 1]; `size` a power of two."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = heights[0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares = squares + np.roll(squares, -1, axis=1)
        heights[half:size:step, half:size:step] = wibbled_mean(squares)
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        heights[0:size:step, half:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1))
        heights[half:size:step, 0:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0))
        step //= 2
        wibble /= wibble_decay
    heights -= heights.min()
    return heights / heights.max()


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 255] floats -> uint8, as `imagecorruptions.corrupt` does (truncation)."""
    return np.uint8(np.clip(x, 0, 255))


def _hsv(x: np.ndarray) -> np.ndarray:
    from matplotlib.colors import rgb_to_hsv

    return rgb_to_hsv(x)


def _rgb(x: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(x)


# ---------------------------------------------------------------------------------------------------- corruptions
def gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x / 255.0 + rng.normal(scale=c, size=x.shape), 0, 1) * 255


def shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.poisson(x / 255.0 * c) / float(c), 0, 1) * 255


def impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    # scikit-image's random_noise(mode="s&p", amount=c): each value flips with probability c, half to 1, half to 0
    out = x / 255.0
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out * 255


def speckle_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + x * rng.normal(scale=c, size=x.shape), 0, 1) * 255


def gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(_gaussian(x / 255.0, c), 0, 1) * 255


def glass_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    sigma, reach, iterations = c
    blurred = np.uint8(_gaussian(x / 255.0, sigma) * 255)
    h, w = blurred.shape[:2]
    # local pixel moves, in ImageNet-C's order (bottom-right to top-left, each seeing the earlier ones), on one
    # packed int per pixel in a Python list, which makes the sequential loop affordable.
    # NOTE: ImageNet-C's `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on NumPy views copies x[h', w'] into x[h, w] and
    # leaves x[h', w'] as it was (the second assignment reads the already overwritten view); the published
    # benchmark numbers come from that copy, so it is followed here rather than a true swap
    flat = (blurred[..., 0].astype(np.int64) << 16 | blurred[..., 1].astype(np.int64) << 8 | blurred[..., 2]).ravel()
    pixels = flat.tolist()
    positions = [(hh, ww) for hh in range(h - reach, reach, -1) for ww in range(w - reach, reach, -1)]
    for _ in range(iterations):
        offsets = rng.integers(-reach, reach, size=(len(positions), 2)).tolist()
        for (hh, ww), (dx, dy) in zip(positions, offsets, strict=True):
            a, b = hh * w + ww, (hh + dy) * w + ww + dx
            pixels[a] = pixels[b]
    packed = np.asarray(pixels, dtype=np.int64).reshape(h, w)
    swapped = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1)
    return np.clip(_gaussian(swapped / 255.0, sigma), 0, 1) * 255


def defocus_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    kernel = _disk(*c)
    x = x / 255.0
    out = np.stack([ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def motion_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-45, 45)
    return np.clip(_motion_kernel_blur(x.astype(np.float64), c[0], c[1], angle), 0, 255)


def zoom_blur(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    factors = np.arange(*c)
    x = (x / 255.0).astype(np.float32)
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for factor in factors:
        layer = _clipped_zoom(x, factor)[:h, :w]
        out[: layer.shape[0], : layer.shape[1]] += layer
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    mean, std, zoom, threshold, radius, sigma, blend = c
    x = (x / 255.0).astype(np.float32)
    h, w = x.shape[:2]
    flakes = rng.normal(loc=mean, scale=std, size=(h, w))
    flakes = _clipped_zoom(flakes[..., None], zoom)
    flakes[flakes < threshold] = 0
    flakes = np.clip(flakes.squeeze(-1), 0, 1)
    flakes = _motion_kernel_blur(flakes, radius, sigma, rng.uniform(-135, -45))
    flakes = (np.round(flakes * 255).astype(np.uint8) / 255.0)[:h, :w, None]
    gray = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]  # OpenCV's RGB2GRAY
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def _frost_textures(frost_dir: str | Path | None) -> list[Path]:
    if frost_dir is None:
        try:
            import imagecorruptions  # only its texture files are used
        except ImportError:
            raise CorruptionError("frost needs the frost photographs of ImageNet-C: pip install imagecorruptions "
                                  "(its files are read; its code is not used), or pass frost_dir (--frost-dir) "
                                  f"with {', '.join(FROST_FILES)}") from None
        frost_dir = Path(imagecorruptions.__file__).parent / "frost"
    files = [Path(frost_dir) / name for name in FROST_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CorruptionError(f"frost textures missing: {', '.join(missing)}")
    return files


def frost(x: np.ndarray, c: tuple, rng: np.random.Generator, frost_dir: str | Path | None = None) -> np.ndarray:
    # NOTE: ImageNet-C draws from the first five of the six files (randint(5))
    path = _frost_textures(frost_dir)[int(rng.integers(5))]
    with Image.open(path) as picture:
        texture = picture.convert("RGB")
    h, w = x.shape[:2]
    scale = max(1.0, h / texture.height, w / texture.width) * 1.1
    texture = texture.resize((math.ceil(texture.width * scale), math.ceil(texture.height * scale)),
                             Image.Resampling.BICUBIC)
    top = int(rng.integers(0, texture.height - h))
    left = int(rng.integers(0, texture.width - w))
    patch = np.asarray(texture, dtype=np.float64)[top:top + h, left:left + w]
    return np.clip(c[0] * x + c[1] * patch, 0, 255)


def fog(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    strength, decay = c
    h, w = x.shape[:2]
    size = 1 << (max(h, w, 3) - 1).bit_length()
    x = x / 255.0
    peak = x.max()
    x = x + strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
    return np.clip(x * peak / (peak + strength), 0, 1) * 255


def brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    hsv = _hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(_rgb(hsv), 0, 1) * 255


def contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def saturate(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    hsv = _hsv(x / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return np.clip(_rgb(hsv), 0, 1) * 255


def elastic_transform(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    image = x / 255.0
    h, w = image.shape[:2]
    sigma = (h * 0.01, w * 0.01)
    reach = h * 0.005  # NOTE: both displacements scale with the height, as in `imagecorruptions`
    dx = ndimage.gaussian_filter(rng.uniform(-reach, reach, (h, w)), sigma, mode="reflect", truncate=3) * c
    dy = ndimage.gaussian_filter(rng.uniform(-reach, reach, (h, w)), sigma, mode="reflect", truncate=3) * c
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.stack([ndimage.map_coordinates(image[..., d], (yy + dy, xx + dx), order=1, mode="reflect")
                    for d in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((max(int(w * c), 1), max(int(h * c), 1)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def jpeg_compression(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=c)
    buffer.seek(0)
    with Image.open(buffer) as picture:
        return np.asarray(picture.convert("RGB"))


CORRUPTIONS: dict[str, Callable[..., np.ndarray]] = {
    f.__name__: f for f in (
        gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur, glass_blur, defocus_blur,
        motion_blur, zoom_blur, snow, frost, fog, brightness, contrast, saturate, elastic_transform, pixelate,
        jpeg_compression,
    )
}


def check_corruptions(names: list[str] | tuple[str, ...], frost_dir: str | Path | None = None) -> None:
    """Fails early, naming the valid corruptions, for an unknown name; and for frost without its textures."""
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        hint = " (spatter needs OpenCV and is not provided)" if "spatter" in unknown else ""
        raise CorruptionError(f"unknown corruption(s) {', '.join(unknown)}{hint}; valid: {', '.join(CORRUPTIONS)}")
    if "frost" in names:
        _frost_textures(frost_dir)


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            frost_dir: str | Path | None = None) -> np.ndarray:
    """`image` (uint8 (H, W, 3) RGB) with corruption `name` at `severity` (1..5); uint8 (H, W, 3).

    Random draws come from `rng`, so a generator seeded the same way gives the same picture.
    """
    if name not in CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, int) or not 1 <= severity <= 5:
        raise CorruptionError(f"severity must be an int in 1..5, got {severity!r}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise CorruptionError(f"corrupt takes a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    params = SEVERITIES[name][severity - 1]
    if name == "frost":
        return _to_uint8(frost(image, params, rng, frost_dir=frost_dir))
    return _to_uint8(CORRUPTIONS[name](image, params, rng))
