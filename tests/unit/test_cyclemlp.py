"""CycleMLP backbone structure: the Cycle FC against torchvision's `deform_conv2d` with the original's offsets,
ImageNet parameter counts, shapes at odd sizes, the token mixer against its formula, the drop-path schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from seglab.backbones.cyclemlp import (
    CYCLEMLP_CONFIGS,
    CycleBlock,
    CycleFC,
    CycleMLP,
    CycleMLPConfig,
    CycleTokenMixer,
    cycle_offsets,
)

# README: CycleMLP-B1..B5 with 15M, 27M, 38M, 52M, 76M parameters (ImageNet classifier, 1000 classes)
PUBLISHED_PARAMS_M = {"b1": 15, "b2": 27, "b3": 38, "b4": 52, "b5": 76}
# measured here: the original classifier network (no output norms), 1000 classes
MEASURED_PARAMS = {"b1": 15_155_400, "b2": 26_802_504, "b3": 38_385_720, "b4": 51_796_552, "b5": 75_747_280}


def _tiny_config() -> CycleMLPConfig:
    """B1's layout at a fraction of its width and depth; widths 16 and 32 are not multiples of the span 3."""
    return CycleMLPConfig(depths=(1, 1, 2, 1), embed_dims=(16, 32, 40, 64), mlp_ratios=(4, 4, 2, 2))


def _randomise(module: torch.nn.Module) -> None:
    """Random values for every parameter (zero biases and unit norms would hide mistakes)."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)


def _deform_reference(fc: CycleFC, x: torch.Tensor) -> torch.Tensor:
    """The original's forward: `deform_conv2d` on NCHW with the offset buffer expanded to (B, 2C, H, W)."""
    batch, _, height, width = x.shape
    return deform_conv2d(x, fc.offset.expand(batch, -1, height, width), fc.weight, fc.bias)


def test_offsets_follow_the_original_formula():
    width = cycle_offsets(8, (1, 3)).view(8, 2)  # (C, (dy, dx))
    assert width[:, 0].tolist() == [0] * 8
    assert width[:, 1].tolist() == [0, 1, -1, 0, 1, -1, 0, 1]
    height = cycle_offsets(9, (7, 1)).view(9, 2)
    assert height[:, 0].tolist() == [0, 1, 2, 3, -3, -2, -1, 0, 1]
    assert height[:, 1].tolist() == [0] * 9
    assert cycle_offsets(5, (1, 3)).shape == (1, 10, 1, 1)
    with pytest.raises(ValueError, match="one of kernel_size"):
        CycleFC(4, 4, (3, 3))


@pytest.mark.parametrize("kernel_size", [(1, 3), (3, 1), (1, 7), (7, 1)])
def test_cycle_fc_equals_deform_conv2d(kernel_size):
    fc = CycleFC(10, 6, kernel_size)
    _randomise(fc)
    x = torch.randn(2, 10, 13, 17)
    expected = _deform_reference(fc, x)
    actual = fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # NCHW -> channels-last -> NCHW
    assert actual.shape == expected.shape == (2, 6, 13, 17)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_cycle_fc_shift_reads_the_offset_position_with_zero_fill():
    fc = CycleFC(3, 3, (1, 3))  # channel offsets dx = 0, +1, -1
    x = torch.arange(1.0, 6.0).view(1, 1, 5, 1).expand(1, 1, 5, 3).contiguous()  # (B, H=1, W=5, C=3), value = x + 1
    shifted = fc.shift(x)[0, 0]  # (W, C)
    assert shifted[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert shifted[:, 1].tolist() == [2, 3, 4, 5, 0]  # reads x + 1: the content moves left
    assert shifted[:, 2].tolist() == [0, 1, 2, 3, 4]


def test_cycle_fc_gradients_match_deform_conv2d():
    fc = CycleFC(5, 4, (3, 1))
    _randomise(fc)
    x = torch.randn(1, 5, 7, 6, requires_grad=True)
    grad = torch.randn(1, 4, 7, 6)
    (ref_x,) = torch.autograd.grad((_deform_reference(fc, x) * grad).sum(), x)
    (our_x,) = torch.autograd.grad((fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * grad).sum(), x)
    torch.testing.assert_close(our_x, ref_x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(PUBLISHED_PARAMS_M))
def test_imagenet_parameter_counts_round_to_published(variant):
    with torch.device("meta"):
        model = CycleMLP(CYCLEMLP_CONFIGS[variant], num_classes=1000)
    # the original classifier network has no dense-prediction output norms
    count = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("out_norms."))
    print(f"CycleMLP-{variant.upper()}: {count} parameters")
    assert count == MEASURED_PARAMS[variant]
    assert round(count / 1e6) == PUBLISHED_PARAMS_M[variant]


