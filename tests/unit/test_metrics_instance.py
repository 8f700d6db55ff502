"""Instance metrics on hand-made cases: boundary bands, Boundary IoU, COCO AP, Boundary AP."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from scipy import ndimage

from seglab.metrics_instance import (
    AP_NAMES,
    boundary_dilation,
    boundary_iou,
    coco_evaluate,
    mask_iou,
    mask_to_boundary,
    masks_to_predictions,
)


def _square(top: int, left: int, side: int, size: int = 100, width: int | None = None) -> torch.Tensor:
    m = torch.zeros(size, width or size, dtype=torch.bool)
    m[top:top + side, left:left + side] = True
    return m


def _gt(masks: list[torch.Tensor], categories: list[int], size: tuple[int, int] = (100, 100),
        image_ids: list[int] | None = None, crowd: list[int] | None = None) -> dict:
    """A COCO ground-truth dict: one image per distinct image id, one annotation per mask (ids from 1)."""
    image_ids = image_ids or [1] * len(masks)
    crowd = crowd or [0] * len(masks)
    annotations = []
    for k, (m, c, i, z) in enumerate(zip(masks, categories, image_ids, crowd, strict=True)):
        rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        annotations.append({"id": k + 1, "image_id": i, "category_id": c, "iscrowd": z,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
    images = [{"id": i, "file_name": f"{i}.png", "height": size[0], "width": size[1]} for i in sorted(set(image_ids))]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in sorted(set(categories))]}


# ---------------------------------------------------------------------------------------------------- boundary
def test_dilation_follows_the_image_diagonal():
    assert boundary_dilation(100, 100) == 3  # 0.02 * 141.4 = 2.83
    assert boundary_dilation(50, 50) == 1  # 1.41
    assert boundary_dilation(10, 10) == 1  # 0.28 rounds to 0, floored at 1
    assert boundary_dilation(1024, 2048) == 46  # 0.02 * 2289.7 = 45.8


def test_band_of_a_square_and_of_the_image_border():
    band = mask_to_boundary(_square(30, 30, 40))  # d = 3: the 40x40 square minus its 34x34 core
    assert int(band.sum()) == 40 * 40 - 34 * 34
    assert not band[33:67, 33:67].any() and band[30:70, 30:33].all()
    full = torch.ones(10, 10, dtype=torch.bool)  # d = 1; the image border counts as background
    assert int(mask_to_boundary(full).sum()) == 100 - 64
    assert not mask_to_boundary(torch.zeros(10, 10, dtype=torch.bool)).any()


def test_band_matches_iterated_3x3_erosion():
    # the reference erodes with a 3x3 kernel d times after zero-padding the border; scipy does the same
    rng = np.random.default_rng(0)
    masks = np.stack([ndimage.gaussian_filter(rng.random((60, 90)), 3) > 0.5 for _ in range(3)])
    d = boundary_dilation(60, 90)
    expected = np.stack([m & ~ndimage.binary_erosion(m, np.ones((3, 3)), iterations=d, border_value=0) for m in masks])
    assert expected.sum() > 500
    assert np.array_equal(mask_to_boundary(masks).numpy(), expected)


def test_perfect_prediction_scores_one():
    g = _square(30, 30, 40)
    assert float(boundary_iou(g, g)) == 1.0
    assert float(mask_iou(g, g)) == 1.0
    empty = torch.zeros_like(g)
    assert float(boundary_iou(empty, empty)) == 1.0 and float(boundary_iou(g, empty)) == 0.0


def test_shifted_square_hand_computed():
    # 40x40 square, d = 3, prediction shifted right by 1 px. Bands: 444 px each; the intersection is the
    # 40x39 overlap minus the union of the two 34x34 cores (34x35 = 1190): 1560 - 1190 = 370;
    # union 444 + 444 - 370 = 518; boundary IoU = 370 / 518 = 5/7. Mask IoU = 1560 / 1640.
    g, p = _square(30, 30, 40), _square(30, 31, 40)
    assert float(boundary_iou(g, p)) == pytest.approx(5 / 7, abs=1e-6)
    assert float(mask_iou(g, p)) == pytest.approx(1560 / 1640, abs=1e-6)
    # 20x20 square on a 50x50 image (d = 1), shifted by 1: the bands share the two 19-px horizontal edges
    # only: 38 / (76 + 76 - 38) = 1/3
    assert float(boundary_iou(_square(10, 10, 20, 50), _square(10, 11, 20, 50))) == pytest.approx(1 / 3, abs=1e-6)


def test_boundary_only_error_hits_boundary_iou_much_harder():
    # prediction = GT eroded by one pixel (38x38 inside 40x40), d = 3: mask IoU 1444/1600 = 0.9025;
    # boundary IoU = (1444 - 34²) / (40² - 32²) = 288 / 576 = 0.5
    g, p = _square(30, 30, 40), _square(31, 31, 38)
    b, m = float(boundary_iou(g, p)), float(mask_iou(g, p))
    assert m == pytest.approx(0.9025, abs=1e-6)
    assert b == pytest.approx(0.5, abs=1e-6)
    assert 1 - b > 5 * (1 - m)


def test_boundary_iou_is_batched_and_takes_numpy():
    g = torch.stack([_square(30, 30, 40)] * 3)
    p = torch.stack([_square(30, 30, 40), _square(30, 31, 40), _square(31, 31, 38)])
    assert torch.allclose(boundary_iou(g, p), torch.tensor([1.0, 5 / 7, 0.5]), atol=1e-6)
    assert torch.allclose(boundary_iou(g.numpy(), p.numpy()), torch.tensor([1.0, 5 / 7, 0.5]), atol=1e-6)
    assert boundary_iou(g[0], p).shape == (3,)  # broadcasting one GT against several predictions


# ---------------------------------------------------------------------------------------------------- COCO AP
def _masks_preds(masks, scores, cats, image_id=1):
    return masks_to_predictions(torch.stack(masks), scores, cats, image_id)


def test_perfect_predictions_give_ap_one_in_every_type(tmp_path):
    # small (20² = 400), medium (40² = 1600) and large (100² = 10000) objects on a 128x128 image, two categories
    masks = [_square(2, 2, 20, 128), _square(2, 60, 40, 128), _square(26, 26, 100, 128)]
    gt = _gt(masks, [3, 7, 3], size=(128, 128))
    preds = _masks_preds(masks, [0.9, 0.8, 0.7], [3, 7, 3])
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    for source in (gt, path, str(path)):
        result = coco_evaluate(source, preds, ("segm", "bbox", "boundary"))
        assert set(result) == {f"{t}_{n}" for t in ("segm", "bbox", "boundary") for n in AP_NAMES}
        for value in result.values():
            assert value == pytest.approx(1.0)


def test_false_positive_with_higher_score_halves_ap():
    # one GT, a non-overlapping false positive ranked above the true positive: precision 1/2 at recall 1
    g = _square(30, 30, 40)
    preds = _masks_preds([_square(0, 75, 20), g], [0.9, 0.8], [1, 1])
    result = coco_evaluate(_gt([g], [1]), preds, ("segm", "bbox"))
    for t in ("segm", "bbox"):
        assert result[f"{t}_AP"] == pytest.approx(0.5)
        assert result[f"{t}_AP50"] == pytest.approx(0.5)
        assert result[f"{t}_AP75"] == pytest.approx(0.5)
        assert math.isnan(result[f"{t}_APs"]) and math.isnan(result[f"{t}_APl"])  # no GT of those sizes
    # without the false positive: 1.0
    assert coco_evaluate(_gt([g], [1]), preds[1:], ("segm",))["segm_AP"] == pytest.approx(1.0)


def test_false_positive_between_true_positives_hand_computed():
    # two GTs; ranked TP, FP, TP: (recall, precision) = (1/2, 1), (1/2, 1/2), (1, 2/3). The interpolated precision
    # is 1 for the 51 recall thresholds 0..0.50 and 2/3 for the 50 above: AP = (51 + 50 * 2/3) / 101
    a, b = _square(5, 5, 40), _square(55, 55, 40)
    preds = _masks_preds([a, _square(5, 60, 30), b], [0.9, 0.8, 0.7], [1, 1, 1])
    result = coco_evaluate(_gt([a, b], [1, 1]), preds, ("segm",))
    assert result["segm_AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-9)


def test_boundary_ap_uses_min_of_mask_and_boundary_iou():
    # 1-px shift: mask IoU 0.951 matches at all ten thresholds (AP 1); boundary IoU 5/7 = 0.714 only at
    # 0.50..0.70 (5 of 10): Boundary AP 0.5, AP50 1, AP75 0
    g, p = _square(30, 30, 40), _square(30, 31, 40)
    result = coco_evaluate(_gt([g], [1]), _masks_preds([p], [0.9], [1]), ("segm", "boundary"))
    assert result["segm_AP"] == pytest.approx(1.0)
    assert result["boundary_AP"] == pytest.approx(0.5)
    assert result["boundary_AP50"] == pytest.approx(1.0)
    assert result["boundary_AP75"] == pytest.approx(0.0)
    # eroded by 2 px: mask IoU 36²/40² = 0.81 (thresholds 0.50..0.80: AP 0.7); boundary IoU
    # (36² - 34²) / (40² - 30²) = 140 / 700 = 0.2: no match, Boundary AP 0
    result = coco_evaluate(_gt([g], [1]), _masks_preds([_square(32, 32, 36)], [0.9], [1]), ("segm", "boundary"))
    assert result["segm_AP"] == pytest.approx(0.7)
    assert result["boundary_AP"] == pytest.approx(0.0)


def test_crowd_ground_truth_is_ignored_not_missed():
    # a detection on a crowd region is neither a true nor a false positive
    g, crowd = _square(5, 5, 40), _square(55, 55, 40)
    gt = _gt([g, crowd], [1, 1], crowd=[0, 1])
    preds = _masks_preds([crowd, g], [0.9, 0.8], [1, 1])
    result = coco_evaluate(gt, preds, ("segm", "boundary"))
    assert result["segm_AP"] == pytest.approx(1.0) and result["boundary_AP"] == pytest.approx(1.0)


def test_inputs_are_not_modified_and_formats_agree():
    g = _square(30, 30, 40)
    gt = _gt([g], [1])
    before = json.dumps(gt, sort_keys=True)
    rle = mask_utils.encode(np.asfortranarray(g.numpy().astype(np.uint8)))
    polygon = [[30, 30, 70, 30, 70, 70, 30, 70]]
    for segmentation in ({"size": rle["size"], "counts": rle["counts"]},  # bytes counts
                         {"size": rle["size"], "counts": rle["counts"].decode()}, polygon):
        preds = [{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": segmentation}]
        assert coco_evaluate(gt, preds, ("segm", "bbox"))["segm_AP"] == pytest.approx(1.0)
    box_only = [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [30, 30, 40, 40]}]
    assert coco_evaluate(gt, box_only, ("bbox",))["bbox_AP"] == pytest.approx(1.0)
    assert json.dumps(gt, sort_keys=True) == before


def test_no_predictions_and_clear_errors():
    gt = _gt([_square(30, 30, 40)], [1])
    assert coco_evaluate(gt, [], ("segm",))["segm_AP"] == 0.0
    good = {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [30, 30, 40, 40]}
    with pytest.raises(ValueError, match="image_id 9"):
        coco_evaluate(gt, [{**good, "image_id": 9}])
    with pytest.raises(ValueError, match="category_id 4"):
        coco_evaluate(gt, [{**good, "category_id": 4}])
    with pytest.raises(ValueError, match="no 'segmentation'"):
        coco_evaluate(gt, [good], ("segm",))
    with pytest.raises(ValueError, match="unknown iou_types"):
        coco_evaluate(gt, [good], ("mask",))
    bad = json.loads(json.dumps(gt))
    bad["annotations"][0]["id"] = 0
    with pytest.raises(ValueError, match="non-zero"):
        coco_evaluate(bad, [good], ("bbox",))


def test_pycocotools_is_silent_unless_verbose(capsys):
    gt = _gt([_square(30, 30, 40)], [1])
    preds = _masks_preds([_square(30, 30, 40)], [0.9], [1])
    coco_evaluate(gt, preds, ("segm", "boundary"))
    assert capsys.readouterr().out == ""
    coco_evaluate(gt, preds, ("segm",), verbose=True)
    assert "Average Precision" in capsys.readouterr().out
