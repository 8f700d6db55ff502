"""The synthetic "shapes" dataset: coloured discs, squares, triangles, rings and stars on textured backgrounds.

Small enough to train on a CPU in minutes, hard enough that a model has to learn shape rather than colour:
every shape takes a random colour (sometimes close to what lies under it), the background is a random
gradient with stripes, a checker board or blurred noise on top, shapes overlap, and pixel noise covers all.
Images are drawn with 4x supersampling for anti-aliased edges; the mask is the hard class map of the same
geometry (a pixel belongs to a shape when the shape covers at least half of it), and later shapes overwrite
earlier ones in both.

Generation is deterministic: image `i` of a split depends only on `(seed, split, i)`, through its own numpy
`SeedSequence`, so the same seed writes byte-identical files and train and val never share an image. It is also
the same on every machine: all arithmetic is float64 and the only transcendental functions are numpy's and
Python's, whose last-bit results can differ between CPUs (numpy's vector maths differs between AVX-512 and AVX2);
such a difference (~1e-13 of a pixel value) changes a pixel only if a value lies that close to a rounding boundary
of `rint` or of the rasteriser, which none of the generated values does in practice. `tests/unit/test_synthetic.py`
checks a digest of the decoded pixels of a small set.

The instance variant (COCO JSON, one mask per object) is `seglab.data.synthetic_instances`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

SHAPES_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "star")

SHAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
)

_SPLIT_STREAMS = {"train": 0, "val": 1}
_SUPERSAMPLE = 4
_INCOMPLETE = ".shapes-incomplete"  # present while a dataset is being written
_CHUNK = 250  # images per parallel job


@dataclass(frozen=True)
class ShapesOptions:
    """What varies between images; every variation is on by default.

    Args:
        min_shapes: each image has `min_shapes`..`max_shapes` shapes (uniformly many).
        max_shapes: see `min_shapes`.
        min_scale: smallest shape diameter as a fraction of the shorter image side.
        max_scale: largest shape diameter as a fraction of the shorter image side.
        rotate: random rotation of every shape.
        aspect: random aspect ratios (ellipses, rectangles, squashed triangles, rings and stars).
        texture: stripes, checker boards or blurred noise over the background gradient.
        texture_amplitude: largest texture amplitude, in 0-255 units.
        close_colour_prob: probability that a shape's colour is chosen close to the colours under it.
        min_contrast: smallest RGB distance between a shape's colour and the mean colour under it.
        noise_sigma: largest standard deviation of the Gaussian pixel noise, in 0-255 units.
    """

    min_shapes: int = 1
    max_shapes: int = 6
    min_scale: float = 0.08
    max_scale: float = 0.6
    rotate: bool = True
    aspect: bool = True
    texture: bool = True
    texture_amplitude: float = 36.0
    close_colour_prob: float = 0.25
    min_contrast: float = 60.0
    noise_sigma: float = 8.0


def _shape_polygons(cls: int, radius: float, aspect: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Outline(s) of one shape centred at the origin, unrotated, as (N, 2) float arrays of (x, y).

    A ring returns its outer and inner outlines; everything else one polygon.
    """
    name = SHAPES_CLASSES[cls]
    if name in ("disc", "ring"):
        n = max(24, int(radius * 2))
        t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        outer = np.stack([radius * np.cos(t), radius * aspect * np.sin(t)], axis=1)
        if name == "disc":
            return [outer]
        # keep the band at least ~2 px wide so small rings stay rings
        inner_ratio = rng.uniform(0.4, 0.7)
        inner_ratio = min(inner_ratio, max(0.2, 1.0 - 2.2 / max(radius * aspect, 1.0)))
        return [outer, outer * inner_ratio]
    if name == "square":
        # radius is half the diagonal of the unsquashed square
        half = radius / math.sqrt(2)
        return [np.array([[-half, -half * aspect], [half, -half * aspect], [half, half * aspect],
                          [-half, half * aspect]])]
    if name == "triangle":
        angles = np.array([90.0, 210.0, 330.0]) + rng.uniform(-12.0, 12.0, size=3)
        t = np.deg2rad(angles)
        return [np.stack([radius * np.cos(t), radius * aspect * np.sin(t)], axis=1)]
    if name == "star":
        points = int(rng.choice([5, 5, 5, 6, 7]))
        inner = rng.uniform(0.38, 0.55)
        t = np.arange(2 * points) * math.pi / points - math.pi / 2
        r = np.where(np.arange(2 * points) % 2 == 0, radius, radius * inner)
        return [np.stack([r * np.cos(t), r * aspect * np.sin(t)], axis=1)]
    raise ValueError(f"class {cls} ({name!r}) is not a shape")


