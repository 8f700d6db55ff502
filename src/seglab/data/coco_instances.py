"""COCO-format instance segmentation data: a dataset, a flip transform, a synthetic generator, a Cityscapes converter.

`CocoInstances` reads a COCO-style instances JSON (the `images`, `annotations` and `categories` lists) and the
images it names, and returns `(image, target)` pairs in torchvision's detection format, the format its Mask R-CNN
takes: the image as a float (3, H, W) tensor in [0, 1] and a target dict with `boxes` (N, 4) float xyxy in pixels,
`labels` (N,) int64 in 1..K (COCO category ids mapped to contiguous labels in increasing id order; 0 is the
background), `masks` (N, H, W) uint8, `image_id`, `area` (N,) float and `iscrowd` (N,) int64.

A segmentation may be polygons (`[[x1, y1, x2, y2, ...], ...]`), an uncompressed RLE (`{"size": [h, w],
"counts": [int, ...]}`) or a compressed RLE (`counts` a string), all decoded by pycocotools. Every annotation is
checked when the dataset is built, and a malformed one raises `DatasetError` naming the JSON file and the
annotation id.

`generate_shapes_instances` writes a synthetic instance dataset in this layout, so the whole instance path (data,
Mask R-CNN, boundary refinement, COCO evaluation) runs without a download. `cityscapes_to_coco` converts the
Cityscapes `*_gtFine_instanceIds.png` annotations to a COCO JSON the way mmdetection's
`tools/dataset_converters/cityscapes.py` does (which the Mask R-CNN and BPR Cityscapes setups use).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image
from torch.utils.data import Dataset

from seglab.data.datasets import DatasetError, read_image
from seglab.data.synthetic import ShapesOptions, _background, _pick_colour

# a box may reach this far (pixels) beyond the image before it counts as malformed: COCO boxes come from float
# polygon coordinates and sometimes overshoot the border by a fraction of a pixel
_BOX_TOLERANCE = 1.0

Target = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------- reading
def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {path} holds a {type(data).__name__}; expected a COCO dict")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"annotation file {path} has no {key!r} list (COCO instances format needed)")
    return data


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One compressed RLE (counts as bytes) for any of COCO's three segmentation encodings."""
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in polygon] for polygon in segmentation]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _check_annotation(ann: dict[str, Any], image: dict[str, Any] | None, categories: set[int], where: Path) -> None:
    """Raises `DatasetError` naming the file and the annotation id for anything a target cannot be built from."""

    def fail(message: str) -> DatasetError:
        return DatasetError(f"{where}: annotation id {ann.get('id')!r} (image_id {ann.get('image_id')!r}): {message}")

    if image is None:
        raise fail("its image_id is not in the 'images' list")
    if ann.get("category_id") not in categories:
        raise fail(f"unknown category_id {ann.get('category_id')!r}; the 'categories' list has {sorted(categories)}")
    height, width = image["height"], image["width"]
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        if not segmentation:
            raise fail("empty polygon list")
        for k, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                size = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
                raise fail(f"polygon {k} has {size} coordinates; a polygon needs an even number, at least 6 "
                           "(three x, y points)")
    elif isinstance(segmentation, dict):
        if not isinstance(segmentation.get("counts"), (list, str, bytes)):
            raise fail("RLE segmentation without 'counts' (a list of run lengths or a compressed string)")
        if list(segmentation.get("size", [])) != [height, width]:
            raise fail(f"RLE size {segmentation.get('size')!r} differs from the image's [height, width] "
                       f"[{height}, {width}]")
    else:
        raise fail(f"segmentation is {type(segmentation).__name__}; expected polygons (a list) or an RLE (a dict)")
    if "bbox" in ann:
        box = ann["bbox"]
        numbers = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
        if not (numbers and all(math.isfinite(v) for v in box)):
            raise fail(f"bbox {box!r} is not four numbers [x, y, width, height]")
        x, y, w, h = (float(v) for v in box)
        if w < 0 or h < 0:
            raise fail(f"bbox {box!r} has a negative width or height")
        t = _BOX_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise fail(f"bbox {box!r} (x, y, w, h) lies outside the {width}x{height} image")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise fail(f"iscrowd is {ann.get('iscrowd')!r}; expected 0 or 1")


