"""SETR heads and models: shapes at odd sizes, each head against its formula in plain F ops, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab.models.setr  # noqa: F401  (registers the SETR models)
from seglab.heads.setr import MLANeck, SETRMLAHead, SETRUPHead
from seglab.registry import create_model, get_entry

NAMES = ["setr_naive_vit_l", "setr_pup_vit_l", "setr_mla_vit_l"]
TINY = {"vit": "t", "img_size": 64, "layers": (1, 3, 5, 7)}


def _randomize(module: nn.Module) -> nn.Module:
    """Random weights and BN statistics (so that a BN is not the identity), eval mode."""
    torch.manual_seed(1)
    for name, tensor in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("running_var"):
            tensor.copy_(torch.rand_like(tensor) + 0.5)
        else:
            tensor.copy_(torch.randn_like(tensor) * 0.2)
    return module.eval()


def _conv_bn_relu(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
    conv, bn = block.conv, block.norm
    x = F.conv2d(x, conv.weight, conv.bias, padding=conv.weight.shape[-1] // 2)
    return F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def _ln_channels(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    n, c, h, w = x.shape
    tokens = x.reshape(n, c, h * w).transpose(1, 2)
    return F.layer_norm(tokens, (c,), ln.weight, ln.bias, 1e-6).transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize(("num_convs", "kernel", "up"), [(1, 1, 4), (4, 3, 2), (2, 3, 4), (1, 1, 1)])
def test_up_head_matches_formula(num_convs: int, kernel: int, up: int) -> None:
    head = _randomize(SETRUPHead(24, 16, 5, in_index=1, num_convs=num_convs, kernel_size=kernel, up_scale=up))
    feats = [torch.randn(2, 24, 5, 3), torch.randn(2, 24, 5, 3)]
    x = _ln_channels(feats[1], head.norm)
    height, width = 5, 3
    for block in head.convs:
        height, width = height * up, width * up
        x = F.interpolate(_conv_bn_relu(x, block), size=(height, width), mode="bilinear", align_corners=False)
    expected = F.conv2d(x, head.classifier.weight, head.classifier.bias)
    out = head(feats)
    assert out.shape == (2, 5, 5 * up**num_convs, 3 * up**num_convs)
    assert head.upsampling == up**num_convs
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("classifier_kernel", "up_align"), [(1, None), (3, True)])
def test_mla_neck_and_head_match_formula(classifier_kernel: int, up_align: bool | None) -> None:
    neck = _randomize(MLANeck([24, 24, 24, 24], 16))
    head = _randomize(SETRMLAHead([16] * 4, 8, 5, classifier_kernel=classifier_kernel, up_align_corners=up_align))
    feats = [torch.randn(2, 24, 7, 5) for _ in range(4)]
    laterals = [_conv_bn_relu(_ln_channels(x, ln), conv)
                for x, ln, conv in zip(feats, neck.norms, neck.lateral_convs, strict=True)]
    sums = [laterals[3]]
    for lateral in reversed(laterals[:3]):  # m4 = m5 + p4, m3 = m4 + p3, m2 = m3 + p2
        sums.insert(0, sums[0] + lateral)
    outs = [_conv_bn_relu(m, conv) for m, conv in zip(sums, neck.out_convs, strict=True)]
    neck_out = neck(feats)
    for got, want in zip(neck_out, outs, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    levels = [F.interpolate(_conv_bn_relu(_conv_bn_relu(x, branch[0]), branch[1]), size=(28, 20), mode="bilinear",
                            align_corners=bool(up_align)) for x, branch in zip(outs, head.convs, strict=True)]
    cls = head.classifier
    expected = F.conv2d(torch.cat(levels, 1), cls.weight, cls.bias, padding=classifier_kernel // 2)
    out = head(neck_out)
    assert out.shape == (2, 5, 28, 20)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_forward_at_odd_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **TINY).eval()
    images = torch.randn(1, 3, 77, 50)
    grid = (5, 4)  # ceil(77 / 16), ceil(50 / 16): the input is padded right/bottom to whole patches
    with torch.no_grad():
        logits = model(images)
        main, aux = model.forward_train(images)
    stride = model.output_stride
    assert logits.shape == (1, 5, grid[0] * 16 // stride, grid[1] * 16 // stride)
    torch.testing.assert_close(main, logits)
    assert torch.isfinite(logits).all()
    assert len(aux) == (4 if "mla" in name else 3)
    assert all(a.shape[:2] == (1, 5) for a in aux)
    assert stride == {"setr_naive_vit_l": 4, "setr_pup_vit_l": 1, "setr_mla_vit_l": 4}[name]


def test_backbone_layout_per_head_type() -> None:
    with torch.device("meta"):
        naive, mla = create_model("setr_naive_vit_l"), create_model("setr_mla_vit_l")
    assert naive.backbone.out_indices == (9, 14, 19, 23) and naive.backbone.with_cls_token
    assert mla.backbone.out_indices == (5, 11, 17, 23) and not mla.backbone.with_cls_token
    assert naive.backbone.interpolate_mode == "bilinear" and naive.backbone.norm is None
    assert naive.backbone.pos_embed.shape == (1, 1 + 32 * 32, 1024)  # ADE20K: trained for 512x512
    assert isinstance(mla.neck, MLANeck)


def test_original_numerics_overrides() -> None:
    model = create_model("setr_naive_vit_l", num_classes=3, up_scale=1, aux_num_convs=1, aux_up_scale=1, **TINY)
    assert model.output_stride == 16  # the original Naive classifies at stride 16 and resizes x16 once
    model = create_model("setr_mla_vit_l", num_classes=3, classifier_kernel=3, up_align_corners=True, **TINY)
    assert model.decode_head.classifier.kernel_size == (3, 3)
    assert model.decode_head.up_align_corners and not model.decode_head.align_corners


def _params_m(name: str, **overrides) -> tuple[float, float]:
    """(all parameters, without the auxiliary heads) in millions, on the meta device."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    total = sum(p.numel() for p in model.parameters())
    aux = sum(p.numel() for p in model.aux_heads.parameters())
    return total / 1e6, (total - aux) / 1e6


