"""SegFormer against the tree written from the official NVlabs/SegFormer code (`official.segformer`): random weights,
the official checkpoint layout converted with `--source official`, strict load, logits and stage features compared."""

from __future__ import annotations

import pytest
import torch
from official.segformer.mix_transformer import mit
from official.segformer.segformer_head import segformer
from testkit import compare, randomize_

from seglab import create_model
from seglab.convert import convert_checkpoint

pytestmark = pytest.mark.reference

INPUT = (1, 3, 75, 93)  # odd sides, not multiples of 32


def convert_and_build(state_dict: dict, model_name: str):
    result = convert_checkpoint(state_dict, "official", model_name)
    model = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    return model, result


@pytest.mark.parametrize(("variant", "embed_dim"), [
    ("b0", None),
    ("b0", 128),
    pytest.param("b2", None, marks=pytest.mark.slow),
])
@torch.no_grad()
def test_segformer_matches_official(variant: str, embed_dim: int | None) -> None:
    """B0 and B2 as released (decoder width 256 / 768), and B0 with a decoder width no release has (converted into a
    `head_channels` override)."""
    reference = randomize_(segformer(variant, num_classes=11, embed_dim=embed_dim), seed=1).eval()
    checkpoint = {"state_dict": reference.state_dict(), "meta": {}}  # mmcv's `save_checkpoint` layout
    ours, result = convert_and_build(checkpoint, f"segformer_{variant}")
    assert result.num_classes == 11
    assert result.dropped == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    assert result.overrides.get("head_channels") == embed_dim

    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(2))
    for stage, (a, b) in enumerate(zip(ours.backbone(x), reference.backbone(x), strict=True)):
        compare(a, b, pair=f"segformer/official stage {stage}", tol=1e-4)
    logits = ours(x)
    assert logits.shape == (1, 11, 19, 24)
    compare(logits, reference(x), pair="segformer/official", tol=1e-4)


@torch.no_grad()
def test_imagenet_encoder_converts_as_backbone() -> None:
    """`mit_b0.pth`: the encoder keys without `backbone.`, plus the ImageNet classifier `head.*` (dropped)."""
    reference = randomize_(mit("b0"), seed=3).eval()
    state = {**reference.state_dict(), "head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    result = convert_checkpoint(state, "official", "segformer_b0")
    assert result.backbone_only and result.num_classes is None
    assert result.dropped == ["head.weight", "head.bias"]
    ours = create_model("segformer_b0", num_classes=5, **result.overrides).eval()
    ours.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in result.state_dict.items()}, strict=True)
    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(4))
    for stage, (a, b) in enumerate(zip(ours.backbone(x), reference(x), strict=True)):
        compare(a, b, pair=f"segformer/official mit_b0 stage {stage}", tol=1e-4)