class CocoInstances(Dataset):
    """A COCO-format instance segmentation dataset in torchvision's detection format.

    Args:
        ann_file: the COCO instances JSON.
        image_dir: folder the images' `file_name`s are relative to.
        include_crowd: keep crowd annotations (`iscrowd` 1) in the targets, flagged by `iscrowd`. Off for
            training (torchvision's Mask R-CNN would learn them as objects); evaluation reads crowd regions from
            the JSON itself (see `seglab.metrics_instance.coco_evaluate`).
        skip_empty: leave out images with no target annotation (for training; evaluation needs every image).
        transforms: called as `transforms(image, target)`, returning the pair (e.g. `RandomHorizontalFlip()`).
        check_files: check at construction that every image file exists.

    Attributes:
        cat_id_to_label / label_to_cat_id: COCO category id <-> contiguous label 1..K.
        class_names: `("background", name_1, ..., name_K)`, indexed by label.
        num_classes: K + 1, what torchvision's detection models take as `num_classes`.
        image_ids: the COCO image id of each index.

    Annotations whose box has zero width or height are left out of the targets (torchvision refuses them).
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        *,
        include_crowd: bool = False,
        skip_empty: bool = False,
        transforms: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None,
        check_files: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.include_crowd = include_crowd
        self.transforms = transforms
        data = _load_json(self.ann_file)

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_id_to_label = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
        self.label_to_cat_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.class_names: tuple[str, ...] = ("background", *(str(c.get("name", c["id"])) for c in categories))

        images = {}
        for info in data["images"]:
            missing = [k for k in ("id", "file_name", "height", "width") if k not in info]
            if missing:
                raise DatasetError(f"{self.ann_file}: image entry {info.get('id', info)!r} lacks {missing}")
            images[info["id"]] = info
        per_image: dict[Any, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        cat_ids = set(self.cat_id_to_label)
        for ann in data["annotations"]:
            image = images.get(ann.get("image_id"))
            _check_annotation(ann, image, cat_ids, self.ann_file)
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if "bbox" not in ann:
                ann["bbox"] = mask_utils.toBbox(_to_rle(ann["segmentation"], image["height"], image["width"])).tolist()
            if ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
                continue
            per_image[image["id"]].append(ann)

        self.image_ids = sorted(i for i in images if per_image[i] or not skip_empty)
        self._images = [images[i] for i in self.image_ids]
        self._annotations = [per_image[i] for i in self.image_ids]
        if check_files:
            for info in self._images:
                path = self.image_dir / info["file_name"]
                if not path.is_file():
                    raise DatasetError(f"{self.ann_file}: image id {info['id']!r}: image file {path} does not exist")
        self._notes: set[str] = set()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return (f"CocoInstances({self.ann_file}, {len(self)} images, {self.num_classes - 1} categories, "
                f"include_crowd={self.include_crowd})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        info, anns = self._images[index], self._annotations[index]
        height, width = int(info["height"]), int(info["width"])
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DatasetError(f"{self.ann_file}: image id {info['id']!r}: image file {path} does not exist")
        image = read_image(path, self._notes)
        if tuple(image.shape[-2:]) != (height, width):
            raise DatasetError(f"{self.ann_file}: image id {info['id']!r}: {path} is {image.shape[-1]}x"
                               f"{image.shape[-2]} but the JSON says {width}x{height}")
        if anns:
            rles = [_to_rle(a["segmentation"], height, width) for a in anns]
            masks = torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)))
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            area = torch.tensor([float(a["area"]) if "area" in a else float(mask_utils.area(r))
                                 for a, r in zip(anns, rles, strict=True)], dtype=torch.float32)
        else:
            masks = torch.zeros((0, height, width), dtype=torch.uint8)
            boxes = torch.zeros((0, 4), dtype=torch.float32)
            area = torch.zeros((0,), dtype=torch.float32)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": masks,
            "image_id": torch.tensor(info["id"], dtype=torch.int64),
            "area": area,
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        image = image.float() / 255.0
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_instances(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Batches (image, target) pairs as the two lists torchvision's detection models take (sizes may differ)."""
    return [image for image, _ in batch], [target for _, target in batch]


