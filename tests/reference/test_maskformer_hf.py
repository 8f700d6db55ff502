"""MaskFormer against Hugging Face transformers' `MaskFormerForInstanceSegmentation` (Swin-T and ResNet-50 backbones).

Random weights (every parameter, BN statistic, GroupNorm/LayerNorm affine, query embedding and relative-position table:
`testkit.randomize_`) are converted with `convert_maskformer_hf`, loaded strictly, and compared:

- the final class and mask logits (`forward_train`) with transformers' `class_queries_logits` / `masks_queries_logits`;
- the semantic inference: transformers' `MaskFormerImageProcessor.post_process_semantic_segmentation` on its outputs
  (scores at the mask resolution, and resized to a target size with the argmax map) against seglab's model output and
  `seglab.inference.whole_inference` / `predict_labels` with `out_size` (what `seglab predict` runs).

Sizes: ResNet-50 at 75x93 (odd, stride-32 map 3x3); Swin-T at 265x307 (odd; stage maps 67x77 .. 9x10, all larger than
the window 7 and none a multiple of it: transformers shrinks the window of a map no larger than it, see
`test_upernet_hf.py`). Targets 113x139 and 397x461 are the "original image" sizes the scores are resized to.
"""

from __future__ import annotations

import pytest
import torch
from testkit import compare, randomize_

import seglab
from seglab.convert.maskformer import convert_maskformer_hf
from seglab.inference import predict_labels, whole_inference

transformers = pytest.importorskip("transformers")

NUM_CLASSES = 7


def _hf_model(backbone_config):
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

    # NOTE: transformers feeds the normalised state to the next decoder layer when `use_auxiliary_loss` is set (the
    # original DETR normalises the reported outputs only); the final output compared here is unaffected with it off
    config = MaskFormerConfig(backbone_config=backbone_config, num_labels=NUM_CLASSES, use_auxiliary_loss=False)
    return randomize_(MaskFormerForInstanceSegmentation(config).eval(), seed=0)


@torch.no_grad()
def _spread_classes(hf, x: torch.Tensor) -> None:
    """Random weights give near-identical queries that all vote for one class, so the semantic argmax would be one
    class everywhere. Query embeddings at nn.Embedding's own N(0, 1) (instead of randomize_'s 1/sqrt(256) scale),
    a class-predictor bias centred on this input's mean class logits and a 4x sharper classifier make the queries
    disagree, and the argmax maps hold several classes."""
    hf.model.transformer_module.queries_embedder.weight.normal_(generator=torch.Generator().manual_seed(1))
    hf.class_predictor.bias.sub_(hf(pixel_values=x).class_queries_logits[0].mean(0))
    hf.class_predictor.weight.mul_(4.0)
    hf.class_predictor.bias.mul_(4.0)


def _ours(hf, model_name: str):
    result = convert_maskformer_hf(hf.state_dict(), model_name)
    assert result.num_classes == NUM_CLASSES and result.overrides == {}
    assert result.dropped == ["criterion.empty_weight"]
    ours = seglab.create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    return ours


def _compare(hf, model_name: str, size: tuple[int, int], target: tuple[int, int], score_tol: float) -> None:
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    _spread_classes(hf, x)
    ours = _ours(hf, model_name)
    pair = f"maskformer/hf {model_name}"
    with torch.no_grad():
        expected = hf(pixel_values=x)
        class_logits, mask_logits = ours.forward_train(x)
        scores = ours(x)
    assert class_logits.shape == (6, 1, 100, NUM_CLASSES + 1)  # every decoder layer (deep supervision)
    assert mask_logits.shape[-2:] == (-(-size[0] // 4), -(-size[1] // 4))  # ceil: stride 4
    assert expected.class_queries_logits.std() > 0.1 and expected.masks_queries_logits.std() > 0.1
    compare(class_logits[-1], expected.class_queries_logits, pair=f"{pair} class logits")
    compare(mask_logits[-1], expected.masks_queries_logits, pair=f"{pair} mask logits")

    # semantic post-processing: transformers' image processor on its outputs vs seglab's inference
    processor = transformers.MaskFormerImageProcessor()
    at_mask_size = processor.post_process_semantic_segmentation(expected, return_segmentation_scores=True)[0]
    compare(scores[0], at_mask_size.segmentation_scores, pair=f"{pair} semantic scores", tol=score_tol)
    resized = processor.post_process_semantic_segmentation(expected, target_sizes=[target],
                                                           return_segmentation_scores=True)[0]
    with torch.no_grad():
        ours_resized = whole_inference(ours, x, out_size=target)
        labels = predict_labels(ours, x, out_size=target)
    diff = compare(ours_resized[0], resized.segmentation_scores, pair=f"{pair} semantic scores at {target}",
                   tol=score_tol)
    reference_labels = resized.segmentation
    assert labels.shape == (1, *target) and reference_labels.shape == target
    assert len(reference_labels.unique()) >= 3
    # the argmax maps are equal wherever the reference's best two classes are further apart than twice the measured
    # score difference; a pixel closer to a tie (on a class boundary) may go either way in float32
    top2 = resized.segmentation_scores.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 2 * diff
    assert decided.float().mean() > 0.99
    assert torch.equal(labels[0][decided], reference_labels[decided])


@pytest.mark.slow
def test_maskformer_swin_t_matches_transformers():
    from transformers import SwinConfig

    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    # NOTE: the scores sum 100 queries' class probability x mask sigmoid. The mask logits agree within ~4e-5 of a
    # range of ~33 (float32 rounding through the Swin blocks, where seglab computes q/k/v in one fused matmul, and the
    # pixel decoder), and the sum accumulates the queries' differences: ~9e-5 measured on scores up to ~14 (6e-6
    # relative), hence 5e-4
    _compare(_hf_model(backbone), "maskformer_swin_t", (265, 307), (397, 461), score_tol=5e-4)


def test_maskformer_r50_matches_transformers():
    from transformers import ResNetConfig

    backbone = ResNetConfig(depths=[3, 4, 6, 3], out_features=["stage1", "stage2", "stage3", "stage4"])
    _compare(_hf_model(backbone), "maskformer_r50", (75, 93), (113, 139), score_tol=1e-4)
