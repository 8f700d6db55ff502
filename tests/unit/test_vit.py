"""ViT backbone: shapes at odd sizes, cls-token handling, final norm, SegViT's query-based downsampling, resampling,
initialisation and parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seglab.backbones.base import FeatureInfo
from seglab.backbones.vit import VIT_CONFIGS, VisionTransformer, ViTConfig

TINY = ViTConfig(embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)


def _tiny(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    options = {"img_size": 64, "out_indices": (1, 3)} | kwargs
    return VisionTransformer(TINY, **options)


def _image(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("with_cls_token", [True, False])
@pytest.mark.parametrize("size", [(77, 50), (33, 47), (64, 64)])
def test_output_shapes_at_odd_sizes(size, with_cls_token):
    model = _tiny(with_cls_token=with_cls_token)
    grid = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    for train in (True, False):
        model.train(train)
        outs = model(_image(*size))
        assert [tuple(o.shape) for o in outs] == [(2, 32, *grid)] * 2
        assert all(torch.isfinite(o).all() for o in outs)
    assert model.feature_info == [FeatureInfo(32, 16), FeatureInfo(32, 16)]


def test_padding_is_zeros_right_and_bottom():
    model = _tiny().eval()
    image = _image(33, 47)
    padded = F.pad(image, (0, 48 - 47, 0, 48 - 33))
    with torch.no_grad():
        for a, b in zip(model(image), model(padded), strict=True):
            assert torch.equal(a, b)


@torch.no_grad()
def test_cls_token_reaches_the_blocks_only_when_kept():
    for with_cls_token in (True, False):
        model = _tiny(with_cls_token=with_cls_token).eval()
        image = _image(48, 80)
        before = model(image)[-1]
        model.cls_token.add_(5.0)
        after = model(image)[-1]
        # mmseg's with_cls_token=False: the cls token is dropped before block 0, so it cannot change the outputs
        assert torch.equal(before, after) != with_cls_token


@torch.no_grad()
def test_without_cls_token_equals_blocks_on_patch_tokens():
    """with_cls_token=False: patch tokens + their (resampled) position embedding, straight through the blocks."""
    model = _tiny(with_cls_token=False, out_indices=(3,)).eval()
    image = _image(48, 80, batch=1)
    tokens = model.patch_embed(image).flatten(2).transpose(1, 2)  # (1, 15, C)
    x = tokens + model.position_embedding((3, 5))[:, 1:]
    for block in model.blocks:
        x = block(x)
    expected = x.transpose(1, 2).reshape(1, 32, 3, 5)
    assert torch.allclose(model(image)[0], expected, atol=1e-6)


@torch.no_grad()
def test_final_norm_applies_to_the_last_block_only():
    plain = _tiny(out_indices=(1, 2, 3)).eval()
    normed = _tiny(out_indices=(1, 2, 3), final_norm=True).eval()
    normed.norm.weight.normal_()
    normed.norm.bias.normal_()
    state = {**plain.state_dict(), "norm.weight": normed.norm.weight, "norm.bias": normed.norm.bias}
    normed.load_state_dict(state, strict=True)
    assert "norm.weight" not in plain.state_dict()
    image = _image(40, 72)
    a, b = plain(image), normed(image)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    expected = F.layer_norm(a[2].permute(0, 2, 3, 1), (32,), normed.norm.weight, normed.norm.bias, eps=1e-6)
    assert torch.allclose(b[2], expected.permute(0, 3, 1, 2), atol=1e-5)
    assert not torch.allclose(a[2], b[2], atol=1e-3)
    # a model whose outputs stop before the last block never applies the norm
    early = _tiny(out_indices=(1,), final_norm=True).eval()
    early.load_state_dict(state, strict=True)
    assert torch.equal(early(image)[0], a[0])


def _reference_qd_block(block, x: torch.Tensor, heads: int) -> torch.Tensor:
    """SegViT's QD layer written out with explicit matmuls: (B, C, h, w) -> (B, C, ceil(h/2), ceil(w/2))."""
    batch, dim, _, _ = x.shape
    head_dim = dim // heads
    down = x[:, :, ::2, ::2]
    out_h, out_w = down.shape[-2:]
    tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
    queries = down.flatten(2).transpose(1, 2)  # (B, h2*w2, C)

    def norm(t, layer):
        return F.layer_norm(t, (dim,), layer.weight, layer.bias, layer.eps)

    w, b = block.attn.qkv.weight, block.attn.qkv.bias
    q = norm(queries, block.norm1) @ w[:dim].T + b[:dim]
    k = norm(tokens, block.norm1) @ w[dim:2 * dim].T + b[dim:2 * dim]
    v = norm(tokens, block.norm1) @ w[2 * dim:].T + b[2 * dim:]
    q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
    y = queries + block.attn.proj(attended)
    hidden = F.gelu(norm(y, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    y = y + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return y.transpose(1, 2).reshape(batch, dim, out_h, out_w)


@pytest.mark.parametrize("size", [(64, 96), (77, 50)])
@torch.no_grad()
def test_shrink_block_is_query_based_downsampling(size):
    model = _tiny(with_cls_token=False, shrink_index=2, out_indices=(1, 2, 3)).eval()
    before, shrunk, last = model(_image(*size))
    grid = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    half = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))
    assert before.shape[-2:] == grid and shrunk.shape[-2:] == half and last.shape[-2:] == half
    assert model.feature_info == [FeatureInfo(32, 16), FeatureInfo(32, 32), FeatureInfo(32, 32)]
    expected = _reference_qd_block(model.blocks[2], before, heads=2)
    assert torch.allclose(shrunk, expected, atol=1e-5), (shrunk - expected).abs().max()
    # the blocks after it run on the downsampled grid as ordinary blocks
    tokens = model.blocks[3](shrunk.flatten(2).transpose(1, 2))
    assert torch.allclose(last, tokens.transpose(1, 2).reshape(last.shape), atol=1e-6)