# ---------------------------------------------------------------------------------------------------- transforms
def hflip_instances(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirrors an (image, target) pair left-right: the image, the masks and the boxes (x -> W - x)."""
    width = image.shape[-1]
    flipped = dict(target)
    if "boxes" in target:
        b = target["boxes"]
        flipped["boxes"] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped


class RandomHorizontalFlip:
    """`hflip_instances` with probability `p`, drawn from `generator` (torch's global one when None)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return hflip_instances(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


# ---------------------------------------------------------------------------------------------------- synthetic
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
    image = _background(rng, height, width, options)
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
        colour = _pick_colour(rng, region[inside].mean(axis=0), options)
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


def _encode_instances(instance_map: np.ndarray, instance_ids: np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLEs (counts as str, JSON-ready) of `instance_map == id` for each id, in one pycocotools call."""
    if len(instance_ids) == 0:
        return []
    masks = np.asfortranarray((instance_map[..., None] == instance_ids).astype(np.uint8))
    rles = mask_utils.encode(masks)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _annotations_for(rles: list[dict[str, Any]], categories: Sequence[int], crowd: Sequence[int],
                     image_id: int, first_id: int) -> list[dict[str, Any]]:
    if not rles:
        return []
    areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
    return [{"id": first_id + k, "image_id": image_id, "category_id": int(categories[k]), "segmentation": rle,
             "area": int(areas[k]), "bbox": [float(v) for v in boxes[k]], "iscrowd": int(crowd[k])}
            for k, rle in enumerate(rles)]


def _write_json(data: dict[str, Any], path: Path) -> None:
    """Writes through a temporary file, so an interrupted run never leaves a half-written JSON behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


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
            rles = _encode_instances(instance_map, np.arange(1, len(cats) + 1))
            annotations += _annotations_for(rles, cats, [0] * len(cats), i + 1, len(annotations) + 1)
        info = {"generator": _GENERATOR, "seed": seed, "size": [height, width], "n_train": n_train, "n_val": n_val,
                "split": split}
        _write_json({"info": info, "images": images, "annotations": annotations, "categories": categories},
                    root / "annotations" / f"instances_{split}.json")
    (root / _INCOMPLETE).unlink()
    return root


# ---------------------------------------------------------------------------------------------------- Cityscapes
# The 8 Cityscapes classes with instances that are evaluated (cityscapesScripts labels.py: hasInstances and not
# ignoreInEval), by Cityscapes label id; caravan (29) and trailer (30) have instances but are ignored in evaluation.
CITYSCAPES_INSTANCE_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (24, "person", "human"),
    (25, "rider", "human"),
    (26, "car", "vehicle"),
    (27, "truck", "vehicle"),
    (28, "bus", "vehicle"),
    (31, "train", "vehicle"),
    (32, "motorcycle", "vehicle"),
    (33, "bicycle", "vehicle"),
)
_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
_CITYSCAPES_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"


def cityscapes_to_coco(cityscapes_root: str | Path, split: str, out_json: str | Path) -> Path:
    """Converts Cityscapes fine instance annotations of one split to a COCO instances JSON; returns its path.

    Reads `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` and `gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png`.
    An instance-id pixel value v >= 1000 is instance `v % 1000` of Cityscapes label `v // 1000`; a value below
    1000 is a label id with no instance (a group, e.g. a crowd of people), which becomes an `iscrowd` annotation.
    Only the 8 `CITYSCAPES_INSTANCE_CATEGORIES` are kept, with their Cityscapes label ids as COCO category ids.
    Masks are compressed RLEs; `bbox` and `area` come from them. Image `file_name`s are `<city>/<stem>_leftImg8bit.png`,
    relative to `leftImg8bit/<split>` (pass that folder as `CocoInstances`' `image_dir`). This follows mmdetection's
    Cityscapes converter, which the Mask R-CNN and BPR Cityscapes setups use.
    """
    root = Path(cityscapes_root)
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir} does not exist; expected the Cityscapes layout "
                           f"leftImg8bit/{split}/<city>/*{_CITYSCAPES_IMAGE_SUFFIX}")
    image_files = sorted(image_dir.glob(f"*/*{_CITYSCAPES_IMAGE_SUFFIX}"))
    if not image_files:
        raise DatasetError(f"no */*{_CITYSCAPES_IMAGE_SUFFIX} files below {image_dir}")
    known = np.array([c[0] for c in CITYSCAPES_INSTANCE_CATEGORIES])
    images, annotations = [], []
    for image_id, image_file in enumerate(image_files, start=1):
        stem = image_file.name[: -len(_CITYSCAPES_IMAGE_SUFFIX)]
        gt_file = gt_dir / image_file.parent.name / f"{stem}{_CITYSCAPES_INSTANCE_SUFFIX}"
        if not gt_file.is_file():
            raise DatasetError(f"image {image_file} has no instance annotation {gt_file}")
        with Image.open(gt_file) as pil:
            instance_map = np.asarray(pil).astype(np.int32)
        with Image.open(image_file) as pil:
            width, height = pil.size
        if instance_map.shape != (height, width):
            raise DatasetError(f"{gt_file} is {instance_map.shape[1]}x{instance_map.shape[0]} but its image "
                               f"{image_file} is {width}x{height}")
        values = np.unique(instance_map[instance_map >= known.min()])
        labels = np.where(values >= 1000, values // 1000, values)
        values, labels = values[np.isin(labels, known)], labels[np.isin(labels, known)]
        rles = _encode_instances(instance_map, values)
        annotations += _annotations_for(rles, labels.tolist(), (values < 1000).astype(int).tolist(), image_id,
                                        len(annotations) + 1)
        images.append({"id": image_id, "file_name": f"{image_file.parent.name}/{image_file.name}", "height": height,
                       "width": width})
    categories = [{"id": cid, "name": name, "supercategory": group}
                  for cid, name, group in CITYSCAPES_INSTANCE_CATEGORIES]
    info = {"description": f"Cityscapes {split} fine instances, converted by seglab", "source": str(root)}
    out = Path(out_json)
    _write_json({"info": info, "images": images, "annotations": annotations, "categories": categories}, out)
    return out


# ---------------------------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m seglab.data.coco_instances {cityscapes,shapes} ...`: convert Cityscapes or write synthetic data."""
    parser = argparse.ArgumentParser(prog="python -m seglab.data.coco_instances", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    city = sub.add_parser("cityscapes", help="Cityscapes instanceIds -> COCO JSON")
    city.add_argument("root", help="Cityscapes root holding leftImg8bit/ and gtFine/")
    city.add_argument("--split", default="train")
    city.add_argument("--out", required=True, help="output JSON, e.g. data/cityscapes/annotations/instancesonly_"
                                                   "filtered_gtFine_train.json")
    shapes = sub.add_parser("shapes", help="write the synthetic instance shapes dataset")
    shapes.add_argument("root")
    shapes.add_argument("--n-train", type=int, default=200)
    shapes.add_argument("--n-val", type=int, default=50)
    shapes.add_argument("--size", type=int, default=128)
    shapes.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "cityscapes":
        print(cityscapes_to_coco(args.root, args.split, args.out))
    else:
        print(generate_shapes_instances(args.root, args.n_train, args.n_val, args.size, args.seed))


if __name__ == "__main__":
    main()
