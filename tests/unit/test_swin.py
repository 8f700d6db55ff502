"""Swin backbone structure: shapes at odd sizes, parameter counts against timm, the shifted-window mask, the drop-path
schedule, the window-12 option, and the official / mmseg checkpoint layouts."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from seglab.backbones.swin import (
    SWIN_CONFIGS,
    PatchMerging,
    SwinBlock,
    SwinConfig,
    SwinStage,
    SwinTransformer,
    WindowAttention,
    WindowLayout,
    relative_position_index,
)
from seglab.convert.swin import convert_swin_official, convert_swin_timm, unfold_to_concat_order


def _tiny(**kwargs) -> SwinTransformer:
    """Swin-T's layout at a fraction of its width, for fast forward passes."""
    return SwinTransformer(SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)), **kwargs).eval()


@pytest.mark.parametrize("shape", [(1, 3, 70, 90), (2, 3, 37, 53), (1, 3, 224, 224), (1, 3, 61, 29)])
@torch.no_grad()
def test_feature_shapes_at_odd_sizes(shape):
    model = _tiny()
    outs = model(torch.randn(*shape))
    assert [(i.channels, i.stride) for i in model.feature_info] == [(16, 4), (32, 8), (64, 16), (128, 32)]
    for out, info in zip(outs, model.feature_info, strict=True):
        expected = (shape[0], info.channels, math.ceil(shape[2] / info.stride), math.ceil(shape[3] / info.stride))
        assert tuple(out.shape) == expected
        assert torch.isfinite(out).all()


def test_swin_t_feature_info_and_out_indices():
    with torch.device("meta"):
        model = SwinTransformer(SWIN_CONFIGS["t"], out_indices=(1, 3))
    assert [(i.channels, i.stride) for i in model.feature_info] == [(192, 8), (768, 32)]
    assert sorted(k for k in model.state_dict() if k.startswith("out_norms")) == [
        "out_norms.1.bias", "out_norms.1.weight", "out_norms.3.bias", "out_norms.3.weight"]
    with pytest.raises(ValueError, match="out_indices"):
        SwinTransformer(SWIN_CONFIGS["t"], out_indices=(4,))


@pytest.mark.parametrize("variant", ["t", "s", "b", "l"])
def test_parameter_counts_equal_timm_backbone_plus_stage_norms(variant):
    timm = pytest.importorskip("timm")
    names = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
    with torch.device("meta"):
        reference = timm.create_model(f"swin_{names[variant]}_patch4_window7_224", pretrained=False)
        ours = SwinTransformer(SWIN_CONFIGS[variant])
    timm_total = sum(p.numel() for p in reference.parameters())
    head = sum(p.numel() for p in reference.head.parameters())
    final_norm = sum(p.numel() for p in reference.norm.parameters())  # LayerNorm(8C) of the classifier
    width = SWIN_CONFIGS[variant].embed_dim
    stage_norms = sum(2 * width * 2**i for i in range(4))  # our out_norms: LayerNorm(C), (2C), (4C), (8C)
    # timm at 224 clamps no window (stage 4 is 7x7 = one full window), has no absolute position embedding and
    # the same patch embedding, blocks and merging: the only differences are the classifier and the norms
    expected = timm_total - head - final_norm + stage_norms
    actual = sum(p.numel() for p in ours.parameters())
    assert actual == expected
    published = {"t": 27_520_698, "s": 48_838_602, "b": 86_745_016, "l": 194_998_164}
    assert actual == published[variant]


def test_every_parameter_gets_a_gradient():
    # a size that pads and shifts stages 0-1 and shrinks the windows of stages 2-3; DDP needs no unused parameter
    model = _tiny(drop_path_rate=0.1).train()
    sum(out.square().mean() for out in model(torch.randn(2, 3, 45, 70))).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@torch.no_grad()
def test_bfloat16_autocast_runs():
    model = _tiny()
    x = torch.randn(1, 3, 45, 70)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(x)
    reference = model(x)
    for out, ref in zip(outs, reference, strict=True):
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert (out.float() - ref).abs().max() < 0.5  # bf16 rounding, not a different computation


