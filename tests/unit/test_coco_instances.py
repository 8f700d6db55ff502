"""COCO instance data: the dataset on hand-made JSON, flips, the synthetic generator, the Cityscapes converter."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from scipy import ndimage

from seglab.data.coco_instances import CocoInstances, RandomHorizontalFlip, collate_instances, hflip_instances
from seglab.data.converters import cityscapes_to_coco
from seglab.data.datasets import DatasetError
from seglab.data.synthetic_instances import SHAPES_INSTANCE_CLASSES, generate_shapes_instances, render_shapes_instances
from seglab.metrics_instance import coco_evaluate

H, W = 12, 16


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    # uncompressed: run lengths of the column-major (Fortran) order, starting with a run of zeros
    flat = mask.astype(np.uint8).ravel(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], edges])).tolist()}


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _write_dataset(tmp_path: Path, edit=None) -> tuple[Path, Path, np.ndarray]:
    """Three images (the third without annotations); category ids 3 and 7 (labels 1 and 2)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(pixels).save(image_dir / name)
    data = {
        "images": [{"id": 10, "file_name": "a.png", "height": H, "width": W},
                   {"id": 11, "file_name": "b.png", "height": H, "width": W},
                   {"id": 12, "file_name": "c.png", "height": H, "width": W}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            # polygon x 2..5, y 1..3: pycocotools rasterises it to columns 2..4, rows 1..2
            {"id": 1, "image_id": 10, "category_id": 3, "segmentation": [[2, 1, 5, 1, 5, 3, 2, 3]],
             "bbox": [2, 1, 3, 2], "area": 6, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "segmentation": _rle(_box_mask(8, 4, 12, 10), False),
             "bbox": [8, 4, 4, 6], "area": 24, "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 7, "segmentation": _rle(_box_mask(0, 0, 3, 12)),
             "area": 36, "iscrowd": 0},  # no bbox: taken from the mask
            {"id": 4, "image_id": 11, "category_id": 3, "segmentation": _rle(_box_mask(10, 2, 16, 6)),
             "bbox": [10, 2, 6, 4], "area": 24, "iscrowd": 1},
        ],
    }
    if edit is not None:
        edit(data)
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, image_dir, pixels


def test_targets_from_polygons_and_both_rle_kinds(tmp_path):
    ann_file, image_dir, pixels = _write_dataset(tmp_path)
    ds = CocoInstances(ann_file, image_dir)
    assert len(ds) == 3 and ds.image_ids == [10, 11, 12]
    assert ds.cat_id_to_label == {3: 1, 7: 2} and ds.label_to_cat_id == {1: 3, 2: 7}
    assert ds.class_names == ("background", "three", "seven") and ds.num_classes == 3

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[2, 1, 5, 3], [8, 4, 12, 10]]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, H, W)
    assert np.array_equal(target["masks"][0].numpy(), _box_mask(2, 1, 5, 3))
    assert np.array_equal(target["masks"][1].numpy(), _box_mask(8, 4, 12, 10))
    assert int(target["image_id"]) == 10 and target["area"].tolist() == [6, 24]
    assert target["iscrowd"].tolist() == [0, 0]

    _, target = ds[1]  # the crowd annotation is left out for training
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[0, 0, 3, 12]]
    assert np.array_equal(target["masks"][0].numpy(), _box_mask(0, 0, 3, 12))

    _, target = ds[2]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, H, W) and target["labels"].numel() == 0


