"""Mask R-CNN on torchvision: parameter counts, the backbone layout options, torchvision's checkpoint keys,
predict_instances, the loss dict on synthetic instances, the step schedule, and evaluate_instances on a stub
detector that returns the ground truth (AP 1 by construction)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

import seglab
from seglab.config import ScheduleConfig
from seglab.data.coco_instances import CocoInstances, collate_instances
from seglab.data.synthetic_instances import generate_shapes_instances
from seglab.engine.instance import instance_lr
from seglab.instance import build_mask_rcnn, evaluate_instances, predict_instances

TINY = {"min_size": 64, "max_size": 64, "frozen_bn": False, "trainable_layers": 5, "box_detections_per_img": 10,
        "box_batch_size_per_image": 32}


def count(model: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrcnn") / "shapes"
    generate_shapes_instances(root, n_train=2, n_val=2, size=64, seed=3)
    return root


def test_param_counts_match_torchvision():
    model = build_mask_rcnn("mask_rcnn_r50_fpn")
    assert count(model) == 44_401_393  # torchvision's figure: frozen-BN body (its COCO checkpoint's layout)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules()) == 53  # ResNet-50's BNs
    # trainable_layers 3: stem and layer1 frozen (conv1 9,408 + layer1 convs 212,992 weights)
    assert count(model, trainable=True) == 44_401_393 - 9_408 - 212_992
    assert count(build_mask_rcnn("mask_rcnn_r50_fpn", frozen_bn=False)) == 44_401_393 + 53_120  # BN affine


def test_v2_param_count():
    assert count(build_mask_rcnn("mask_rcnn_r50_fpn_v2", frozen_bn=False, trainable_layers=5)) == 46_359_409


def test_swin_t_fpn():
    # Swin's Mask R-CNN Swin-T (SwinTransformer/Swin-Transformer-Object-Detection README): 48M at 80 COCO classes
    model = build_mask_rcnn("mask_rcnn_swin_t_fpn", num_classes=81)
    assert count(model) == 47_798_959 and abs(count(model) - 48e6) < 0.5e6
    tiny = build_mask_rcnn("mask_rcnn_swin_t_fpn", num_classes=3, min_size=64, max_size=64, box_score_thresh=0.0,
                           box_detections_per_img=4)
    out = predict_instances(tiny, torch.rand(3, 64, 80))
    assert out["masks"].shape == (len(out["scores"]), 64, 80) and out["masks"].dtype == torch.bool
    with pytest.raises(ValueError, match="ResNet bodies only"):
        build_mask_rcnn("mask_rcnn_swin_t_fpn", trainable_layers=2)


def test_torchvision_state_dict_loads_directly():
    ours = build_mask_rcnn("mask_rcnn_r50_fpn")
    # torchvision's COCO checkpoint has FrozenBatchNorm2d buffers: the BN layout minus num_batches_tracked
    state = {k: v for k, v in maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state, strict=True)
    assert torch.equal(ours.backbone.body.layer1[0].bn1.running_var, state["backbone.body.layer1.0.bn1.running_var"])


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown Mask R-CNN option.*valid: min_size"):
        build_mask_rcnn("mask_rcnn_r50_fpn", min_sizes=64)
    with pytest.raises(KeyError, match="available: mask_rcnn_r50_fpn"):
        build_mask_rcnn("mask_rcnn_r18")
    with pytest.raises(ValueError, match="0..5"):
        build_mask_rcnn("mask_rcnn_r50_fpn", trainable_layers=6)
    with pytest.raises(ValueError, match="anchor_sizes must be 5 positive integers"):
        build_mask_rcnn("mask_rcnn_r50_fpn", anchor_sizes=[16, 32, 64])


def test_anchor_sizes_reach_the_rpn():
    # a YAML list arrives as a list; the RPN then proposes anchors of those sides (3 aspect ratios per level)
    model = build_mask_rcnn("mask_rcnn_r50_fpn", 7, anchor_sizes=[8, 16, 32, 64, 128], min_size=64, max_size=64)
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    assert model.model_overrides["anchor_sizes"] == [8, 16, 32, 64, 128]  # recorded for the checkpoint as given
    default = build_mask_rcnn("mask_rcnn_r50_fpn", 7)
    assert default.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))


def test_predict_instances_types_and_shapes():
    torch.manual_seed(0)
    model = build_mask_rcnn("mask_rcnn_r50_fpn", num_classes=4, box_score_thresh=0.0, **TINY).eval()
    assert model.transform.min_size == (64,) and model.roi_heads.detections_per_img == 10
    image = torch.rand(3, 64, 48)
    out = predict_instances(model, image)
    n = len(out["scores"])
    assert 0 < n <= 10
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (n, 64, 48)
    assert out["boxes"].shape == (n, 4) and out["labels"].dtype == torch.int64
    assert out["labels"].min() >= 1 and out["labels"].max() <= 3
    assert (out["boxes"][:, 2] <= 48).all() and (out["boxes"][:, 3] <= 64).all()
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    # uint8 0-255 input is the same image as float 0-1
    again = predict_instances(model, (image * 255).round().to(torch.uint8))
    assert again["masks"].shape[1:] == (64, 48)


def test_loss_dict_on_synthetic_batch(shapes):
    torch.manual_seed(0)
    data = CocoInstances(shapes / "annotations" / "instances_train.json", shapes / "images" / "train",
                         skip_empty=True)
    images, targets = collate_instances([data[0], data[1]])
    model = build_mask_rcnn("mask_rcnn_r50_fpn", num_classes=data.num_classes, **TINY).train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    # 7 classes, random init: the classifier starts near the uniform cross-entropy log(7)
    assert abs(losses["loss_classifier"].item() - torch.log(torch.tensor(7.0)).item()) < 0.5
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_step_schedule():
    s = ScheduleConfig(iters=100, warmup_iters=10, warmup_ratio=0.1, policy="step", steps=(50, 80), gamma=0.5)
    assert instance_lr(0, 1.0, s) == pytest.approx(0.1)
    assert instance_lr(5, 1.0, s) == pytest.approx(1 - 0.5 * 0.9)
    assert instance_lr(10, 1.0, s) == 1.0 and instance_lr(49, 1.0, s) == 1.0
    assert instance_lr(50, 1.0, s) == 0.5 and instance_lr(99, 1.0, s) == 0.25
    poly = ScheduleConfig(iters=100, warmup_iters=0, power=1.0)
    assert instance_lr(25, 1.0, poly) == pytest.approx(0.75)


class GroundTruthDetector(nn.Module):
    """Returns the dataset's own masks and boxes for each image in order (score 1): a perfect detector."""

    def __init__(self, dataset: CocoInstances) -> None:
        super().__init__()
        self.dataset, self.calls = dataset, 0

    def forward(self, images):
        _, target = self.dataset[self.calls]
        self.calls += 1
        n = len(target["labels"])
        return [{"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(n),
                 "masks": target["masks"][:, None].float()}]


