"""The synthetic instance shapes dataset, in the COCO instances format that `seglab.data.coco_instances` reads.

Discs, squares, triangles, rings, thin-armed stars and crosses on the textured backgrounds of the semantic shapes
data (`seglab.data.synthetic`), 3-8 per image, later ones occluding earlier ones; every instance's mask is the
visible part of it. The whole instance path (data, Mask R-CNN, boundary refinement, COCO evaluation) runs on it
without a download. Generation is deterministic: image `i` of a split depends only on `(seed, split, i)`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.data.coco_instances import coco_annotations, encode_instance_masks, write_coco_json
from seglab.data.synthetic import ShapesOptions, draw_background, pick_colour

# COCO category ids are 1..6 in this order. Rings, thin-armed stars and crosses have parts a few pixels wide, so a
# 28x28 Mask R-CNN mask loses them and boundary refinement has something to recover.
SHAPES_INSTANCE_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "star", "cross")

_INSTANCE_STREAMS = {"train": 10, "val": 11}  # SeedSequence spawn keys apart from the semantic generator's
_SUPERSAMPLE = 4
_SCALE_RANGE = (0.15, 0.5)  # instance diameter as a fraction of the shorter image side (log-uniform)
_INSTANCES_PER_IMAGE = (3, 8)
_MIN_VISIBLE_AREA = 12  # pixels; instances occluded down to less are dropped
_GENERATOR = "shapes_instances"
_INCOMPLETE = ".shapes-instances-incomplete"
_POINT_CHUNK = 1 << 21  # edge x point products per chunk of the inside test (bounds its memory)


def _instance_polygons(name: str, radius: float, aspect: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Outline(s) of one shape centred at the origin as (N, 2) arrays of (x, y); holes are extra outlines (even-odd)."""
    if name in ("disc", "ring"):
        t = np.linspace(0.0, 2 * math.pi, int(np.clip(radius * 2, 24, 96)), endpoint=False)
        outer = np.stack([radius * np.cos(t), radius * aspect * np.sin(t)], axis=1)
        if name == "disc":
            return [outer]
        # a thin band, but at least ~2 px wide so the ring stays closed after rasterising
        ratio = min(rng.uniform(0.6, 0.85), max(0.2, 1.0 - 2.0 / max(radius * aspect, 1.0)))
        return [outer, outer * ratio]
    if name == "square":
        half = radius / math.sqrt(2)
        return [np.array([[-half, -half * aspect], [half, -half * aspect], [half, half * aspect],
                          [-half, half * aspect]])]
    if name == "triangle":
        t = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-12.0, 12.0, size=3))
        return [np.stack([radius * np.cos(t), radius * aspect * np.sin(t)], axis=1)]
    if name == "star":
        points = int(rng.choice([5, 6, 7]))
        inner = rng.uniform(0.22, 0.4)  # thin arms
        t = np.arange(2 * points) * math.pi / points - math.pi / 2
        r = np.where(np.arange(2 * points) % 2 == 0, radius, radius * inner)
        return [np.stack([r * np.cos(t), r * aspect * np.sin(t)], axis=1)]
    if name == "cross":
        a, h = radius, max(radius * rng.uniform(0.1, 0.25), 1.25)  # arm length, half bar thickness
        outline = np.array([[h, -a], [h, -h], [a, -h], [a, h], [h, h], [h, a], [-h, a], [-h, h], [-a, h], [-a, -h],
                            [-h, -h], [-h, -a]])
        return [outline * (1.0, aspect)]
    raise ValueError(f"unknown instance shape {name!r}; known: {SHAPES_INSTANCE_CLASSES}")


