"""BPR training and evaluation: a tiny training run lowers the loss, checkpoints round-trip exactly and refuse wrong
files by name, refine_dataset keeps instances, and compare_before_after on a hand-made case with known APs."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch.nn.functional as F

from seglab.checkpoint import save_weights
from seglab.data.coco_instances import CocoInstances
from seglab.data.synthetic_instances import generate_shapes_instances
from seglab.engine.refine import poly_lr, train_bpr
from seglab.instance import build_bpr, build_patch_set, compare_before_after, load_bpr, refine_dataset
from seglab.instance.bpr_dataset import WEIGHTS_NAME


def _coarse(masks: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """Mask R-CNN-like coarse masks: area-downsampled to grid x grid, bilinearly upsampled, thresholded at 0.5."""
    m = masks.float()[:, None]
    small = F.interpolate(m, size=(grid, grid), mode="area")
    return F.interpolate(small, size=m.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0.5


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = generate_shapes_instances(tmp_path_factory.mktemp("shapes") / "d", 4, 0, size=64, seed=0)
    ds = CocoInstances(root / "annotations" / "instances_train.json", root / "images" / "train")
    images, gts, coarse = [], [], []
    for image, target in ds:
        images.append((image * 255).round().to(torch.uint8))
        gts.append(target)
        coarse.append({"masks": _coarse(target["masks"]), "labels": target["labels"]})
    return images, coarse, gts


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    torch.set_num_threads(1)
    images, coarse, gts = tiny_data
    losses: list[float] = []
    work_dir = tmp_path_factory.mktemp("bpr_run")
    model = train_bpr(images, coarse, gts, iters=12, batch_size=4, patch_size=16, input_size=64, seed=0,
                      losses=losses, work_dir=work_dir)
    return model, losses, work_dir


def test_patch_set_has_wrong_coarse_boundaries(tiny_data):
    images, coarse, gts = tiny_data
    patches = build_patch_set(images, coarse, gts, patch_size=16)
    assert patches.images.shape[1:] == (3, 16, 16) and patches.images.shape[0] > 0
    # the coarse masks disagree with the GT on a clear share of the patch pixels: something to learn
    assert (patches.coarse != patches.target).float().mean() > 0.05


def test_training_lowers_the_loss(trained):
    model, losses, _ = trained
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    assert not model.training and model.input_size == 64


def test_poly_schedule_matches_mmcv():
    assert poly_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert poly_lr(50, 100, 0.01) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert poly_lr(100, 100, 0.01) == pytest.approx(1e-4)


def test_checkpoint_round_trip_is_exact(trained):
    model, _, work_dir = trained
    path = work_dir / WEIGHTS_NAME
    assert path.is_file() and json.loads((work_dir / "train_log.json").read_text())["iters"] == 12
    # the run loop's checkpoint of the last step is a BPR checkpoint too
    torch.testing.assert_close(load_bpr(work_dir / "iter_12.safetensors").state_dict(), model.state_dict(), rtol=0,
                               atol=0)
    loaded = load_bpr(path, "bpr_hrnet18s")
    assert loaded.input_size == 64 and not loaded.training
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 64, 64, generator=g)
    mask = torch.randint(0, 2, (2, 1, 64, 64), generator=g).float() * 2 - 1
    with torch.inference_mode():
        assert torch.equal(model(image, mask), loaded(image, mask))


def test_paused_run_resumes_exactly(tiny_data, trained, tmp_path):
    """The run loop's checkpoints hold the patch stream (order, flips) and the loss history: a run paused at step 5
    and resumed equals the straight run of the `trained` fixture, weights and losses."""
    images, coarse, gts = tiny_data
    model, losses, _ = trained
    settings = {"iters": 12, "batch_size": 4, "patch_size": 16, "input_size": 64, "seed": 0}
    work = tmp_path / "paused"
    train_bpr(images, coarse, gts, work_dir=work, stop_at=5, **settings)
    assert json.loads((work / "latest.json").read_text())["iteration"] == 5 and not (work / WEIGHTS_NAME).exists()
    history: list[float] = []
    resumed = train_bpr(images, coarse, gts, work_dir=work, resume=True, losses=history, **settings)
    assert history == losses
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [12]  # log_every 50: the last step's record
    with pytest.raises(ValueError, match="batch_size: 4 -> 2"):  # a resumed run keeps its settings
        train_bpr(images, coarse, gts, work_dir=work, resume=True, **{**settings, "batch_size": 2})

def test_load_of_wrong_files_names_them(tmp_path, trained):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_bpr(junk)
    other = tmp_path / "other.safetensors"
    save_weights(other, {"w": torch.zeros(2)}, "fcn_hrnetv2_w18s", 19)
    with pytest.raises(ValueError, match=r"other\.safetensors is not a BPR checkpoint.*fcn_hrnetv2_w18s"):
        load_bpr(other)
    with pytest.raises(ValueError, match=r"bpr\.safetensors holds BPR variant 'bpr_hrnet18s', not.*bpr_hrnet48"):
        load_bpr(trained[2] / WEIGHTS_NAME, "bpr_hrnet48")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_bpr(tmp_path / "missing.safetensors")


def test_refine_dataset_keeps_instances_and_outside_pixels(tiny_data):
    images, coarse, _ = tiny_data
    torch.manual_seed(0)
    net = build_bpr("bpr_hrnet18s").eval()
    net.input_size = 32
    refined = refine_dataset(net, images[:2], coarse[:2], nms_iou=0.25, patch_size=16)
    for before, after in zip(coarse[:2], refined, strict=True):
        assert after.shape == before["masks"].shape and after.dtype == torch.bool
        # a patch reaches at most P/2 + P/2 (moved back into the image) + 1 (outer boundary pixel) = 17 px from
        # the coarse mask's boundary: farther pixels, outside and inside, keep their coarse value
        m = before["masks"].float()[:, None]
        near_fg = F.max_pool2d(m, 37, stride=1, padding=18)[:, 0] > 0
        deep_fg = -F.max_pool2d(-F.pad(m, (18, 18, 18, 18)), 37, stride=1)[:, 0] > 0
        assert not after[~near_fg].any()
        assert after[deep_fg].all()
        assert (after != before["masks"]).any()  # the random network does change pixels near boundaries


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_compare_before_after_on_a_shifted_square():
    # GT: a 32 x 32 square; before: shifted 3 px right (mask IoU 928 / 1120 = 0.829); after: exact
    gt_mask = np.zeros((64, 64), bool)
    gt_mask[16:48, 16:48] = True
    before = np.roll(gt_mask, 3, axis=1)
    gt = {"images": [{"id": 1, "height": 64, "width": 64}], "categories": [{"id": 1, "name": "sq"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(gt_mask),
                           "area": 1024, "bbox": [16, 16, 32, 32], "iscrowd": 0}]}
    pred = {"image_id": 1, "category_id": 1, "score": 0.9}
    result = compare_before_after(gt, [{**pred, "segmentation": _rle(before)}],
                                  [{**pred, "segmentation": _rle(gt_mask)}])
    # mask IoU 0.829 passes the thresholds 0.50 ... 0.80 (7 of 10); refined: all 10
    assert result["before"]["segm_AP"] == pytest.approx(0.7)
    assert result["after"]["segm_AP"] == pytest.approx(1.0)
    # bands 2 px wide (round(0.02 x diagonal 90.5)): 240 px each, overlapping only on the top and bottom strips
    # (29 columns x 4 rows = 116): boundary IoU 116 / 364 = 0.319 < 0.5, so Boundary AP 0 before, 1 after
    assert result["before"]["matched_boundary_iou"] == pytest.approx(116 / 364)
    assert result["after"]["matched_boundary_iou"] == pytest.approx(1.0)
    assert result["before"]["boundary_AP"] == pytest.approx(0.0)
    assert result["delta"]["boundary_AP"] == pytest.approx(1.0)
    assert result["delta"]["segm_AP"] == pytest.approx(0.3)
    assert result["delta"]["matched_count"] == 0.0
