"""FPNNeck + SemanticFPNHead: odd sizes, equality with the formula in plain ops, parameter count, gradients, keys."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from seglab.heads.fpn import FPNNeck, SemanticFPNHead

IN_CHANNELS = [8, 16, 24, 32]
# the stride-4/8/16/32 maps of a 77x50 image (sizes rounded up at each halving)
ODD_SIZES = [(20, 13), (10, 7), (5, 4), (3, 2)]


def _features(batch: int, sizes: list[tuple[int, int]], channels: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=generator) for c, (h, w) in zip(channels, sizes, strict=True)]


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial biases and BN statistics, so the reference comparison sees every term."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
        # a larger classifier than mmseg's N(0, 0.01) init, so that differences are not hidden by tiny logits
        module.classifier.weight.copy_(torch.randn(module.classifier.weight.shape, generator=generator) * 0.2)


def _reference(head: SemanticFPNHead, features: list[torch.Tensor]) -> torch.Tensor:
    """mmseg's FPN + FPNHead written out with functional ops on the head's weights (eval mode)."""
    ac = head.align_corners
    laterals = [F.conv2d(x, m.conv.weight, m.conv.bias) for m, x in zip(head.neck.lateral_convs, features, strict=True)]
    for i in range(3, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    levels = [F.conv2d(x, m.conv.weight, m.conv.bias, padding=1)
              for m, x in zip(head.neck.fpn_convs, laterals, strict=True)]
    outs = []
    for i, (x, stride) in enumerate(zip(levels, head.feature_strides, strict=True)):
        num_convs = max(1, int(torch.log2(torch.tensor(stride / head.feature_strides[0])).item()))
        convs = [m for m in head.scale_heads[i] if hasattr(m, "conv")]
        assert len(convs) == num_convs
        for m in convs:
            bn = m.norm
            x = F.relu(F.batch_norm(F.conv2d(x, m.conv.weight, padding=1), bn.running_mean, bn.running_var,
                                    bn.weight, bn.bias, False, 0.0, bn.eps))
            if stride != head.feature_strides[0]:  # mmseg Upsample: size int(2 * t), then bilinear
                x = F.interpolate(x, size=[int(t * 2.0) for t in x.shape[-2:]], mode="bilinear", align_corners=ac)
        outs.append(x)
    out = outs[0]
    for x in outs[1:]:
        out = out + F.interpolate(x, size=out.shape[2:], mode="bilinear", align_corners=ac)
    return F.conv2d(out, head.classifier.weight, head.classifier.bias)


def test_odd_sizes_give_the_stride4_map():
    head = SemanticFPNHead(IN_CHANNELS, 5, neck_channels=16, channels=8).eval()
    features = _features(1, ODD_SIZES, IN_CHANNELS)
    with torch.no_grad():
        out = head(features)
        levels = head.neck(features)
        coarse = [head.scale_heads[i](levels[i]).shape[-2:] for i in range(4)]
    assert out.shape == (1, 5, 20, 13)
    assert [tuple(x.shape[-2:]) for x in levels] == ODD_SIZES
    # the x2 upsamplings overshoot the finest map; the final resize must absorb this
    assert [tuple(s) for s in coarse] == [(20, 13), (20, 14), (20, 16), (24, 16)]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("sizes", [ODD_SIZES, [(16, 24), (8, 12), (4, 6), (2, 3)]])
def test_matches_formula_in_plain_ops(sizes, align_corners):
    torch.manual_seed(0)
    head = SemanticFPNHead(IN_CHANNELS, 5, neck_channels=16, channels=8, align_corners=align_corners).eval()
    _randomise(head)
    features = _features(2, sizes, IN_CHANNELS)
    with torch.no_grad():
        ours, expected = head(features), _reference(head, features)
    assert ours.shape == expected.shape == (2, 5, *sizes[0])
    assert expected.abs().max() > 0.1
    assert (ours - expected).abs().max() <= 1e-5


def test_parameter_count_pvt_cyclemlp_recipe():
    in_channels, classes, neck, width = [64, 128, 320, 512], 150, 256, 128
    head = SemanticFPNHead(in_channels, classes)
    neck_params = sum(p.numel() for p in head.neck.parameters())
    total = sum(p.numel() for p in head.parameters())
    print(f"semantic FPN, in_channels={in_channels}, {classes} classes: neck {neck_params:,}, total {total:,}")
    # neck: 1x1 laterals and 3x3 outputs, all with bias
    expected_neck = sum(c * neck + neck for c in in_channels) + 4 * (9 * neck * neck + neck)
    # head: 1 + 1 + 2 + 3 bias-free 3x3 convs with BN (weight, bias); the first of each level reads the neck width
    first, later = 9 * neck * width + 2 * width, 9 * width * width + 2 * width
    expected_head = 4 * first + (0 + 0 + 1 + 2) * later + width * classes + classes
    assert neck_params == expected_neck == 2_623_488
    assert total == expected_neck + expected_head == 4_266_646


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = SemanticFPNHead(IN_CHANNELS, 5, neck_channels=16, channels=8).train()
    features = _features(2, ODD_SIZES, IN_CHANNELS)
    out = head(features)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mmseg_keys_map_by_rename():
    """The mmseg key names of the PVT sem_fpn recipe, renamed as in the module docstring, are exactly our keys."""
    head = SemanticFPNHead([64, 128, 320, 512], 150)
    conv_indices = {0: [0], 1: [0], 2: [0, 2], 3: [0, 2, 4]}  # Upsample modules sit between the convs
    mmseg = []
    for i in range(4):
        for name in ("lateral_convs", "fpn_convs"):
            mmseg += [f"neck.{name}.{i}.conv.weight", f"neck.{name}.{i}.conv.bias"]
        for k in conv_indices[i]:
            mmseg += [f"decode_head.scale_heads.{i}.{k}.conv.weight"]
            mmseg += [f"decode_head.scale_heads.{i}.{k}.bn.{s}"
                      for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    mmseg += ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]

    def rename(key: str) -> str:
        key = re.sub(r"^neck\.", "decode_head.neck.", key)
        key = re.sub(r"^(decode_head\.scale_heads\.\d+\.\d+)\.bn\.", r"\1.norm.", key)
        return re.sub(r"^decode_head\.conv_seg\.", "decode_head.classifier.", key)

    ours = {f"decode_head.{k}" for k in head.state_dict()}
    assert sorted(rename(k) for k in mmseg) == sorted(ours)


def test_neck_alone_and_input_errors():
    neck = FPNNeck(IN_CHANNELS, 16)
    outs = neck(_features(1, ODD_SIZES, IN_CHANNELS))
    assert [tuple(x.shape) for x in outs] == [(1, 16, h, w) for h, w in ODD_SIZES]
    with pytest.raises(ValueError, match="expected 4"):
        neck(_features(1, ODD_SIZES[:3], IN_CHANNELS[:3]))
    with pytest.raises(ValueError, match="power of two"):
        SemanticFPNHead(IN_CHANNELS, 5, feature_strides=(4, 8, 12, 32))
    with pytest.raises(ValueError, match="one per entry"):
        SemanticFPNHead(IN_CHANNELS, 5, feature_strides=(4, 8, 16))