def test_shrink_requires_patch_tokens_only_and_a_valid_index():
    with pytest.raises(ValueError, match="with_cls_token=False"):
        _tiny(with_cls_token=True, shrink_index=2)
    with pytest.raises(ValueError, match="shrink_index"):
        _tiny(with_cls_token=False, shrink_index=4)


def test_separate_query_and_key_value_inputs_equal_self_attention_when_the_same():
    attn = _tiny().blocks[0].attn.eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.allclose(attn(x), attn(x, x), atol=1e-6)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="out_indices"):
        _tiny(out_indices=(4,))
    with pytest.raises(ValueError, match="out_indices"):
        _tiny(out_indices=(3, 1))
    with pytest.raises(ValueError, match="interpolate_mode"):
        _tiny(interpolate_mode="nearest")
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer(ViTConfig(30, 2, 4), out_indices=(1,))


@torch.no_grad()
def test_bilinear_and_bicubic_resampling_differ_only_off_the_trained_grid():
    bicubic = _tiny(interpolate_mode="bicubic").eval()
    bilinear = _tiny(interpolate_mode="bilinear").eval()
    bilinear.load_state_dict(bicubic.state_dict())
    bicubic.pos_embed.normal_()
    bilinear.pos_embed.copy_(bicubic.pos_embed)
    same = _image(64, 64)  # the trained 4x4 grid: no resampling
    assert all(torch.equal(a, b) for a, b in zip(bicubic(same), bilinear(same), strict=True))
    assert bicubic.position_embedding((4, 4)) is bicubic.pos_embed
    other = _image(48, 112)  # 3x7
    assert (bicubic(other)[-1] - bilinear(other)[-1]).abs().max() > 1e-3
    # the cls slot is never resampled
    assert torch.equal(bicubic.position_embedding((3, 7))[:, 0], bicubic.pos_embed[:, 0])
    antialiased = _tiny(interpolate_mode="bicubic", interpolate_antialias=True).eval()
    antialiased.load_state_dict(bicubic.state_dict())
    assert (antialiased(other)[-1] - bicubic(other)[-1]).abs().max() > 1e-4


def test_dropout_and_drop_path_act_in_training_only():
    model = _tiny(drop_path_rate=0.3, drop_rate=0.1, attn_drop_rate=0.1)
    rates = [block.drop_path.drop_prob for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    image = _image(32, 48)
    model.train()
    assert not torch.equal(model(image)[-1], model(image)[-1])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(image)[-1], model(image)[-1])
    loss = sum(o.square().mean() for o in _tiny().train()(image))
    loss.backward()


def test_initialisation():
    model = VisionTransformer(VIT_CONFIGS["s"], final_norm=True)
    assert model.pos_embed.shape == (1, 197, 384) and model.cls_token.shape == (1, 1, 384)
    for tensor in (model.pos_embed, model.cls_token, model.blocks[0].attn.qkv.weight, model.blocks[5].mlp.fc1.weight):
        assert tensor.std().item() == pytest.approx(0.02, rel=0.15 if tensor.numel() > 1000 else 0.6)
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.count_nonzero(model.blocks[3].mlp.fc2.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones(384)) and torch.count_nonzero(model.norm.bias) == 0
    assert torch.equal(model.blocks[2].norm1.weight, torch.ones(384))


def test_checkpoint_names_and_pos_embed_of_a_rectangular_training_size():
    model = VisionTransformer(TINY, img_size=(32, 80), out_indices=(3,), final_norm=True)
    keys = set(model.state_dict())
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight",
            "blocks.3.norm1.weight", "blocks.3.attn.qkv.weight", "blocks.3.attn.proj.bias", "blocks.3.norm2.bias",
            "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias"} <= keys
    assert model.pos_embed.shape == (1, 1 + 2 * 5, 32) and model.grid_size == (2, 5)
    assert model(_image(32, 80, batch=1))[-1].shape == (1, 32, 2, 5)


def test_parameter_counts_of_vit_b_and_vit_l():
    """timm's vit_base_patch16_224 has 86,567,656 parameters: our backbone (no final norm) + norm (1,536) + the
    ImageNet head (768 * 1000 + 1000). ViT-L: 304,326,632 = backbone + 2,048 + 1,025,000."""
    with torch.device("meta"):
        base = VisionTransformer(VIT_CONFIGS["b"])
        large = VisionTransformer(VIT_CONFIGS["l"], img_size=512, out_indices=(7, 15, 23), with_cls_token=False,
                                  shrink_index=8)
        large_224 = VisionTransformer(VIT_CONFIGS["l"], out_indices=(23,))
    base_count = sum(p.numel() for p in base.parameters())
    assert base_count == 85_797_120
    assert base_count + 1_536 + 769_000 == 86_567_656
    large_count = sum(p.numel() for p in large_224.parameters())
    assert large_count == 303_299_584
    assert large_count + 2_048 + 1_025_000 == 304_326_632
    # at 512 the position embedding holds 32 * 32 + 1 positions instead of 14 * 14 + 1
    assert sum(p.numel() for p in large.parameters()) == large_count + (1024 - 196) * 1024
    assert large.feature_info == [FeatureInfo(1024, 16), FeatureInfo(1024, 32), FeatureInfo(1024, 32)]
