"""UperNet-Swin against Hugging Face transformers' `UperNetForSemanticSegmentation` (Swin backbone).

Random weights (every parameter, BN statistic, LayerNorm affine and relative-position table: `testkit.randomize_`) are
converted with `seglab.convert` (source `hf`), loaded strictly, and both models' class logits (resized to the input)
and auxiliary-head logits compared on a 265x307 input. That size is odd on both sides and gives Swin stage maps 67x77,
34x39, 17x20 and 9x10: none a multiple of the window 7, so every shifted-window stage is padded. Smaller inputs (such as
75x93, stage 4 at 3x3) are not comparable: a map whose smaller side is no larger than the window makes transformers
shrink the window to that side (square) and drop the shift, and the shrunk window stays on the module for later calls
(`SwinLayer.set_shift_and_window_size`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testkit import compare, randomize_

import seglab
from seglab.convert import convert_checkpoint

transformers = pytest.importorskip("transformers")

# (variant, embed_dim, depths, heads); small depths for Swin-S/B keep the test fast while covering the layout
VARIANTS = [("t", 96, [2, 2, 6, 2], [3, 6, 12, 24])]


def _hf_model(embed_dim: int, depths: list[int], heads: list[int], num_classes: int = 7):
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, num_labels=num_classes)
    return randomize_(UperNetForSemanticSegmentation(config).eval(), seed=0)


@pytest.mark.slow  # ~5-8 s on 2 cores: two 60M-parameter models with 512-channel heads at 265x307
@pytest.mark.parametrize("variant,embed_dim,depths,heads", VARIANTS)
def test_upernet_swin_matches_transformers(variant, embed_dim, depths, heads):
    hf = _hf_model(embed_dim, depths, heads)
    result = convert_checkpoint(hf.state_dict(), "hf", f"upernet_swin_{variant}")
    assert result.num_classes == 7 and result.overrides == {}
    ours = seglab.create_model(f"upernet_swin_{variant}", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(1, 3, 265, 307, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        ours_logits = F.interpolate(ours(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        aux = ours.aux_heads[0](ours.backbone(x))
    assert expected.shape == ours_logits.shape == (1, 7, 265, 307)
    assert expected.std() > 0.1
    compare(ours_logits, expected, pair=f"upernet_swin/hf {variant} logits")
    # the auxiliary head too (transformers runs it only when computing a loss: call it directly)
    with torch.no_grad():
        features = hf.backbone.forward_with_filtered_kwargs(x).feature_maps
        expected_aux = hf.auxiliary_head(features)
    assert expected_aux.std() > 0.1
    compare(aux, expected_aux, pair=f"upernet_swin/hf {variant} auxiliary logits")