def test_crowd_kept_on_request_and_empty_images_skipped(tmp_path):
    ann_file, image_dir, _ = _write_dataset(tmp_path)
    _, target = CocoInstances(ann_file, image_dir, include_crowd=True)[1]
    assert target["iscrowd"].tolist() == [0, 1] and target["labels"].tolist() == [2, 1]
    assert np.array_equal(target["masks"][1].numpy(), _box_mask(10, 2, 16, 6))
    assert CocoInstances(ann_file, image_dir, skip_empty=True).image_ids == [10, 11]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][0].update(segmentation=[[2, 1, 5, 1]]), "annotation id 1 .*polygon 0 has 4"),
        (lambda d: d["annotations"][1].update(bbox=[8, 4, 14, 6]), "annotation id 2 .*outside the 16x12 image"),
        (lambda d: d["annotations"][2].update(category_id=5), "annotation id 3 .*unknown category_id 5"),
        (lambda d: d["annotations"][3].update(image_id=99), "annotation id 4 .*not in the 'images' list"),
        (lambda d: d["annotations"][2]["segmentation"].update(size=[5, 5]), "annotation id 3 .*RLE size"),
        (lambda d: d["images"][1].update(file_name="missing.png"), "image id 11: image file .*missing.png"),
    ],
)
def test_malformed_entries_name_the_file_and_the_annotation(tmp_path, edit, message):
    ann_file, image_dir, _ = _write_dataset(tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as info:
        CocoInstances(ann_file, image_dir)
    assert str(ann_file) in str(info.value)


def test_flip_moves_boxes_with_masks(tmp_path):
    ann_file, image_dir, _ = _write_dataset(tmp_path)
    image, target = CocoInstances(ann_file, image_dir)[0]
    flipped_image, flipped = hflip_instances(image, target)
    assert flipped["boxes"].tolist() == [[11, 1, 14, 3], [4, 4, 8, 10]]  # x -> 16 - x
    assert np.array_equal(flipped["masks"][0].numpy(), _box_mask(11, 1, 14, 3))
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(flipped["labels"], target["labels"])
    for mask, box in zip(flipped["masks"], flipped["boxes"], strict=True):  # boxes still enclose their masks
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == box.int().tolist()
    again_image, again = hflip_instances(flipped_image, flipped)
    assert torch.equal(again_image, image) and torch.equal(again["boxes"], target["boxes"])

    always, never = RandomHorizontalFlip(1.0), RandomHorizontalFlip(0.0)
    assert torch.equal(always(image, target)[1]["boxes"], flipped["boxes"])
    assert never(image, target)[1] is target
    ds = CocoInstances(ann_file, image_dir, transforms=always)
    images, targets = collate_instances([ds[0], ds[1]])
    assert len(images) == len(targets) == 2 and targets[0]["boxes"].tolist() == flipped["boxes"].tolist()


# ---------------------------------------------------------------------------------------------------- synthetic
def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_layout_and_determinism(tmp_path):
    root = generate_shapes_instances(tmp_path / "a", n_train=4, n_val=2, size=64, seed=3)
    assert root == tmp_path / "a"
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert sorted(p.name for p in (root / "images" / "val").iterdir()) == ["00000.png", "00001.png"]
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPES_INSTANCE_CLASSES)
    assert all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"])  # compressed RLE
    assert _digests(root) == _digests(generate_shapes_instances(tmp_path / "b", 4, 2, 64, seed=3))
    assert _digests(root) != _digests(generate_shapes_instances(tmp_path / "c", 4, 2, 64, seed=4))
    generate_shapes_instances(root, 1, 1, 64, seed=3)  # a previous dataset is regenerated
    assert len(list((root / "images" / "train").iterdir())) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a synthetic instance dataset"):
        generate_shapes_instances(tmp_path / "other", 1, 1, 64)


def test_synthetic_instances_overlap_and_have_thin_parts(tmp_path):
    root = generate_shapes_instances(tmp_path / "s", n_train=12, n_val=0, size=96, seed=0)
    ds = CocoInstances(root / "annotations" / "instances_train.json", root / "images" / "train")
    counts, overlapping_boxes, holes, thin = [], 0, 0, 0
    for i in range(len(ds)):
        _, target = ds[i]
        masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
        counts.append(len(masks))
        assert int(masks.sum(0).max()) <= 1  # visible masks: each pixel belongs to at most one instance
        lo, hi = torch.max(boxes[:, None, :2], boxes[None, :, :2]), torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
        overlaps = ((hi - lo).clamp(min=0).prod(-1) > 0) & ~torch.eye(len(boxes), dtype=torch.bool)
        overlapping_boxes += int(overlaps.any(1).sum())
        for mask, label in zip(masks.numpy().astype(bool), labels.tolist(), strict=True):
            name = SHAPES_INSTANCE_CLASSES[label - 1]
            holes += name == "ring" and ndimage.binary_fill_holes(mask).sum() > mask.sum()
            # a part at most ~4 px wide vanishes under an opening with a 5x5 square
            thin += name in ("star", "cross", "ring") and ndimage.binary_opening(mask, np.ones((5, 5))).sum() < \
                0.7 * mask.sum()
    assert max(counts) <= 8 and min(counts) >= 1 and np.mean(counts) >= 3
    assert overlapping_boxes >= 4 and holes >= 1 and thin >= 3


