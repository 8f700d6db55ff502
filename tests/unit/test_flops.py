"""Parameter counts, FLOPs (paper convention) and stage shapes."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.catalog import format_model_table
from seglab.tools.flops import count_flops, count_params, model_table, stage_shapes


@pytest.fixture(scope="module")
def b0_meta():
    with torch.device("meta"):
        return seglab.create_model("segformer_b0", num_classes=150)


def test_segformer_b0_param_count(b0_meta):
    assert count_params(b0_meta) == 3_752_694
    assert count_params(b0_meta, trainable_only=True) == 3_752_694


def test_flops_are_positive_and_scale_with_the_area(b0_meta):
    small = count_flops(b0_meta, (256, 256))
    large = count_flops(b0_meta, 512)
    assert small > 0
    # convs and linears scale with the area (x4); attention grows faster (tokens x keys), so a bit over 4
    assert 4.0 < large / small < 5.5
    # per-image work doubles; the head's weight folding (a few per cent) runs once per batch
    assert count_flops(b0_meta, 256, batch=2) == pytest.approx(2 * small, rel=0.05)


def test_cpu_and_meta_counts_agree_including_attention(b0_meta):
    # on the CPU, scaled_dot_product_attention runs a kernel FlopCounterMode does not know by itself
    torch.manual_seed(0)
    cpu = seglab.create_model("segformer_b0", num_classes=150)
    assert count_flops(cpu, (64, 96)) == count_flops(b0_meta, (64, 96))


def test_segformer_b0_matches_the_published_gflops(b0_meta):
    # SegFormer-B0 at 512x512 with 150 classes: 8.4 GFLOPs in the paper (multiply-adds, attention included).
    # Our head folds the 1x1 fuse conv into each stage's projection, computed at the stage's own resolution,
    # which removes the (4C -> C) conv at 1/4 resolution and adds the (C x C) @ (C x C_i) weight products.
    # Adding the first and removing the second must give back the paper's architecture.
    head = b0_meta.decode_head
    c = head.channels
    in_channels = [layer.conv.in_channels for layer in head.linear_c]
    fuse = (512 // 4) * (512 // 4) * (len(in_channels) * c) * c
    folding = sum(c * c * ci for ci in in_channels)
    ours = count_flops(b0_meta, 512)
    assert ours / 1e9 == pytest.approx(4.13, abs=0.01)
    assert (ours + fuse - folding) / 1e9 == pytest.approx(8.4, abs=0.05)


def test_stage_shapes_have_strides_4_8_16_32():
    model = seglab.create_model("segformer_b0", num_classes=6)
    shapes = stage_shapes(model, (64, 96))
    names = [n for n, _ in shapes]
    assert names == ["backbone.0", "backbone.1", "backbone.2", "backbone.3", "logits"]
    for (_, shape), info, stride in zip(shapes[:4], model.backbone.feature_info, (4, 8, 16, 32), strict=True):
        assert info.stride == stride
        assert shape == (1, info.channels, 64 // stride, 96 // stride)
    assert shapes[-1][1] == (1, 6, 16, 24)
    assert model.training  # the mode is restored


def test_model_table():
    rows = model_table(["segformer_b0", "segformer_b1"], size=256)
    assert [r["name"] for r in rows] == ["segformer_b0", "segformer_b1"]
    assert rows[0]["params_m"] == pytest.approx(3.752694)
    assert rows[0]["published_params_m"] == 3.8 and rows[1]["published_params_m"] == 13.7
    assert rows[0]["device"] == "meta"
    assert 0 < rows[0]["gflops"] < rows[1]["gflops"]
    text = format_model_table(rows, 256)
    assert "segformer_b0" in text and "3.75" in text and "@256x256" in text
