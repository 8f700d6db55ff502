"""MaskFormer against Hugging Face transformers' `MaskFormerForInstanceSegmentation` (Swin-T and ResNet-50 backbones).

Random weights (BN statistics, GroupNorm/LayerNorm affines and the zero-initialised biases randomised too) are converted
with `convert_maskformer_hf`, loaded strictly, and the class and mask logits of both models compared on a non-square
input that is not a multiple of 32, together with the semantic scores.
"""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.convert.maskformer import convert_maskformer_hf
from seglab.heads.maskformer import semantic_scores

transformers = pytest.importorskip("transformers")

NUM_CLASSES = 7


def _randomise(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("relative_position_index"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")) or "norm" in name:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))


def _hf_model(backbone_config):
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

    # NOTE: transformers feeds the normalised state to the next decoder layer when `use_auxiliary_loss` is set (the
    # original DETR normalises the reported outputs only); the final output compared here is unaffected with it off
    config = MaskFormerConfig(backbone_config=backbone_config, num_labels=NUM_CLASSES, use_auxiliary_loss=False)
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(config).eval()
    _randomise(model)
    return model


def _compare(hf, model_name: str, x: torch.Tensor) -> None:
    result = convert_maskformer_hf(hf.state_dict(), model_name)
    assert result.num_classes == NUM_CLASSES and result.overrides == {}
    assert result.dropped == ["criterion.empty_weight"]
    ours = seglab.create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    with torch.no_grad():
        expected = hf(pixel_values=x)
        class_logits, mask_logits = ours.forward_train(x)
        scores = ours(x)
    assert class_logits.shape == (6, 1, 100, NUM_CLASSES + 1)
    assert mask_logits.shape[-2:] == (-(-x.shape[-2] // 4), -(-x.shape[-1] // 4))  # ceil: stride 4
    assert expected.masks_queries_logits.shape == mask_logits[-1].shape
    assert expected.class_queries_logits.std() > 0.1 and expected.masks_queries_logits.std() > 0.1
    class_diff = (class_logits[-1] - expected.class_queries_logits).abs().max().item()
    mask_diff = (mask_logits[-1] - expected.masks_queries_logits).abs().max().item()
    print(f"{model_name}: max |class diff| {class_diff:.2e}, max |mask diff| {mask_diff:.2e}")
    assert class_diff <= 1e-4 and mask_diff <= 1e-4
    reference_scores = semantic_scores(expected.class_queries_logits, expected.masks_queries_logits)
    # sums over 100 queries of values up to 1: float32 rounding of the order of 1e-5 relative
    assert (scores - reference_scores).abs().max() <= 1e-5 * reference_scores.abs().max()


def test_maskformer_swin_t_matches_transformers():
    from transformers import SwinConfig

    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    # stage 4 is 9x10 tokens: larger than the window everywhere, where every Swin port agrees
    _compare(_hf_model(backbone), "maskformer_swin_t", torch.randn(1, 3, 270, 310))


def test_maskformer_r50_matches_transformers():
    from transformers import ResNetConfig

    backbone = ResNetConfig(depths=[3, 4, 6, 3], out_features=["stage1", "stage2", "stage3", "stage4"])
    _compare(_hf_model(backbone), "maskformer_r50", torch.randn(1, 3, 150, 230))
