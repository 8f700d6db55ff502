"""seglab's Mask R-CNN builds against torchvision's `maskrcnn_resnet50_fpn` / `_v2` with the same random weights.

seglab's `build_mask_rcnn` wraps torchvision's factories (options as data, the ResNet body's BN layout as an option),
so a torchvision state dict loads into it strictly; this checks that the wrapping changes nothing the model computes.
Every parameter and BN statistic is random (`testkit.randomize_`); one fixed 75x93 image (odd sides; torchvision
resizes it to 150x186 with `min_size=150`) runs through both in eval mode, and the detections (boxes, scores, labels,
mask probabilities at the image size) must agree, in the same order.

- `frozen_bn=False` (trainable BatchNorm2d, what torchvision builds without weights): the same modules, equal bits.
- `frozen_bn=True` (FrozenBatchNorm2d, the layout of torchvision's COCO checkpoints; seglab's default): FrozenBatchNorm2d
  computes `x * scale + shift` with `scale = w / sqrt(var + eps)` where BatchNorm2d computes
  `(x - mean) / sqrt(var + eps) * w + b`, a float32 rounding difference of ~1e-7 relative per layer. The box
  regression (deltas exponentiated and scaled by the proposal size) turns it into <= 3e-4 px measured (box corners
  within the 75x93 image); tolerances: 1e-3 px for boxes, 1e-4 for scores and mask probabilities.
"""

from __future__ import annotations

import pytest
import torch
from testkit import compare, randomize_

from seglab.instance import build_mask_rcnn

detection = pytest.importorskip("torchvision.models.detection")

OPTIONS = {"min_size": 150, "max_size": 200, "box_score_thresh": 0.0, "box_detections_per_img": 20}
NUM_CLASSES = 5


@pytest.mark.slow
@pytest.mark.parametrize(("name", "factory"), [("mask_rcnn_r50_fpn", "maskrcnn_resnet50_fpn"),
                                               ("mask_rcnn_r50_fpn_v2", "maskrcnn_resnet50_fpn_v2")])
@torch.no_grad()
def test_detections_match_torchvision(name, factory):
    reference = getattr(detection, factory)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **OPTIONS)
    randomize_(reference.eval(), seed=0)
    image = torch.rand(3, 75, 93, generator=torch.Generator().manual_seed(0))
    expected = reference([image])[0]
    assert len(expected["scores"]) == OPTIONS["box_detections_per_img"]
    assert len(expected["labels"].unique()) > 1 and expected["scores"].std() > 0.01

    state = reference.state_dict()
    for frozen_bn, tol, box_tol in ((False, 0.0, 0.0), (True, 1e-4, 1e-3)):
        ours = build_mask_rcnn(name, num_classes=NUM_CLASSES, frozen_bn=frozen_bn, **OPTIONS).eval()
        # FrozenBatchNorm2d has no batch counter: torchvision's COCO checkpoints lack those keys too
        ours.load_state_dict({k: v for k, v in state.items() if not (frozen_bn and k.startswith("backbone.body.")
                                                                     and k.endswith("num_batches_tracked"))},
                             strict=True)
        actual = ours([image])[0]
        pair = f"mask_rcnn/torchvision {name} frozen_bn={frozen_bn}"
        assert torch.equal(actual["labels"], expected["labels"]), pair
        compare(actual["boxes"], expected["boxes"], pair=f"{pair} boxes", tol=box_tol)
        compare(actual["scores"], expected["scores"], pair=f"{pair} scores", tol=tol)
        compare(actual["masks"], expected["masks"], pair=f"{pair} masks", tol=tol)
