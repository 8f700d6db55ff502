"""The COCO instances format: a dataset that reads it, its flip transform, and the helpers that write it.

`CocoInstances` reads a COCO-style instances JSON (the `images`, `annotations` and `categories` lists) and the
images it names, and returns `(image, target)` pairs in torchvision's detection format, the format its Mask R-CNN
takes: the image as a float (3, H, W) tensor in [0, 1] and a target dict with `boxes` (N, 4) float xyxy in pixels,
`labels` (N,) int64 in 1..K (COCO category ids mapped to contiguous labels in increasing id order; 0 is the
background), `masks` (N, H, W) uint8, `image_id`, `area` (N,) float and `iscrowd` (N,) int64.

A segmentation may be polygons (`[[x1, y1, x2, y2, ...], ...]`), an uncompressed RLE (`{"size": [h, w],
"counts": [int, ...]}`) or a compressed RLE (`counts` a string), all decoded by pycocotools. Every annotation is
checked when the dataset is built, and a malformed one raises `DatasetError` naming the JSON file and the
annotation id.

`encode_instance_masks`, `coco_annotations` and `write_coco_json` write the format; the writers are
`seglab.data.synthetic_instances.generate_shapes_instances` (a synthetic instance dataset, so the whole instance path
runs without a download) and `seglab.data.converters.cityscapes_to_coco` (Cityscapes instance annotations).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch.utils.data import Dataset

from seglab.data.datasets import DatasetError, read_image

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


# ---------------------------------------------------------------------------------------------------- writing
def encode_instance_masks(instance_map: np.ndarray, instance_ids: np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLEs (counts as str, JSON-ready) of `instance_map == id` for each id, in one pycocotools call."""
    if len(instance_ids) == 0:
        return []
    masks = np.asfortranarray((instance_map[..., None] == instance_ids).astype(np.uint8))
    rles = mask_utils.encode(masks)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_annotations(rles: list[dict[str, Any]], categories: Sequence[int], crowd: Sequence[int],
                     image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotation records of image `image_id`, one per RLE, with ids from `first_id`: `rles[k]` has category
    `categories[k]` and `iscrowd` `crowd[k]` (0 or 1); `bbox` and `area` come from the masks."""
    if not rles:
        return []
    areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
    return [{"id": first_id + k, "image_id": image_id, "category_id": int(categories[k]), "segmentation": rle,
             "area": int(areas[k]), "bbox": [float(v) for v in boxes[k]], "iscrowd": int(crowd[k])}
            for k, rle in enumerate(rles)]


def write_coco_json(data: dict[str, Any], path: Path) -> None:
    """Writes `data` as JSON to `path` through a temporary file, so an interrupted run never leaves a half-written
    JSON behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
