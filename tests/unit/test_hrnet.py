"""FCN-HRNetV2: parameter counts against the published figures, stage structure, shapes at odd sizes, the
V1/V2/V2p necks, the interpolation options and a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab.models.hrnet  # noqa: F401  (registers the fcn_hrnetv2_* models)
from seglab.backbones.hrnet import BasicBlock, Bottleneck, HRModule, HRNet
from seglab.losses import cross_entropy
from seglab.registry import create_model, get_entry

# Facts from the official configs / README and timm's `cfg_cls` (design/anchors.md §1.6), restated here rather
# than read from the code under test: (modules, blocks per branch, branch widths) for stages 1-4, and the exact
# parameter count at 19 classes (Cityscapes) with the official head.
VARIANTS = {
    "w18s_v1": dict(stages=[(1, 1, (32,)), (1, 2, (16, 32)), (1, 2, (16, 32, 64)), (1, 2, (16, 32, 64, 128))],
                    params=1_540_819, readme_m=1.5),
    "w18s": dict(stages=[(1, 2, (64,)), (1, 2, (18, 36)), (3, 2, (18, 36, 72)), (2, 2, (18, 36, 72, 144))],
                 params=3_939_579, readme_m=3.9),
    "w18": dict(stages=[(1, 4, (64,)), (1, 4, (18, 36)), (4, 4, (18, 36, 72)), (3, 4, (18, 36, 72, 144))],
                params=9_641_119, readme_m=None),
    "w32": dict(stages=[(1, 4, (64,)), (1, 4, (32, 64)), (4, 4, (32, 64, 128)), (3, 4, (32, 64, 128, 256))],
                params=29_546_515, readme_m=None),
    "w48": dict(stages=[(1, 4, (64,)), (1, 4, (48, 96)), (4, 4, (48, 96, 192)), (3, 4, (48, 96, 192, 384))],
                params=65_859_379, readme_m=65.8),
}


def _meta(variant: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return create_model(f"fcn_hrnetv2_{variant}", **overrides)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _ceil_sides(side: int, convs: int) -> int:
    """Side after `convs` 3x3 stride-2 pad-1 convs: ceil(side / 2) each time."""
    for _ in range(convs):
        side = (side + 1) // 2
    return side


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_count_matches_published(variant: str) -> None:
    spec = VARIANTS[variant]
    model = _meta(variant, num_classes=19)
    count = _params(model)
    assert count == spec["params"]
    assert get_entry(f"fcn_hrnetv2_{variant}").published_params_m == spec["readme_m"]
    if variant == "w48":
        # 65.859 M: the official README's "65.8M" is the count truncated, not rounded (the backbone alone,
        # 65,325,120, equals timm's hrnet_w48 features; the official head adds 720*720+720 + 2*720 + 720*19+19)
        assert math.floor(count / 1e5) / 10 == 65.8
        assert count - _params(model.backbone) == 720 * 720 + 720 + 2 * 720 + 720 * 19 + 19
    elif spec["readme_m"] is not None:
        assert round(count / 1e6, 1) == spec["readme_m"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stage_structure(variant: str) -> None:
    backbone = _meta(variant).backbone
    stages = VARIANTS[variant]["stages"]
    modules, blocks, (width,) = stages[0]
    assert len(backbone.layer1) == blocks and all(isinstance(b, Bottleneck) for b in backbone.layer1)
    assert backbone.layer1[-1].conv3.conv.out_channels == 4 * width
    assert [s.conv.stride for s in backbone.stem] == [(2, 2), (2, 2)]
    for stage, (modules, blocks, widths) in zip(backbone.stages, stages[1:], strict=True):
        assert len(stage) == modules
        for module in stage:
            assert isinstance(module, HRModule)
            assert [len(b) for b in module.branches] == [blocks] * len(widths)
            assert [b[-1].conv2.conv.out_channels for b in module.branches] == list(widths)
            assert all(isinstance(block, BasicBlock) for b in module.branches for block in b)
            # j < i: i - j stride-2 steps; j > i: one 1x1 conv before upsampling
            for i, row in enumerate(module.fuse_layers):
                for j, layer in enumerate(row):
                    if j < i:
                        assert len(layer) == i - j and all(step.conv.stride == (2, 2) for step in layer)
                        assert [hasattr(step, "act") for step in layer] == [True] * (i - j - 1) + [False]
                    elif j > i:
                        assert layer.conv.kernel_size == (1, 1) and not hasattr(layer, "act")
    # each transition adds one half-resolution branch from the last one
    for transition, (_, _, widths) in zip(backbone.transitions, stages[1:], strict=True):
        new = transition[-1]
        assert len(transition) == len(widths) and len(new) == 1
        assert new[0].conv.stride == (2, 2) and new[0].conv.out_channels == widths[-1]


@pytest.mark.parametrize("size", [(1, 3, 70, 90), (2, 3, 33, 47)])
@pytest.mark.parametrize("variant", ["w18s_v1", "w18s"])
def test_shapes_at_odd_sizes(variant: str, size: tuple[int, int, int, int]) -> None:
    model = create_model(f"fcn_hrnetv2_{variant}", num_classes=5).eval()
    assert model.output_stride == 4
    widths = VARIANTS[variant]["stages"][3][2]
    x = torch.randn(*size)
    with torch.no_grad():
        features = model.backbone(x)
        logits = model(x)
    batch, _, height, width = size
    for level, (feature, info) in enumerate(zip(features, model.backbone.feature_info, strict=True)):
        convs = 2 + level  # stem (2) + one stride-2 conv per extra branch
        assert feature.shape == (batch, widths[level], _ceil_sides(height, convs), _ceil_sides(width, convs))
        assert (info.channels, info.stride) == (widths[level], 4 * 2**level)
    assert logits.shape == (batch, 5, _ceil_sides(height, 2), _ceil_sides(width, 2))
    assert torch.isfinite(logits).all()


def test_necks() -> None:
    x = torch.randn(1, 3, 70, 90)
    h, w = _ceil_sides(70, 2), _ceil_sides(90, 2)
    total = 16 + 32 + 64 + 128
    base = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, neck="none").eval()
    with torch.no_grad():
        branches = base.backbone(x)
        expected = {
            "v1": [(16, h, w)],
            "v2": [(total, h, w)],
            "v2p": [(total, _ceil_sides(70, 2 + k), _ceil_sides(90, 2 + k)) for k in range(4)],
        }
        for neck, shapes in expected.items():
            model = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, neck=neck).eval()
            model.backbone.load_state_dict(base.backbone.state_dict())  # necks have no parameters of their own
            features = model.backbone(x)
            assert [tuple(f.shape[1:]) for f in features] == shapes
            assert [(i.channels, i.stride) for i in model.backbone.feature_info] == [
                (c, 4 * 2**k) for k, (c, _, _) in enumerate(shapes)]
            assert model(x).shape == (1, 3, h, w)
            if neck == "v1":
                assert torch.equal(features[0], branches[0])
            else:
                # V2: branch 0 then the others resized bilinearly (align_corners=True by default)
                assert torch.equal(features[0][:, :16], branches[0])
                up = F.interpolate(branches[3], size=(h, w), mode="bilinear", align_corners=True)
                assert torch.allclose(features[0][:, -128:], up)
            if neck == "v2p":
                assert torch.allclose(features[1][..., :2, :2], F.avg_pool2d(features[0][..., :4, :4], 2))
                assert torch.allclose(features[3][..., 0, 0], features[0][..., :8, :8].mean((-2, -1)), atol=1e-5)
    # the V2 neck + a head on its one map is the same network as the head's own resize-concat
    v2 = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, neck="v2").eval()
    v2.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert torch.allclose(v2(x), base(x), atol=1e-5)
    with pytest.raises(ValueError, match="neck"):
        create_model("fcn_hrnetv2_w18s_v1", neck="v3")


def test_interpolation_options_change_output() -> None:
    x = torch.randn(1, 3, 70, 90)
    base = create_model("fcn_hrnetv2_w18s_v1", num_classes=3).eval()
    outputs = {}
    for name, options in {"default": {}, "no_align": {"align_corners": False},
                          "nearest": {"fuse_upsample": "nearest"}}.items():
        model = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, **options).eval()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            outputs[name] = model(x)
    assert not torch.allclose(outputs["default"], outputs["no_align"], atol=1e-4)
    assert not torch.allclose(outputs["default"], outputs["nearest"], atol=1e-4)
    # align_corners reaches both the fuse layers and the head
    model = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, align_corners=False)
    assert model.decode_head.align_corners is False
    assert all(m.align_corners is False for m in model.modules() if isinstance(m, HRModule))
    with pytest.raises(ValueError, match="fuse_upsample"):
        create_model("fcn_hrnetv2_w18s_v1", fuse_upsample="bicubic")


def test_head_and_norm_options() -> None:
    model = _meta("w18s", num_classes=19, bn_momentum=0.01, head_dropout=0.1, head_conv_bias=False)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}
    assert isinstance(model.decode_head.dropout, nn.Dropout2d) and model.decode_head.dropout.p == 0.1
    assert model.decode_head.fuse.conv.bias is None
    default = _meta("w18s")
    assert default.num_classes == 19
    assert isinstance(default.decode_head.dropout, nn.Identity)  # no dropout in the official head
    assert default.decode_head.fuse.conv.bias is not None  # the official `last_layer.0` has a bias
    assert {m.momentum for m in default.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    assert isinstance(default.backbone, HRNet)


def _scene(square: tuple[int, int], disc: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64x64 image with a 32x32 square (class 1, red) and a radius-15 disc (class 2, blue) on black."""
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[square[0] : square[0] + 32, square[1] : square[1] + 32] = 1
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    labels[(yy - disc[0]) ** 2 + (xx - disc[1]) ** 2 <= 15**2] = 2
    image = torch.zeros(3, 64, 64)
    image[0][labels == 1] = 1.0
    image[2][labels == 2] = 1.0
    return image * 2 - 0.5, labels


