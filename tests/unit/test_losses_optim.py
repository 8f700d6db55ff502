import math

import pytest
import torch
import torch.nn.functional as F

from seglab.config import OptimConfig, ScheduleConfig
from seglab.engine.optim import build_optimizer, param_groups, scheduled_lr
from seglab.losses import cross_entropy, segmentation_loss


def test_cross_entropy_ignores_255_and_averages_over_valid_pixels():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, :2] = 255
    valid = labels != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], labels[valid])
    assert torch.allclose(cross_entropy(logits, labels), expected, atol=1e-6)


def test_class_weights_scale_pixels_and_divide_by_valid_count():
    logits = torch.randn(1, 3, 2, 3)
    labels = torch.tensor([[[0, 1, 2], [255, 1, 0]]])
    weights = torch.tensor([1.0, 2.0, 0.5])
    per_pixel = -F.log_softmax(logits, 1).gather(1, labels.clamp(max=2)[:, None])[:, 0]
    valid = labels != 255
    expected = (per_pixel * weights[labels.clamp(max=2)])[valid].sum() / valid.sum()
    assert torch.allclose(cross_entropy(logits, labels, class_weights=weights), expected, atol=1e-6)
    with pytest.raises(ValueError, match="class_weights has 2 entries but the logits have 3"):
        cross_entropy(logits, labels, class_weights=torch.ones(2))


def test_logits_are_resized_to_the_label_size():
    logits = torch.randn(1, 2, 4, 4)
    labels = torch.randint(0, 2, (1, 16, 16))
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(cross_entropy(logits, labels), F.cross_entropy(up, labels), atol=1e-6)


def test_aux_losses_are_weighted():
    logits, aux = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    labels = torch.randint(0, 2, (1, 4, 4))
    total, parts = segmentation_loss(logits, [aux], labels, aux_weights=[0.4])
    assert torch.allclose(total, cross_entropy(logits, labels) + 0.4 * cross_entropy(aux, labels))
    assert set(parts) == {"loss_main", "loss_aux0"}
    with pytest.raises(ValueError, match="1 auxiliary heads but 0 aux weights"):
        segmentation_loss(logits, [aux], labels)


def test_paramwise_follows_mmcv_longest_key_rule():
    import seglab

    model = seglab.create_model("segformer_b0", num_classes=4)
    config = OptimConfig(lr=1e-3, weight_decay=0.01,
                         paramwise={"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
                                    "head": {"lr_mult": 10.0}})
    by_name = {n: g for g in param_groups(model, config) for n in g["names"]}
    assert by_name["backbone.stages.0.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.stages.0.blocks.0.norm1.weight"]["lr"] == 1e-3
    assert by_name["backbone.stages.0.blocks.0.attn.q.weight"]["weight_decay"] == 0.01
    # 'head' and 'norm' both match: equal length, so alphabetical order picks 'head' (lr x10, decay kept)
    assert by_name["decode_head.linear_fuse.norm.weight"]["lr"] == pytest.approx(1e-2)
    assert by_name["decode_head.linear_fuse.norm.weight"]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in param_groups(model, config)) == len(list(model.parameters()))
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer(model, OptimConfig(name="adam"))


def test_warmup_then_poly():
    schedule = ScheduleConfig(iters=1000, warmup_iters=100, warmup_ratio=1e-6, power=1.0, min_lr=0.0)
    assert scheduled_lr(0, 1.0, schedule) == pytest.approx(1e-6)
    # mmcv: warm-up scales the poly value linearly from ratio to 1
    assert scheduled_lr(50, 1.0, schedule) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert scheduled_lr(100, 1.0, schedule) == pytest.approx(0.9)
    assert scheduled_lr(1000, 1.0, schedule) == 0.0
    power = ScheduleConfig(iters=10, warmup_iters=0, power=0.9, min_lr=1e-4)
    assert scheduled_lr(5, 0.01, power) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert math.isclose(scheduled_lr(0, 0.01, power), 0.01)
