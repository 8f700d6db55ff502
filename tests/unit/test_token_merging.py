"""SegFormer++ token merging (`seglab.layers.token_merging`): the matching against a per-token reference, exactness
where merging loses nothing (identical tokens), the presets in SegFormer, and switching back to the exact model."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.backbones.mit import EfficientSelfAttention
from seglab.layers.token_merging import TOKEN_MERGING_PRESETS, GridMerge, StageMerging, pool_tokens, unpool_tokens


def reference_merge(x: torch.Tensor, height: int, width: int, stride: int, r: int) -> list[torch.Tensor]:
    """Bipartite soft matching written token by token: one list of merged tokens per image, the kept sources in
    decreasing order of their best similarity, then the destinations in grid order."""
    outputs = []
    for image in x:
        dst = [(i * width + j) for i in range(0, (height // stride) * stride, stride)
               for j in range(0, (width // stride) * stride, stride)]
        src = [k for k in range(height * width) if k not in dst]
        unit = image / image.norm(dim=-1, keepdim=True)
        best = []
        for s in src:
            sims = [float(unit[s] @ unit[d]) for d in dst]
            top = max(range(len(dst)), key=lambda k: (sims[k], -k))  # the first of equal maxima
            best.append((sims[top], top))
        order = sorted(range(len(src)), key=lambda k: -best[k][0])  # stable: ties keep grid order
        merged, kept = order[:r], order[r:]
        sums = [image[d].clone() for d in dst]
        counts = [1] * len(dst)
        for k in merged:
            sums[best[k][1]] += image[src[k]]
            counts[best[k][1]] += 1
        tokens = [image[src[k]] for k in kept] + [total / n for total, n in zip(sums, counts)]
        outputs.append(torch.stack(tokens))
    return outputs


@pytest.mark.parametrize(("height", "width", "stride", "r"), [(6, 8, 2, 20), (7, 9, 2, 11), (9, 10, 4, 60)])
def test_grid_merge_equals_the_per_token_reference(height, width, stride, r):
    x = torch.randn(2, height * width, 6, generator=torch.Generator().manual_seed(height))
    merge = GridMerge(x, height, width, stride, r)
    sources = height * width - (height // stride) * (width // stride)
    assert merge.r == min(r, sources)
    merged = merge.merge(x)
    assert merged.shape == (2, height * width - merge.r, 6)
    for got, expected in zip(merged, reference_merge(x, height, width, stride, merge.r)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # unmerge: every token gets the output of the token it went into
    restored = merge.unmerge(merged)
    kept_positions = merge.src_index[merge.kept[0]]
    torch.testing.assert_close(restored[0, kept_positions], x[0, kept_positions])
    torch.testing.assert_close(restored[0, merge.dst_index], merged[0, -len(merge.dst_index):])


def test_no_merging_is_the_identity():
    x = torch.randn(1, 12, 4)
    for merge in (GridMerge(x, 3, 4, 2, 0), GridMerge(x, 3, 4, 4, 5)):  # r = 0; a grid smaller than the cell
        assert merge.r == 0 and merge.merge(x) is x and merge.unmerge(x) is x


def test_identical_queries_merge_without_loss():
    """Queries that are equal within each 4 x 4 cell attend identically: merging them (and copying the output back)
    gives the exact attention output."""
    torch.manual_seed(0)
    attention = EfficientSelfAttention(dim=16, num_heads=2, sr_ratio=2).eval()
    height, width = 12, 16
    cells = torch.randn(1, 16, height // 4, width // 4)
    x = cells.repeat_interleave(4, 2).repeat_interleave(4, 3).flatten(2).transpose(1, 2)  # (1, N, 16)
    with torch.no_grad():
        exact = attention(x, height, width)
        attention.merging = StageMerging(q_ratio=0.9, q_stride=4)  # all 15 sources of each cell: r = 0.9 N < 15/16 N
        merged = attention(x, height, width)
        attention.merging = StageMerging(q_pool=2)
        pooled = attention(x, height, width)
    torch.testing.assert_close(merged, exact, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, exact, rtol=0, atol=1e-5)


def test_pool_and_unpool_at_odd_sizes():
    x = torch.arange(2 * 35 * 3, dtype=torch.float32).reshape(2, 35, 3)
    pooled, grid = pool_tokens(x, 5, 7, 2)
    assert grid == (3, 4) and pooled.shape == (2, 12, 3)
    maps = x.transpose(1, 2).reshape(2, 3, 5, 7)
    torch.testing.assert_close(pooled[:, -1], maps[:, :, 4, 6])  # a 1 x 1 corner cell is the token itself
    restored = unpool_tokens(pooled, grid, 5, 7, 2).transpose(1, 2).reshape(2, 3, 5, 7)
    torch.testing.assert_close(restored[..., 0, 0], maps[..., :2, :2].mean((-1, -2)))
    torch.testing.assert_close(restored[..., 4, 6], maps[..., 4, 6])


def test_segformer_presets_load_the_same_weights_and_switch_off_exactly():
    torch.manual_seed(0)
    exact = seglab.create_model("segformer_b0", num_classes=5).eval()
    fast = seglab.create_model("segformer_b0", num_classes=5, token_merging="hq").eval()
    fast.load_state_dict(exact.state_dict())  # no parameter differs: the same keys and shapes
    images = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = exact(images)
        for preset in TOKEN_MERGING_PRESETS:
            fast.backbone.set_token_merging(preset)
            approx = fast(images)
            assert approx.shape == reference.shape
            assert 0 < (approx - reference).abs().max() < 0.1 * reference.abs().max()  # changed, and close
            assert (approx.argmax(1) == reference.argmax(1)).float().mean() > 0.9, preset
        fast.backbone.set_token_merging(None)
        assert torch.equal(fast(images), reference)
    with pytest.raises(ValueError, match="unknown token merging preset 'quick'"):
        fast.backbone.set_token_merging("quick")
    with pytest.raises(ValueError, match="q_ratio must be in"):
        StageMerging(q_ratio=1.0)