def test_tiny_overfit_reaches_high_pixel_accuracy() -> None:
    scenes = [_scene((4, 4), (46, 44)), _scene((28, 8), (18, 46))]
    images = torch.stack([s[0] for s in scenes])
    labels = torch.stack([s[1] for s in scenes])
    model = create_model("fcn_hrnetv2_w18s_v1", num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for _ in range(40):
        loss = cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = F.interpolate(model(images), size=(64, 64), mode="bilinear").argmax(1)
    assert (labels == 0).float().mean() < 0.6  # all-background would score below the bar
    assert (predictions == labels).float().mean() >= 0.9
    for c in range(3):  # and every class is found, not only the background
        assert (predictions[labels == c] == c).float().mean() >= 0.8


@torch.no_grad()
def test_bilinear_scale_fuse_is_two_bilinear_steps() -> None:
    """mmseg's fuse upsampling (bilinear x2^k, then bilinear to the branch size) equals one bilinear step where every
    branch is exactly half the one above, and differs where one is not (70x90: branches 18x23, 9x12, 5x6, 3x3)."""
    one = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, align_corners=False).eval()
    two = create_model("fcn_hrnetv2_w18s_v1", num_classes=3, align_corners=False, fuse_upsample="bilinear_scale").eval()
    two.load_state_dict(one.state_dict())
    halving = torch.randn(1, 3, 64, 96)
    assert torch.equal(one(halving), two(halving))
    odd = torch.randn(1, 3, 70, 90)
    assert (one(odd) - two(odd)).abs().max() > 1e-4
    module = next(m for m in two.modules() if isinstance(m, HRModule) and len(m.branches) == 2)
    low = torch.randn(1, 2, 3, 4)
    expected = F.interpolate(F.interpolate(low, size=(6, 8), mode="bilinear", align_corners=False), size=(5, 7),
                             mode="bilinear", align_corners=False)
    assert torch.equal(module._upsample(low, torch.Size((5, 7)), 2), expected)