def test_relative_position_index_is_computed_not_saved():
    model = _tiny()
    attn = model.stages[0].blocks[0].attn
    assert attn.relative_position_bias_table.shape == (13 * 13, 1)
    assert "stages.0.blocks.0.attn.relative_position_index" not in model.state_dict()
    index = relative_position_index(7)
    assert torch.equal(attn.relative_position_index, index)
    # token 0 is (0, 0), token 8 is (1, 1): offset (-1, -1) -> row (5 * 13 + 5); the diagonal is offset (0, 0)
    assert index[0, 8].item() == 5 * 13 + 5 and set(index.diagonal().tolist()) == {6 * 13 + 6}
    assert index.min().item() == 0 and index.max().item() == 13 * 13 - 1


@pytest.mark.parametrize("size", [(14, 14), (13, 12), (9, 20), (4, 10), (3, 5)])
def test_window_layout_equals_pad_roll_partition(size):
    """The folded gather/scatter indices reproduce the original's pad (zeros after the norm) -> roll -> partition and
    its inverse."""
    height, width = size
    channels = 2
    x = torch.randn(1, height, width, channels)
    layout = WindowLayout.build(height, width, 7, x.device)
    wh, ww = layout.window
    padded = F.pad(x, (0, 0, 0, (-width) % ww, 0, (-height) % wh))
    hp, wp = padded.shape[1:3]
    for order, shifted in ((layout.plain, False), (layout.shifted, True)):
        shift = (0 if height <= 7 else 3, 0 if width <= 7 else 3) if shifted else (0, 0)
        rolled = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = rolled.view(1, hp // wh, wh, wp // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(1, -1, channels)  # (1, nH, nW, wh, ww, C) -> (1, nW_total * N, C)
        tokens = x.view(1, -1, channels)
        if layout.padded:
            tokens = F.pad(tokens, (0, 0, 1, 0))  # the prepended zero token
        assert torch.equal(tokens.index_select(1, order.gather), windows)
        assert torch.equal(windows.index_select(1, order.scatter), x.view(1, -1, channels))
    assert (layout.shift_mask is None) == (height <= 7 and width <= 7)


def _single_block_stage(shifted: bool, dim: int = 8) -> SwinStage:
    torch.manual_seed(0)
    block = SwinBlock(dim, num_heads=2, window_size=7, shifted=shifted, mlp_ratio=2.0, qkv_bias=True, drop=0.0,
                      attn_drop=0.0, drop_path=0.0)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    return SwinStage([block], window_size=7, downsample=None).eval()


def _changed_tokens(stage: SwinStage, x: torch.Tensor, row: int, col: int) -> set[tuple[int, int]]:
    with torch.no_grad():
        base, _ = stage(x)
        bumped = x.clone()
        bumped[0, row, col] += torch.randn(x.shape[-1])  # not constant: LayerNorm would remove that
        out, _ = stage(bumped)
    changed = (out - base).abs().amax(dim=-1)[0] > 1e-6  # (H, W)
    return {tuple(p) for p in changed.nonzero().tolist()}


def test_shifted_window_mask_blocks_cross_region_attention():
    # 14x14 map, window 7, shift 3. After the cyclic shift the bottom-right window holds original rows 10..13 and
    # the wrapped rows 0..2 (likewise columns): four regions that must not attend to each other.
    stage = _single_block_stage(shifted=True)
    x = torch.randn(1, 14, 14, 8)
    wrapped = {(r, c) for r in range(3) for c in range(3)}
    assert _changed_tokens(stage, x, 0, 0) == wrapped  # only its own region of the window
    # a token of region (rows 10..13, cols 0..2) reaches only that region, not rows 0..2 of the same window
    assert _changed_tokens(stage, x, 12, 1) == {(r, c) for r in range(10, 14) for c in range(3)}
    # an interior token's shifted window is an ordinary 7x7 block of the original map: rows/cols 3..9
    assert _changed_tokens(stage, x, 5, 5) == {(r, c) for r in range(3, 10) for c in range(3, 10)}


def test_shifted_window_mask_with_padding():
    # 13x12 map: padded to 14x14 after the norm, then shifted; regions follow the padded size as in the original
    stage = _single_block_stage(shifted=True)
    x = torch.randn(1, 13, 12, 8)
    # the last window (padded rows/cols 10..13 hold original 10..12 / 10..11 and padding): the region before the wrap
    assert _changed_tokens(stage, x, 11, 11) == {(r, c) for r in range(10, 13) for c in range(10, 12)}
    assert _changed_tokens(stage, x, 1, 2) == {(r, c) for r in range(3) for c in range(3)}


def test_unshifted_block_attends_within_its_window_only():
    stage = _single_block_stage(shifted=False)
    x = torch.randn(1, 14, 14, 8)
    assert _changed_tokens(stage, x, 8, 2) == {(r, c) for r in range(7, 14) for c in range(7)}


def test_small_maps_shrink_the_window_and_drop_the_shift():
    # a 4x10 map: 4 rows fit one window (window 4, no shift along rows); 10 columns keep window 7 and shift 3
    stage = _single_block_stage(shifted=True)
    x = torch.randn(1, 4, 10, 8)
    changed = _changed_tokens(stage, x, 0, 0)
    # columns: shifted windows are cols 3..9 and the wrapped one holding cols 0..2 (+ padding); all 4 rows attend
    assert changed == {(r, c) for r in range(4) for c in range(3)}


def test_drop_path_schedule_is_linear_over_all_blocks():
    with torch.device("meta"):
        model = SwinTransformer(SWIN_CONFIGS["t"], drop_path_rate=0.3)
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage.blocks]
    assert len(rates) == 12
    assert rates == pytest.approx(torch.linspace(0, 0.3, 12).tolist())
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    # training mode with a rate drops whole samples' branches: outputs differ between two calls
    model = _tiny(drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(model(x)[-1], model(x)[-1])


@torch.no_grad()
def test_window_12_option():
    with torch.device("meta"):
        model = SwinTransformer(SWIN_CONFIGS["b"], window_size=12)
    attn = model.stages[0].blocks[1].attn
    assert attn.window_size == 12 and attn.relative_position_bias_table.shape == (23 * 23, 4)
    assert attn.relative_position_index.shape == (144, 144)
    small = _tiny(window_size=12)
    out = small(torch.randn(1, 3, 100, 140))  # stage maps 25x35 (padded to 36x36, shift 6), 13x18, 7x9, 4x5
    assert [tuple(o.shape[-2:]) for o in out] == [(25, 35), (13, 18), (7, 9), (4, 5)]
    assert _tiny()(torch.randn(1, 3, 100, 140))[0].shape == out[0].shape


def test_patch_merging_concatenation_order():
    merge = PatchMerging(dim=1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
        merge.reduction.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0], [0.0, 0.0, 0.0, 0.0]]))
    # a 2x2 map with distinct values; the norm is bypassed by checking the arrangement through its input
    x = torch.tensor([[0.0, 2.0], [1.0, 3.0]]).view(1, 2, 2, 1)  # (row, col) -> value: x0 (0,0)=0, x1 (1,0)=1, ...
    captured = {}
    merge.norm.register_forward_hook(lambda m, args, out: captured.setdefault("in", args[0]))
    merge(x)
    assert captured["in"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    # odd sizes are padded to even
    assert PatchMerging(dim=4)(torch.randn(1, 5, 3, 4)).shape == (1, 3, 2, 8)


# --- checkpoint layouts -------------------------------------------------------------------------------------------


def _swin_t_official_manifest() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official Swin-Transformer-Semantic-Segmentation UperNet Swin-T backbone."""
    config, keys = SWIN_CONFIGS["t"], {}
    keys["backbone.patch_embed.proj.weight"] = (96, 3, 4, 4)
    keys["backbone.patch_embed.proj.bias"] = (96,)
    keys["backbone.patch_embed.norm.weight"] = keys["backbone.patch_embed.norm.bias"] = (96,)
    for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads, strict=True)):
        dim = 96 * 2**i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}"
            keys[f"{p}.norm1.weight"] = keys[f"{p}.norm1.bias"] = (dim,)
            keys[f"{p}.attn.relative_position_bias_table"] = (169, heads)
            keys[f"{p}.attn.relative_position_index"] = (49, 49)
            keys[f"{p}.attn.qkv.weight"], keys[f"{p}.attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
            keys[f"{p}.attn.proj.weight"], keys[f"{p}.attn.proj.bias"] = (dim, dim), (dim,)
            keys[f"{p}.norm2.weight"] = keys[f"{p}.norm2.bias"] = (dim,)
            keys[f"{p}.mlp.fc1.weight"], keys[f"{p}.mlp.fc1.bias"] = (4 * dim, dim), (4 * dim,)
            keys[f"{p}.mlp.fc2.weight"], keys[f"{p}.mlp.fc2.bias"] = (dim, 4 * dim), (dim,)
        if i < 3:
            keys[f"backbone.layers.{i}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            keys[f"backbone.layers.{i}.downsample.norm.weight"] = (4 * dim,)
            keys[f"backbone.layers.{i}.downsample.norm.bias"] = (4 * dim,)
        keys[f"backbone.norm{i}.weight"] = keys[f"backbone.norm{i}.bias"] = (dim,)
    keys["decode_head.conv_seg.weight"] = (150, 512, 1, 1)
    keys["auxiliary_head.conv_seg.weight"] = (150, 256, 1, 1)
    return keys


def _to_mmseg_1x(name: str) -> str:
    """The same tensor's name in mmseg's own Swin (`SwinTransformer` in mmseg/models/backbones/swin.py)."""
    name = name.replace("backbone.layers.", "backbone.stages.").replace("patch_embed.proj.", "patch_embed.projection.")
    name = name.replace(".attn.", ".attn.w_msa.")
    return name.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")


def _expected_backbone() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SwinTransformer(SWIN_CONFIGS["t"])
    return {f"backbone.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def _random_state(manifest: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: (torch.zeros(s, dtype=torch.long) if k.endswith("relative_position_index")
                else torch.randn(s, generator=gen)) for k, s in manifest.items()}


def test_official_layout_converts_key_for_key():
    source = _random_state(_swin_t_official_manifest())
    converted = convert_swin_official(source)
    assert {k: tuple(v.shape) for k, v in converted.items()} == _expected_backbone()
    assert torch.equal(converted["backbone.out_norms.2.weight"], source["backbone.norm2.weight"])
    assert torch.equal(converted["backbone.stages.1.downsample.reduction.weight"],
                       source["backbone.layers.1.downsample.reduction.weight"])
    assert torch.equal(converted["backbone.stages.3.blocks.1.mlp.fc2.bias"],
                       source["backbone.layers.3.blocks.1.mlp.fc2.bias"])
    model = SwinTransformer(SWIN_CONFIGS["t"])
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in converted.items()}, strict=True)
    with pytest.raises(ValueError, match="not understood"):
        convert_swin_official({**source, "backbone.absolute_pos_embed": torch.zeros(1, 3136, 96)})


def test_official_imagenet_checkpoint_converts_without_out_norms():
    """`swin_tiny_patch4_window7_224.pth` of microsoft/Swin-Transformer: unprefixed keys, classifier norm and head,
    `attn_mask` buffers of the shifted blocks (stages 0-2 at 224: 56, 28, 14 > 7)."""
    manifest = {k.removeprefix("backbone."): s for k, s in _swin_t_official_manifest().items()
                if k.startswith("backbone.") and not re.match(r"backbone\.norm\d", k)}
    manifest.update({"norm.weight": (768,), "norm.bias": (768,), "head.weight": (1000, 768), "head.bias": (1000,)})
    for i, windows in enumerate((64, 16, 4)):
        manifest[f"layers.{i}.blocks.1.attn_mask"] = (windows, 49, 49)
    converted = convert_swin_official(_random_state(manifest))
    expected = {k: s for k, s in _expected_backbone().items() if not k.startswith("backbone.out_norms.")}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    with pytest.raises(ValueError, match="use convert_swin_official"):
        convert_swin_timm(_random_state(manifest))


def test_mmseg_layout_converts_key_for_key_and_reorders_merging():
    official = _random_state(_swin_t_official_manifest())
    # mmseg's swin2mmseg stores the merging weights in nn.Unfold order (block order [0, 2, 1, 3], channel-major)
    mmseg = {}
    for name, value in official.items():
        if ".downsample.reduction." in name:
            out, inp = value.shape
            value = value.reshape(out, 4, inp // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out, inp)
        elif ".downsample.norm." in name:
            value = value.reshape(4, -1)[[0, 2, 1, 3], :].transpose(0, 1).reshape(-1)
        mmseg[_to_mmseg_1x(name)] = value
    assert "backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table" in mmseg
    assert "backbone.stages.2.blocks.5.ffn.layers.0.0.weight" in mmseg
    converted = convert_swin_official(mmseg)
    assert {k: tuple(v.shape) for k, v in converted.items()} == _expected_backbone()
    reference = convert_swin_official(official)
    for key, value in reference.items():
        assert torch.equal(converted[key], value), key


@torch.no_grad()
def test_unfold_order_matches_mmseg_merging_numerically():
    # mmseg 1.x merges with F.unfold(kernel 2, stride 2): channel-major features; after reordering its norm and
    # reduction weights our concat-order merging computes the same thing
    channels = 3
    norm = torch.nn.LayerNorm(4 * channels)
    reduction = torch.nn.Linear(4 * channels, 2 * channels, bias=False)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 4, channels)  # (B, H, W, C)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, L, 4C)
    expected = reduction(norm(unfolded)).view(2, 3, 2, 2 * channels)
    merge = PatchMerging(channels)
    merge.norm.weight.copy_(unfold_to_concat_order(norm.weight, dim=0))
    merge.norm.bias.copy_(unfold_to_concat_order(norm.bias, dim=0))
    merge.reduction.weight.copy_(unfold_to_concat_order(reduction.weight, dim=1))
    assert torch.allclose(merge(x), expected, atol=1e-5)


def test_official_converter_rejects_other_layouts():
    with pytest.raises(ValueError, match="not a Swin segmentation checkpoint"):
        convert_swin_official({"backbone.stages.0.blocks.0.norm1.weight": torch.zeros(1)})


@pytest.mark.parametrize("shape", [(1, 3, 77, 50), (2, 3, 64, 96), (1, 3, 33, 47), (1, 3, 256, 200)])
def test_export_path_equals_eager_path(shape, monkeypatch):
    """While exporting, every size takes the branch-free path (zero token, shifted order and region mask built for
    every stage, padding always applied, the bias always indexed): it must give the eager result at every size,
    including stages smaller than the window and padded ones."""
    torch.manual_seed(0)
    model = _tiny(drop_path_rate=0.0)
    for module in model.modules():
        if isinstance(module, WindowAttention):
            torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(shape)
    with torch.no_grad():
        eager = model(x)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        exported = model(x)
    for a, b in zip(eager, exported, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("size", [(5, 6), (3, 3), (7, 7), (4, 10)])
def test_full_window_on_small_maps_equals_pad_roll_partition(size):
    """`shrink=False` (the segmentation code and mmseg): the 7x7 window and the shift 3 at every map size, the map
    padded to the window."""
    height, width = size
    x = torch.randn(1, height, width, 2)
    layout = WindowLayout.build(height, width, 7, x.device, shrink=False)
    assert layout.window == (7, 7) and layout.shift_mask is not None
    padded = F.pad(x, (0, 0, 0, (-width) % 7, 0, (-height) % 7))
    hp, wp = padded.shape[1:3]
    rolled = torch.roll(padded, shifts=(-3, -3), dims=(1, 2))
    windows = rolled.view(1, hp // 7, 7, wp // 7, 7, 2).permute(0, 1, 3, 2, 4, 5).reshape(1, -1, 2)
    tokens = F.pad(x.view(1, -1, 2), (0, 0, 1, 0)) if layout.padded else x.view(1, -1, 2)
    assert torch.equal(tokens.index_select(1, layout.shifted.gather), windows)
    assert torch.equal(windows.index_select(1, layout.shifted.scatter), x.view(1, -1, 2))


@torch.no_grad()
def test_shrink_window_matters_only_on_maps_smaller_than_the_window():
    shrink, full = _tiny(), _tiny(shrink_window=False)
    full.load_state_dict(shrink.state_dict())
    small, large = torch.randn(1, 3, 75, 93), torch.randn(1, 3, 232, 260)  # stage 4: 3x3 / 8x9 tokens
    assert all(torch.equal(a, b) for a, b in zip(shrink(large), full(large), strict=True))
    a, b = shrink(small), full(small)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # 19x24, 10x12: larger than the window
    assert (a[2] - b[2]).abs().max() > 1e-3  # 5x6: one padded, shifted 7x7 window instead of a 5x6 one