def _unit(vector: np.ndarray) -> np.ndarray:
    """`vector / (|vector| + 1e-6)`, the norm summed in a fixed order (BLAS kernels differ between CPUs)."""
    return vector / (math.sqrt(sum(float(v) * float(v) for v in vector)) + 1e-6)


def draw_background(rng: np.random.Generator, height: int, width: int, options: ShapesOptions) -> np.ndarray:
    """A float64 (H, W, 3) background: a two-colour gradient, optionally textured (also drawn by
    `seglab.data.synthetic_instances`)."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 + (c1 - c0) * t[..., None]
    if options.texture:
        kind = rng.integers(0, 4)  # 0: none, 1: stripes, 2: checker, 3: blurred noise
        amplitude = rng.uniform(0.3, 1.0) * options.texture_amplitude
        if kind in (1, 2):
            period = rng.uniform(5.0, 0.4 * min(height, width))
            phi = rng.uniform(0, math.pi)
            u = (xs * math.cos(phi) + ys * math.sin(phi)) * 2 * math.pi / period
            if kind == 1:
                pattern = np.sin(u)
            else:
                v = (-xs * math.sin(phi) + ys * math.cos(phi)) * 2 * math.pi / period
                pattern = np.sign(np.sin(u) * np.sin(v))
            direction = _unit(rng.normal(size=3))
            image = image + amplitude * pattern[..., None] * direction
        elif kind == 3:
            cells = int(rng.integers(4, 17))
            low = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
            blurred = np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC), np.float64)
            image = image + (blurred - 127.5) * (amplitude / 127.5)
    return np.clip(image, 0, 255)


def pick_colour(rng: np.random.Generator, under: np.ndarray, options: ShapesOptions) -> np.ndarray:
    """A shape colour at least `min_contrast` away (RGB distance) from `under`, sometimes just that far (also used by
    `seglab.data.synthetic_instances`)."""
    if rng.random() < options.close_colour_prob:
        for _ in range(20):
            direction = _unit(rng.normal(size=3))
            colour = under + direction * rng.uniform(options.min_contrast, 1.4 * options.min_contrast)
            if np.all((colour >= 0) & (colour <= 255)):
                return colour
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if math.dist(colour, under) >= options.min_contrast:
            return colour
    # fall back to the RGB cube corner farthest from `under`: always >= 127.5 * sqrt(3) away
    return np.where(under < 127.5, 255.0, 0.0)


def render_shapes(
    rng: np.random.Generator, size: int | tuple[int, int] = 128, options: ShapesOptions | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one image and its mask.

    Args:
        rng: the only source of randomness.
        size: image side, or (height, width).
        options: what varies; defaults to `ShapesOptions()`.

    Returns:
        `(image, mask)`: uint8 (H, W, 3) RGB and uint8 (H, W) class indices into `SHAPES_CLASSES`.
    """
    options = options or ShapesOptions()
    height, width = (size, size) if isinstance(size, int) else size
    image = draw_background(rng, height, width, options)
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    ss = _SUPERSAMPLE
    if not 1 <= options.min_shapes <= options.max_shapes:
        raise ValueError(f"ShapesOptions: need 1 <= min_shapes <= max_shapes, got {options.min_shapes} and "
                         f"{options.max_shapes}")
    for _ in range(int(rng.integers(options.min_shapes, options.max_shapes + 1))):
        cls = int(rng.integers(1, len(SHAPES_CLASSES)))
        # log-uniform diameter so small and large shapes are equally common
        diameter = side * math.exp(rng.uniform(math.log(options.min_scale), math.log(options.max_scale)))
        radius = diameter / 2
        aspect = rng.uniform(0.55, 1.0) if options.aspect and rng.random() < 0.6 else 1.0
        angle = rng.uniform(0, 2 * math.pi) if options.rotate else 0.0
        cx, cy = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        polygons = [p @ rotation.T + (cx, cy) for p in _shape_polygons(cls, radius, aspect, rng)]

        # rasterise only the shape's bounding box (clipped to the image) at `ss` times the resolution
        outer = polygons[0]
        x0, y0 = max(int(math.floor(outer[:, 0].min())), 0), max(int(math.floor(outer[:, 1].min())), 0)
        x1, y1 = min(int(math.ceil(outer[:, 0].max())) + 1, width), min(int(math.ceil(outer[:, 1].max())) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        coverage = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
        draw = ImageDraw.Draw(coverage)
        for k, polygon in enumerate(polygons):
            points = ((polygon - (x0, y0)) * ss).ravel().tolist()
            draw.polygon(points, fill=255 if k == 0 else 0)
        alpha = np.asarray(coverage.reduce(ss), np.float64)[..., None] / 255.0  # (h, w, 1) area coverage
        inside = alpha[..., 0] >= 0.5
        if not inside.any():
            continue
        region = image[y0:y1, x0:x1]
        colour = pick_colour(rng, region[inside].mean(axis=0), options)
        image[y0:y1, x0:x1] = region * (1.0 - alpha) + colour * alpha
        mask[y0:y1, x0:x1][inside] = cls
    if options.noise_sigma > 0:
        image += rng.normal(0.0, rng.uniform(0.25, 1.0) * options.noise_sigma, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _clear_previous(out_dir: Path) -> None:
    """Empties a previous (complete or interrupted) shapes dataset at `out_dir`; refuses other non-empty folders."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    meta_file = out_dir / "dataset.yaml"
    meta = yaml.safe_load(meta_file.read_text()) if meta_file.is_file() else None
    source = meta.get("source") if isinstance(meta, dict) else None
    ours = isinstance(source, dict) and source.get("generator") == "shapes"
    if not (ours or (out_dir / _INCOMPLETE).is_file()):
        raise FileExistsError(
            f"{out_dir} is not empty and is not a shapes dataset (no dataset.yaml with source.generator: shapes); "
            "choose an empty or new folder"
        )
    for sub in ("images", "annotations"):
        if (out_dir / sub).is_dir():
            shutil.rmtree(out_dir / sub)
    meta_file.unlink(missing_ok=True)


def _write_images(job: tuple) -> None:
    """Renders and writes images `start`..`stop - 1` of one split."""
    out_dir, split, start, stop, size, seed, options = job
    for i in range(start, stop):
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(_SPLIT_STREAMS[split], i)))
        image, mask = render_shapes(rng, size, options)
        Image.fromarray(image).save(out_dir / "images" / split / f"{i:05d}.png")
        Image.fromarray(mask).save(out_dir / "annotations" / split / f"{i:05d}.png")


def generate_shapes(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    options: ShapesOptions | None = None,
    workers: int | None = None,
) -> Path:
    """Writes a shapes dataset in the folder-pairs layout and returns its root.

    Layout: `images/{train,val}/{i:05d}.png` (RGB), `annotations/{train,val}/{i:05d}.png` (L-mode class
    indices), and `dataset.yaml` with `classes`, `palette` and `source` (how it was generated). A folder that
    already holds a shapes dataset is regenerated; any other non-empty folder is refused.

    Args:
        out_dir: dataset root to write.
        n_train: number of training images.
        n_val: number of validation images.
        size: image side, or (height, width).
        seed: the same seed writes byte-identical files.
        options: what varies between images; defaults to `ShapesOptions()` (everything on).
        workers: processes that render in parallel (default: the CPU count, at most 4); the files do not depend on it.
    """
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0, got {n_train} and {n_val}")
    options = options or ShapesOptions()
    out_dir = Path(out_dir)
    _clear_previous(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _INCOMPLETE).touch()
    for split, count in (("train", n_train), ("val", n_val)):
        img_dir, ann_dir = out_dir / "images" / split, out_dir / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(out_dir, split, start, min(start + _CHUNK, count), size, seed, options)
                for start in range(0, count, _CHUNK)]
        if workers > 1 and len(jobs) > 1:
            # every image has its own seed: the files are the same whichever process writes them
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else "spawn")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                list(pool.map(_write_images, jobs))
        else:
            for job in jobs:
                _write_images(job)
    meta = {
        "classes": list(SHAPES_CLASSES),
        "palette": [list(c) for c in SHAPES_PALETTE],
        "source": {"generator": "shapes", "seed": seed, "size": size if isinstance(size, int) else list(size),
                   "n_train": n_train, "n_val": n_val, "options": asdict(options)},
    }
    # written last: a dataset.yaml marks a complete dataset
    (out_dir / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None))
    (out_dir / _INCOMPLETE).unlink()
    return out_dir