@pytest.mark.parametrize("size", [(33, 47), (77, 50)])
@pytest.mark.parametrize("training", [True, False])
def test_feature_shapes_at_odd_sizes(size, training):
    model = CycleMLP(_tiny_config(), drop_path_rate=0.1).train(training)
    feats = model(torch.randn(2, 3, *size))
    height, width = (size[0] + 1) // 4, (size[1] + 1) // 4  # the stem: 7x7, stride 4, padding 2
    for feat, info in zip(feats, model.feature_info, strict=True):
        assert feat.shape == (2, info.channels, height, width)
        assert torch.isfinite(feat).all()
        height, width = -(-height // 2), -(-width // 2)  # the transitions: 3x3, stride 2, padding 1
    assert [(i.channels, i.stride) for i in model.feature_info] == [(16, 4), (32, 8), (40, 16), (64, 32)]


def test_stem_and_transition_geometry():
    with torch.device("meta"):
        model = CycleMLP(CYCLEMLP_CONFIGS["b1"])
    stem = model.patch_embed.proj
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias is not None) == ((7, 7), (4, 4), (2, 2), True)
    assert model.stages[0].downsample is None
    for i in (1, 2, 3):
        conv = model.stages[i].downsample.proj
        assert (conv.kernel_size, conv.stride, conv.padding, conv.bias is not None) == ((3, 3), (2, 2), (1, 1), True)
    assert [tuple(f.shape) for f in model(torch.empty(1, 3, 512, 512, device="meta"))] == [
        (1, 64, 128, 128), (1, 128, 64, 64), (1, 320, 32, 32), (1, 512, 16, 16)]


def test_out_indices_subset_returns_and_runs_only_what_is_needed():
    model = CycleMLP(_tiny_config(), out_indices=(1, 2)).eval()
    assert [(i.channels, i.stride) for i in model.feature_info] == [(32, 8), (40, 16)]
    assert sorted(model.out_norms) == ["1", "2"]
    calls = []
    model.stages[3].register_forward_hook(lambda *args: calls.append(1))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 8), (1, 40, 4, 4)]
    assert not calls
    with pytest.raises(ValueError, match="out_indices"):
        CycleMLP(_tiny_config(), out_indices=(4,))


def _mixer_formula(mixer: CycleTokenMixer, x: torch.Tensor) -> torch.Tensor:
    """The original's token mixer with plain ops on (B, H, W, C): `deform_conv2d` Cycle FCs, the (B, C, 3) reshape
    permuted to (3, B, C) and softmaxed over the branches."""
    batch, _, _, channels = x.shape
    nchw = x.permute(0, 3, 1, 2)
    h = _deform_reference(mixer.sfc_h, nchw).permute(0, 2, 3, 1)
    w = _deform_reference(mixer.sfc_w, nchw).permute(0, 2, 3, 1)
    c = x @ mixer.mlp_c.weight.T
    a = (h + w + c).permute(0, 3, 1, 2).flatten(2).mean(2)
    a = F.gelu(a @ mixer.reweight.fc1.weight.T + mixer.reweight.fc1.bias) @ mixer.reweight.fc2.weight.T
    a = (a + mixer.reweight.fc2.bias).reshape(batch, channels, 3).permute(2, 0, 1).softmax(dim=0)  # (3, B, C)
    a = a[:, :, None, None, :]  # (3, B, 1, 1, C)
    return (h * a[0] + w * a[1] + c * a[2]) @ mixer.proj.weight.T + mixer.proj.bias


