"""AS-MLP backbone structure: the axial shift against a per-group reference, ImageNet parameter counts, shapes at odd
sizes, the block against its formula, the drop-path schedule and the patch-merging order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seglab.backbones.asmlp import (
    ASMLP,
    ASMLP_CONFIGS,
    ASMLPConfig,
    AxialShiftedBlock,
    PatchEmbed,
    PatchMerging,
    axial_shift,
)

SHIFT_CASES = [(96, 5), (10, 5), (8, 5), (7, 3), (192, 3)]


def _tiny(**kwargs) -> ASMLP:
    """AS-MLP-T's layout at a fraction of its width and depth, for fast forward passes."""
    return ASMLP(ASMLPConfig(embed_dim=16, depths=(1, 1, 2, 1)), **kwargs)


def reference_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """The rule written out: channel c is in group k = c // ceil(C / S) and position p reads p + (S // 2 - k) along
    `dim`, zero when that falls outside the map."""
    channels, length = x.shape[1], x.shape[dim]
    group = math.ceil(channels / shift_size)
    out = torch.zeros_like(x)
    for k in range(math.ceil(channels / group)):
        shift = shift_size // 2 - k
        for c in range(k * group, min((k + 1) * group, channels)):
            for p in range(length):
                q = p + shift
                if 0 <= q < length:
                    out[:, c].select(dim - 1, p).copy_(x[:, c].select(dim - 1, q))
    return out


def roll_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """The original's torch procedure restated: zero-pad both dims, split into S chunks (torch.chunk: ceil-sized,
    possibly fewer), roll chunk k by k - S // 2, crop."""
    height, width = x.shape[2:]
    pad = shift_size // 2
    padded = F.pad(x, (pad, pad, pad, pad))
    chunks = torch.chunk(padded, shift_size, dim=1)
    rolled = torch.cat([torch.roll(c, k - pad, dims=dim) for k, c in enumerate(chunks)], dim=1)
    return rolled[:, :, pad : pad + height, pad : pad + width]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(("channels", "shift_size"), SHIFT_CASES)
def test_axial_shift_equals_per_group_reference(channels, shift_size, dim):
    x = torch.randn(2, channels, 7, 9)  # odd H and W
    out = axial_shift(x, shift_size, dim)
    assert torch.equal(out, reference_shift(x, shift_size, dim))
    assert torch.equal(out, roll_shift(x, shift_size, dim))


def test_axial_shift_groups_are_ceil_sized():
    # C=8, S=5: groups of ceil(8/5) = 2 channels, only 4 groups; shifts +2, +1, 0, -1 (no group gets -2)
    x = torch.arange(1.0, 10.0).expand(1, 8, 3, 9).contiguous()  # value = column + 1
    out = axial_shift(x, 5, dim=3)
    assert out[0, :, 0, 4].tolist() == [7.0, 7.0, 6.0, 6.0, 5.0, 5.0, 4.0, 4.0]
    assert out[0, 0, 0, 7:].tolist() == [0.0, 0.0]  # group 0 reads 2 to the right: zeros past the border
    assert out[0, 7, 0, 0].item() == 0.0 and out[0, 7, 0, 1].item() == 1.0  # the last group reads 1 to the left
    # C=96, S=5: 20, 20, 20, 20, 16 channels; the unshifted middle group is channels 40..59
    y = torch.randn(1, 96, 5, 5)
    unchanged = [c for c in range(96) if torch.equal(axial_shift(y, 5, dim=2)[0, c], y[0, c])]
    assert unchanged == list(range(40, 60))


def test_axial_shift_rejects_bad_arguments():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="odd"):
        axial_shift(x, 4, dim=2)
    with pytest.raises(ValueError, match="dim"):
        axial_shift(x, 3, dim=1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        axial_shift(x[0], 3, dim=2)
    assert axial_shift(x, 1, dim=3) is x


# the original classifier (no per-stage output norms) at 1000 classes; published: 28M, 50M, 88M
IMAGENET_PARAMS = {"t": 28_282_696, "s": 49_594_696, "b": 87_752_808}
PUBLISHED_MILLIONS = {"t": 28, "s": 50, "b": 88}


@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_imagenet_parameter_counts(variant):
    with torch.device("meta"):
        model = ASMLP(ASMLP_CONFIGS[variant], num_classes=1000)
    total = sum(p.numel() for p in model.parameters())
    out_norms = sum(p.numel() for i in model.out_indices for p in getattr(model, f"norm{i}").parameters())
    classifier = total - out_norms
    print(f"AS-MLP-{variant.upper()}: {classifier:,} parameters as the ImageNet classifier, "
          f"{total - sum(p.numel() for p in (*model.norm.parameters(), *model.head.parameters())):,} as a backbone")
    assert round(classifier / 1e6) == PUBLISHED_MILLIONS[variant]
    assert classifier == IMAGENET_PARAMS[variant]
    width = ASMLP_CONFIGS[variant].embed_dim
    assert out_norms == sum(2 * width * 2**i for i in range(4))


@pytest.mark.parametrize("size", [(33, 47), (77, 50)])
@pytest.mark.parametrize("train", [True, False])
def test_feature_shapes_at_odd_sizes(size, train):
    model = _tiny(drop_path_rate=0.2, num_classes=7).train(train)
    x = torch.randn(2, 3, *size)
    with torch.set_grad_enabled(train):
        outs = model(x)
        logits = model.forward_classification(x)
    assert [(i.channels, i.stride) for i in model.feature_info] == [(16, 4), (32, 8), (64, 16), (128, 32)]
    assert len(outs) == 4
    for out, info in zip(outs, model.feature_info, strict=True):
        height, width = math.ceil(size[0] / info.stride), math.ceil(size[1] / info.stride)
        assert tuple(out.shape) == (2, info.channels, height, width)
        assert torch.isfinite(out).all()
    assert tuple(logits.shape) == (2, 7)


def test_eval_is_deterministic_and_train_drops_paths():
    model = _tiny(drop_path_rate=0.5)
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        model.eval()
        first, second = model(x)[-1], model(x)[-1]
        model.train()
        dropped = model(x)[-1]
    assert torch.equal(first, second)
    assert not torch.allclose(first, dropped)


def test_out_indices_subset():
    model = _tiny(out_indices=(1, 3)).eval()
    assert [(i.channels, i.stride) for i in model.feature_info] == [(32, 8), (128, 32)]
    norms = sorted(k for k in model.state_dict() if k.startswith("norm"))
    assert norms == ["norm1.bias", "norm1.weight", "norm3.bias", "norm3.weight"]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 33, 47))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 5, 6), (1, 128, 2, 2)]

    shallow = _tiny(out_indices=(0, 1)).eval()
    ran = []
    shallow.layers[2].register_forward_pre_hook(lambda *_: ran.append(2))
    with torch.no_grad():
        assert len(shallow(torch.randn(1, 3, 32, 32))) == 2
    assert ran == []  # stages after the last requested one are not run
    with pytest.raises(ValueError, match="out_indices"):
        _tiny(out_indices=(4,))
    with pytest.raises(ValueError, match="out_indices"):
        _tiny(out_indices=())