def test_synthetic_ground_truth_scores_ap_one(tmp_path):
    root = generate_shapes_instances(tmp_path / "s", n_train=0, n_val=3, size=64, seed=1)
    gt_file = root / "annotations" / "instances_val.json"
    gt = json.loads(gt_file.read_text())
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
              "segmentation": a["segmentation"]} for a in gt["annotations"]]
    result = coco_evaluate(gt_file, preds, ("segm", "boundary"))
    assert result["segm_AP"] == pytest.approx(1.0) and result["boundary_AP"] == pytest.approx(1.0)


def test_render_returns_a_consistent_instance_map():
    image, ids, cats = render_shapes_instances(np.random.default_rng(5), (40, 56))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8 and ids.shape == (40, 56)
    assert set(np.unique(ids).tolist()) <= set(range(len(cats) + 1))
    assert all(1 <= c <= len(SHAPES_INSTANCE_CLASSES) for c in cats)
    assert all((ids == k).sum() >= 12 for k in range(1, len(cats) + 1))


# ---------------------------------------------------------------------------------------------------- Cityscapes
def _fake_cityscapes(root: Path) -> dict[str, np.ndarray]:
    """Two cities in the real layout, with 16-bit instanceIds PNGs."""
    maps = {}
    a = np.full((8, 10), 7, np.uint16)  # road (label id 7, no instances)
    a[0:2, 0:3] = 26000  # car #0
    a[0:2, 5:9] = 26001  # car #1
    a[3:6, 0:2] = 24000  # person #0
    a[3:5, 4:6] = 26  # a car group: label id below 1000 -> crowd
    a[6:8, 0:4] = 29000  # caravan: has instances but is ignored in evaluation
    a[6:8, 5:7] = 11  # building
    a[6:8, 8:10] = 33002  # bicycle #2
    b = np.zeros((8, 10), np.uint16)
    b[1:4, 1:4] = 25000  # rider
    maps["aachen/aachen_000000_000019"] = a
    maps["bremen/bremen_000001_000019"] = b
    for stem, array in maps.items():
        city, name = stem.split("/")
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "leftImg8bit" / "val" / city /
                                                              f"{name}_leftImg8bit.png")
        Image.fromarray(array).save(root / "gtFine" / "val" / city / f"{name}_gtFine_instanceIds.png")
    return maps


def test_cityscapes_conversion(tmp_path):
    maps = _fake_cityscapes(tmp_path / "cityscapes")
    out = cityscapes_to_coco(tmp_path / "cityscapes", "val", tmp_path / "out" / "instances_val.json")
    data = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [
        (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"), (32, "motorcycle"),
        (33, "bicycle")]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in data["images"]] == [
        (1, "aachen/aachen_000000_000019_leftImg8bit.png", 8, 10),
        (2, "bremen/bremen_000001_000019_leftImg8bit.png", 8, 10)]
    anns = data["annotations"]
    # sorted by instance-id value: 26 (crowd), 24000, 26000, 26001, 33002; then the rider of image 2
    assert [(a["id"], a["image_id"], a["category_id"], a["iscrowd"], a["area"]) for a in anns] == [
        (1, 1, 26, 1, 4), (2, 1, 24, 0, 6), (3, 1, 26, 0, 6), (4, 1, 26, 0, 8), (5, 1, 33, 0, 4), (6, 2, 25, 0, 9)]
    assert anns[3]["bbox"] == [5.0, 0.0, 4.0, 2.0]
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)
    assert np.array_equal(mask_utils.decode(anns[3]["segmentation"]), maps["aachen/aachen_000000_000019"] == 26001)

    ds = CocoInstances(out, tmp_path / "cityscapes" / "leftImg8bit" / "val")
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 3, 3, 8]  # crowd left out; person, car, car, bicycle
    assert ds.label_to_cat_id[8] == 33


def test_cityscapes_missing_annotation_is_named(tmp_path):
    _fake_cityscapes(tmp_path / "cityscapes")
    (tmp_path / "cityscapes" / "gtFine" / "val" / "bremen" / "bremen_000001_000019_gtFine_instanceIds.png").unlink()
    with pytest.raises(DatasetError, match="bremen_000001_000019_gtFine_instanceIds.png"):
        cityscapes_to_coco(tmp_path / "cityscapes", "val", tmp_path / "out.json")
    with pytest.raises(DatasetError, match="leftImg8bit/train"):
        cityscapes_to_coco(tmp_path / "cityscapes", "train", tmp_path / "out.json")