def test_evaluate_instances_perfect_detector(shapes):
    data = CocoInstances(shapes / "annotations" / "instances_val.json", shapes / "images" / "val")
    metrics = evaluate_instances(GroundTruthDetector(data), data)
    for iou_type in ("segm", "bbox", "boundary"):
        assert metrics[f"{iou_type}_AP"] == pytest.approx(1.0)
        assert metrics[f"{iou_type}_AP50"] == pytest.approx(1.0)
    # refining every mask to empty loses every match
    empty = evaluate_instances(GroundTruthDetector(data), data, iou_types=("segm",),
                               refine_masks=lambda image, masks: torch.zeros_like(masks))
    assert empty["segm_AP"] == pytest.approx(0.0)


def test_torchvision_checkpoint_converts_and_loads_by_name(tmp_path):
    """`seglab convert --source torchvision` takes a torchvision Mask R-CNN file (FrozenBatchNorm body, as the COCO
    weights are); `create_model(name, checkpoint=...)` rebuilds it with its class count and detects as torchvision."""
    import torchvision

    from seglab.cli.main import main
    from seglab.models.mask_rcnn import _freeze_bn

    torch.manual_seed(0)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                   num_classes=5, min_size=64, max_size=96)
    _freeze_bn(reference.backbone.body)
    src, dst = tmp_path / "maskrcnn_coco.pth", tmp_path / "mask_rcnn.safetensors"
    torch.save(reference.state_dict(), src)
    assert main(["convert", "--source", "torchvision", "--model", "mask_rcnn_r50_fpn", str(src), str(dst)]) == 0
    ours = seglab.create_model("mask_rcnn_r50_fpn", checkpoint=dst, min_size=64, max_size=96).eval()
    assert ours.num_classes == 5
    image = torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = reference.eval()([image])[0], ours([image])[0]
    assert all(torch.equal(theirs[k], mine[k]) for k in ("boxes", "labels", "scores"))