def test_no_classifier_without_num_classes():
    model = _tiny()
    assert not hasattr(model, "head") and not hasattr(model, "norm")
    with pytest.raises(RuntimeError, match="num_classes"):
        model.forward_classification(torch.randn(1, 3, 32, 32))


def test_shift_size_override():
    assert ASMLP_CONFIGS["s"].shift_size == 5
    model = ASMLP(ASMLPConfig(embed_dim=8, depths=(1, 1, 1, 1)), shift_size=3)
    assert {m.axial_shift.shift_size for m in model.modules() if isinstance(m, AxialShiftedBlock)} == {3}


@torch.no_grad()
def test_block_equals_its_formula():
    dim, shift = 10, 5
    block = AxialShiftedBlock(dim, shift_size=shift, mlp_ratio=2.0).eval()
    for name, p in block.named_parameters():
        p.copy_(torch.rand_like(p) + 0.5 if "norm" in name and name.endswith("weight") else torch.randn_like(p) * 0.3)
    x = torch.randn(2, dim, 7, 9)
    s, a = block.state_dict(), "axial_shift."

    def gn(t, name):
        return F.group_norm(t, 1, s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-5)

    def conv(t, name):
        return F.conv2d(t, s[f"{name}.weight"], s.get(f"{name}.bias"))

    y = F.gelu(gn(conv(gn(x, "norm1"), a + "conv1"), a + "norm1"))
    lr = F.gelu(conv(reference_shift(y, shift, dim=3), a + "conv2_1"))
    td = F.gelu(conv(reference_shift(y, shift, dim=2), a + "conv2_2"))
    x1 = x + conv(gn(lr + td, a + "norm2"), a + "conv3")
    expected = x1 + conv(F.gelu(conv(gn(x1, "norm2"), "mlp.fc1")), "mlp.fc2")
    assert s["mlp.fc1.weight"].shape == (20, 10, 1, 1)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_drop_path_schedule_is_linear_over_all_blocks():
    config = ASMLPConfig(embed_dim=8, depths=(2, 1, 3, 2))
    model = ASMLP(config, drop_path_rate=0.35)
    rates = [block.drop_path.drop_prob for stage in model.layers for block in stage.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.35, 8).tolist())
    assert [len(stage.blocks) for stage in model.layers] == [2, 1, 3, 2]


@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
@torch.no_grad()
def test_patch_merging_concat_order_and_padding(size):
    merging = PatchMerging(3)
    captured = []
    merging.norm.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    x = torch.randn(2, 3, *size)
    out = merging(x)
    padded = F.pad(x, (0, size[1] % 2, 0, size[0] % 2))
    # (row, col) offsets (0, 0), (1, 0), (0, 1), (1, 1): x0, x1, x2, x3 of the original
    rows_first = [padded[:, :, r::2, c::2] for r, c in ((0, 0), (1, 0), (0, 1), (1, 1))]
    assert torch.equal(captured[0], torch.cat(rows_first, dim=1))
    assert tuple(out.shape) == (2, 6, math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    assert merging.reduction.bias is None and merging.norm.num_groups == 1 and merging.norm.num_channels == 12


@torch.no_grad()
def test_patch_embed_pads_right_and_bottom_with_zeros():
    embed = PatchEmbed(3, 8)
    x = torch.randn(1, 3, 33, 47)
    assert torch.equal(embed(x), embed(F.pad(x, (0, 1, 0, 3))))
    assert tuple(embed(x).shape) == (1, 8, 9, 12)


def test_every_parameter_gets_a_gradient():
    model = _tiny(drop_path_rate=0.1, num_classes=5).train()
    x = torch.randn(2, 3, 45, 70)
    loss = sum(out.square().mean() for out in model(x)) + model.forward_classification(x).square().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
