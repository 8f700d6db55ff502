"""UperNet-Swin against Hugging Face transformers' `UperNetForSemanticSegmentation` (Swin backbone).

Random weights (BN statistics and LayerNorm affines randomised too) are converted with `seglab.convert` (source `hf`),
loaded strictly, and both models' class logits compared at the input size on a non-square input that is not a
multiple of 32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seglab
from seglab.convert import convert_checkpoint

transformers = pytest.importorskip("transformers")

# (variant, embed_dim, depths, heads); small depths for Swin-S/B keep the test fast while covering the layout
VARIANTS = [("t", 96, [2, 2, 6, 2], [3, 6, 12, 24])]


def _randomise(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or ("norm" in name and tensor.is_floating_point()):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))


def _hf_model(embed_dim: int, depths: list[int], heads: list[int], num_classes: int = 7):
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, num_labels=num_classes)
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).eval()
    _randomise(model)
    return model


@pytest.mark.parametrize("variant,embed_dim,depths,heads", VARIANTS)
def test_upernet_swin_matches_transformers(variant, embed_dim, depths, heads):
    hf = _hf_model(embed_dim, depths, heads)
    result = convert_checkpoint(hf.state_dict(), "hf", f"upernet_swin_{variant}")
    assert result.num_classes == 7 and result.overrides == {}
    ours = seglab.create_model(f"upernet_swin_{variant}", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    # stage 4 is 9x10 tokens: larger than the window everywhere, where every Swin port agrees
    x = torch.randn(1, 3, 270, 310)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        ours_logits = F.interpolate(ours(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        aux = ours.aux_heads[0](ours.backbone(x))
    assert expected.shape == ours_logits.shape == (1, 7, 270, 310)
    assert expected.std() > 0.1
    assert (ours_logits - expected).abs().max() <= 1e-4
    # the auxiliary head too (transformers runs it only when computing a loss: call it directly)
    with torch.no_grad():
        features = hf.backbone.forward_with_filtered_kwargs(x).feature_maps
        expected_aux = hf.auxiliary_head(features)
    assert (aux - expected_aux).abs().max() <= 1e-4