def test_token_mixer_matches_its_formula_and_reweight_order():
    mixer = CycleTokenMixer(12)
    _randomise(mixer)
    assert mixer.mlp_c.bias is None
    assert (mixer.sfc_h.kernel_size, mixer.sfc_w.kernel_size) == ((1, 3), (3, 1))
    assert mixer.reweight.fc1.out_features == 3 and mixer.reweight.fc2.out_features == 36
    x = torch.randn(2, 5, 7, 12)
    expected = _mixer_formula(mixer, x)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)
    # the common bug, reading the 3C vector as (B, 3, C), gives a clearly different result with these weights
    with torch.no_grad():
        order = torch.arange(36).view(12, 3).T.reshape(-1)  # branch-major rows -> a (B, 3, C) reading
        mixer.reweight.fc2.weight.copy_(mixer.reweight.fc2.weight[order])
        mixer.reweight.fc2.bias.copy_(mixer.reweight.fc2.bias[order])
    assert (mixer(x) - expected).abs().max().item() > 1e-2


def test_block_is_prenorm_residual_with_unit_skip_scale():
    block = CycleBlock(8, mlp_ratio=3).eval()
    _randomise(block)
    x = torch.randn(1, 4, 5, 8)
    y = x + block.attn(F.layer_norm(x, (8,), block.norm1.weight, block.norm1.bias, 1e-5))
    y = y + block.mlp.fc2(F.gelu(block.mlp.fc1(F.layer_norm(y, (8,), block.norm2.weight, block.norm2.bias, 1e-5))))
    torch.testing.assert_close(block(x), y)
    assert block.mlp.fc1.out_features == 24 and block.norm1.eps == 1e-5


def test_drop_path_schedule_is_linear_over_all_blocks():
    with torch.device("meta"):
        model = CycleMLP(CYCLEMLP_CONFIGS["b2"], drop_path_rate=0.3)
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage.blocks]
    total = sum(CYCLEMLP_CONFIGS["b2"].depths)
    assert len(rates) == total
    assert rates == pytest.approx([0.3 * k / (total - 1) for k in range(total)], abs=1e-7)


def test_classifier_only_with_num_classes():
    plain = CycleMLP(_tiny_config())
    assert not hasattr(plain, "head") and not hasattr(plain, "norm")
    assert not any(k.startswith(("norm.", "head.")) for k in plain.state_dict())
    with pytest.raises(RuntimeError, match="num_classes"):
        plain.forward_classification(torch.randn(1, 3, 32, 32))
    model = CycleMLP(_tiny_config(), num_classes=7).eval()
    assert model.head.in_features == 64 and model.norm.normalized_shape == (64,)
    x = torch.randn(2, 3, 40, 36)
    logits = model.forward_classification(x)
    assert logits.shape == (2, 7)
    # the classifier pools the normalised last stage: equal to pooling the raw stage-3 tokens through `norm`
    tokens = model.patch_embed(x)
    for stage in model.stages:
        tokens = stage(tokens)
    torch.testing.assert_close(logits, model.head(model.norm(tokens).flatten(1, 2).mean(1)))


def test_every_parameter_gets_a_gradient():
    model = CycleMLP(_tiny_config(), drop_path_rate=0.1).train()
    sum(f.square().mean() for f in model(torch.randn(2, 3, 37, 29))).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_offset_buffers_are_saved_and_checked_on_load():
    model = CycleMLP(_tiny_config())
    state = model.state_dict()
    assert state["stages.0.blocks.0.attn.sfc_h.offset"].shape == (1, 32, 1, 1)
    torch.testing.assert_close(state["stages.2.blocks.1.attn.sfc_w.offset"], cycle_offsets(40, (3, 1)))
    state["stages.1.blocks.0.attn.sfc_w.offset"] = torch.zeros(1, 64, 1, 1)
    with pytest.raises(RuntimeError, match=r"stages\.1\.blocks\.0\.attn\.sfc_w\.offset"):
        model.load_state_dict(state)