def _inside(polygons: Sequence[np.ndarray], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of points (xs, ys) against all outlines together, vectorised over edges."""
    x0 = np.concatenate([p[:, 0] for p in polygons])[:, None]
    y0 = np.concatenate([p[:, 1] for p in polygons])[:, None]
    x1 = np.concatenate([np.roll(p[:, 0], -1) for p in polygons])[:, None]
    y1 = np.concatenate([np.roll(p[:, 1], -1) for p in polygons])[:, None]
    dy = np.where(y1 == y0, 1.0, y1 - y0)  # horizontal edges never straddle a ray; avoid dividing by zero
    inside = np.empty(xs.shape, bool)
    step = max(1, _POINT_CHUNK // len(x0))
    for s in range(0, xs.size, step):
        px, py = xs[s:s + step][None], ys[s:s + step][None]
        straddles = (y0 > py) != (y1 > py)
        crossing_x = x0 + (py - y0) * (x1 - x0) / dy
        inside[s:s + step] = np.count_nonzero(straddles & (px < crossing_x), axis=0) % 2 == 1
    return inside


def render_shapes_instances(
    rng: np.random.Generator, size: int | tuple[int, int] = 128, options: ShapesOptions | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Draws one instance image: 3-8 shapes, later ones occluding earlier ones.

    Args:
        rng: the only source of randomness.
        size: image side, or (height, width).
        options: background texture, colour contrast and noise as in the semantic shapes data (`max_shapes`,
            `min_scale` and `max_scale` are not used: instances follow `_INSTANCES_PER_IMAGE` and `_SCALE_RANGE`).

    Returns:
        `(image, instance_map, categories)`: uint8 (H, W, 3) RGB; int32 (H, W) map of the visible instance at each
        pixel (0 background, k for instance k); `categories[k - 1]` is instance k's COCO category id (1..6).
        Instances with fewer than `_MIN_VISIBLE_AREA` visible pixels are left out and the rest renumbered.
    """
    options = options or ShapesOptions()
    height, width = (size, size) if isinstance(size, int) else size
    image = draw_background(rng, height, width, options)
    ids = np.zeros((height, width), np.int32)
    categories: list[int] = []
    side, ss = min(height, width), _SUPERSAMPLE
    for _ in range(int(rng.integers(_INSTANCES_PER_IMAGE[0], _INSTANCES_PER_IMAGE[1] + 1))):
        category = int(rng.integers(1, len(SHAPES_INSTANCE_CLASSES) + 1))
        radius = side * math.exp(rng.uniform(math.log(_SCALE_RANGE[0]), math.log(_SCALE_RANGE[1]))) / 2
        aspect = rng.uniform(0.6, 1.0) if options.aspect and rng.random() < 0.5 else 1.0
        angle = rng.uniform(0, 2 * math.pi) if options.rotate else 0.0
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        polygons = [p @ rotation.T + (cx, cy)
                    for p in _instance_polygons(SHAPES_INSTANCE_CLASSES[category - 1], radius, aspect, rng)]
        outer = polygons[0]
        x0, y0 = max(int(math.floor(outer[:, 0].min())), 0), max(int(math.floor(outer[:, 1].min())), 0)
        x1, y1 = min(int(math.ceil(outer[:, 0].max())) + 1, width), min(int(math.ceil(outer[:, 1].max())) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        # area coverage of every pixel of the box from ss x ss sample points per pixel: anti-aliased edges
        sx = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss
        sy = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss
        gx, gy = np.meshgrid(sx, sy)
        hit = _inside(polygons, gx.ravel(), gy.ravel()).reshape(y1 - y0, ss, x1 - x0, ss)
        alpha = hit.mean(axis=(1, 3), dtype=np.float32)[..., None]
        inside = alpha[..., 0] >= 0.5
        if not inside.any():
            continue
        region = image[y0:y1, x0:x1]
        colour = pick_colour(rng, region[inside].mean(axis=0), options)
        image[y0:y1, x0:x1] = region * (1.0 - alpha) + colour * alpha
        categories.append(category)
        ids[y0:y1, x0:x1][inside] = len(categories)
    if options.noise_sigma > 0:
        image += rng.normal(0.0, rng.uniform(0.25, 1.0) * options.noise_sigma, size=image.shape)

    visible = np.bincount(ids.ravel(), minlength=len(categories) + 1)[1:]
    keep = np.flatnonzero(visible >= _MIN_VISIBLE_AREA)
    renumber = np.zeros(len(categories) + 1, np.int32)
    renumber[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), renumber[ids], [categories[k] for k in keep]


def _clear_previous_instances(root: Path) -> None:
    """Empties a previous (complete or interrupted) synthetic instance dataset; refuses other non-empty folders."""
    if not root.exists() or not any(root.iterdir()):
        return
    ours = (root / _INCOMPLETE).is_file()
    marker = root / "annotations" / "instances_train.json"
    if not ours and marker.is_file():
        try:
            ours = json.loads(marker.read_text()).get("info", {}).get("generator") == _GENERATOR
        except (json.JSONDecodeError, AttributeError):
            ours = False
    if not ours:
        raise FileExistsError(f"{root} is not empty and is not a synthetic instance dataset (no annotations/"
                              f"instances_train.json written by {_GENERATOR}); choose an empty or new folder")
    for sub in ("images", "annotations"):
        if (root / sub).is_dir():
            shutil.rmtree(root / sub)


def generate_shapes_instances(
    root: str | Path,
    n_train: int,
    n_val: int,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    options: ShapesOptions | None = None,
) -> Path:
    """Writes a synthetic COCO-format instance dataset and returns its root.

    Layout: `images/{train,val}/{i:05d}.png` and `annotations/instances_{train,val}.json` (COCO instances, image
    ids from 1, masks as compressed RLE of the visible part of each instance, categories
    `SHAPES_INSTANCE_CLASSES` with ids 1..6). Image `i` of a split depends only on `(seed, split, i)`, so the same
    seed writes byte-identical files. A folder holding a previous synthetic instance dataset is regenerated; any
    other non-empty folder is refused.

    Args:
        root: dataset root to write.
        n_train: number of training images.
        n_val: number of validation images.
        size: image side, or (height, width).
        seed: the same seed writes the same dataset.
        options: background, colour and noise settings (see `render_shapes_instances`).
    """
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0, got {n_train} and {n_val}")
    root = Path(root)
    _clear_previous_instances(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / _INCOMPLETE).touch()
    height, width = (size, size) if isinstance(size, int) else size
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(SHAPES_INSTANCE_CLASSES)]
    for split, count in (("train", n_train), ("val", n_val)):
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(_INSTANCE_STREAMS[split], i)))
            image, instance_map, cats = render_shapes_instances(rng, (height, width), options)
            Image.fromarray(image).save(image_dir / f"{i:05d}.png")
            images.append({"id": i + 1, "file_name": f"{i:05d}.png", "height": height, "width": width})
            rles = encode_instance_masks(instance_map, np.arange(1, len(cats) + 1))
            annotations += coco_annotations(rles, cats, [0] * len(cats), i + 1, len(annotations) + 1)
        info = {"generator": _GENERATOR, "seed": seed, "size": [height, width], "n_train": n_train, "n_val": n_val,
                "split": split}
        write_coco_json({"info": info, "images": images, "annotations": annotations, "categories": categories},
                    root / "annotations" / f"instances_{split}.json")
    (root / _INCOMPLETE).unlink()
    return root
