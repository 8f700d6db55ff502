"""UPerHead and FCNHead: the factored fusion conv equals the plain concat-then-conv, shapes, and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.heads.fcn import FCNHead
from seglab.heads.uper import UPerHead
from seglab.layers import adaptive_avg_pool

IN_CHANNELS = (8, 16, 24, 32)


def _features(batch: int, height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = [(height, width)]
    for _ in range(3):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return [torch.randn(batch, c, h, w, generator=generator) for c, (h, w) in zip(IN_CHANNELS, sizes, strict=True)]


def _reference(head: UPerHead, features: list[torch.Tensor]) -> torch.Tensor:
    """UPerHead written plainly (mmseg's order of operations), on the head's own modules."""
    ac = head.align_corners
    deepest = features[-1]
    pooled = [F.interpolate(conv(F.adaptive_avg_pool2d(deepest, s)), size=deepest.shape[-2:], mode="bilinear",
                            align_corners=ac) for s, conv in zip(head.ppm.pool_scales, head.ppm.convs, strict=True)]
    laterals = [conv(x) for conv, x in zip(head.lateral_convs, features[:-1], strict=True)]
    laterals.append(head.bottleneck(torch.cat([deepest, *pooled], 1)))
    for i in range(3, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                          mode="bilinear", align_corners=ac)
    outs = [conv(x) for conv, x in zip(head.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
    size = outs[0].shape[-2:]
    cat = torch.cat([outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=ac) for x in outs[1:]], 1)
    return head.classifier(head.fpn_bottleneck(cat))


def _randomise_bn(module: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=generator))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("size", [(32, 48), (37, 53), (17, 9)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_factored_fusion_equals_concat_then_conv(size, align_corners):
    torch.manual_seed(0)
    head = UPerHead(IN_CHANNELS, 16, 5, align_corners=align_corners, dropout=0.0).eval()
    _randomise_bn(head)
    features = _features(2, *size)
    with torch.no_grad():
        ours, expected = head(features), _reference(head, features)
    assert ours.shape == (2, 5, *size)
    assert expected.abs().max() > 0.1
    assert (ours - expected).abs().max() <= 1e-5


def test_factored_fusion_gradients_match():
    torch.manual_seed(0)
    head = UPerHead(IN_CHANNELS, 16, 5, dropout=0.0).train()
    features = [f.requires_grad_() for f in _features(2, 37, 53)]
    head(features).square().sum().backward()
    ours = [f.grad.clone() for f in features] + [head.fpn_bottleneck.conv.weight.grad.clone()]
    head.zero_grad()
    for f in features:
        f.grad = None
    _reference(head, features).square().sum().backward()
    expected = [f.grad for f in features] + [head.fpn_bottleneck.conv.weight.grad]
    for a, b in zip(ours, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_fcn_head_reads_its_input_and_stacks_convs():
    head = FCNHead(24, 12, 4, in_index=2, num_convs=2, concat_input=True).eval()
    features = _features(1, 40, 40)
    out = head(features)
    assert out.shape == (1, 4, 10, 10)  # stage 3 of a 40x40 pyramid
    changed = list(features)
    changed[0] = torch.zeros_like(changed[0])
    assert torch.equal(head(changed), out)  # only stage 3 is read
    assert len(head.convs) == 2 and head.conv_cat is not None


@pytest.mark.parametrize("size", [(2, 2), (3, 5), (7, 4), (13, 9), (16, 16)])
@pytest.mark.parametrize("scale", [1, 2, 3, 6])
def test_exportable_adaptive_pool_equals_native(size, scale, monkeypatch):
    """The matrix form used while exporting averages exactly PyTorch's adaptive bins, also when the map is smaller
    than the output (overlapping bins)."""
    x = torch.randn(2, 3, *size)
    native = adaptive_avg_pool(x, scale)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    exported = adaptive_avg_pool(x, scale)
    assert torch.allclose(native, F.adaptive_avg_pool2d(x, scale))
    assert exported.shape == native.shape
    assert torch.allclose(exported, native, atol=1e-6), (exported - native).abs().max()


def test_export_path_of_the_head_equals_eager(monkeypatch):
    """While exporting, the head pools with matrices, always resizes and fuses with the plain concat + conv."""
    torch.manual_seed(0)
    head = UPerHead([8, 16, 24, 32], channels=16, num_classes=5).eval()
    feats = [torch.randn(1, c, 20 // s, 13 // s + 1) for c, s in zip([8, 16, 24, 32], [1, 2, 4, 8], strict=True)]
    with torch.no_grad():
        eager = head(feats)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        exported = head(feats)
    assert torch.allclose(eager, exported, atol=1e-5), (eager - exported).abs().max()