@pytest.mark.parametrize("name", NAMES)
def test_published_parameter_counts(name: str) -> None:
    published = get_entry(name).published_params_m
    assert published == {"setr_naive_vit_l": 305.67, "setr_pup_vit_l": 318.31, "setr_mla_vit_l": 310.57}[name]
    # the paper's convention (its Cityscapes models: 19 classes, a 768x768 position-embedding grid, auxiliary heads
    # included) matches all three within 0.4%
    total, _ = _params_m(name, num_classes=19, img_size=768)
    assert abs(total - published) / published < 0.004
    # the registered defaults (ADE20K: 150 classes, 512 grid, auxiliary heads) stay within 1%
    total, without_aux = _params_m(name)
    assert abs(total - published) / published < 0.01
    # aux heads: 3 x (LN + 2 convs + BNs + classifier), 3 x the 3x3 version, 4 x a 256 -> 150 classifier
    assert total - without_aux == pytest.approx({"setr_naive_vit_l": 1.108, "setr_pup_vit_l": 8.972,
                                                 "setr_mla_vit_l": 0.154}[name], abs=1e-3)


@pytest.mark.parametrize(
    ("name", "lr"), [("setr_naive_vit_l", 0.01), ("setr_pup_vit_l", 0.001), ("setr_mla_vit_l", 0.001)]
)
def test_ade20k_configs(name: str, lr: float) -> None:
    from pathlib import Path

    from seglab.config import load_config

    path = Path(__file__).parents[2] / "configs" / "setr" / f"{name}_ade20k-512_160k.yaml"
    config = load_config(path)
    assert config.model.name == name and config.optim.name == "sgd" and config.optim.lr == lr
    assert config.optim.weight_decay == 0.0 and config.optim.paramwise == {"head": {"lr_mult": 10.0}}
    assert (config.eval.mode, config.eval.crop_size, config.eval.stride) == ("slide", (512, 512), (341, 341))
    with torch.device("meta"):
        model = create_model(name, num_classes=config.model.num_classes)
    assert config.loss.aux_weights == [0.4] * len(model.aux_heads)
